"""The benchmark suite: the peers' baselines decide exactly as exitnet does, the timing helpers, the memory probe,
and a smoke run of the whole runner on tiny synthetic data (seconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import exitnet as ee
from exitnet.bench import baselines, run_suite
from exitnet.bench.memory import peak_bytes
from exitnet.bench.runtime import _batch_level_flops
from exitnet.policies import Entropy, ExitPolicy, MaxProb, Patience
from exitnet.runtime import optimize_for_inference
from exitnet.timing import interleaved, paired_ratio, summarize
from exitnet.train import Joint


def _mixed_entropy(net: ee.MultiExitNetwork, x: torch.Tensor) -> Entropy:
    """Entropy thresholds at the median entropy of each auxiliary exit: about half the samples leave at each."""
    with torch.no_grad():
        stack = net(x).stack()
    from exitnet.policies import normalized_entropy

    medians = normalized_entropy(stack[:-1]).median(dim=1).values.tolist()
    return Entropy(thresholds=medians).fit(stack)


def _policies(net: ee.MultiExitNetwork, x: torch.Tensor) -> list[ExitPolicy]:
    with torch.no_grad():
        stack = net(x).stack()
    maxprob = MaxProb(thresholds=torch.softmax(stack[:-1], -1).amax(-1).median(dim=1).values.tolist()).fit(stack)
    return [_mixed_entropy(net, x), maxprob, Patience(2).fit()]


def _trained(net: ee.MultiExitNetwork) -> tuple[ee.MultiExitNetwork, torch.Tensor]:
    """Train a tiny network briefly on synthetic data, so that its exits agree on some samples (patience)."""
    assert net.input_shape is not None and net.num_classes is not None
    ds = ee.data.synthetic(300, num_classes=net.num_classes, input_shape=net.input_shape, seed=0)
    ee.fit(net, Joint(weights="uniform"), ds.train, None, epochs=3, lr=1e-2, batch_size=32, progress=False)
    return net.eval(), ds.test.x


@pytest.mark.parametrize("fixture", ["tiny_resnet", "tiny_mlp"])
@pytest.mark.parametrize("optimized", [False, True])
def test_baselines_predict_as_exitnet(fixture: str, optimized: bool, request: pytest.FixtureRequest) -> None:
    net, x = _trained(request.getfixturevalue(fixture))
    if optimized:
        net = optimize_for_inference(net)
    for policy in _policies(net, x):
        for batch_size in (1, 16, x.shape[0]):
            ref = ee.predict(net, x, policy, batch_size=batch_size)
            got = {
                "run_all_then_mask": baselines.run_all_then_mask(net, x, policy, batch_size),
                "batch_level_exit": baselines.batch_level_exit(net, x, policy, batch_size),
            }
            if batch_size == 1:
                got["per_sample"] = baselines.per_sample_early_exit(net, x, policy)
            for name, r in got.items():
                assert torch.equal(r.pred, ref.pred), f"{name}, {type(policy).__name__}, batch {batch_size}"
                assert torch.equal(r.exit_index, ref.exit_index), f"{name}, {type(policy).__name__}"
        if not isinstance(policy, Patience):  # the thresholds are set so that samples leave at several exits
            assert len(set(ee.predict(net, x, policy).exit_index.tolist())) >= 2, type(policy).__name__


def test_backbone_alone_is_the_final_exit(tiny_resnet: ee.MultiExitNetwork) -> None:
    x = torch.randn(9, *tiny_resnet.input_shape)
    with torch.no_grad():
        final = tiny_resnet(x).stack()[-1].argmax(-1)
    r = baselines.backbone_alone(tiny_resnet, x, batch_size=4)
    assert torch.equal(r.pred, final)
    assert r.exit_index.tolist() == [tiny_resnet.num_exits - 1] * 9


def test_batch_level_exit_runs_until_the_last_sample_is_done(tiny_mlp: ee.MultiExitNetwork) -> None:
    """Count stage calls with hooks: a batch stops at the deepest exit any of its samples takes."""
    x = torch.randn(40, *tiny_mlp.input_shape)
    policy = _mixed_entropy(tiny_mlp, x)
    calls = [0] * tiny_mlp.num_exits
    hooks = [
        s.register_forward_hook(lambda m, i, o, k=k: calls.__setitem__(k, calls[k] + i[0].shape[0]))
        for k, s in enumerate(tiny_mlp.stages)
    ]
    try:
        r = baselines.batch_level_exit(tiny_mlp, x, policy, batch_size=8)
    finally:
        for h in hooks:
            h.remove()
    expected = [0] * tiny_mlp.num_exits
    for start in range(0, 40, 8):
        deepest = int(r.exit_index[start : start + 8].max())
        for k in range(deepest + 1):
            expected[k] += 8
    assert calls == expected
    flops = [10, 30, 60]
    loop = sum(flops[int(r.exit_index[s : s + 8].max())] * 8 for s in range(0, 40, 8)) / 40
    assert _batch_level_flops(r.exit_index, flops, 8) == pytest.approx(loop)


def test_interleaved_rotates_the_order_and_keeps_outputs() -> None:
    order: list[str] = []
    methods = {k: (lambda k=k: order.append(k) or k) for k in "abc"}
    times, outs = interleaved(methods, repeats=3, warmup=0)
    assert order == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert outs == {"a": "a", "b": "b", "c": "c"} and all(len(t) == 3 for t in times.values())
    with pytest.raises(ValueError, match="repeats"):
        interleaved(methods, repeats=0)


def test_summaries_against_hand_numbers() -> None:
    assert summarize([4.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 4.0, "spread": 1.5, "repeats": 3}
    assert paired_ratio([3.0, 8.0], [1.0, 2.0]) == {"median": 3.5, "min": 3.0, "max": 4.0}
    with pytest.raises(ValueError, match="equally long"):
        paired_ratio([1.0], [1.0, 2.0])


def test_cpu_peak_memory_counts_live_tensors_only() -> None:
    mib = 2**20

    def two_live() -> torch.Tensor:
        a = torch.ones(mib // 4)  # 1 MiB
        b = torch.ones(mib // 4)  # 1 MiB, both alive
        return a + b  # a third MiB

    def one_at_a_time() -> None:
        for _ in range(3):
            torch.ones(mib // 4)  # freed before the next one

    assert 3 * mib <= peak_bytes(two_live) < 3.5 * mib
    assert mib <= peak_bytes(one_at_a_time) < 1.5 * mib


def test_smoke_suite_writes_results(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXITNET_BENCH_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    lines: list[str] = []
    res = run_suite(
        "smoke",
        out_dir=out,
        threads=1,
        modules=("accuracy", "runtime", "memory", "claims", "not_written_yet"),
        log=lines.append,
    )
    assert res["meta"]["errors"] == {}
    assert set(res) == {"meta", "accuracy", "runtime", "memory", "claims"}
    assert "not_written_yet" in res["meta"]["skipped"]
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["meta"]["suite"] == "smoke" and on_disk["meta"]["threads"] == 1
    for name in ("summary.md", "README.md", "accuracy_vs_flops.png", "speedups.png", "deep_supervision.png"):
        assert (out / name).is_file(), name
    summary = (out / "summary.md").read_text()
    assert "## Headline" in summary and "## The survey's claims" in summary and "not_written_yet" in summary
    # the runtime's baselines gave exitnet's predictions
    for net in res["runtime"]["networks"].values():
        for row in net["batches"]:
            assert all(v == 0 for v in row["mismatches_vs_exitnet"].values()), row["batch_size"]
            assert row["never_exit_matches_backbone"]
    # claims (i)-(iii) all measured
    assert {r["id"] for r in res["claims"]["rows"]} == {"i", "ii", "iii"}
    assert all(r["verdict"] != "not measured" for r in res["claims"]["rows"])
    # the trained networks were cached, and the cache gives the same network back
    from exitnet.bench import zoo

    cached = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert any(n.startswith("resnet-smoke-seed0-") for n in cached)
    net1, ds = zoo.trained_resnet("smoke")
    net2, _ = zoo.trained_resnet("smoke")
    with torch.no_grad():
        assert torch.equal(net1(ds.test.x[:8]).stack(), net2(ds.test.x[:8]).stack())
    # a second run replaces the folder whole; a folder that is not a benchmark output is refused
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a benchmark output"):
        run_suite("smoke", out_dir=tmp_path / "other", modules=("memory",), log=lines.append)
    assert (tmp_path / "other" / "notes.txt").read_text() == "keep me"


def test_cli_rejects_a_bad_suite(capsys: pytest.CaptureFixture[str]) -> None:
    from exitnet.cli import main

    assert main(["bench", "--suite", "huge"]) != 0
    assert "quick" in capsys.readouterr().err


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="unknown suite"):
        run_suite("huge")
    with pytest.raises(ValueError, match="cpu or cuda"):
        run_suite("smoke", device="tpu")
