"""The survey's claims, measured: one table row per claim, with the honest answer whichever way it goes.

Built-in rows:

- (i) early exits cut inference time at equal accuracy (survey §1, §6): entropy thresholds calibrated on the
  validation split for *no* accuracy drop; the test accuracy of early exit against the final exit's, and the
  wall-clock speed-up over the backbone alone at batch 256 (interleaved repetitions).
- (ii) deep supervision (joint training, eq. (6)) makes the final exit converge faster or generalise better
  than training the backbone alone (survey §5, "Theorem 1"): the same network, epochs, data and seeds, trained
  with SDN's weights or with weight 1 on the final exit and 0 on the others (heads untouched: the backbone
  alone); validation accuracy of the final exit per epoch and test accuracy, over several seeds.
- (iii) overthinking (Kaya et al.): the share of test samples wrong at the final exit but right at an earlier one.

More rows: ``register_claim("name", fn)`` where ``fn(suite, device, out_dir) -> list[row]`` and a row is a dict
with ``claim``, ``how``, ``result``, ``verdict`` (and any ``data``); the runner imports every benchmark module
before running any, so a module of a later benchmark can add its rows here.
"""

from __future__ import annotations

import functools
import math
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from exitnet._batches import collect_outputs
from exitnet.analysis import overthinking_rate
from exitnet.bench import baselines, zoo
from exitnet.bench.report import figure_convergence, md_table, pct
from exitnet.calibration import calibrate
from exitnet.policies import Entropy
from exitnet.runtime import optimize_for_inference, predict
from exitnet.timing import interleaved, paired_ratio

__all__ = ["NAME", "run", "to_markdown", "register_claim", "list_claims", "SEEDS"]

NAME = "claims"
Row = dict[str, Any]
ClaimFn = Callable[[str, str, Path], list[Row]]

#: Seeds and networks of claim (ii). Its trainings use the quick suite's data budget (10k training images) in
#: every suite except smoke, so the full suite adds seeds and the ResNet rather than longer trainings.
SEEDS = {"smoke": [0, 1], "quick": [0, 1, 2], "full": [0, 1, 2, 3, 4]}
DEEP_SUPERVISION_NETWORKS = {"smoke": ["mlp"], "quick": ["mlp"], "full": ["mlp", "resnet"]}
TIMING = {"smoke": (64, 64, 2), "quick": (1024, 256, 5), "full": (8192, 256, 9)}  # samples, batch, repeats


def claim_speedup_at_equal_accuracy(suite: str, device: str, out_dir: Path) -> list[Row]:
    """Claim (i): thresholds for no accuracy drop on val; accuracy on test; wall-clock speed-up at batch 256."""
    net, ds = zoo.trained_resnet(suite, device=device)
    val = zoo.outputs("resnet", suite, "val", device=device)
    policy = calibrate(Entropy(), *val, max_accuracy_drop=0.0, cost=net.cost_profile())
    fast = optimize_for_inference(net)
    outputs, y = zoo.outputs("resnet", suite, "test", device=device)
    final = float((outputs.predictions()[-1] == y).double().mean())
    early = predict(fast, ds.test.x, policy, batch_size=256)
    acc = early.accuracy(ds.test.y)
    n, batch, repeats = TIMING[suite]
    x = ds.test.x[:n].to(device)
    methods: dict[str, Callable[[], Any]] = {
        "backbone": functools.partial(baselines.backbone_alone, fast, x, batch),
        "exitnet": functools.partial(predict, fast, x, policy, batch_size=batch),
    }
    times, outs = interleaved(methods, repeats=repeats, device=device)
    speed = paired_ratio(times["backbone"], times["exitnet"])
    flops_speed = fast.cost_profile().backbone_flops / outs["exitnet"].mean_flops
    drop = 100 * (final - acc)
    if speed["min"] > 1.0 and drop <= 0.2:
        verdict = "yes"
    elif speed["min"] > 1.0:
        verdict = f"partly: faster, but the test accuracy is {drop:.2f} pt lower (thresholds were set on val)"
    else:
        verdict = "no: not reliably faster in wall-clock time"
    return [
        {
            "id": "i",
            "claim": "Early exits cut inference time at equal accuracy",
            "how": f"ResNet, entropy thresholds for 0 pt drop on val; test accuracy; wall-clock speed-up over the "
            f"backbone at batch {batch} ({repeats} interleaved repetitions, median [min–max])",
            "result": f"test accuracy {pct(acc)} vs final exit {pct(final)} ({-drop:+.2f} pt); speed-up "
            f"{speed['median']:.2f}× [{speed['min']:.2f}–{speed['max']:.2f}] wall-clock, {flops_speed:.2f}× FLOPs",
            "verdict": verdict,
            "data": {
                "test_accuracy": acc,
                "final_accuracy": final,
                "speedup_wall": speed,
                "speedup_flops": flops_speed,
            },
        }
    ]


