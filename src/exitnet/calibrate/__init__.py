"""Calibration of exit policies (survey §6): the cheapest per-exit thresholds for a target accuracy, the most
accurate ones within a FLOPs budget, the whole Pareto front, the iterative single-threshold rule of
Baccarelli et al. (the survey's [3]), and risk-controlled thresholds with a stated guarantee (Learn-then-Test).

The search algorithm is described in ``docs/policies.md`` and in :mod:`exitnet.calibrate._search`; the
guarantee and its assumption in :mod:`exitnet.calibrate.risk`.
"""

from __future__ import annotations

from exitnet.calibrate._core import FrontPoint, calibrate, pareto_front
from exitnet.calibrate.iterative import calibrate_iterative
from exitnet.calibrate.risk import binomial_pvalue, calibrate_risk, drop_pvalue, hb_pvalue

__all__ = [
    "calibrate",
    "calibrate_iterative",
    "calibrate_risk",
    "pareto_front",
    "FrontPoint",
    "binomial_pvalue",
    "hb_pvalue",
    "drop_pvalue",
]
