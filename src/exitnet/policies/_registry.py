"""The registry of policy classes: names for :func:`get_policy` and for checkpoints (policies stored as JSON)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # for types only: the base class imports this module
    from exitnet.policies._base import ExitPolicy

__all__ = [
    "register_policy",
    "get_policy",
    "list_policies",
    "policies_for",
    "policy_to_config",
    "policy_from_config",
]

_POLICIES: dict[str, type[ExitPolicy]] = {}


def register_policy(cls: type[ExitPolicy]) -> type[ExitPolicy]:
    """Make a policy class known to :func:`get_policy` and to checkpoints (usable as a decorator)."""
    if cls.name in _POLICIES and _POLICIES[cls.name] is not cls:
        raise ValueError(f"a policy named {cls.name!r} is already registered")
    _POLICIES[cls.name] = cls
    return cls


def list_policies() -> list[str]:
    """Names :func:`get_policy` accepts."""
    return sorted(_POLICIES)


def policies_for(task: str) -> list[str]:
    """Names of the registered policies that support outputs of ``task``."""
    return [name for name, cls in sorted(_POLICIES.items()) if task in cls.tasks]


def get_policy(name: str, **params: Any) -> ExitPolicy:
    """Build a policy by name (``"entropy"``, ``"maxprob"``, …; see :func:`list_policies`)."""
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    return _POLICIES[name](**params)


def policy_to_config(policy: ExitPolicy) -> dict[str, Any]:
    """JSON-serialisable description of a (fitted or not) policy, for checkpoints."""
    if _POLICIES.get(policy.name) is not type(policy):
        raise ValueError(f"policy {type(policy).__name__} is not registered; use exitnet.policies.register_policy")
    return {
        "name": policy.name,
        "params": policy.config_params(),
        "state": policy.fitted_state() if policy.is_fitted() else None,
    }


def policy_from_config(config: dict[str, Any]) -> ExitPolicy:
    """Inverse of :func:`policy_to_config`."""
    name = config.get("name")
    if name not in _POLICIES:
        raise ValueError(f"unknown policy {name!r}; choose one of: {', '.join(list_policies())}")
    policy = _POLICIES[name].from_config_params(dict(config.get("params") or {}))
    if config.get("state") is not None:
        policy.set_fitted_state(config["state"])
    return policy
