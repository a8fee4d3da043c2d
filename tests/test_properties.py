"""Property tests (hypothesis): the runtime does what the policy says, and calibration keeps its promise.

1. For random logits and random thresholds, :func:`exitnet.predict` (early exit with compaction, in batches)
   gives the same exit, prediction and FLOPs per sample as the policy's ``decide`` on the cached outputs of all
   exits (contract 3). The network is built so that its exits output *exactly* the logits drawn: the input row
   holds every exit's logits side by side, the stages pass it on, and head i reads its slice.
2. On token-level outputs with a random mask of valid positions, ``decide`` and ``predict`` on the cached outputs
   equal a plain loop that asks the policy one sample at a time, exit by exit (``step``, ``final_prediction``).
3. Calibration never returns a setting that misses its own target on the calibration data: the accuracy the
   fitted policy reaches there is at least the final exit's minus ``max_accuracy_drop``, and the mean cost
   stays within ``flops_budget``; what it reports in ``calibration_`` is what the policy does.
"""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import exitnet as ee
from _problems import step_by_step
from exitnet.calibration import calibrate
from exitnet.outputs import ExitOutputs
from exitnet.policies import Entropy, Margin, MaxProb, NeverExit, Patience
from exitnet.runtime import predict

#: The default run checks 30 fixed examples per property (same every run); EXITNET_THOROUGH=1 draws 500 new ones.
THOROUGH = os.environ.get("EXITNET_THOROUGH") == "1"
SETTINGS = settings(
    max_examples=500 if THOROUGH else 30,
    derandomize=not THOROUGH,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class _Slice(nn.Module):
    """Head i: the logits of exit i, stored at columns ``[i*C, (i+1)*C)`` of the input row."""

    def __init__(self, i: int, num_classes: int) -> None:
        super().__init__()
        self.lo, self.hi = i * num_classes, (i + 1) * num_classes

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h[:, self.lo : self.hi]


class _Count(nn.Module):
    """A pass-through stage that counts the samples it sees (to check that left samples never reach it)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.seen += h.shape[0]
        return h


def _logits_net(num_exits: int, num_classes: int) -> ee.MultiExitNetwork:
    return ee.MultiExitNetwork(
        [_Count() for _ in range(num_exits)],
        [_Slice(i, num_classes) for i in range(num_exits)],
        input_shape=(num_exits * num_classes,),
        num_classes=num_classes,
    )


@st.composite
def logits_and_labels(draw: st.DrawFn, max_samples: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """``[E, N, C]`` float32 logits (ties and large values included) and ``[N]`` labels."""
    num_exits = draw(st.integers(2, 5))
    n = draw(st.integers(1, max_samples))
    num_classes = draw(st.integers(2, 5))
    value = st.one_of(
        st.floats(-30, 30, width=32),
        st.sampled_from([0.0, 1.0, -1.0, 1e4, -1e4]),  # ties and saturated softmax
    )
    flat = draw(st.lists(value, min_size=num_exits * n * num_classes, max_size=num_exits * n * num_classes))
    logits = torch.tensor(flat, dtype=torch.float32).reshape(num_exits, n, num_classes)  # [E, N, C]
    y = torch.tensor(draw(st.lists(st.integers(0, num_classes - 1), min_size=n, max_size=n)))
    return logits, y


def _policy(draw: st.DrawFn, num_exits: int):
    kind = draw(st.sampled_from(["entropy", "maxprob", "margin", "patience", "never"]))
    if kind == "never":
        return NeverExit()
    if kind == "patience":
        return Patience(draw(st.integers(1, num_exits + 1)))
    beta = st.one_of(st.floats(0, 1), st.sampled_from([0.0, 1.0, 0.5]))
    thresholds = draw(st.lists(beta, min_size=num_exits - 1, max_size=num_exits - 1))
    return {"entropy": Entropy, "maxprob": MaxProb, "margin": Margin}[kind](thresholds)


@SETTINGS
@given(data=st.data())
def test_runtime_equals_policy_on_cached_outputs(data: st.DataObject) -> None:
    logits, _ = data.draw(logits_and_labels())
    num_exits, n, num_classes = logits.shape
    policy = _policy(data.draw, num_exits).fit(logits)
    net = _logits_net(num_exits, num_classes)
    x = logits.permute(1, 0, 2).reshape(n, num_exits * num_classes)  # [E, N, C] -> [N, E*C]
    batch_size = data.draw(st.integers(1, n + 3))

    outputs = net(x)
    assert torch.equal(outputs.stack(), logits)  # the network's exits output exactly the drawn logits
    exit_flops = torch.tensor(net.cost_profile().exit_flops)  # computed once, before counting
    for stage in net.stages:
        stage.seen = 0
    result = predict(net, x, policy, batch_size=batch_size)

    expected_exit = policy.decide(outputs)
    expected_pred = logits[expected_exit, torch.arange(n)].argmax(dim=-1)
    assert torch.equal(result.exit_index, expected_exit)
    assert torch.equal(result.pred, expected_pred)
    assert torch.equal(result.flops, exit_flops[expected_exit])
    # stage i ran on exactly the samples that had not left before it
    for i, stage in enumerate(net.stages):
        assert stage.seen == int((expected_exit >= i).sum())


@SETTINGS
@given(data=st.data())
def test_token_level_decisions_equal_a_step_by_step_loop(data: st.DataObject) -> None:
    logits, _ = data.draw(logits_and_labels(max_samples=12))  # [E, N, C]
    num_exits, n, num_classes = logits.shape
    positions = data.draw(st.integers(1, 3))
    tokens = logits.unsqueeze(2).repeat(1, 1, positions, 1)  # [E, N, T, C]
    tokens = tokens + torch.arange(positions).view(1, 1, -1, 1) * torch.arange(num_classes) * 0.5  # differ per position
    flat = data.draw(st.lists(st.booleans(), min_size=n * positions, max_size=n * positions))
    mask = torch.tensor(flat).reshape(n, positions)
    out = ExitOutputs(tuple(tokens), mask=mask)
    policy = _policy(data.draw, num_exits)
    if data.draw(st.booleans()) and hasattr(policy, "fallback") and not isinstance(policy, NeverExit):
        policy.set_params(fallback="most_confident")
    exits, answers = step_by_step(policy, out)
    assert torch.equal(policy.decide(out), exits)
    assert torch.equal(policy.predict(out), answers)
    assert (exits[~mask.any(dim=1)] == num_exits - 1).all()  # no valid position: never early


def _accuracy_and_cost(policy, logits: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    exits = policy.decide(logits)
    pred = logits[exits, torch.arange(logits.shape[1])].argmax(dim=-1)
    cost = (exits + 1).double()  # cached logits: exit i costs i + 1 units
    return float((pred == y).double().mean()), float(cost.mean())


@SETTINGS
@given(
    data=logits_and_labels(max_samples=60),
    drop=st.one_of(st.floats(0, 0.4), st.just(0.0)),
    kind=st.sampled_from([Entropy, MaxProb, Margin, Patience]),
    shared=st.booleans(),
)
def test_calibration_meets_its_own_accuracy_target(data, drop: float, kind, shared: bool) -> None:
    logits, y = data
    if kind is Patience and shared:
        shared = False  # one knob already
    policy = calibrate(kind(), logits, y, max_accuracy_drop=drop, shared=shared)
    final = float((logits[-1].argmax(dim=-1) == y).double().mean())
    accuracy, cost = _accuracy_and_cost(policy, logits, y)
    assert accuracy >= final - drop - 1e-9, (accuracy, final, drop, policy)
    assert accuracy == pytest.approx(policy.calibration_["accuracy"], abs=1e-12)  # it reports what it does
    assert cost == pytest.approx(policy.calibration_["mean_cost"], abs=1e-9)


@SETTINGS
@given(
    data=logits_and_labels(max_samples=60),
    fraction=st.floats(0, 1),
    kind=st.sampled_from([Entropy, MaxProb, Margin]),
)
def test_calibration_stays_within_its_budget(data, fraction: float, kind) -> None:
    logits, y = data
    num_exits = logits.shape[0]
    budget = 1.0 + fraction * (num_exits - 1)  # from "everybody at exit 0" (1 unit) to the full cost
    try:
        policy = calibrate(kind(), logits, y, flops_budget=budget)
    except ValueError as err:  # allowed only when no setting is that cheap: the most eager one costs more
        assert "below the cheapest possible mean cost" in str(err)
        eager = kind(thresholds=1.0 if kind.lower_is_confident else 0.0).fit(logits)
        assert _accuracy_and_cost(eager, logits, y)[1] > budget
        return
    accuracy, cost = _accuracy_and_cost(policy, logits, y)
    assert cost <= budget + 1e-9, (cost, budget, policy)
    assert accuracy == pytest.approx(policy.calibration_["accuracy"], abs=1e-12)