def _mean_se(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    se = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return mean, se


def _final_test_accuracy(name: str, suite: str, seed: int, device: str, weights: list[float] | None) -> float:
    net, ds = zoo.trained(name, suite, seed=seed, device=device, weights=weights)
    outputs, y = collect_outputs(net, ds.test)
    return float((outputs.predictions()[-1] == y).double().mean())


def claim_deep_supervision(suite: str, device: str, out_dir: Path) -> list[Row]:
    """Claim (ii): joint training (SDN weights) vs the backbone alone, same epochs and seeds."""
    budget = "smoke" if suite == "smoke" else "quick"
    rows, curves = [], {}
    for name in DEEP_SUPERVISION_NETWORKS[suite]:
        num_exits = len(zoo.recipe(name, budget).points) + 1
        arms = {"joint": None, "backbone_only": [0.0] * (num_exits - 1) + [1.0]}
        test: dict[str, list[float]] = {arm: [] for arm in arms}
        val_curves: dict[str, list[list[float]]] = {arm: [] for arm in arms}
        for seed in SEEDS[suite]:
            for arm, weights in arms.items():
                test[arm].append(_final_test_accuracy(name, budget, seed, device, weights))
                history = zoo.training_info(name, budget, seed=seed, weights=weights).get("history", [])
                val_curves[arm].append([row["val_acc_final"] for row in history])
        curves[name] = val_curves
        diffs = [100 * (j - b) for j, b in zip(test["joint"], test["backbone_only"], strict=True)]
        diff, se = _mean_se(diffs)
        first = [100 * (j[0] - b[0]) for j, b in zip(val_curves["joint"], val_curves["backbone_only"], strict=True)]
        first_diff, first_se = _mean_se(first)
        wins = sum(d > 0 for d in diffs)
        if diff > 2 * se:
            gen = f"yes: +{diff:.2f} pt on test"
        elif diff < -2 * se:
            gen = f"no: {diff:.2f} pt on test (worse)"
        else:
            gen = f"no measurable difference ({diff:+.2f} ± {se:.2f} pt)"
        conv = "faster" if first_diff > 2 * first_se else ("slower" if first_diff < -2 * first_se else "no faster")
        epochs = zoo.recipe(name, budget).epochs
        rows.append(
            {
                "id": "ii",
                "claim": "Deep supervision (joint training) helps the final exit converge faster or generalise better",
                "how": f"{name}, {len(SEEDS[suite])} seeds × {epochs} epochs on the {budget} budget, joint (SDN "
                "weights) vs final-exit loss only; paired by seed; mean ± standard error",
                "result": f"final-exit test accuracy {pct(statistics.fmean(test['joint']))} joint vs "
                f"{pct(statistics.fmean(test['backbone_only']))} backbone only ({diff:+.2f} ± {se:.2f} pt, joint "
                f"ahead in {wins}/{len(diffs)} seeds); val accuracy after epoch 1: {first_diff:+.2f} ± "
                f"{first_se:.2f} pt",
                "verdict": f"generalises better: {gen}; converges {conv}",
                "data": {"network": name, "test_accuracy": test, "val_curves": val_curves},
            }
        )
    figure = figure_convergence(curves, Path(out_dir) / "deep_supervision.png")
    for row in rows:
        row["figure"] = figure.name
    return rows


def claim_overthinking(suite: str, device: str, out_dir: Path) -> list[Row]:
    """Claim (iii): share of test samples wrong at the final exit but right at an earlier one."""
    rows = []
    for name in zoo.list_networks():
        outputs, y = zoo.outputs(name, suite, "test", device=device)
        stack = outputs.stack()
        rate = overthinking_rate(stack, y)
        errors = 1.0 - float((stack[-1].argmax(dim=-1) == y).double().mean())
        share = rate / errors if errors else 0.0
        rows.append(
            {
                "id": "iii",
                "claim": "Overthinking: some samples are right at an early exit but wrong at the final one",
                "how": f"{name}, test split: wrong at the final exit and right at one or more earlier exits",
                "result": f"{pct(rate)} of test samples ({pct(share, 0)} of the final exit's errors)",
                "verdict": "yes" if rate > 0 else "no",
                "data": {"network": name, "overthinking_rate": rate, "final_error": errors},
            }
        )
    return rows


_CLAIMS: dict[str, ClaimFn] = {
    "speedup_at_equal_accuracy": claim_speedup_at_equal_accuracy,
    "deep_supervision": claim_deep_supervision,
    "overthinking": claim_overthinking,
}


def register_claim(name: str, fn: ClaimFn) -> None:
    """Add a claim: ``fn(suite, device, out_dir) -> list of rows`` (``claim``, ``how``, ``result``, ``verdict``)."""
    if name in _CLAIMS and _CLAIMS[name] is not fn:
        raise ValueError(f"a claim named {name!r} is already registered; registered: {', '.join(list_claims())}")
    _CLAIMS[name] = fn


def list_claims() -> list[str]:
    """Names of the registered claims, in the order they run."""
    return list(_CLAIMS)


def run(suite: str, device: str, out_dir: Path) -> dict[str, Any]:
    """Measure every registered claim; a claim that fails is reported as an error row, not raised."""
    rows: list[Row] = []
    for name, fn in _CLAIMS.items():
        try:
            rows.extend(fn(suite, device, out_dir))
        except (FileNotFoundError, KeyboardInterrupt):
            raise
        except Exception as err:  # one broken claim must not hide the others
            rows.append({"id": name, "claim": name, "how": "", "result": f"error: {err}", "verdict": "not measured"})
    return {"rows": rows, "torch_threads": torch.get_num_threads()}


def to_markdown(result: dict[str, Any]) -> str:
    """The claims table, and the convergence figure of claim (ii)."""
    rows = [[f"({r['id']}) {r['claim']}", r["how"], r["result"], f"**{r['verdict']}**"] for r in result["rows"]]
    out = md_table(["claim", "how it was measured", "result", "answer"], rows, align="llll") + "\n"
    figures = sorted({r["figure"] for r in result["rows"] if r.get("figure")})
    for f in figures:
        out += f"\n![deep supervision vs backbone alone]({f})\n"
    return out
