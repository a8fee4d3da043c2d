from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.policies import Entropy, MaxProb, NeverExit
from exitnet.runtime import measure_speedup, optimize_for_inference, predict, stream


def _fitted(policy, net):
    return policy.fit(net(net.sample_input(2)))


def _count_rows(net):
    """Forward pre-hooks that record how many rows each stage receives."""
    net.cost_profile()  # computed once, before counting
    rows = [0] * net.num_exits
    handles = [
        stage.register_forward_pre_hook(lambda m, args, i=i: rows.__setitem__(i, rows[i] + args[0].shape[0]))
        for i, stage in enumerate(net.stages)
    ]
    return rows, handles


@pytest.mark.parametrize("thresholds", [[0.9, 0.95], [0.5, 0.99], [0.0, 0.999], [1.0, 1.0]])
def test_runtime_equals_policy_on_cached_outputs(tiny_resnet, thresholds) -> None:
    x = torch.randn(300, 1, 8, 8)
    policy = _fitted(Entropy(thresholds=thresholds), tiny_resnet)
    result = predict(tiny_resnet, x, policy, batch_size=64)
    with torch.no_grad():
        cached = tiny_resnet(x)
    expected_exit = policy.decide(cached)
    expected_pred = cached.stack().argmax(-1).gather(0, expected_exit.unsqueeze(0)).squeeze(0)
    assert torch.equal(result.exit_index, expected_exit)  # contract 3
    assert torch.equal(result.pred, expected_pred)
    exit_flops = torch.tensor(tiny_resnet.cost_profile().exit_flops)
    assert torch.equal(result.flops, exit_flops[expected_exit])


def test_a_stage_never_runs_on_a_sample_that_left(tiny_resnet) -> None:
    x = torch.randn(200, 1, 8, 8)
    with torch.no_grad():
        conf = torch.softmax(tiny_resnet(x).stack(), -1).amax(-1)  # [E, B]
    median = [float(conf[0].median()), float(conf[1].median())]  # about half leave at each exit
    policy = _fitted(MaxProb(thresholds=median), tiny_resnet)
    rows, handles = _count_rows(tiny_resnet)
    try:
        result = predict(tiny_resnet, x, policy, batch_size=50)
    finally:
        for h in handles:
            h.remove()
    for i in range(tiny_resnet.num_exits):
        assert rows[i] == int((result.exit_index >= i).sum()), f"stage {i} ran on {rows[i]} rows"
    assert 50 < rows[1] < 150 and 0 < rows[2] < rows[1]  # the thresholds really split the batch


def test_never_exit_reproduces_the_final_exit(tiny_resnet) -> None:
    x = torch.randn(64, 1, 8, 8)
    result = predict(tiny_resnet, x, NeverExit(), batch_size=16)
    with torch.no_grad():
        assert torch.equal(result.pred, tiny_resnet(x).final.argmax(-1))  # contract 2
    assert result.exit_fractions == [0.0, 0.0, 1.0]
    assert result.mean_flops == tiny_resnet.cost_profile().exit_flops[-1]


def test_always_exit_reproduces_exit_zero(tiny_resnet) -> None:
    x = torch.randn(64, 1, 8, 8)
    policy = _fitted(MaxProb(thresholds=0.0), tiny_resnet)
    rows, handles = _count_rows(tiny_resnet)
    result = predict(tiny_resnet, x, policy, batch_size=16)
    for h in handles:
        h.remove()
    with torch.no_grad():
        assert torch.equal(result.pred, tiny_resnet(x)[0].argmax(-1))  # contract 2
    assert rows == [64, 0, 0]


def test_stream_equals_batched(tiny_resnet) -> None:
    x = torch.randn(20, 1, 8, 8)
    policy = _fitted(Entropy(thresholds=[0.97, 0.99]), tiny_resnet)
    batched = predict(tiny_resnet, x, policy, batch_size=7)
    items = list(stream(tiny_resnet, x, policy))
    assert [it.pred for it in items] == batched.pred.tolist()
    assert [it.exit_index for it in items] == batched.exit_index.tolist()
    assert [it.flops for it in items] == batched.flops.tolist()


def test_batch_of_one_empty_and_chunked(tiny_mlp) -> None:
    policy = _fitted(Entropy(thresholds=[0.5, 0.5]), tiny_mlp)
    one = predict(tiny_mlp, torch.randn(1, 16), policy)
    assert one.pred.shape == (1,)
    empty = predict(tiny_mlp, torch.zeros(0, 16), policy)
    assert empty.pred.shape == (0,) and empty.exit_fractions == [0.0, 0.0, 0.0]
    x = torch.randn(1000, 16)
    assert torch.equal(predict(tiny_mlp, x, policy, batch_size=3).pred, predict(tiny_mlp, x, policy).pred)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_input_is_refused(tiny_mlp, bad) -> None:
    x = torch.randn(5, 16)
    x[2, 3] = bad
    with pytest.raises(ValueError, match="NaN or inf in 1 sample"):
        predict(tiny_mlp, x, _fitted(MaxProb(thresholds=0.0), tiny_mlp))


def test_bad_arguments(tiny_mlp) -> None:
    with pytest.raises(ValueError, match=r"expects input \(B, 16\)"):
        predict(tiny_mlp, torch.zeros(2, 15), NeverExit())
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict(tiny_mlp, torch.zeros(2, 16), NeverExit(), batch_size=0)
    with pytest.raises(ee.policies.NotFittedError, match="not fitted"):
        predict(tiny_mlp, torch.zeros(2, 16), Entropy())


def test_optimized_network_gives_the_same_outputs(tiny_resnet) -> None:
    x = torch.randn(32, 1, 8, 8)
    fast = optimize_for_inference(tiny_resnet)
    with torch.no_grad():
        assert torch.allclose(fast(x).stack(), tiny_resnet(x).stack(), atol=1e-4)
    assert fast.cost_profile() == tiny_resnet.cost_profile()
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in fast.stages.modules())
    policy = _fitted(Entropy(thresholds=[0.9, 0.95]), tiny_resnet)
    with torch.no_grad():
        assert torch.equal(predict(fast, x, policy).exit_index, policy.decide(fast(x)))


def test_measure_speedup_reports_ratios(tiny_mlp) -> None:
    policy = _fitted(MaxProb(thresholds=0.0), tiny_mlp)
    m = measure_speedup(tiny_mlp, torch.randn(64, 16), policy, batch_size=32, repeats=2)
    assert m["speedup_flops"] == pytest.approx(
        tiny_mlp.cost_profile().backbone_flops / tiny_mlp.cost_profile().exit_flops[0]
    )
    assert m["realized_over_predicted"] == pytest.approx(m["speedup_wall"] / m["speedup_flops"])
