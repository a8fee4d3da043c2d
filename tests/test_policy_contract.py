"""The policy contract, checked in one place whatever the family: scikit-learn estimators, ``num_exits_`` and
``check_exits``, tasks, the fixed state schema, self-fitting policies, ``repr``, eq. (11) from ``log_softmax``."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from sklearn.base import clone

import exitnet as ee
from _problems import exit_logits as _problem
from exitnet.outputs import ExitOutputs
from exitnet.policies import (
    Budgeted,
    Entropy,
    ExitPolicy,
    Gate,
    Margin,
    MaxProb,
    NeverExit,
    NotFittedError,
    Patience,
    State,
    TemperatureScaled,
    normalized_entropy,
    policy_from_config,
    policy_to_config,
)

LOGITS3, Y3 = _problem(exits=3, n=90)
LOGITS4, Y4 = _problem(seed=1, exits=4, n=90)


def _fitted3() -> dict[str, ExitPolicy]:
    """Policies fitted (or calibrated) on a 3-exit network's outputs."""
    return {
        "budgeted": Budgeted([0.3, 0.3]).fit(LOGITS3),
        "gate": Gate(0.5, epochs=5).fit(LOGITS3, Y3),
        "temperature": TemperatureScaled(MaxProb(0.6)).fit(LOGITS3, Y3),
        "calibrated-entropy": ee.calibrate(Entropy(), LOGITS3, Y3, max_accuracy_drop=0.05),
        "calibrated-scalar": ee.calibrate(MaxProb(0.99), LOGITS3, Y3, max_accuracy_drop=0.2),
        "list": Entropy([0.3, 0.5]).fit(LOGITS3),
    }


# ------------------------------------------------------------------------------------------- scikit-learn
@pytest.mark.parametrize(
    "policy",
    [Entropy([0.2, 0.4]), MaxProb(0.5, fallback="most_confident"), Margin(), Gate(0.3, hidden=4), Patience(3, tau=0.5),
     Budgeted(ratio=0.5, statistic="entropy"), NeverExit(), TemperatureScaled(Entropy(0.3))],
    ids=lambda p: type(p).__name__,
)  # fmt: skip
def test_every_policy_is_a_scikit_learn_estimator(policy: ExitPolicy) -> None:
    copy = clone(policy)  # refuses an __init__ that changes its arguments
    assert type(copy) is type(policy) and repr(copy) == repr(policy) and not copy.is_fitted()
    assert repr(policy.clone()) == repr(policy)
    params = policy.get_params(deep=False)
    assert repr(type(policy)(**params)) == repr(policy) and policy.set_params(**params) is policy


def test_nested_params_of_temperature_scaling() -> None:
    policy = TemperatureScaled(Entropy(0.3))
    assert policy.get_params(deep=True)["policy__thresholds"] == 0.3
    policy.set_params(policy__thresholds=0.6)
    assert policy.policy.thresholds == 0.6
    fitted = policy.fit(LOGITS3, Y3)
    assert fitted.policy_.thresholds_ == [0.6, 0.6] and not clone(fitted).is_fitted()


# ------------------------------------------------------------------------------------ num_exits_ and check_exits
def test_fit_and_calibrate_record_the_exit_count() -> None:
    for name, policy in _fitted3().items():
        assert policy.num_exits_ == 3, name
    assert Patience(2).fit(LOGITS4).num_exits_ == 4 and NeverExit().fit(LOGITS4).num_exits_ == 4


@pytest.mark.parametrize("name", ["budgeted", "gate", "temperature", "calibrated-entropy", "calibrated-scalar"])
def test_a_policy_learned_for_3_exits_refuses_a_4_exit_network(name: str) -> None:
    policy = _fitted3()[name]
    kind = type(policy).__name__
    message = f"this {kind} was fitted for 3 exits; the network has 4: fit or calibrate it on this network"
    for run in (lambda: policy.decide(LOGITS4), lambda: policy.predict(LOGITS4), lambda: policy.check_exits(4)):
        with pytest.raises(ValueError, match=message):
            run()
    with pytest.raises(ValueError, match=r"step\(i=2\): this .* fitted for 3 exits, so exits 0..1 decide"):
        policy.step(2, LOGITS4[2], policy.init_state(90, "cpu", LOGITS4.shape[2:]))
    policy.check_exits(3)  # the right network passes


