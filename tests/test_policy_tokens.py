"""Policies on token-level outputs with a mask of valid positions, on regression outputs, and the SDN fallback to
the most confident exit: ``decide`` / ``predict`` on cached outputs against plain per-sample loops (contract 3)."""

from __future__ import annotations

import math

import pytest
import torch

from _problems import step_by_step
from exitnet.outputs import ExitOutputs
from exitnet.policies import (
    Budgeted,
    Entropy,
    ExitPolicy,
    Gate,
    Margin,
    MaxProb,
    NeverExit,
    Patience,
    TemperatureScaled,
    normalized_entropy,
)

E, B, T, C = 3, 40, 5, 4


def _tokens(seed: int = 0) -> tuple[ExitOutputs, torch.Tensor]:
    """Token logits [E, B, T, C] that get better with depth, a mask with ragged lengths (samples 0 and 1 have no
    valid position), labels [B, T], and NaN in the padding (which must change nothing)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (B, T), generator=g)
    logits = torch.randn(E, B, T, C, generator=g)
    for i in range(E):
        logits[i] += 2.5 * (i + 1) * torch.rand(B, T, 1, generator=g) * torch.nn.functional.one_hot(y, C)
    logits[:, 5:10] = logits[:, 5:10, :1]  # samples 5-9: every position predicts the same at every exit
    lengths = torch.randint(1, T + 1, (B,), generator=g)
    lengths[:2] = 0
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)  # [B, T]
    logits[:, ~mask] = math.nan  # padding
    return ExitOutputs(tuple(logits), task="classification", mask=mask), y


def _policies(out: ExitOutputs, y: torch.Tensor) -> dict[str, ExitPolicy]:
    return {
        "entropy": Entropy([0.6, 0.5]),
        "maxprob": MaxProb(0.7),
        "margin-sdn": Margin([0.5, 0.4], fallback="most_confident"),
        "entropy-sdn": Entropy(0.3, fallback="most_confident"),
        "patience": Patience(2),
        "budgeted": Budgeted([0.3, 0.3], statistic="margin").fit(out),
        "gate": Gate(0.5, epochs=10).fit(out, y),
        "temperature-sdn": TemperatureScaled(MaxProb(0.8, fallback="most_confident")).fit(out, y),
        "never": NeverExit(),
    }


def test_decide_and_predict_on_token_outputs_equal_a_per_samplestep_by_step() -> None:
    out, y = _tokens()
    for name, policy in _policies(out, y).items():
        exits, answers = step_by_step(policy, out)
        assert torch.equal(policy.decide(out), exits), name
        assert torch.equal(policy.predict(out), answers), name
        assert (exits[:2] == E - 1).all(), name  # no valid position: never early
        if name not in ("never", "temperature-sdn"):
            assert (exits < E - 1).any(), name


def test_padding_changes_nothing() -> None:
    out, y = _tokens()
    clean = out.replace(logits=tuple(torch.nan_to_num(t, nan=7.0) for t in out.logits))
    for name, policy in _policies(out, y).items():
        if name in ("gate", "budgeted", "temperature-sdn"):
            continue  # fitted on the outputs: compare the decisions of one fit
        assert torch.equal(policy.decide(clean), policy.decide(out)), name
    fitted = Budgeted([0.3, 0.3]).fit(out)
    assert torch.equal(fitted.decide(clean), fitted.decide(out))


def test_a_sample_is_as_confident_as_its_least_confident_valid_position() -> None:
    out, _ = _tokens()
    stack, mask = out.stack(), out.mask
    assert mask is not None
    policy = Entropy([0.6, 0.5]).fit(out)
    expected = []
    for b in range(B):  # a plain loop over samples and positions
        chosen = E - 1
        for i in range(E - 1):
            valid = [t for t in range(T) if mask[b, t]]
            worst = max((float(normalized_entropy(stack[i, b, t])) for t in valid), default=math.nan)
            if worst < policy.thresholds_[i]:
                chosen = i
                break
        expected.append(chosen)
    assert policy.decide(out).tolist() == expected
    stats = MaxProb().statistics(out)  # [E, B]: min over valid positions of the max probability
    b = 12
    valid = mask[b].nonzero().flatten()
    assert stats[1, b] == torch.softmax(stack[1, b, valid], -1).amax(-1).min()
    assert stats[:, :2].isnan().all()


def test_patience_compares_whole_predictions_of_the_valid_positions() -> None:
    y = torch.tensor([[0, 1, 2], [0, 1, 2]])
    pred = torch.stack([y, y.clone(), y.clone()])  # [E=3, B=2, T=3]
    pred[1, 0, 2] = 0  # sample 0: exit 1 differs at position 2 (valid)
    pred[1, 1, 2] = 0  # sample 1: exit 1 differs at position 2 (padding)
    logits = 5.0 * torch.nn.functional.one_hot(pred, 3).float()
    out = ExitOutputs(tuple(logits), mask=torch.tensor([[True, True, True], [True, True, False]]))
    assert Patience(2).decide(out).tolist() == [2, 1]
    assert torch.equal(Patience(2).decide(out), step_by_step(Patience(2), out)[0])


def test_regression_patience_on_masked_sequences_equals_thestep_by_step() -> None:
    g = torch.Generator().manual_seed(3)
    values = torch.randn(4, 30, 6, generator=g).cumsum(0) * torch.tensor([1.0, 0.1, 0.01, 0.001]).view(4, 1, 1)
    mask = torch.rand(30, 6, generator=g) > 0.3
    values[1:, ~mask] = 1e6  # padding far away: must not stop anybody agreeing
    out = ExitOutputs(tuple(values), task="regression", mask=mask)
    for tau in (0.05, 0.5):
        policy = Patience(2, tau=tau)
        exits, answers = step_by_step(policy, out)
        assert torch.equal(policy.decide(out), exits) and torch.equal(policy.predict(out), answers)
    assert (Patience(2, tau=0.5).decide(out) < 3).any()


# ---------------------------------------------------------------------------------------- SDN fallback
def _overthinking(n: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Exit 0 is right with max probability ~0.9; the last exit is wrong on half the samples with ~0.7."""
    y = torch.arange(n) % 3
    first = 3.0 * torch.nn.functional.one_hot(y, 3).float()  # p(y) = e^3 / (e^3 + 2) ~ 0.91
    wrong = torch.where(torch.arange(n) % 2 == 0, (y + 1) % 3, y)
    last = 1.6 * torch.nn.functional.one_hot(wrong, 3).float()  # p ~ 0.71
    middle = torch.zeros(n, 3)  # uniform: the least confident
    return torch.stack([first, middle, last]), y


