"""Analysis of a multi-exit network's outputs: per-exit accuracy, what a policy does, the oracle, overthinking.

Everything is computed from cached outputs of every exit (so the numbers are those of the runtime: contract 3)
and returned as plain dicts that ``json.dump`` writes as they are. "Accuracy" is the mean of a per-sample score
(:mod:`exitnet.scores`): the accuracy for one label per sample, the share of valid positions right for
token-level outputs, minus the squared error for regression (or any ``score_fn``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from exitnet.cost import CostProfile, expected_cost
from exitnet.outputs import ExitOutputs, as_outputs
from exitnet.policies import ExitPolicy
from exitnet.scores import ScoreFn, as_targets, default_score, score_matrix

__all__ = ["report", "oracle_exit", "overthinking_rate", "exit_scores", "to_markdown"]


def exit_scores(
    logits: ExitOutputs | torch.Tensor, y: torch.Tensor, *, score_fn: ScoreFn | None = None
) -> torch.Tensor:
    """Score of every exit on every sample ``[E, B]`` (float64), the labels checked against the outputs.

    Raises:
        ValueError: labels whose count, shape or values do not fit the outputs (class indices out of range, or
            non-integer float labels for a classification).

    Example:
        >>> exit_scores(torch.tensor([[[2.0, 0.0]], [[0.0, 2.0]]]), torch.tensor([1]))  # [E=2, B=1, C=2]
        tensor([[0.],
                [1.]], dtype=torch.float64)
    """
    outputs = as_outputs(logits)
    n = outputs.batch_size
    if y.dim() == 0 or y.shape[0] != n:
        raise ValueError(f"logits hold {n} samples but there are {y.shape[0] if y.dim() else 1} labels")
    stack = outputs.stack()
    num_classes = int(stack.shape[-1]) if outputs.task == "classification" else None
    targets = as_targets(y.to(stack.device), tuple(outputs.logits[0].shape), outputs.task, num_classes=num_classes)
    fn = score_fn if score_fn is not None else default_score(outputs.task)
    return score_matrix(stack, targets, task=outputs.task, score_fn=fn, mask=outputs.mask)


def _oracle(scores: torch.Tensor, task: str) -> torch.Tensor:
    best = scores.max(dim=0).values  # [B]
    hit = scores == best.unsqueeze(0)  # [E, B]: exits with the sample's best score
    first = hit.to(torch.uint8).argmax(dim=0)
    if task == "classification":  # nobody right: the oracle still has to answer, at the last exit
        first = torch.where(best <= 0, torch.full_like(first, scores.shape[0] - 1), first)
    return first


def oracle_exit(stack: ExitOutputs | torch.Tensor, y: torch.Tensor, *, score_fn: ScoreFn | None = None) -> torch.Tensor:
    """Per sample the earliest exit with its best score ``[B]``: for one label per sample the earliest exit that
    predicts it right (the last exit where none does)."""
    outputs = as_outputs(stack)
    return _oracle(exit_scores(outputs, y, score_fn=score_fn), outputs.task)


def _overthinking(scores: torch.Tensor) -> float:
    if scores.shape[0] < 2:
        return 0.0
    return float((scores[:-1].max(dim=0).values > scores[-1]).double().mean())


def overthinking_rate(stack: ExitOutputs | torch.Tensor, y: torch.Tensor, *, score_fn: ScoreFn | None = None) -> float:
    """Share of samples some earlier exit scores better than the final exit: for one label per sample, wrong at
    the final exit but right at some earlier exit (Kaya et al.'s overthinking).

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[0.0, 2.0], [0.0, 2.0]]])  # [E=2, B=2, C=2]
        >>> overthinking_rate(stack, torch.tensor([0, 1]))  # sample 0: right at exit 0, wrong at the end
        0.5
    """
    return _overthinking(exit_scores(stack, y, score_fn=score_fn))


def report(
    logits: ExitOutputs | torch.Tensor,
    y: torch.Tensor,
    *,
    policy: ExitPolicy | None = None,
    exit_index: torch.Tensor | None = None,
    cost: CostProfile | Sequence[float] | None = None,
    baseline_cost: float | None = None,
    score_fn: ScoreFn | None = None,
) -> dict[str, Any]:
    """Numbers that describe a multi-exit network on labelled data.

    Args:
        logits: outputs of every exit (``ExitOutputs``, whose task and mask are used, or ``[E, B, C]``).
        y: labels ``[B]`` (``[B, *]`` per position; regression targets of the outputs' shape).
        policy: a fitted policy whose decisions to report (or pass ``exit_index``); its answers are
            :meth:`~exitnet.policies.ExitPolicy.predict`'s (with ``fallback="most_confident"``, the most
            confident exit's for samples that reach the last exit).
        exit_index: the exit each sample took (e.g. ``ExitResult.exit_index``), answered by that exit.
        cost: a ``CostProfile`` or cumulative cost per exit; defaults to 1, 2, …, E units.
        baseline_cost: cost of the network without early exits; defaults to the profile's ``backbone_flops``
            (or the last exit's cost).
        score_fn: per-sample score ``score_fn(pred, y, mask) -> [B]``; defaults to the task's
            (:func:`exitnet.scores.default_score`): every "accuracy" below is its mean.

    Returns:
        A dict with ``num_samples``, ``task``, ``exit_names``, ``per_exit`` (list of ``{name, accuracy, flops,
        fraction}``), ``final_accuracy``, and when a policy or ``exit_index`` is given ``early_exit_accuracy``,
        ``mean_flops`` (eq. (12) per sample), ``flops_saved`` and ``speedup_flops``; always ``oracle`` (accuracy,
        mean_flops, flops_saved, speedup_flops of the earliest exit with each sample's best score) and
        ``overthinking_rate``. Each ``per_exit`` entry also has ``overthinking``: the share of samples that exit
        scores better than the final exit (gets right and the final exit wrong).

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])  # [E=2, B=2, C=2]
        >>> r = report(stack, torch.tensor([0, 1]), exit_index=torch.tensor([0, 1]), cost=[1.0, 3.0])
        >>> r["early_exit_accuracy"], r["mean_flops"], r["overthinking_rate"]
        (0.5, 2.0, 0.5)
    """
    outputs = as_outputs(logits)
    names = list(outputs.names)
    num_exits, n = outputs.num_exits, outputs.batch_size
    if n == 0:
        raise ValueError("report needs at least one sample")
    scores = exit_scores(outputs, y, score_fn=score_fn)  # [E, B]
    device = scores.device
    if isinstance(cost, CostProfile):
        exit_cost = [float(c) for c in cost.exit_flops]
        base = float(cost.backbone_flops) if baseline_cost is None else float(baseline_cost)
    else:
        exit_cost = [float(c) for c in cost] if cost is not None else [float(i + 1) for i in range(num_exits)]
        base = exit_cost[-1] if baseline_cost is None else float(baseline_cost)
    if len(exit_cost) != num_exits:
        raise ValueError(f"cost has {len(exit_cost)} entries for {num_exits} exits")
    per_exit_acc = scores.mean(dim=1).tolist()
    chosen_scores = None
    if exit_index is None and policy is not None:
        exit_index = policy.decide(outputs)
        fn = score_fn if score_fn is not None else default_score(outputs.task)
        targets = as_targets(y.to(device), tuple(outputs.logits[0].shape), outputs.task)
        chosen_scores = fn(policy.predict(outputs), targets, outputs.mask).double()
    out: dict[str, Any] = {
        "num_samples": n,
        "num_exits": num_exits,
        "task": outputs.task,
        "exit_names": names,
        "final_accuracy": per_exit_acc[-1],
        "baseline_flops": base,
    }
    fractions: list[float | None] = [None] * num_exits
    if exit_index is not None:
        exit_index = exit_index.reshape(-1).to(device)
        if exit_index.shape[0] != n:
            raise ValueError(f"exit_index has {exit_index.shape[0]} entries for {n} samples")
        counts = torch.bincount(exit_index, minlength=num_exits)
        fractions = [float(c) / n for c in counts]
        if chosen_scores is None:
            chosen_scores = scores[exit_index, torch.arange(n, device=device)]
        mean_cost = expected_cost(exit_index, exit_cost)
        out.update(
            early_exit_accuracy=float(chosen_scores.mean()),
            mean_flops=mean_cost,
            flops_saved=1.0 - mean_cost / base,
            speedup_flops=base / mean_cost,
        )
    overthinking = (scores > scores[-1:]).double().mean(dim=1).tolist()  # [E]: better here than at the end
    out["per_exit"] = [
        {
            "name": names[i],
            "accuracy": per_exit_acc[i],
            "flops": exit_cost[i],
            "fraction": fractions[i],
            "overthinking": overthinking[i],
        }
        for i in range(num_exits)
    ]
    oracle = _oracle(scores, outputs.task)
    oracle_cost = expected_cost(oracle, exit_cost)
    out["oracle"] = {
        "accuracy": float(scores.max(dim=0).values.mean()),
        "mean_flops": oracle_cost,
        "flops_saved": 1.0 - oracle_cost / base,
        "speedup_flops": base / oracle_cost if oracle_cost > 0 else float("inf"),
        "exit_fractions": [float(c) / n for c in torch.bincount(oracle, minlength=num_exits)],
    }
    out["overthinking_rate"] = _overthinking(scores)
    return out


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}%"


def to_markdown(rep: dict[str, Any], *, title: str = "Early-exit report", figures: dict[str, str] | None = None) -> str:
    """A Markdown page for a person: the headline numbers, a per-exit table, the oracle, overthinking, and
    links to the figures (``figures`` maps a caption to a relative path).

    Example:
        >>> stack = torch.tensor([[[2.0, 0.0], [0.0, 2.0]], [[2.0, 0.0], [2.0, 0.0]]])
        >>> md = to_markdown(report(stack, torch.tensor([0, 1]), exit_index=torch.tensor([0, 1]), cost=[1.0, 3.0]))
        >>> "| exit0 |" in md and "Oracle" in md
        True
    """
    mf = 1e6 if rep.get("baseline_flops", 0) >= 1e5 else 1.0
    unit = "MFLOPs" if mf == 1e6 else "cost units"
    lines = [f"# {title}", ""]
    meta = [(k, rep[k]) for k in ("checkpoint", "dataset", "split", "policy_name") if k in rep]
    for k, v in meta:
        lines.append(f"- **{k.replace('_', ' ')}**: `{v}`")
    lines.append(f"- **samples**: {rep['num_samples']}, **exits**: {rep['num_exits']}")
    lines.append(f"- **final-exit accuracy**: {_pct(rep['final_accuracy'])}")
    if "early_exit_accuracy" in rep:
        drop = rep["final_accuracy"] - rep["early_exit_accuracy"]
        side = f"{100 * drop:.2f} points below" if drop >= 0 else f"{-100 * drop:.2f} points above"
        lines += [
            f"- **early-exit accuracy**: {_pct(rep['early_exit_accuracy'])} ({side} the final exit)",
            f"- **mean cost**: {rep['mean_flops'] / mf:.4g} {unit} per sample, against "
            f"{rep['baseline_flops'] / mf:.4g} "
            f"for the backbone alone: **{_pct(rep['flops_saved'])} saved**, speed-up {rep['speedup_flops']:.2f}x "
            "(FLOPs-predicted)",
        ]
    if "speedup_wall" in rep:
        lines.append(f"- **wall-clock speed-up**: {rep['speedup_wall']:.2f}x")
    if rep.get("policy_source"):
        lines.append(f"- **policy**: {rep['policy_source']}")
    for warning in rep.get("warnings") or []:
        lines += ["", f"> **Warning**: {warning}"]
    oracle = rep["oracle"]
    lines += [
        "",
        "## Per exit",
        "",
        f"| exit | accuracy | cumulative {unit} | leaves here | oracle leaves here | right here, wrong at the end |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for e, of in zip(rep["per_exit"], oracle["exit_fractions"], strict=True):
        lines.append(
            f"| {e['name']} | {_pct(e['accuracy'])} | {e['flops'] / mf:.4g} | {_pct(e['fraction'])} | {_pct(of)} | "
            f"{_pct(e.get('overthinking'))} |"
        )
    lines += [
        "",
        "## Oracle and overthinking",
        "",
        "The oracle sends every sample out at the earliest exit that gets it right: accuracy "
        f"{_pct(oracle['accuracy'])} at {oracle['mean_flops'] / mf:.4g} {unit} per sample "
        f"({_pct(oracle['flops_saved'])} saved, speed-up {oracle.get('speedup_flops', float('nan')):.2f}x). "
        "No policy that sees only the exits' outputs can do better.",
        "",
        f"Overthinking: {_pct(rep['overthinking_rate'])} of the samples are wrong at the final exit but right at some "
        "earlier exit.",
    ]
    if rep.get("pareto_front"):
        front = rep["pareto_front"]
        lines += [
            "",
            f"## Pareto front of the policy ({len(front)} points on this split)",
            "",
            f"| mean {unit} | accuracy |",
            "|---:|---:|",
        ]
        step = max(1, len(front) // 12)
        shown = front[::step] if (len(front) - 1) % step == 0 else [*front[::step], front[-1]]
        for pt in shown:
            lines.append(f"| {pt['flops'] / mf:.4g} | {_pct(pt['accuracy'])} |")
    if figures:
        lines += ["", "## Figures", ""]
        for caption, path in figures.items():
            lines += [f"![{caption}]({path})", ""]
    return "\n".join(lines).rstrip() + "\n"
