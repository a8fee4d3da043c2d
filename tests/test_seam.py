"""One owner of the stage loop: every stage and head runs through ``forward_stage`` / ``run_head``.

A subclass counts its seam calls; forward hooks count the stage and head modules' own calls. If anything in the
package ran ``net.stages[i]`` or ``net.heads[i]`` directly, the module count would exceed the seam count.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

import exitnet as ee
from exitnet.bench import baselines
from exitnet.policies import Entropy, MaxProb, NeverExit


class Counting(ee.MultiExitNetwork):
    stage_calls: list[int]
    head_calls: list[int]

    def forward_stage(self, i: int, h: Any, ctx: Any = None) -> Any:
        self.stage_calls[i] += 1
        return super().forward_stage(i, h, ctx)

    def run_head(self, i: int, h: Any, ctx: Any = None) -> torch.Tensor:
        self.head_calls[i] += 1
        return super().run_head(i, h, ctx)


def counting(net: ee.MultiExitNetwork) -> tuple[Counting, dict[str, list[int]]]:
    net.__class__ = Counting
    assert isinstance(net, Counting)
    net.stage_calls = [0] * net.num_exits
    net.head_calls = [0] * net.num_exits
    modules = {"stages": [0] * net.num_exits, "heads": [0] * net.num_exits}
    for kind in ("stages", "heads"):
        for i, m in enumerate(getattr(net, kind)):

            def hook(*_: Any, kind: str = kind, i: int = i) -> None:
                modules[kind][i] += 1

            m.register_forward_hook(hook)
    return net, modules


def check(net: Counting, modules: dict[str, list[int]]) -> None:
    assert sum(net.stage_calls) > 0
    assert modules["stages"] == net.stage_calls, "a stage ran without forward_stage"
    assert modules["heads"] == net.head_calls, "a head ran without run_head"


@pytest.fixture
def net_and_data() -> tuple[Counting, dict[str, list[int]], Any]:
    ds = ee.data.synthetic(96, num_classes=3, input_shape=(1, 8, 8), seed=0)
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=3, width=4)
    net = ee.MultiExitNetwork.from_module(backbone, ["layer1", "layer2.0"], num_classes=3,
                                          sample_input=torch.zeros(1, 1, 8, 8))  # fmt: skip
    net, modules = counting(net)
    return net, modules, ds


@pytest.mark.parametrize("strategy", sorted(ee.train.list_strategies()))
def test_every_training_strategy_runs_through_the_seam(net_and_data: Any, strategy: str) -> None:
    net, modules, ds = net_and_data
    options = {"layerwise": {"epochs_per_stage": [1, 0, 1]}}.get(strategy, {})
    epochs = 2 if strategy in ("layerwise", "separate", "mixed") else 1
    ee.fit(net, ee.train.get_strategy(strategy, **options), ds.train, ds.val, epochs=epochs, batch_size=32,
           progress=False)  # fmt: skip
    check(net, modules)


def test_inference_cost_and_calibration_run_through_the_seam(net_and_data: Any) -> None:
    net, modules, ds = net_and_data
    net.eval()
    policy = ee.calibrate(Entropy(), net, ds.val, max_accuracy_drop=0.05)
    ee.predict(net, ds.test.x, policy, batch_size=16)
    list(ee.stream(net, ds.test.x[:3], policy))
    net.profile_cache.clear()
    net.cost_profile()
    ee.profile(net, ds.test.x[:4], latency=True, repeats=1)
    check(net, modules)


def test_benchmark_baselines_run_through_the_seam(net_and_data: Any) -> None:
    net, modules, ds = net_and_data
    net.eval()
    policy = MaxProb(thresholds=0.6)
    x = ds.test.x[:12]
    baselines.per_sample_early_exit(net, x, policy)
    baselines.run_all_then_mask(net, x, policy, 4)
    baselines.batch_level_exit(net, x, policy, 4)
    baselines.backbone_alone(net, x, 4)
    ee.predict(net, x, NeverExit())
    check(net, modules)
