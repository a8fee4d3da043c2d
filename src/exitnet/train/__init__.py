"""Training strategies (survey §5, §6.1, §7.1, §7.3) and the one loop that runs them.

A strategy is an object that says which parameters train and returns the loss of a batch; :func:`fit` is shared.
"""

from exitnet.train.base import Strategy
from exitnet.train.joint import Joint, exit_weights
from exitnet.train.loop import History, fit

__all__ = ["Strategy", "Joint", "exit_weights", "fit", "History", "list_strategies", "get_strategy"]

_STRATEGIES: dict[str, type[Strategy]] = {"joint": Joint}


def list_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy` (and ``exitnet train --strategy``)."""
    return sorted(_STRATEGIES)


def get_strategy(name: str, **kwargs: object) -> Strategy:
    """Build a strategy by name; an unknown name lists the valid ones."""
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(list_strategies())}")
    return _STRATEGIES[name](**kwargs)
