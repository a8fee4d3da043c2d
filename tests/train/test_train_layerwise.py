"""Layer-wise training (survey §5.3): stage k + head k alone, earlier stages frozen, embeddings cached."""

from __future__ import annotations

import pytest
import torch

import exitnet as ee
from exitnet.train import Layerwise
from exitnet.train.layerwise import split_epochs


def _net() -> ee.MultiExitNetwork:
    torch.manual_seed(0)
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=3, width=4)
    return ee.MultiExitNetwork.from_module(
        backbone, ["layer1", "layer2.0"], num_classes=3, sample_input=torch.zeros(1, 1, 8, 8)
    )


def _data() -> ee.data.Dataset:
    return ee.data.synthetic(96, num_classes=3, input_shape=(1, 8, 8), seed=3, val_fraction=0.1, test_fraction=0.1)


def test_split_epochs() -> None:
    assert split_epochs(7, 3, None) == [2, 2, 3]
    assert split_epochs(6, 3, 2) == [2, 2, 2]
    with pytest.raises(ValueError, match="takes 6 epochs; call fit with epochs=6"):
        split_epochs(5, 3, 2)
    with pytest.raises(ValueError, match="3 non-negative numbers"):
        split_epochs(3, 3, [1, 2])


@pytest.mark.parametrize("phase", [0, 1, 2])
def test_only_stage_k_and_head_k_receive_gradients(phase) -> None:
    net, ds = _net(), _data()
    s = Layerwise(cache="none")
    s.setup(net)
    s.start_phase(net, phase, ds.train)
    s.train_mode(net)
    x, y = ds.train.x[:8], ds.train.y[:8]
    s.loss(net, s.forward(net, x), y, epoch=0, epochs=1).backward()
    for i in range(net.num_exits):
        for m in (net.stages[i], net.heads[i]):
            for name, p in m.named_parameters():
                if i == phase:
                    assert p.grad is not None and p.grad.abs().sum() > 0, (i, name)
                else:
                    assert p.grad is None, (i, name)  # earlier stages: none; later ones are not even run
    assert not any(m.training for i, m in enumerate(net.stages) if i != phase)  # frozen BatchNorm statistics


def _count_samples(module: torch.nn.Module) -> list[int]:
    seen = [0]
    module.register_forward_hook(lambda m, inp, out: seen.__setitem__(0, seen[0] + inp[0].shape[0]))
    return seen


@pytest.mark.parametrize("cache", ["memory", "disk", "none"])
def test_frozen_stages_are_never_run_again_with_a_cache(cache, tmp_path) -> None:
    net, ds = _net(), _data()
    n = len(ds.train)
    seen = [_count_samples(stage) for stage in net.stages]
    ee.fit(
        net,
        Layerwise(epochs_per_stage=2, cache=cache, cache_dir=tmp_path),
        ds.train,
        epochs=6,
        progress=False,
        batch_size=16,
    )
    if cache == "none":
        assert [s[0] for s in seen] == [6 * n, 4 * n, 2 * n]  # the frozen prefix runs on every batch
    else:
        assert [s[0] for s in seen] == [2 * n + n, 2 * n + n, 2 * n]  # 2 epochs, then one pass to cache its output
    assert list(tmp_path.iterdir()) == []  # the disk cache is removed at the end


def test_caches_give_the_same_network() -> None:
    ds = _data()
    nets = {}
    for cache in ("memory", "disk", "none"):
        net = _net()
        ee.fit(net, Layerwise(cache=cache), ds.train, epochs=3, progress=False, batch_size=16, seed=1)
        nets[cache] = net.state_dict()
    for k, v in nets["memory"].items():
        assert torch.allclose(v.float(), nets["disk"][k].float()), k
        assert torch.allclose(v.float(), nets["none"][k].float(), atol=1e-6), k


def test_earlier_stages_stay_bit_identical_after_their_phase() -> None:
    net, ds = _net(), _data()
    snapshots = []

    class Spy(Layerwise):
        def start_phase(self, net, phase, train):  # type: ignore[no-untyped-def]
            snapshots.append({k: v.clone() for k, v in net.state_dict().items()})
            return super().start_phase(net, phase, train)

    ee.fit(net, Spy(cache="memory"), ds.train, ds.val, epochs=3, progress=False, batch_size=16)
    final = net.state_dict()
    # everything of stage 0 / head 0 (BatchNorm buffers included) is as it was when phase 1 began
    for k, v in snapshots[1].items():
        if k.startswith(("stages.0.", "heads.0.")):
            assert torch.equal(v, final[k]), k
    assert all(p.requires_grad for p in net.parameters())  # fit gives back the flags it found


def test_cache_bytes_are_reported() -> None:
    net, ds = _net(), _data()
    s = Layerwise(cache="memory")
    ee.fit(net, s, ds.train, epochs=3, progress=False)
    # the largest cache is the output of stage 0: n × 4 channels × 8 × 8 float32
    assert s.cache_bytes_ == len(ds.train) * 4 * 8 * 8 * 4


def test_unknown_cache() -> None:
    with pytest.raises(ValueError, match="choose one of: memory, disk, none"):
        Layerwise(cache="gpu")
