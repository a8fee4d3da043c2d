"""Exit policies (survey §6): per sample and exit, stop here or go on.

scikit-learn estimators (STYLE.md §7; ``sklearn.base.clone``, ``get_params``/``set_params`` work): ``__init__``
stores its arguments only, ``fit`` returns ``self`` and records ``num_exits_``, learned state ends in ``_``
(``thresholds_``), and using a policy that needs data before ``fit`` raises an error that says to fit it. A policy
whose arguments fix everything (``Entropy(thresholds=0.4)``, ``Patience(2)``, ``NeverExit()``) fits itself for the
network it meets (:meth:`ExitPolicy.check_exits`, the one place of the checks).

A policy decides at exit i only from what is known there, so the runtime can ask it exit by exit
(:meth:`ExitPolicy.init_state`, :meth:`ExitPolicy.step`, :meth:`ExitPolicy.final_prediction`);
:meth:`ExitPolicy.decide` and :meth:`ExitPolicy.predict` on the cached outputs of all exits give the same answer
(contract 3). The last exit always takes every sample that is still there. Outputs may be class logits
``[B, C]``, logits per position ``[B, *, C]`` (with a mask of valid positions), or regression values.

=====================  ==============================================================================  ===========
policy                 leaves exit i when                                                              tasks
=====================  ==============================================================================  ===========
``Entropy``            the normalised entropy (eq. (11)) is below β_i (BranchyNet)                     class.
``MaxProb``            the top softmax probability exceeds β_i                                         class.
``Margin``             top-1 minus top-2 probability exceeds β_i                                       class.
``Gate``               a learned gate g_i(logits_i) exceeds β_i (eq. (9), IDK cascades)                class.
``Patience``           k consecutive exits agree (PABEE); for regression, differ by less than τ        both
``Budgeted``           it is among the fixed fraction of most confident samples sent out there (MSDNet) class.
``TemperatureScaled``  the wrapped policy says so on logits divided by a per-exit temperature          class.
``NeverExit``          never (the full network)                                                        both
=====================  ==============================================================================  ===========

``Entropy``, ``MaxProb`` and ``Margin`` take ``fallback="most_confident"`` (SDN): a sample no auxiliary exit is
confident about is answered by the most confident exit instead of the last one (and still charged the whole
network).
"""

from __future__ import annotations

from exitnet.policies._base import ExitPolicy, NotFittedError, State
from exitnet.policies._registry import (
    get_policy,
    list_policies,
    policies_for,
    policy_from_config,
    policy_to_config,
    register_policy,
)
from exitnet.policies._stats import normalized_entropy
from exitnet.policies.budgeted import Budgeted, geometric_fractions
from exitnet.policies.gate import Gate
from exitnet.policies.patience import Patience
from exitnet.policies.temperature import TemperatureScaled, fit_temperature
from exitnet.policies.threshold import FALLBACKS, Entropy, Margin, MaxProb, NeverExit, ThresholdPolicy

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
    "policies_for",
    "policy_to_config",
    "policy_from_config",
    "FALLBACKS",
]
