"""Exit policies (survey §6): per sample and exit, stop here or go on.

scikit-learn conventions (STYLE.md §7): ``__init__`` stores its arguments only, ``fit`` returns ``self``, learned
state ends in ``_`` (``thresholds_``), and using a policy before ``fit`` raises an error that says to fit it.

A policy decides at exit i only from what is known there, so the runtime can ask it exit by exit
(:meth:`ExitPolicy.step`); :meth:`ExitPolicy.decide` on the cached logits of all exits gives the same answer
(contract 3). The last exit always takes every sample that is still there.

=====================  ==============================================================================
policy                 leaves exit i when
=====================  ==============================================================================
``Entropy``            the normalised entropy (eq. (11)) is below β_i (BranchyNet)
``MaxProb``            the top softmax probability exceeds β_i
``Margin``             top-1 minus top-2 probability exceeds β_i
``Gate``               a learned gate g_i(logits_i) exceeds β_i (eq. (9), IDK cascades)
``Patience``           k consecutive exits agree (PABEE); for regression, differ by less than τ
``Budgeted``           it is among the fixed fraction of most confident samples sent out there (MSDNet)
``TemperatureScaled``  the wrapped policy says so on logits divided by a per-exit temperature
``NeverExit``          never (the full network)
=====================  ==============================================================================
"""

from __future__ import annotations

from exitnet.policies._base import (
    ExitPolicy,
    NotFittedError,
    State,
    get_policy,
    list_policies,
    normalized_entropy,
    policy_from_config,
    policy_to_config,
    register_policy,
)
from exitnet.policies.budgeted import Budgeted, geometric_fractions
from exitnet.policies.gate import Gate
from exitnet.policies.patience import Patience
from exitnet.policies.temperature import TemperatureScaled, fit_temperature
from exitnet.policies.threshold import Entropy, Margin, MaxProb, NeverExit, ThresholdPolicy

__all__ = [
    "ExitPolicy",
    "ThresholdPolicy",
    "Entropy",
    "MaxProb",
    "Margin",
    "Gate",
    "Patience",
    "Budgeted",
    "TemperatureScaled",
    "NeverExit",
    "NotFittedError",
    "State",
    "normalized_entropy",
    "geometric_fractions",
    "fit_temperature",
    "register_policy",
    "get_policy",
    "list_policies",
    "policy_to_config",
    "policy_from_config",
]
