"""Training strategies (survey §5, §6.1) and the one loop that runs them.

A strategy is an object that says which parameters train in which phase and returns the loss of a batch;
:func:`fit` is shared (and runs unchanged under ``torchrun``). One file per family:

========================  ==========================================================================
``Joint``                 eq. (6): weighted sum of every exit's loss; ``distill=`` adds self-distillation
``Combined``              eq. (8): the loss of the exits' combined prediction (weighted, convex, mean, max)
``Gated``                 eq. (9): gates g_i(c_i(x)) mix the exits recursively; the gates are an exit policy
``CostRegularized``       eq. (13)-(14): gated training plus λ times the soft expected cost
``Layerwise``             §5.3: stage k + head k alone, earlier stages frozen, embeddings cached
``Separate``              §5.4: backbone first (or given), then only the heads (also scikit-learn heads)
``Freezeout``             eq. (10): per-stage cosine learning rates; frozen stages leave the backward pass
``Mixed``                 backbone first, then joint fine-tuning (Kubaty et al.)
``Backbone``              the backbone alone: the baseline of every training cost
========================  ==========================================================================
"""

from typing import Any

from exitnet.train.base import Strategy
from exitnet.train.combined import Combined
from exitnet.train.cost_regularized import CostRegularized
from exitnet.train.freezeout import Freezeout, freezeout_lr, freezeout_points
from exitnet.train.gated import Gated
from exitnet.train.joint import Joint, exit_weights
from exitnet.train.layerwise import Layerwise
from exitnet.train.loop import History, fit
from exitnet.train.mixed import Mixed
from exitnet.train.separate import Backbone, Separate, fit_sklearn_heads

__all__ = [
    "Strategy",
    "Joint",
    "Combined",
    "Gated",
    "CostRegularized",
    "Layerwise",
    "Separate",
    "Freezeout",
    "Mixed",
    "Backbone",
    "exit_weights",
    "freezeout_lr",
    "freezeout_points",
    "fit_sklearn_heads",
    "fit",
    "History",
    "list_strategies",
    "get_strategy",
]

_STRATEGIES: dict[str, type[Strategy]] = {
    "joint": Joint,
    "combined": Combined,
    "gated": Gated,
    "cost": CostRegularized,
    "layerwise": Layerwise,
    "separate": Separate,
    "freezeout": Freezeout,
    "mixed": Mixed,
    "backbone": Backbone,
}


def list_strategies() -> list[str]:
    """Names accepted by :func:`get_strategy` (and ``exitnet train --strategy``)."""
    return sorted(_STRATEGIES)


def get_strategy(name: str, **kwargs: Any) -> Strategy:
    """Build a strategy by name; an unknown name lists the valid ones.

    Example:
        >>> get_strategy("cost", lam=0.3).describe()["lam"]
        0.3
    """
    if name not in _STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of: {', '.join(list_strategies())}")
    try:
        return _STRATEGIES[name](**kwargs)
    except TypeError as err:
        raise ValueError(f"strategy {name!r} does not take these options {sorted(kwargs)}: {err}") from err