def test_a_list_of_thresholds_of_the_wrong_length_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="one threshold per auxiliary exit: 3 for 4 exits, got 2"):
        Entropy([0.3, 0.5]).decide(LOGITS4)
    with pytest.raises(ValueError, match=r"fitted for 3 exits; the network has 4.*3 for 4 exits, got 2"):
        _fitted3()["list"].decide(LOGITS4)


def test_explicit_thresholds_patience_and_never_need_no_fit_and_follow_the_network() -> None:
    shared = MaxProb(0.7)
    for logits in (LOGITS3, LOGITS4, LOGITS3):  # the same object on networks of several depths
        expected = MaxProb([0.7] * (logits.shape[0] - 1)).fit(logits).decide(logits)
        assert torch.equal(shared.decide(logits), expected)
        assert shared.num_exits_ == logits.shape[0] and len(shared.thresholds_) == logits.shape[0] - 1
    for policy in (Patience(2), NeverExit(), Entropy(0.4)):
        assert policy.decide(LOGITS4).shape == (90,) and policy.decide(LOGITS3).max() <= 2
    assert MaxProb(0.7).predict(LOGITS4).shape == (90,)
    with pytest.raises(NotFittedError, match="not fitted yet"):
        Entropy().decide(LOGITS3)  # no thresholds: it needs calibrating
    bad = MaxProb(1.5)
    for _ in range(2):  # a bad argument is reported at every use, not only the first
        with pytest.raises(ValueError, match=r"must lie in \[0, 1\], got 1.5"):
            bad.decide(LOGITS3)


# -------------------------------------------------------------------------------------------------- tasks
def _regression(n: int = 6, exits: int = 3) -> ExitOutputs:
    return ExitOutputs(tuple(torch.randn(n, 2) for _ in range(exits)), task="regression")


@pytest.mark.parametrize(
    "policy", [Entropy(0.5), MaxProb(0.5), Margin(0.5), Gate.from_gates([torch.nn.Identity()] * 2), Budgeted([0.5]),
               TemperatureScaled(MaxProb(0.5))], ids=lambda p: type(p).__name__,
)  # fmt: skip
def test_classification_policies_refuse_regression_outputs(policy: ExitPolicy) -> None:
    message = "supports classification outputs only; these outputs are a regression's. Policies for regression"
    with pytest.raises(ValueError, match=message):
        policy.decide(_regression())
    with pytest.raises(ValueError, match=r"outputs: never, patience"):
        policy.check_exits(3, task="regression")


def test_patience_and_never_exit_run_on_regression_outputs() -> None:
    out = _regression()
    assert NeverExit().decide(out).tolist() == [2] * 6 and torch.equal(NeverExit().predict(out), out.logits[-1])
    assert Patience(2, tau=100.0).decide(out).tolist() == [1] * 6  # everything agrees within 100
    with pytest.raises(ValueError, match="regression outputs needs tau"):
        Patience(2).decide(out)
    never = NeverExit()
    never.check_exits(3, task="regression")  # the runtime's one call per run: final_prediction answers for it
    assert torch.equal(never.final_prediction(out.logits[-1], never.init_state(6)), out.logits[-1])
    classes = ExitOutputs(tuple(LOGITS3))
    with pytest.raises(ValueError, match=r"Patience\(tau=0.5\) compares regression outputs"):
        Patience(2, tau=0.5).decide(classes)
    with pytest.raises(ValueError, match="unknown task 'ranking'; choose one of: classification, regression"):
        NeverExit().check_exits(3, task="ranking")


# ------------------------------------------------------------------------------------------ the state schema
def test_patience_state_has_every_key_from_the_start() -> None:
    state = Patience(2).init_state(4, "cpu", (5,))
    assert set(state) == {"run", "prev"} and state["prev"].tolist() == [-1] * 4
    tokens = Patience(2).init_state(3, "cpu", (7, 5))  # [b, T, C] logits: one class per position
    assert tokens["prev"].shape == (3, 7) and (tokens["prev"] == -1).all()
    reg = Patience(2, tau=0.1).init_state(2, "cpu", (3,))
    assert reg["prev"].shape == (2, 3) and reg["prev"].isnan().all()
    policy = Patience(2).fit(LOGITS3)
    leaves, after = policy.step(0, LOGITS3[0, :4], state)
    assert set(after) == {"run", "prev"} and leaves.shape == (4,)
    with pytest.raises(ValueError, match=r"missing \['prev'\], extra \[\]"):
        policy.step(0, LOGITS3[0, :4], {"run": state["run"]})
    with pytest.raises(ValueError, match="pass output_shape=logits.shape"):
        policy.step(0, LOGITS3[0, :3], Patience(2).init_state(3, "cpu", (7, 5)))


