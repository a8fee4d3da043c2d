"""Exit policies: eq. (11), scikit-learn behaviour, contracts 2 and 3, Patience, Budgeted, Gate, temperature."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score
from torch import nn

import exitnet as ee
from _problems import exit_logits as _problem
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
    TemperatureScaled,
    ThresholdPolicy,
    fit_temperature,
    geometric_fractions,
    normalized_entropy,
    policy_from_config,
    policy_to_config,
)
from exitnet.runtime import predict


def _fitted_policies(logits: torch.Tensor, y: torch.Tensor) -> dict[str, ExitPolicy]:
    e = logits.shape[0]
    return {
        "entropy": Entropy([0.5, 0.6, 0.7][: e - 1]).fit(logits),
        "maxprob": MaxProb(0.6).fit(logits),
        "margin": Margin(0.3).fit(logits),
        "gate": Gate(0.6, epochs=30).fit(logits, y),
        "patience": Patience(2).fit(logits),
        "patience-1": Patience(1),  # fits itself at first use
        "patience-regression": Patience(2, tau=1.5).fit(logits),
        "budgeted": Budgeted([0.3, 0.2, 0.2][: e - 1]).fit(logits),
        "budgeted-geometric": Budgeted(ratio=0.6, statistic="entropy").fit(logits),
        "temperature-maxprob": TemperatureScaled(MaxProb(0.6)).fit(logits, y),
        "temperature-patience": TemperatureScaled(Patience(2)).fit(logits, y),
        "never": NeverExit(),
    }


def _loop_decide(policy: ExitPolicy, stack: torch.Tensor) -> torch.Tensor:
    """A plain per-sample loop over ``step`` (batch of one), the reference for ``decide``."""
    policy.check_exits(stack.shape[0])  # what the runtime does once per run
    out = []
    for b in range(stack.shape[1]):
        state = policy.init_state(1, "cpu", stack.shape[2:])
        chosen = stack.shape[0] - 1
        for i in range(stack.shape[0] - 1):
            leaves, state = policy.step(i, stack[i, b : b + 1], state)
            if bool(leaves[0]):
                chosen = i
                break
        out.append(chosen)
    return torch.tensor(out)


# ----------------------------------------------------------------------------------------------- eq. (11)
def test_normalized_entropy_by_hand() -> None:
    assert normalized_entropy(torch.zeros(2, 7)).tolist() == [1.0, 1.0]  # uniform -> 1
    assert normalized_entropy(torch.tensor([[0.0, -math.inf, -math.inf]])).item() == 0.0  # one-hot -> 0
    # p = (1/2, 1/4, 1/4): H = (0.5 ln 2 + 2 * 0.25 ln 4) / ln 3 = 1.5 ln 2 / ln 3 = 0.946395
    h = normalized_entropy(torch.log(torch.tensor([[0.5, 0.25, 0.25]]))).item()
    assert h == pytest.approx(0.946395, abs=1e-6)
    with pytest.raises(ValueError, match="at least 2 classes"):
        normalized_entropy(torch.zeros(3, 1))


def test_margin_and_maxprob_statistics_by_hand() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1]]))
    assert Margin().statistic(logits).item() == pytest.approx(0.3, abs=1e-6)
    assert MaxProb().statistic(logits).item() == pytest.approx(0.6, abs=1e-6)


# ------------------------------------------------------------------------------------ scikit-learn behaviour
@pytest.mark.parametrize("cls", [Entropy, MaxProb, Margin])
def test_threshold_policy_follows_scikit_learn(cls: type[ThresholdPolicy]) -> None:
    logits, _ = _problem(exits=3)
    policy = cls(thresholds=[0.2, 0.4])
    assert not hasattr(policy, "thresholds_")
    assert policy.get_params() == {"thresholds": [0.2, 0.4], "fallback": "final"}
    with pytest.raises(NotFittedError, match=r"fit.*calibrate"):
        cls().decide(logits)  # no thresholds: nothing to decide with
    with pytest.raises(NotFittedError, match="not fitted"):
        policy.step(0, logits[0], {})  # step knows no exit count: check_exits (or fit) comes first
    assert policy.fit(logits) is policy and policy.thresholds_ == [0.2, 0.4] and policy.num_exits_ == 3
    assert not hasattr(policy.clone(), "thresholds_")
    assert cls(thresholds=0.3).fit(logits).thresholds_ == [0.3, 0.3]
    for bad in ([0.2, 1.5], [-0.1, 0.5], [math.nan, 0.5]):
        with pytest.raises(ValueError, match=r"\[0, 1\]"):
            cls(thresholds=bad).fit(logits)
    with pytest.raises(ValueError, match="2 for 3 exits, got 3"):
        cls(thresholds=[0.1, 0.2, 0.3]).fit(logits)
    with pytest.raises(ValueError, match="calibrate"):
        cls().fit(logits)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        cls().set_fitted_state({"thresholds_": [0.5, 2.0]})


@pytest.mark.parametrize("policy", [Budgeted([0.5, 0.5]), Gate(0.5), TemperatureScaled(MaxProb(0.5))])
def test_learned_policies_raise_before_fit(policy: ExitPolicy) -> None:
    with pytest.raises(NotFittedError, match="fit"):
        policy.decide(torch.zeros(3, 4, 5))


# -------------------------------------------------------------------------------------------- contract 2
def test_never_exit_reproduces_the_final_exit_and_always_exit_exit_zero() -> None:
    logits, _ = _problem(exits=4)
    final, first = logits[-1].argmax(-1), logits[0].argmax(-1)

    def preds(policy: ExitPolicy) -> torch.Tensor:
        ex = policy.decide(logits)
        return logits.argmax(-1).gather(0, ex.unsqueeze(0)).squeeze(0)

    for never in (NeverExit(), Entropy(0.0).fit(logits), MaxProb(1.0).fit(logits), Patience(4)):
        assert torch.equal(preds(never), final), never
    for always in (MaxProb(0.0).fit(logits), Margin(0.0).fit(logits), Patience(1)):
        assert torch.equal(preds(always), first), always


# ---------------------------------------------------------------------------------- decide == per-sample loop
def test_decide_equals_a_per_sample_loop_for_every_policy() -> None:
    logits, y = _problem(exits=4, n=120)
    for name, policy in _fitted_policies(logits, y).items():
        decided = policy.decide(logits)
        assert torch.equal(decided, _loop_decide(policy, logits)), name
        assert 0 < int((decided < 3).sum()) or name in ("never", "temperature-patience", "patience-regression")


def test_nan_logits_never_exit_early() -> None:
    logits, y = _problem(exits=4, n=60)
    policies = _fitted_policies(logits, y)
    bad = logits.clone()
    bad[:, :5] = math.nan  # samples 0-4: NaN everywhere
    bad[:2, 5:8] = math.nan  # samples 5-7: NaN at exits 0 and 1
    for name, policy in policies.items():
        ex = policy.decide(bad)
        assert (ex[:5] == 3).all(), name
        assert (ex[5:8] >= 2).all(), name
        assert torch.equal(ex, _loop_decide(policy, bad)), name


# ------------------------------------------------------------------------------------------------ patience
def _from_classes(classes: list[list[int]], num_classes: int = 3) -> torch.Tensor:
    """[E, B, C] logits whose arg-max at exit i, sample b is classes[b][i]."""
    idx = torch.tensor(classes).T  # [E, B]
    return 4.0 * nn.functional.one_hot(idx, num_classes).float()


def test_patience_semantics_on_hand_made_logits() -> None:
    logits = _from_classes([[0, 0, 1, 1], [0, 1, 1, 1], [0, 1, 0, 1], [2, 2, 2, 2]])
    assert Patience(1).decide(logits).tolist() == [0, 0, 0, 0]
    assert Patience(2).decide(logits).tolist() == [1, 2, 3, 1]
    assert Patience(3).decide(logits).tolist() == [3, 3, 3, 2]
    assert Patience(4).decide(logits).tolist() == [3, 3, 3, 3]  # k >= E: never early


def test_patience_regression_semantics() -> None:
    outputs = torch.tensor([[0.0, 0.3, 0.35, 0.36], [1.0, 1.0, 5.0, 5.0]]).T.unsqueeze(-1)  # [E=4, B=2, 1]
    assert Patience(2, tau=0.1).decide(outputs).tolist() == [2, 1]
    assert Patience(3, tau=0.1).decide(outputs).tolist() == [3, 3]
    assert Patience(2, tau=0.5).decide(outputs).tolist() == [1, 1]
    multi = torch.tensor([[[0.0, 0.0]], [[0.05, 0.3]]])  # 2-D outputs: max |difference| = 0.3
    assert Patience(2, tau=0.2).decide(multi).tolist() == [1]  # last exit: the difference is too big
    assert Patience(2, tau=0.4).decide(torch.cat([multi, multi[-1:]])).tolist() == [1]


def test_patience_rejects_bad_arguments() -> None:
    for bad in (dict(k=0), dict(k=1.5), dict(k=2, tau=0.0), dict(k=2, tau=-1.0)):
        with pytest.raises(ValueError, match="Patience"):
            Patience(**bad).fit()  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------ budgeted
def test_budget_fractions_are_respected_exactly() -> None:
    logits, _ = _problem(exits=4, n=1000)
    counts = torch.bincount(Budgeted([0.4, 0.3, 0.2, 0.1]).fit(logits).decide(logits), minlength=4)
    assert counts.tolist() == [400, 300, 200, 100]
    counts = torch.bincount(Budgeted([0.1, 0.0, 0.5]).fit(logits).decide(logits), minlength=4)
    assert counts.tolist() == [100, 0, 500, 400]  # E - 1 fractions: the last exit takes the rest
    logits7, _ = _problem(exits=3, n=700)
    counts = torch.bincount(Budgeted(ratio=0.5, statistic="margin").fit(logits7).decide(logits7), minlength=3)
    assert counts.tolist() == [400, 200, 100]  # MSDNet's geometric law: 4/7, 2/7, 1/7
    assert geometric_fractions(2.0, 2) == pytest.approx([1 / 3, 2 / 3])


def test_budgeted_sends_out_the_most_confident() -> None:
    logits, _ = _problem(exits=2, n=100)
    policy = Budgeted([0.25]).fit(logits)
    conf = torch.softmax(logits[0], -1).amax(-1)
    assert set(torch.nonzero(policy.decide(logits) == 0).flatten().tolist()) == set(conf.topk(25).indices.tolist())


def test_budgeted_rejects_bad_fractions() -> None:
    logits, _ = _problem(exits=3)
    for bad in (
        Budgeted([0.5, 0.5, 0.5]),
        Budgeted([0.8, 0.4]),
        Budgeted([-0.1, 0.5]),
        Budgeted(),
        Budgeted([0.5], ratio=2),
    ):
        with pytest.raises(ValueError):
            bad.fit(logits)
    with pytest.raises(ValueError, match="statistic"):
        Budgeted([0.5, 0.5], statistic="nope").fit(logits)


# ---------------------------------------------------------------------------------------------- monotonicity
@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    low=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
    raise_by=st.lists(st.floats(0.0, 1.0), min_size=3, max_size=3),
)
def test_raising_an_entropy_threshold_never_lowers_the_early_fraction(seed, low, raise_by) -> None:
    logits, _ = _problem(seed=seed, exits=4, n=80)
    high = [min(1.0, a + b) for a, b in zip(low, raise_by, strict=True)]
    ex_low = Entropy(low).fit(logits).decide(logits)
    ex_high = Entropy(high).fit(logits).decide(logits)
    assert (ex_high <= ex_low).all()  # per sample: never later
    for i in range(3):
        assert (ex_high <= i).float().mean() >= (ex_low <= i).float().mean()


# -------------------------------------------------------------------------------------------------- gate
def test_gate_from_gates_leaves_when_the_gate_passes_its_threshold() -> None:
    logits, _ = _problem(exits=3, n=50)
    torch.manual_seed(1)
    gates = [nn.Sequential(nn.Linear(5, 1), nn.Sigmoid(), nn.Flatten(0)) for _ in range(2)]
    policy = Gate.from_gates(gates, threshold=[0.4, 0.6])
    assert policy.is_fitted() and policy.thresholds_ == [0.4, 0.6]
    with torch.no_grad():
        g0, g1 = gates[0](logits[0]), gates[1](logits[1])
    expected = torch.where(g0 > 0.4, 0, torch.where(g1 > 0.6, 1, 2))
    assert torch.equal(policy.decide(logits), expected)
    assert torch.equal(policy.decide(logits), _loop_decide(policy, logits))


def test_gate_fitted_post_hoc_predicts_which_exit_is_right() -> None:
    logits, y = _problem(exits=3, n=600)
    policy = Gate(epochs=200).fit(logits, y)
    assert len(policy.gates_) == 2 and policy.thresholds_ == [0.5, 0.5]
    right = logits[0].argmax(-1) == y
    score = policy.exit_statistic(0, logits[0])
    assert ((score >= 0) & (score <= 1)).all()
    auc_gate = roc_auc_score(right.numpy(), score.numpy())
    auc_maxprob = roc_auc_score(right.numpy(), MaxProb().statistic(logits[0]).numpy())
    assert auc_gate > 0.6 and auc_gate > auc_maxprob - 0.03  # as good a judge of 'this exit is right'
    with pytest.raises(ValueError, match="labels"):
        Gate().fit(logits)


def test_gate_state_is_json_and_custom_gates_say_they_cannot_be_stored() -> None:
    logits, y = _problem(exits=3, n=100)
    policy = Gate(0.55, epochs=20).fit(logits, y)
    restored = policy_from_config(json.loads(json.dumps(policy_to_config(policy))))
    assert isinstance(restored, Gate) and restored.thresholds_ == policy.thresholds_
    assert torch.allclose(restored.statistics(logits[:-1]), policy.statistics(logits[:-1]))

    class Custom(nn.Module):
        def forward(self, z: torch.Tensor) -> torch.Tensor:
            return torch.sigmoid(z[:, 0])

    custom = Gate.from_gates([Custom(), Custom()])
    assert custom.decide(logits).shape == (100,)
    with pytest.raises(ValueError, match="cannot be stored as JSON"):
        policy_to_config(custom)
    with pytest.raises(ValueError, match="one gate"):
        Gate.from_gates([])


# -------------------------------------------------------------------------------------------- temperature
def test_fit_temperature_recovers_a_known_temperature() -> None:
    g = torch.Generator().manual_seed(0)
    z = 2 * torch.randn(3000, 4, generator=g)
    y = torch.multinomial(torch.softmax(z, -1), 1, generator=g).squeeze(1)  # z is calibrated for y
    assert fit_temperature(3.0 * z, y) == pytest.approx(3.0, rel=0.1)
    assert fit_temperature(0.5 * z, y) == pytest.approx(0.5, rel=0.1)


def test_temperature_scaled_decides_on_scaled_logits() -> None:
    logits, y = _problem(exits=3)
    policy = TemperatureScaled(Entropy(0.4)).fit(logits, y)
    t = torch.tensor(policy.temperatures_).view(-1, 1, 1)
    assert torch.equal(policy.decide(logits), Entropy(0.4).fit(logits).decide(logits / t))
    with pytest.raises(ValueError, match="labels"):
        TemperatureScaled(Entropy(0.4)).fit(logits)
    with pytest.raises(ValueError, match="calibrate"):
        TemperatureScaled(Entropy()).fit(logits, y)  # the inner policy has no thresholds to fit


# --------------------------------------------------------------------------------------------- registry
def test_every_policy_survives_a_json_round_trip() -> None:
    logits, y = _problem(exits=4, n=80)
    for name, policy in _fitted_policies(logits, y).items():
        restored = policy_from_config(json.loads(json.dumps(policy_to_config(policy))))
        assert type(restored) is type(policy), name
        assert torch.equal(restored.decide(logits), policy.decide(logits)), name
    assert set(ee.policies.list_policies()) >= {"entropy", "maxprob", "margin", "gate", "patience", "budgeted"}
    with pytest.raises(ValueError, match="choose one of"):
        ee.policies.get_policy("nope")


# ---------------------------------------------------------------------------------------------- contract 3
def test_runtime_gives_the_decisions_of_decide_for_every_policy(tiny_mlp) -> None:
    x = torch.randn(200, 16) * 3
    y = torch.randint(0, 4, (200,))  # random labels: only the decisions matter here
    with torch.no_grad():
        cached = tiny_mlp(x)
    stack = cached.stack()
    policies = _fitted_policies(stack, y)
    for name in ("entropy", "maxprob", "margin", "gate"):  # thresholds at each exit's median: half leave
        p = policies[name]
        assert isinstance(p, ThresholdPolicy)
        stat = p.statistics(stack[:-1]).sort(dim=1).values  # [E-1, N]
        p.thresholds_ = [float(s[99] + s[100]) / 2 for s in stat]  # between two samples: robust to rounding
    del policies["patience-regression"]  # a regression rule: refused on a classifier's logits
    for name, policy in policies.items():
        result = predict(tiny_mlp, x, policy, batch_size=80)
        expected = policy.decide(cached)
        assert torch.equal(result.exit_index, expected), name
        assert torch.equal(result.pred, stack.argmax(-1).gather(0, expected.unsqueeze(0)).squeeze(0)), name
