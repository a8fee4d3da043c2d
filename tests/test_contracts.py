"""The five contracts of the design, for every kind of backbone the core carries: a CNN, a padded-token encoder with
a mask, a GRU and an LSTM stack, a message-passing network with a graph per sample, a regression MLP and a token-level
classifier.

1. the last exit equals the backbone; 2. never-exit = the full forward, always-exit-at-0 = exit 0; 3. the runtime
equals the policy on cached outputs, and a stage never runs on a sample that left (rows counted with hooks);
4. the batched runtime equals a per-sample loop; 5. save → load gives bit-identical outputs.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

import exitnet as ee
from _models import Case, all_cases, token_batch
from exitnet.policies import MaxProb, NeverExit, Patience

CASES = {c.name: c for c in all_cases()}


def _call(module: torch.nn.Module, x: Any) -> torch.Tensor:
    return module(*x) if isinstance(x, tuple) else module(x)


def _middle(values: torch.Tensor) -> float:
    """A cut between the two middle values (never on a sample's own value, so float rounding cannot flip it)."""
    v = values.detach().flatten().sort().values
    k = v.numel() // 2
    return float((v[k - 1] + v[k]) / 2)


def _policies(case: Case, outputs: ee.ExitOutputs) -> tuple[ee.policies.ExitPolicy, ee.policies.ExitPolicy, Any]:
    """(always leave at exit 0, never leave, one that spreads samples over the exits)."""
    e = outputs.num_exits
    if case.task == "regression":
        diff = (outputs.stack()[1:] - outputs.stack()[:-1]).abs().amax(dim=-1)  # [E-1, B]
        return Patience(1, tau=1e9), NeverExit(), Patience(2, tau=_middle(diff[0]))
    conf = MaxProb(thresholds=0.5).fit(outputs).confidence(outputs)  # [E, B], worst position per sample
    spread = MaxProb(thresholds=[_middle(conf[i]) for i in range(e - 1)])
    return MaxProb(thresholds=0.0), NeverExit(), spread


@pytest.mark.parametrize("name", list(CASES))
def test_last_exit_is_the_backbone(name: str) -> None:
    case = CASES[name]
    net = case.network()
    x = case.batch(6, 1)
    assert torch.allclose(net(x).final, _call(case.backbone, x), atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_never_and_always_first(name: str) -> None:
    case = CASES[name]
    net = case.network()
    x = case.batch(9, 2)
    outputs = net(x)
    first, never, _ = _policies(case, outputs)
    r_never = ee.predict(net, x, never, batch_size=4)
    assert r_never.exit_index.tolist() == [net.num_exits - 1] * 9
    same = torch.equal if case.task == "classification" else lambda a, b: torch.allclose(a, b, atol=1e-6)
    assert same(r_never.pred, outputs.predictions()[-1])
    r_first = ee.predict(net, x, first, batch_size=4)
    assert r_first.exit_index.tolist() == [0] * 9
    assert same(r_first.pred, outputs.predictions()[0])


def _count_rows(net: ee.MultiExitNetwork) -> tuple[list[int], list[Any]]:
    counts = [0] * net.num_exits
    handles = []
    for i, stage in enumerate(net.stages):

        def hook(_m: Any, args: tuple[Any, ...], i: int = i) -> None:
            counts[i] += int(args[0].shape[0])

        handles.append(stage.register_forward_pre_hook(hook))
    return counts, handles


@pytest.mark.parametrize("rebatch", [True, False])
@pytest.mark.parametrize("name", list(CASES))
def test_runtime_equals_policy_on_cached_outputs(name: str, rebatch: bool) -> None:
    case = CASES[name]
    net = case.network()
    x = case.batch(23, 3)
    outputs = net(x)
    *_, policy = _policies(case, outputs)
    expected_exit = policy.decide(outputs)
    assert len(expected_exit.unique()) >= 2, "the test policy must spread the samples over the exits"
    exit_flops = torch.tensor(net.cost_profile(x).exit_flops)  # counted before the hooks (it runs the stages)
    counts, handles = _count_rows(net)
    try:
        result = ee.predict(net, x, policy, batch_size=5, rebatch=rebatch)
    finally:
        for h in handles:
            h.remove()
    assert torch.equal(result.exit_index, expected_exit)
    expected_pred = policy.predict(outputs)
    if case.task == "regression":
        assert torch.allclose(result.pred, expected_pred, atol=1e-6)
    else:
        assert torch.equal(result.pred, expected_pred)
    assert torch.equal(result.flops, exit_flops[expected_exit])
    # A stage never runs on a sample that left: stage i saw exactly the samples whose exit is >= i.
    assert counts == [int((expected_exit >= i).sum()) for i in range(net.num_exits)]


@pytest.mark.parametrize("name", list(CASES))
def test_batched_runtime_equals_a_per_sample_loop(name: str) -> None:
    case = CASES[name]
    net = case.network()
    x = case.batch(7, 4)
    *_, policy = _policies(case, net(x))
    batched = ee.predict(net, x, policy, batch_size=3)
    samples = [tuple(t[i] for t in x) if isinstance(x, tuple) else x[i] for i in range(7)]
    items = list(ee.stream(net, samples, policy))
    assert [it.exit_index for it in items] == batched.exit_index.tolist()
    for it, pred in zip(items, batched.pred, strict=True):
        value = it.pred if isinstance(it.pred, torch.Tensor) else torch.tensor(it.pred)
        assert torch.allclose(value.to(pred.dtype), pred, atol=1e-6)


@pytest.mark.parametrize("name", list(CASES))
def test_save_load_is_bit_identical(name: str, tmp_path: Any) -> None:
    case = CASES[name]
    net = case.network()
    policy = NeverExit()
    path = ee.save(net, tmp_path / "net.safetensors", policy=policy)
    fresh = copy.deepcopy(case.backbone)
    for p in fresh.parameters():  # other weights: the checkpoint must bring them back
        torch.nn.init.normal_(p)
    loaded = ee.load(path, backbone=fresh).eval()
    x = case.batch(5, 5)
    assert torch.equal(loaded(x).stack(), net(x).stack())
    assert loaded.inputs == net.inputs


# ------------------------------------------------------------------------------------------------ encoder specifics
def _pad(x: tuple[torch.Tensor, torch.Tensor], extra: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids, mask = x
    return torch.cat([ids, torch.zeros(ids.shape[0], extra, dtype=ids.dtype)], 1), torch.cat(
        [mask, torch.zeros(mask.shape[0], extra, dtype=mask.dtype)], 1
    )


def test_padding_tokens_change_nothing() -> None:
    case = CASES["encoder"]
    net = case.network()
    x = token_batch(6, 7)
    padded = _pad(x, 3)  # a length the network was not built with: dynamic length
    assert torch.allclose(net(padded).stack(), net(x).stack(), atol=1e-5)
    tok = CASES["token_classifier"].network()
    out, out_padded = tok(x), tok(padded)
    valid = x[1].bool()
    assert torch.allclose(out_padded.stack()[:, :, : x[0].shape[1]][:, valid], out.stack()[:, valid], atol=1e-5)


def test_compaction_keeps_each_rows_mask() -> None:
    case = CASES["encoder"]
    net = case.network()
    x = token_batch(16, 8)
    outputs = net(x)
    *_, policy = _policies(case, outputs)
    r = ee.predict(net, x, policy, batch_size=16, rebatch=False)
    # Survivors keep their own masks after compaction: each answer equals the sample run alone.
    for i in range(16):
        alone = net(tuple(t[i : i + 1] for t in x))
        assert int(r.pred[i]) == int(alone.predictions()[int(r.exit_index[i]), 0])


def test_inputs_of_several_lengths_in_one_call() -> None:
    case = CASES["token_classifier"]
    net = case.network()
    short, long_ = token_batch(5, 1, length=4), token_batch(5, 2, length=9)
    policy = NeverExit()
    r1, r2 = ee.predict(net, short, policy), ee.predict(net, long_, policy)
    assert r1.pred.shape == (5, 4) and r2.pred.shape == (5, 9)
    assert net.cost_profile(long_).exit_flops[-1] > net.cost_profile(short).exit_flops[-1]
