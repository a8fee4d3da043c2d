"""Name -> builder registry and the JSON config that lets ``build`` rebuild any backbone.

A builder is registered with the :func:`register` decorator, which also stamps every module it
returns with ``module.config = {"name": ..., "kwargs": {...every builder argument...}}``. The
config holds only JSON literals (tuples become lists), so checkpoint code can store it in a
JSON manifest and call :func:`build` later without pickling anything.

Adding a backbone (e.g. ``vit``) is a new file whose builder carries ``@register("vit")`` plus
one import line in ``exitnet/backbones/__init__.py``.
"""

from __future__ import annotations

import functools
import inspect
import numbers
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

Builder = Callable[..., nn.Module]

_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register a builder under ``name`` and make it attach ``module.config`` to what it returns.

    Args:
        name: Registry name, used as ``config["name"]``.

    Returns:
        A decorator returning the wrapped builder (same signature and docstring).

    Example:
        >>> from torch import nn
        >>> @register("toy-linear")
        ... def toy_linear(in_features: int = 4, out_features: int = 2) -> nn.Module:
        ...     return nn.Linear(in_features, out_features)
        >>> toy_linear(out_features=3).config
        {'name': 'toy-linear', 'kwargs': {'in_features': 4, 'out_features': 3}}
        >>> _ = _BUILDERS.pop("toy-linear")  # keep the doctest from polluting the registry
    """

    def decorate(fn: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"backbone name {name!r} is already registered; registered: {list_backbones()}")
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> nn.Module:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            module = fn(*bound.args, **bound.kwargs)  # validates the arguments
            config_kwargs = {k: _to_json(v, f"{name}: {k}") for k, v in bound.arguments.items()}
            module.config = {"name": name, "kwargs": config_kwargs}  # type: ignore[assignment]
            return module

        _BUILDERS[name] = wrapper
        return wrapper

    return decorate


def list_backbones() -> list[str]:
    """Names of the registered backbones, sorted.

    Example:
        >>> list_backbones()[:3]
        ['mlp', 'resnet', 'vgg']
    """
    return sorted(_BUILDERS)


def get_backbone(name: str, **kwargs: Any) -> nn.Module:
    """Build the backbone registered as ``name`` with builder arguments ``kwargs``.

    Args:
        name: One of :func:`list_backbones`.
        **kwargs: Arguments of that builder; unknown ones raise ``ValueError`` listing the valid ones.

    Returns:
        The module, carrying ``module.config``.

    Example:
        >>> import torch
        >>> net = get_backbone("mlp", in_features=8, hidden=[16], num_classes=3)
        >>> net(torch.randn(2, 8)).shape
        torch.Size([2, 3])
    """
    builder = _lookup(name)
    _check_kwargs(name, builder, kwargs)
    return builder(**kwargs)


def build(config: Mapping[str, Any]) -> nn.Module:
    """Rebuild a backbone from its ``module.config`` (same architecture and state_dict keys/shapes).

    Args:
        config: ``{"name": str, "kwargs": {argument: value}}``. Arguments left out of ``kwargs`` take
            the builder's default, so configs written before a new argument was added still load.

    Returns:
        A freshly initialised module; load the weights with ``load_state_dict``.

    Raises:
        ValueError: Unknown name, missing ``name``/``kwargs``, unknown or missing arguments, or
            an argument value the builder rejects.

    Example:
        >>> import torch
        >>> net = build({"name": "resnet", "kwargs": {"depth": 8, "num_classes": 5}})
        >>> net(torch.randn(2, 3, 8, 8)).shape
        torch.Size([2, 5])
    """
    if not isinstance(config, Mapping):
        raise ValueError(
            f"backbone config must be a mapping {{'name': ..., 'kwargs': {{...}}}}, got {type(config).__name__}"
        )
    extra = sorted(set(config) - {"name", "kwargs"})
    missing = sorted({"name", "kwargs"} - set(config))
    if extra or missing:
        raise ValueError(
            f"backbone config must have exactly the keys ['kwargs', 'name']; missing {missing}, unexpected {extra}"
        )
    name, kwargs = config["name"], config["kwargs"]
    builder = _lookup(name)
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise ValueError(f"backbone config 'kwargs' must be a mapping with str keys, got {kwargs!r}")
    _check_kwargs(name, builder, kwargs)
    return builder(**kwargs)


def _lookup(name: Any) -> Builder:
    if not isinstance(name, str) or name not in _BUILDERS:
        raise ValueError(f"unknown backbone {name!r}; valid names: {list_backbones()}")
    return _BUILDERS[name]


def _check_kwargs(name: str, builder: Builder, kwargs: Mapping[str, Any]) -> None:
    params = inspect.signature(builder).parameters
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"{name}: unknown argument(s) {unknown}; valid arguments: {list(params)}")
    required = [p for p, spec in params.items() if spec.default is inspect.Parameter.empty]
    missing = [p for p in required if p not in kwargs]
    if missing:
        raise ValueError(f"{name}: missing required argument(s) {missing}")


def _to_json(value: Any, where: str) -> Any:
    """Convert a builder argument to JSON literals (tuples -> lists, numpy scalars -> Python)."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (list, tuple)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping) and all(isinstance(k, str) for k in value):
        return {k: _to_json(v, f"{where}.{k}") for k, v in value.items()}
    raise ValueError(f"{where}: {type(value).__name__} value {value!r} cannot be stored in a JSON config")
