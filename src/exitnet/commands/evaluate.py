"""``exitnet evaluate CHECKPOINT --data NAME``: run early exit on a split and write a report folder.

Loads the network and its stored policy, calibrates one on the validation split when there is none (or when
``--policy`` asks for another), runs the real early-exit runtime on the chosen split, and writes
``report.json``, ``report.md`` and the figures (see :mod:`exitnet.commands.report`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

__all__ = ["register", "evaluate_checkpoint", "make_policy"]


def make_policy(name: str) -> Any:
    """A policy by name; ``temperature:NAME`` wraps NAME in per-exit temperature scaling."""
    from exitnet.policies import TemperatureScaled, get_policy

    if name.startswith("temperature:"):
        return TemperatureScaled(get_policy(name.split(":", 1)[1]))
    if name == "temperature":
        raise ValueError("the temperature policy wraps another: use --policy temperature:entropy (or :maxprob, …)")
    if name == "budgeted":
        return get_policy(name, ratio=1.0)
    return get_policy(name)


def _dataset(name: str, manifest: dict[str, Any], seed: int, limit: int | None) -> tuple[Any, str | None]:
    """The dataset, and a warning when the checkpoint does not say how its data were split."""
    from exitnet.data import load_dataset

    recorded = (manifest.get("extra") or {}).get("data")
    kwargs: dict[str, Any] = {"seed": seed}
    warning = None
    if isinstance(recorded, dict) and recorded.get("name", "").replace("_", "-") == name.replace("_", "-"):
        kwargs = dict(recorded.get("kwargs") or {})
    else:
        warning = (
            f"the checkpoint does not record how its data were split; used the {name} loader's defaults with "
            f"seed={seed}: the evaluated split may overlap the data the network was trained on"
        )
    if limit is not None:
        if name.replace("_", "-") != "fashion-mnist":
            raise ValueError("--limit applies to fashion-mnist only")
        kwargs["limit"] = limit
    return load_dataset(name, **kwargs), warning


def evaluate_checkpoint(
    checkpoint: Path,
    data: str,
    *,
    split: str = "test",
    policy_name: str | None = None,
    max_drop: float = 0.005,
    seed: int = 0,
    limit: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Everything ``exitnet evaluate`` computes, as the report dict (nothing written)."""
    from exitnet._batches import collect_outputs
    from exitnet.analysis import report
    from exitnet.calibration import calibrate, pareto_front
    from exitnet.checkpoint import load, load_policy, read_manifest
    from exitnet.policies import policy_to_config
    from exitnet.runtime import predict

    if not Path(checkpoint).is_file():
        raise FileNotFoundError(f"no checkpoint at {checkpoint}")
    if split not in ("train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; choose one of: train, val, test")
    net = load(checkpoint)
    manifest = read_manifest(checkpoint)
    ds, warning = _dataset(data, manifest, seed, limit)
    part = getattr(ds, split)
    net.check_input(part.x[:1])
    stored = load_policy(checkpoint)
    policy = make_policy(policy_name) if policy_name is not None else stored
    calibrated_here = policy is None or policy_name is not None or not policy.is_fitted()
    if calibrated_here:
        from exitnet.policies import Entropy

        policy = calibrate(policy if policy is not None else Entropy(), net, ds.val, max_accuracy_drop=max_drop)
    assert policy is not None
    result = predict(net, part.x, policy, batch_size=batch_size)
    outputs, y = collect_outputs(net, part, batch_size=batch_size)
    profile = net.cost_profile()
    rep = report(outputs, y, exit_index=result.exit_index, cost=profile)
    front = pareto_front(policy, outputs, y, profile)
    try:
        policy_config: Any = policy_to_config(policy)
    except ValueError as err:
        policy_config = {"name": policy.name, "not_storable": str(err)}
    rep.update(
        title=f"exitnet evaluate: {Path(checkpoint).name} on {ds.name} ({split})",
        checkpoint=str(checkpoint),
        dataset=ds.name,
        split=split,
        policy_name=repr(policy),
        policy=policy_config,
        policy_source="calibrated on the val split here" if calibrated_here else "stored in the checkpoint",
        calibration=getattr(policy, "calibration_", None),
        runtime_accuracy=result.accuracy(part.y),
        runtime_matches_policy=bool((result.exit_index == policy.decide(outputs)).all()),
        pareto_front=[p.to_dict() for p in front],
        warnings=[warning] if warning else [],
    )
    return rep


def evaluate(
    checkpoint: Annotated[Path, typer.Argument(help="An exitnet checkpoint (.safetensors).")],
    data: Annotated[str, typer.Option("--data", help="digits | fashion-mnist | synthetic")],
    split: Annotated[str, typer.Option("--split", help="train | val | test")] = "test",
    policy: Annotated[
        str | None,
        typer.Option(
            "--policy",
            help="Calibrate this policy on val (entropy, maxprob, margin, gate, patience, "
            "budgeted, temperature:NAME) instead of the stored one.",
        ),  # fmt: skip
    ] = None,
    max_drop: Annotated[
        float, typer.Option("--max-drop", min=0.0, max=1.0, help="Calibration target: accuracy drop (0.005 = 0.5 pt).")
    ] = 0.005,
    out: Annotated[Path | None, typer.Option("--out", help="Output folder [default: beside the checkpoint].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the data split (when the checkpoint has none).")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="fashion-mnist: samples per split.")] = None,
) -> None:
    """Run early exit on a data split; write report.json, report.md and figures."""
    from exitnet.commands.report import write_report

    rep = evaluate_checkpoint(
        checkpoint, data, split=split, policy_name=policy, max_drop=max_drop, seed=seed, limit=limit
    )
    dest = out if out is not None else checkpoint.parent / f"eval-{split}"
    write_report(rep, dest, title=rep["title"])
    for w in rep["warnings"]:
        print(f"warning: {w}")
    change = rep["early_exit_accuracy"] - rep["final_accuracy"]
    print(
        f"{rep['dataset']} {split}: final exit {100 * rep['final_accuracy']:.2f}%, early exit "
        f"{100 * rep['early_exit_accuracy']:.2f}% ({100 * change:+.2f} pt), "
        f"FLOPs saved {100 * rep['flops_saved']:.1f}% "
        f"(oracle {100 * rep['oracle']['flops_saved']:.1f}%)"
    )
    print(f"wrote {dest / 'report.md'}, {dest / 'report.json'} and figures")


def register(app: typer.Typer) -> None:
    """Add ``exitnet evaluate`` to the CLI."""
    app.command("evaluate")(evaluate)