class _Leaky(ExitPolicy):
    """A policy whose step adds a key its init_state does not have (what the schema check exists for)."""

    def _data_free(self) -> bool:
        return True

    def _step(self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None):
        return torch.zeros(logits.shape[0], dtype=torch.bool), {**state, "seen": logits}


def test_a_step_that_changes_the_state_schema_is_refused_by_name() -> None:
    with pytest.raises(
        ValueError, match=r"_Leaky._step does not follow _Leaky's schema \[\]: missing \[\], extra \['seen'\]"
    ):
        _Leaky().decide(LOGITS3)


def test_public_methods_are_final() -> None:
    with pytest.raises(TypeError, match=r"overrides ExitPolicy.step\(\).*implement the hook _step\(\)"):

        class _Bad(ExitPolicy):
            def step(self, i, logits, state, mask=None):  # type: ignore[override]
                return torch.zeros(logits.shape[0], dtype=torch.bool), state


# -------------------------------------------------------------------------------------- repr, storage, save
def test_repr_of_a_fitted_policy_shows_what_it_learned() -> None:
    policy = Entropy().with_thresholds([0.25, 0.5])
    assert repr(policy) == "Entropy(thresholds_=[0.25, 0.5], num_exits_=3)"
    assert repr(Entropy()) == "Entropy()" and repr(MaxProb(0.3)) == "MaxProb(thresholds=0.3)"
    calibrated = ee.calibrate(Entropy(), LOGITS3, Y3, max_accuracy_drop=0.05)
    assert f"thresholds_=[{calibrated.thresholds_[0]:.4g}, " in repr(calibrated)
    assert "temperatures_=[" in repr(_fitted3()["temperature"])


def test_config_round_trip_keeps_the_exit_count_and_reads_older_states() -> None:
    for name, policy in _fitted3().items():
        if name == "gate":
            continue
        restored = policy_from_config(json.loads(json.dumps(policy_to_config(policy))))
        assert restored.num_exits_ == 3 and torch.equal(restored.decide(LOGITS3), policy.decide(LOGITS3)), name
    old = policy_from_config({"name": "budgeted", "params": {"fractions": [0.5, 0.5]},
                              "state": {"fractions_": [0.5, 0.5, 0.0], "cuts_": [0.4, 0.3]}})  # fmt: skip
    assert old.num_exits_ == 3


def test_save_refuses_a_policy_fitted_for_another_depth(tiny_mlp, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="this Budgeted was fitted for 4 exits; the network has 3"):
        ee.save(tiny_mlp, tmp_path / "a.safetensors", policy=Budgeted(ratio=0.5).fit(torch.randn(4, 20, 4)))
    with pytest.raises(ValueError, match="this TemperatureScaled was fitted for 4 exits"):
        ee.save(tiny_mlp, tmp_path / "b.safetensors", policy=TemperatureScaled(Patience(2)).fit(LOGITS4, Y4))
    shared = MaxProb(0.5).fit(torch.randn(5, 2, 4))  # arguments fix everything: it follows the network
    ee.save(tiny_mlp, tmp_path / "c.safetensors", policy=shared)
    assert shared.num_exits_ == 5  # saving checked a copy; the policy is unchanged
    loaded = ee.load_policy(tmp_path / "c.safetensors")
    assert isinstance(loaded, MaxProb) and loaded.decide(torch.randn(3, 4, 4)).shape == (4,)
    ee.save(tiny_mlp, tmp_path / "d.safetensors", policy=Budgeted(ratio=0.5))  # unfitted: stored as it is
    assert not ee.load_policy(tmp_path / "d.safetensors").is_fitted()  # type: ignore[union-attr]


# ------------------------------------------------------------------------------------------------ eq. (11)
def test_entropy_from_log_softmax_equals_the_definition() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 7, generator=g) * torch.tensor([0.1, 1.0, 10.0, 50.0]).repeat_interleave(50)[:, None]
    logits[:20, 3] = -math.inf  # a class of probability 0 adds 0 log 0 = 0
    p = torch.softmax(logits.double(), dim=-1)
    reference = -torch.special.xlogy(p, p).sum(dim=-1) / math.log(7)
    assert torch.allclose(normalized_entropy(logits).double(), reference, atol=2e-6)
    assert normalized_entropy(torch.tensor([[math.nan, 0.0]])).isnan().all()