def test_most_confident_fallback_fixes_overthinking_at_high_thresholds() -> None:
    logits, y = _overthinking()
    plain, sdn = MaxProb(0.99), MaxProb(0.99, fallback="most_confident")
    assert torch.equal(plain.decide(logits), sdn.decide(logits)) and (sdn.decide(logits) == 2).all()  # full cost
    acc_plain = float((plain.predict(logits) == y).double().mean())
    acc_sdn = float((sdn.predict(logits) == y).double().mean())
    assert acc_plain == pytest.approx(0.5) and acc_sdn == 1.0
    assert torch.equal(sdn.fallback_prediction(logits), logits[0].argmax(-1))
    exits, answers = step_by_step(sdn, ExitOutputs(tuple(logits)))
    assert torch.equal(answers, sdn.predict(logits))


def test_fallback_picks_the_earliest_of_equally_confident_exits_and_the_last_when_none_is_finite() -> None:
    logits = torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]], [[1.0, 0.0]]])  # exits 0 and 1 equally sure, differ
    policy = MaxProb(1.0, fallback="most_confident")
    assert policy.predict(logits).tolist() == [0]
    nan = torch.tensor([[[math.nan, 0.0]], [[math.nan, 0.0]], [[0.0, 1.0]]])
    assert policy.predict(nan).tolist() == [1] and step_by_step(policy, ExitOutputs(tuple(nan)))[1].tolist() == [1]
    with pytest.raises(ValueError, match="unknown fallback 'best'; choose one of: final, most_confident"):
        MaxProb(0.5, fallback="best").decide(logits)
