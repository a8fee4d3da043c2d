"""Training benchmark (issue 5): every training strategy on Fashion-MNIST with the reference ResNet, same epochs.

Per strategy: the test accuracy of every exit (plus the combined or gated prediction where the strategy has one),
time per epoch and peak memory, both as ratios to training the backbone alone *in the same run*. The backbone is
trained first and again last, and the ratios use the mean of the two (the spread shows how much a shared machine
drifted). A sweep of λ of the cost-regularised strategy (eq. (13)-(14)) traces the accuracy/cost trade-off of its
gate policy; the figure goes to ``training_lambda_sweep.png``. The sweep's network has global-pooling heads: with
linear heads on whole feature maps, the first exit of this network is already as accurate as the last on
Fashion-MNIST (see the main table), so the gates rightly send every sample to it at any λ > 0 and there is no
trade-off to trace; with pooled heads the early exits are weaker and λ moves along the trade-off.

Memory is measured on a short run of ``fit`` (two batches per phase) in two ways: the peak of PyTorch's CPU
allocator (``exitnet.bench.memory.peak_bytes``: activations, gradients, optimiser state and temporaries created
during training; on CUDA ``max_memory_allocated``), and the peak bytes of the tensors autograd saves for backward
(activations; parameters excluded), counted with ``torch.autograd.graph.saved_tensors_hooks``. A layer-wise cache
in RAM costs ``cache_bytes`` more (N × the largest cached embedding); on disk it costs no RAM.

Suites: ``smoke`` (synthetic 1×12×12, seconds), ``quick`` (first 1,024 images of each Fashion-MNIST split, a
ResNet-20 of width 8 with 5 exits, 5 epochs: about 3 minutes on one CPU core) and ``full`` (the same network on
8,192 images of each split, 8 epochs, a λ sweep of six values: about 45 minutes on one core). The network is the
benchmark zoo's ResNet-20 at half its width, so that every strategy trains in the same run on a CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from exitnet import data as datasets
from exitnet._batches import collect_outputs
from exitnet.backbones import resnet
from exitnet.bench.memory import peak_bytes
from exitnet.bench.report import md_table, pct
from exitnet.cost import expected_cost
from exitnet.model import MultiExitNetwork
from exitnet.train import (
    Backbone,
    Combined,
    CostRegularized,
    Freezeout,
    Gated,
    Joint,
    Layerwise,
    Mixed,
    Separate,
    Strategy,
    fit,
)
from exitnet.train.cost_regularized import normalized_exit_costs

__all__ = ["NAME", "run", "to_markdown", "lambda_sweep", "SavedActivations", "SETTINGS"]

NAME = "training"
JOINT_TIME_GOAL = 1.10  # joint training ≤ 1.10× the backbone's time per epoch
LAYERWISE_MEMORY_GOAL = 0.5  # layer-wise with cache ≤ 0.5× the end-to-end (joint) peak memory


@dataclass(frozen=True)
class Setting:
    """Data, network and training budget of one suite."""

    limit: int | None
    depth: int
    width: int
    points: list[str]
    head: str
    epochs: int
    batch_size: int = 64
    lr: float = 3e-3
    cost_lam: float = 0.3  # λ of the cost-regularised row of the main table
    lams: list[float] = field(default_factory=lambda: [0.0, 1.0, 4.0])  # the λ sweep
    sweep_head: str = "pool"  # heads of the λ sweep's network (see the module docstring)
    synthetic: bool = False


SETTINGS = {
    "smoke": Setting(
        None, 8, 4, ["layer1", "layer2"], "pool", epochs=3, batch_size=32, lams=[0.0, 3.0], synthetic=True
    ),
    "quick": Setting(1024, 20, 8, ["layer1.0", "layer1.1", "layer1.2", "layer2.1"], "linear", epochs=5),
    "full": Setting(
        8192,
        20,
        8,
        ["layer1.0", "layer1.1", "layer1.2", "layer2.1"],
        "linear",
        epochs=8,
        batch_size=128,
        lams=[0.0, 1.0, 1.25, 1.5, 2.0, 4.0],
    ),
}


class _Held:
    __slots__ = ("tensor", "key", "meter")

    def __init__(self, tensor: torch.Tensor, key: int, meter: SavedActivations) -> None:
        self.tensor, self.key, self.meter = tensor, key, meter

    def __del__(self) -> None:
        self.meter.release(self.key)


class SavedActivations:
    """Peak bytes of the tensors autograd keeps for backward (each storage counted once; parameters excluded).

    Example:
        >>> lin = torch.nn.Linear(100, 100)
        >>> with SavedActivations(lin.parameters()) as meter:
        ...     lin(torch.randn(8, 100)).relu().sum().backward()
        >>> meter.peak  # the input of the linear layer and the output of the ReLU: 2 × 8 × 100 × 4 bytes
        6400
    """

    def __init__(self, exclude: Any = ()) -> None:
        self._exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self._live: dict[int, list[int]] = {}
        self.current = 0
        self.peak = 0
        self._ctx = torch.autograd.graph.saved_tensors_hooks(self._pack, self._unpack)

    def _pack(self, t: torch.Tensor) -> Any:
        key = t.untyped_storage().data_ptr()
        if key in self._exclude or key == 0:
            return t
        entry = self._live.get(key)
        if entry is None:
            nbytes = t.untyped_storage().nbytes()
            self._live[key] = [nbytes, 1]
            self.current += nbytes
            self.peak = max(self.peak, self.current)
        else:
            entry[1] += 1
        return _Held(t, key, self)

    @staticmethod
    def _unpack(held: Any) -> torch.Tensor:
        return held.tensor if isinstance(held, _Held) else held

    def release(self, key: int) -> None:
        entry = self._live.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.current -= entry[0]
            del self._live[key]

    def __enter__(self) -> SavedActivations:
        self._ctx.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._ctx.__exit__(*exc)


def _data(s: Setting) -> datasets.Dataset:
    if s.synthetic:
        return datasets.synthetic(600, num_classes=4, input_shape=(1, 12, 12), seed=0)
    return datasets.fashion_mnist(seed=0, limit=s.limit)


def _net(s: Setting, ds: datasets.Dataset, seed: int = 0) -> MultiExitNetwork:
    torch.manual_seed(seed)
    backbone = resnet(depth=s.depth, in_chans=ds.shape[0], num_classes=ds.num_classes, width=s.width)
    return MultiExitNetwork.from_module(
        backbone, s.points, num_classes=ds.num_classes, sample_input=torch.zeros(1, *ds.shape), head=s.head
    )


def _strategies(s: Setting) -> list[tuple[str, Callable[[], Strategy]]]:
    lam = s.cost_lam
    return [
        ("backbone", Backbone),
        ("joint", lambda: Joint(weights="sdn")),
        ("joint + self-distillation", lambda: Joint(weights="sdn", distill=0.5, temperature=3.0)),
        ("combined (convex)", lambda: Combined("convex")),
        ("combined (mean)", lambda: Combined("mean")),
        ("gated", lambda: Gated(joint="uniform")),
        (f"cost-regularized (λ={lam:g})", lambda: CostRegularized(lam=lam, joint="uniform")),
        ("layer-wise (cache in memory)", lambda: Layerwise(cache="memory")),
        ("layer-wise (cache on disk)", lambda: Layerwise(cache="disk")),
        ("layer-wise (no cache)", lambda: Layerwise(cache="none")),
        ("separate", Separate),
        ("freezeout (t0=0.5)", lambda: Freezeout(t0=0.5, weights="sdn")),
        ("mixed", lambda: Mixed(weights="sdn")),
        ("backbone (again)", Backbone),
    ]


def _evaluate(net: MultiExitNetwork, strategy: Strategy, ds: datasets.Dataset) -> dict[str, Any]:
    outputs, y = collect_outputs(net, ds.test)  # on the CPU
    for m in strategy.extra_modules().values():
        m.cpu()
    out: dict[str, Any] = {
        "exit_accuracy": dict(zip(net.exit_names, (outputs.predictions() == y).double().mean(1).tolist(), strict=True))
    }
    with torch.no_grad():
        if isinstance(strategy, Combined):
            out["combined_accuracy"] = float((strategy.combine(outputs).argmax(-1) == y).double().mean())
        if isinstance(strategy, (Gated, CostRegularized)):
            out["combined_accuracy"] = float((strategy.combine(outputs).argmax(-1) == y).double().mean())
            exit_index = strategy.policy(0.5).decide(outputs)
            pred = outputs.predictions().gather(0, exit_index.unsqueeze(0)).squeeze(0)
            out["gate_policy"] = {
                "accuracy": float((pred == y).double().mean()),
                "cost": expected_cost(exit_index, normalized_exit_costs(net)),
                "exit_fractions": torch.bincount(exit_index, minlength=net.num_exits).div(len(y)).tolist(),
            }
    return out


def _memory(s: Setting, ds: datasets.Dataset, make: Callable[[], Strategy], device: str) -> dict[str, Any]:
    """Peak memory of a short fit: two batches, one epoch per phase."""
    net = _net(s, ds).to(device)
    strategy = make()
    phases = len(strategy.phases(net, net.num_exits))
    subset = (ds.train.x[: 2 * s.batch_size], ds.train.y[: 2 * s.batch_size])
    kwargs: dict[str, Any] = {"epochs": phases, "batch_size": s.batch_size, "lr": s.lr, "progress": False}
    with SavedActivations(net.parameters()) as meter:
        peak = peak_bytes(lambda: fit(net, strategy, subset, **kwargs), device)
    return {
        "peak_bytes": peak,
        "saved_activation_bytes": meter.peak,
        "cache_bytes_for_train_set": _cache_bytes(net, strategy, len(ds.train)),
    }


def _cache_bytes(net: MultiExitNetwork, strategy: Strategy, n: int) -> int:
    if not isinstance(strategy, Layerwise) or strategy.cache != "memory" or net.feature_shapes is None:
        return 0
    return max(n * int(torch.tensor(f).prod()) * 4 for f in net.feature_shapes[:-1])


def lambda_sweep(
    s: Setting, ds: datasets.Dataset, device: str, out_dir: Path, done: dict[float, dict[str, Any]] | None = None
) -> dict[str, Any]:
    """Cost-regularised training for every λ of ``s.lams`` (heads ``s.sweep_head``); the gate policy's accuracy and
    expected cost on the test split, and the figure ``training_lambda_sweep.png`` in ``out_dir``.

    ``done`` maps a λ to an evaluation already made with the same network (it is not trained again).
    """
    sweep_setting = replace(s, head=s.sweep_head)
    rows, exits = [], None
    for lam in s.lams:
        ev = (done or {}).get(lam)
        net = _net(sweep_setting, ds).to(device)
        if ev is None:
            strategy = CostRegularized(lam=lam, joint="uniform")
            fit(net, strategy, ds.train, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, progress=False)
            ev = _evaluate(net, strategy, ds)
        if exits is None:  # the exits of the λ = 0 network, alone: what the gates choose between
            costs = normalized_exit_costs(net)
            exits = [
                {"name": n, "accuracy": ev["exit_accuracy"][n], "cost": c}
                for n, c in zip(net.exit_names, costs, strict=True)
            ]
        rows.append({"lam": lam, **ev["gate_policy"], "final_accuracy": ev["exit_accuracy"]["final"]})
    figure = _plot_sweep(rows, exits or [], out_dir / "training_lambda_sweep.png")
    return {"head": s.sweep_head, "points": rows, "exits": exits, "figure": figure.name}


def _plot_sweep(rows: list[dict[str, Any]], exits: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.8), dpi=110)
    xs, ys = [100 * r["cost"] for r in rows], [100 * r["accuracy"] for r in rows]
    ax.plot(xs, ys, "o-", color="tab:blue", label="gate policy (β = 0.5)")
    shift, last, middle = 0, None, (min(ys) + max(ys)) / 2
    for x, y, lam in sorted(zip(xs, ys, (r["lam"] for r in rows), strict=True)):
        near = last is not None and abs(x - last[0]) < 6 and abs(y - last[1]) < 4
        step = 11 if y < middle else -11  # labels of close points stack away from the plot's edge
        shift = shift + step if near else 0
        base = 6 if y < middle else -14
        ax.annotate(f"λ={lam:g}", (x, y), textcoords="offset points", xytext=(8, base + shift), fontsize=8,
                    arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "grey"})  # fmt: skip
        last = (x, y)
    ax.plot([100 * e["cost"] for e in exits], [100 * e["accuracy"] for e in exits], "s", color="grey", ms=4,
            label=f"each exit alone (λ={rows[0]['lam']:g})")  # fmt: skip
    ax.set_xlabel("expected cost, eq. (12) (% of the backbone's FLOPs)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Cost-regularised training: a sweep of λ")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(suite: str, device: str, out_dir: Path) -> dict[str, Any]:
    """Train the network with every strategy; accuracy per exit, time per epoch and peak memory vs the backbone."""
    if suite not in SETTINGS:
        raise ValueError(f"unknown suite {suite!r}; choose one of: {', '.join(SETTINGS)}")
    s = SETTINGS[suite]
    ds = _data(s)
    t_start = time.perf_counter()
    # warm-up: the first training of a process pays for thread pools and kernel selection
    warm = (ds.train.x[: 2 * s.batch_size], ds.train.y[: 2 * s.batch_size])
    fit(_net(s, ds).to(device), Joint(), warm, epochs=1, batch_size=s.batch_size, progress=False)
    rows: dict[str, dict[str, Any]] = {}
    for name, make in _strategies(s):
        net = _net(s, ds).to(device)
        strategy = make()
        t0 = time.perf_counter()
        history = fit(net, strategy, ds.train, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr, progress=False)
        total = time.perf_counter() - t0
        epochs = max(1, len(history.rows))
        rows[name] = {
            "strategy": strategy.describe(),
            "epoch_seconds": sum(history.column("seconds")) / epochs,
            "epoch_cpu_seconds": sum(history.column("cpu_seconds")) / epochs,
            "fit_seconds": total,
            **_evaluate(net, strategy, ds),
            "memory": _memory(s, ds, make, device),
        }
    keys = ("epoch_seconds", "epoch_cpu_seconds", "fit_seconds")
    base = {key: (rows["backbone"][key] + rows["backbone (again)"][key]) / 2 for key in keys}
    base_mem = rows["backbone"]["memory"]
    joint_mem = rows["joint"]["memory"]
    for r in rows.values():
        r["time_per_epoch_ratio"] = r["epoch_cpu_seconds"] / base["epoch_cpu_seconds"]
        r["wall_time_per_epoch_ratio"] = r["epoch_seconds"] / base["epoch_seconds"]
        r["fit_time_ratio"] = r["fit_seconds"] / base["fit_seconds"]
        r["memory_ratio"] = r["memory"]["peak_bytes"] / base_mem["peak_bytes"]
        r["memory_ratio_to_joint"] = r["memory"]["peak_bytes"] / joint_mem["peak_bytes"]
        r["activation_ratio_to_joint"] = r["memory"]["saved_activation_bytes"] / joint_mem["saved_activation_bytes"]
    done = {s.cost_lam: rows[f"cost-regularized (λ={s.cost_lam:g})"]} if s.sweep_head == s.head else {}
    sweep = lambda_sweep(s, ds, device, out_dir, done)
    lw = rows["layer-wise (cache on disk)"]
    goals = [
        {
            "goal": "joint training CPU time per epoch / backbone's (training benchmark)",
            "target": JOINT_TIME_GOAL,
            "measured": rows["joint"]["time_per_epoch_ratio"],
            "met": rows["joint"]["time_per_epoch_ratio"] <= JOINT_TIME_GOAL,
        },
        {
            "goal": "layer-wise (cached) peak training memory / joint's (training benchmark)",
            "target": LAYERWISE_MEMORY_GOAL,
            "measured": lw["memory_ratio_to_joint"],
            "met": lw["memory_ratio_to_joint"] <= LAYERWISE_MEMORY_GOAL,
        },
    ]
    return {
        "suite": suite,
        "device": device,
        "threads": torch.get_num_threads(),
        "setting": asdict(s),
        "dataset": ds.name,
        "train_samples": len(ds.train),
        "test_samples": len(ds.test),
        "exits": list(_net(s, ds).exit_names),
        "backbone_drift": rows["backbone (again)"]["epoch_cpu_seconds"] / rows["backbone"]["epoch_cpu_seconds"],
        "strategies": rows,
        "lambda_sweep": sweep,
        "goals": goals,
        "seconds": time.perf_counter() - t_start,
        "memory_how": "peak of the PyTorch allocator during a short fit (2 batches per phase): "
        "exitnet.bench.memory.peak_bytes; saved activations: torch.autograd.graph.saved_tensors_hooks",
    }


def to_markdown(result: dict[str, Any]) -> str:
    """Per strategy: accuracy of every exit, time per epoch and peak memory as ratios to backbone-only training."""
    s = result["setting"]
    exits = result["exits"]
    head = ["strategy", *[f"acc {e}" for e in exits], "combined / gate", "CPU time/epoch ×", "wall time/epoch ×",
            "fit wall time ×", "peak mem ×", "peak mem × joint", "activations × joint"]  # fmt: skip
    rows = []
    for name, r in result["strategies"].items():
        extra = "—"
        if "gate_policy" in r:
            g = r["gate_policy"]
            extra = f"{pct(r['combined_accuracy'], 1)} / {pct(g['accuracy'], 1)} @ {pct(g['cost'], 0)} cost"
        elif "combined_accuracy" in r:
            extra = pct(r["combined_accuracy"], 1)
        cache = r["memory"]["cache_bytes_for_train_set"]
        mem = f"{r['memory_ratio']:.2f}" + (f" (+{cache / 2**20:.1f} MiB cache)" if cache else "")
        rows.append(
            [
                name,
                *[pct(r["exit_accuracy"][e], 1) for e in exits],
                extra,
                f"{r['time_per_epoch_ratio']:.2f}",
                f"{r['wall_time_per_epoch_ratio']:.2f}",
                f"{r['fit_time_ratio']:.2f}",
                mem,
                f"{r['memory_ratio_to_joint']:.2f}",
                f"{r['activation_ratio_to_joint']:.2f}",
            ]
        )
    sweep = md_table(
        ["λ", "gate-policy accuracy", "expected cost (× backbone)", "final-exit accuracy", "exit fractions"],
        [[f"{p['lam']:g}", pct(p["accuracy"], 1), f"{p['cost']:.3f}", pct(p["final_accuracy"], 1),
          " / ".join(f"{100 * f:.0f}%" for f in p["exit_fractions"])] for p in result["lambda_sweep"]["points"]],
    )  # fmt: skip
    goals = md_table(
        ["goal", "target", "measured", "met"],
        [
            [g["goal"], f"≤ {g['target']}", f"{g['measured']:.3f}", "yes" if g["met"] else "**no**"]
            for g in result["goals"]
        ],
    )
    return (
        f"{result['dataset']}: {result['train_samples']} training and {result['test_samples']} test images; "
        f"ResNet-{s['depth']} (width {s['width']}) with exits after {', '.join(s['points'])} ({s['head']} heads); "
        f"{s['epochs']} epochs for every strategy, batch {s['batch_size']}, Adam lr {s['lr']}, "
        f"on `{result['device']}` with {result.get('threads', '?')} torch thread(s). "
        "Ratios are to backbone-only training in the same run (the backbone ran first and last; the second run's "
        f"CPU time per epoch was {result['backbone_drift']:.2f}× the first's). Time per epoch is the process's CPU "
        "time (less sensitive than wall-clock time to other processes on a shared machine; wall-clock beside it); "
        "fit time includes building layer-wise caches and fitting non-neural heads. "
        f"Memory: {result['memory_how']}.\n\n"
        f"{md_table(head, rows)}\n\n{goals}\n\n"
        f"Cost-regularised training, λ sweep ({result['lambda_sweep'].get('head', s['head'])} heads; gate policy at "
        f"β = 0.5 on the test split):\n\n{sweep}\n\n"
        f"![λ sweep]({result['lambda_sweep']['figure']})\n"
    )
