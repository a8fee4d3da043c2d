"""``exitnet train``: train a multi-exit network with any strategy; write a checkpoint ``exitnet evaluate`` reads.

The settings come from a config file (YAML or JSON, ``--config``) and/or flags; a flag overrides the file.
Config keys are the flags' names with underscores (``batch_size``), plus ``strategy_options``,
``backbone_options`` and ``data_options`` dicts. Example config::

    strategy: cost
    strategy_options: {lam: 0.3}
    dataset: fashion-mnist
    limit: 5000
    backbone: resnet
    backbone_options: {depth: 20, width: 16}
    points: [layer1.0, layer1.2, layer2.1]
    epochs: 10

Writes ``OUT/model.safetensors`` (the network, the gate policy of gated / cost-regularised training, and in its
manifest the data recipe, the training config and the metrics), and ``fit``'s ``metrics.csv``,
``best.safetensors``, ``last.safetensors`` and ``state.safetensors`` (``--resume`` continues from it). Under
``torchrun --nproc_per_node=N $(which exitnet) train …`` the run is data-parallel and rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "TrainConfig", "load_config", "train_from_config"]

_DEFAULT_POINTS = {"resnet": ["layer1", "layer2"], "mlp": ["blocks.0", "blocks.1"]}
_CHANNELS = ("resnet", "vgg")  # backbones whose input channels come from the data


@dataclass
class TrainConfig:
    """Everything ``exitnet train`` needs (the flags and the config file map onto these)."""

    strategy: str = "joint"
    strategy_options: dict[str, Any] = field(default_factory=dict)
    dataset: str = "digits"
    data_options: dict[str, Any] = field(default_factory=dict)
    limit: int | None = None
    backbone: str = "resnet"
    backbone_options: dict[str, Any] = field(default_factory=dict)
    points: list[str] | None = None
    head: str = "pool"
    epochs: int = 10
    lr: float = 3e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    seed: int = 0
    grad_clip: float | None = None
    bf16: bool = False
    device: str | None = None
    out: str = "runs/train"
    resume: bool = False
    progress: bool = True


def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML (``.yaml``/``.yml``, needs PyYAML) or JSON config file into a dict, keys checked."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no config file at {p}")
    text = p.read_text()
    if p.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError as err:
            raise ValueError(f"reading the YAML config {p} needs PyYAML: pip install pyyaml (or use JSON)") from err
        data = yaml.safe_load(text)
    else:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{p} is not valid JSON ({err}); YAML configs need a .yaml or .yml suffix") from err
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{p} must hold a mapping of settings, got {type(data).__name__}")
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{p}: unknown settings {unknown}; known: {', '.join(sorted(known))}")
    return data


def _build(cfg: TrainConfig) -> tuple[Any, Any, dict[str, Any]]:
    import torch

    from exitnet.backbones import get_backbone
    from exitnet.data import load_dataset
    from exitnet.model import MultiExitNetwork

    data_kwargs: dict[str, Any] = {"seed": cfg.seed, **cfg.data_options}
    if cfg.limit is not None:
        if cfg.dataset.replace("_", "-") != "fashion-mnist":
            raise ValueError("--limit applies to fashion-mnist only")
        data_kwargs["limit"] = cfg.limit
    ds = load_dataset(cfg.dataset, **data_kwargs)
    kwargs = dict(cfg.backbone_options)
    if cfg.backbone in _CHANNELS:
        kwargs.setdefault("in_chans", ds.shape[0])
    if cfg.backbone == "mlp":
        kwargs.setdefault("in_features", math.prod(ds.shape))
    kwargs.setdefault("num_classes", ds.num_classes)
    backbone = get_backbone(cfg.backbone, **kwargs)
    points = cfg.points if cfg.points is not None else _DEFAULT_POINTS.get(cfg.backbone)
    if not points:
        raise ValueError(
            f"give the exit points of the {cfg.backbone} backbone with --points (see exitnet.list_exit_points)"
        )
    net = MultiExitNetwork.from_module(
        backbone, points, num_classes=ds.num_classes, sample_input=torch.zeros(1, *ds.shape), head=cfg.head
    )
    return net, ds, {"name": cfg.dataset, "kwargs": data_kwargs}


def train_from_config(cfg: TrainConfig) -> dict[str, Any]:
    """Train as ``exitnet train`` does; returns a summary (the checkpoint path, metrics, validation accuracy)."""
    from exitnet.checkpoint import save
    from exitnet.train import fit, get_strategy

    if cfg.epochs < 0:
        raise ValueError(f"--epochs must be >= 0, got {cfg.epochs}")
    net, ds, data_recipe = _build(cfg)
    strategy = get_strategy(cfg.strategy, **cfg.strategy_options)
    out = Path(cfg.out)
    history = fit(
        net,
        strategy,
        ds.train,
        ds.val,
        epochs=cfg.epochs,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        batch_size=cfg.batch_size,
        grad_clip=cfg.grad_clip,
        seed=cfg.seed,
        device=cfg.device,
        bf16=cfg.bf16,
        out_dir=out,
        resume=cfg.resume,
        progress=cfg.progress,
    )
    summary: dict[str, Any] = {
        "checkpoint": str(out / "model.safetensors"),
        "exit_names": list(net.exit_names),
        "history": history.rows,
        "best_epoch": history.best_epoch,
        "strategy": strategy.describe(),
    }
    if int(os.environ.get("RANK", "0")) != 0:
        return summary  # rank 0 writes the files
    policy = strategy.policy() if hasattr(strategy, "policy") else None
    extra = {
        "data": data_recipe,
        "training": asdict(cfg),
        "strategy": strategy.describe(),
        "best_epoch": history.best_epoch,
        "metrics": history.rows[-1] if history.rows else {},
    }
    save(net.cpu(), out / "model.safetensors", policy=policy, extra=extra)
    return summary


def _parse_options(pairs: list[str] | None, flag: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} takes KEY=VALUE, got {pair!r}")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value  # a bare string
    return out


def train(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML or JSON file of settings (flags override).")
    ] = None,
    strategy: Annotated[
        str | None,
        typer.Option("--strategy", help="joint | combined | gated | cost | layerwise | separate | freezeout | mixed"),
    ] = None,
    dataset: Annotated[str | None, typer.Option("--dataset", help="digits | fashion-mnist | synthetic")] = None,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="fashion-mnist: samples per split.")] = None,
    backbone: Annotated[str | None, typer.Option("--backbone", help="resnet | mlp | vgg")] = None,
    backbone_option: Annotated[
        list[str] | None, typer.Option("--backbone-option", help="KEY=VALUE for the backbone (depth=20), repeatable.")
    ] = None,
    points: Annotated[
        str | None, typer.Option("--points", help="Exit points, comma-separated (layer1,layer2).")
    ] = None,
    head: Annotated[str | None, typer.Option("--head", help="Head kind (pool, linear, mlp, sdn, …).")] = None,
    epochs: Annotated[int | None, typer.Option("--epochs", min=0, help="Epochs over all phases.")] = None,
    lr: Annotated[float | None, typer.Option("--lr", help="Adam learning rate.")] = None,
    batch_size: Annotated[int | None, typer.Option("--batch-size", min=1, help="Global batch size.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Seed of the data split and of training.")] = None,
    grad_clip: Annotated[float | None, typer.Option("--grad-clip", help="Clip the gradient norm.")] = None,
    bf16: Annotated[bool | None, typer.Option("--bf16/--no-bf16", help="bfloat16 autocast.")] = None,
    device: Annotated[str | None, typer.Option("--device", help="cpu | cuda | cuda:1 …")] = None,
    weights: Annotated[str | None, typer.Option("--weights", help="Exit weights: uniform | inception | sdn.")] = None,
    mode: Annotated[str | None, typer.Option("--mode", help="combined: weighted | convex | mean | max.")] = None,
    lam: Annotated[float | None, typer.Option("--lam", help="cost: λ of the cost penalty.")] = None,
    t0: Annotated[float | None, typer.Option("--t0", help="freezeout: first freezing point (fraction).")] = None,
    scale: Annotated[str | None, typer.Option("--scale", help="freezeout: linear | cubic.")] = None,
    cache: Annotated[str | None, typer.Option("--cache", help="layerwise: memory | disk | none.")] = None,
    epochs_per_stage: Annotated[int | None, typer.Option("--epochs-per-stage", help="layerwise.")] = None,
    distill: Annotated[float | None, typer.Option("--distill", help="joint: self-distillation weight.")] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="joint: distillation T.")] = None,
    option: Annotated[
        list[str] | None, typer.Option("--option", help="Any other strategy option KEY=VALUE, repeatable.")
    ] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: runs/train].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from OUT/state.safetensors.")] = False,
) -> None:
    """Train a multi-exit network with a training strategy and write a checkpoint."""
    settings = load_config(config) if config is not None else {}
    flags = {
        "strategy": strategy,
        "dataset": dataset,
        "limit": limit,
        "backbone": backbone,
        "points": [p.strip() for p in points.split(",") if p.strip()] if points is not None else None,
        "head": head,
        "epochs": epochs,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "grad_clip": grad_clip,
        "bf16": bf16,
        "device": device,
        "out": str(out) if out is not None else None,
    }
    settings.update({k: v for k, v in flags.items() if v is not None})
    if resume:
        settings["resume"] = True
    named = {"weights": weights, "mode": mode, "lam": lam, "t0": t0, "scale": scale, "cache": cache,
             "epochs_per_stage": epochs_per_stage, "distill": distill, "temperature": temperature}  # fmt: skip
    options = {**dict(settings.get("strategy_options") or {}), **_parse_options(option, "--option")}
    options.update({k: v for k, v in named.items() if v is not None})
    settings["strategy_options"] = options
    settings["backbone_options"] = {
        **dict(settings.get("backbone_options") or {}),
        **_parse_options(backbone_option, "--backbone-option"),
    }
    settings.setdefault("progress", sys.stderr.isatty())
    cfg = TrainConfig(**settings)
    summary = train_from_config(cfg)
    last = summary["history"][-1] if summary["history"] else {}
    accs = ", ".join(f"{n} {100 * last[f'val_acc_{n}']:.1f}%" for n in summary["exit_names"] if f"val_acc_{n}" in last)
    print(f"{cfg.strategy}: {len(summary['history'])} epochs; validation accuracy per exit: {accs or '—'}")
    print(
        f"wrote {summary['checkpoint']} (read it with: exitnet evaluate {summary['checkpoint']} --data {cfg.dataset})"
    )


def register(app: typer.Typer) -> None:
    """Add ``exitnet train`` to the CLI."""
    app.command("train")(train)
