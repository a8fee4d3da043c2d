"""Exit points: where in a backbone an exit may go, and splitting a backbone there with ``torch.fx``.

An exit point is a dotted module name (``"layer2.0"``, ``"blocks.1"``). It is valid when the module runs once
and, right after it, the module's output is the only value the rest of the network still needs (a *cut*):
then the backbone is exactly ``stage_k ∘ … ∘ stage_0`` with one tensor flowing between stages.
:func:`list_exit_points` lists them (STYLE.md §2: the twin of ``MultiExitNetwork.from_module(points=…)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from exitnet._utils import eval_mode

__all__ = ["ExitPoint", "list_exit_points", "split_module"]


@dataclass(frozen=True)
class ExitPoint:
    """A place where an exit may go: the module's dotted name and its output shape (batch dim first)."""

    name: str
    shape: tuple[int, ...]
    module_type: str


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _trace(model: nn.Module, leaves: Sequence[str] = ()) -> fx.GraphModule:
    try:
        graph = _LeafTracer(leaves).trace(model)
    except Exception as err:  # fx raises many kinds of errors on untraceable code
        raise TypeError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}). "
            "Use MultiExitNetwork.from_sequential for an nn.Sequential, or build the stages yourself and "
            "call MultiExitNetwork(stages, heads)."
        ) from err
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


def _placeholder(gm: fx.GraphModule) -> fx.Node:
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        names = [n.target for n in placeholders]
        raise TypeError(f"exit points need a backbone with one tensor input; its forward takes {names}")
    return placeholders[0]


def _live_after(nodes: list[fx.Node], k: int) -> set[fx.Node]:
    """Values defined at or before position k that a node after k uses (get_attr nodes excluded: free)."""
    pos = {n: i for i, n in enumerate(nodes)}
    return {n for n in nodes[: k + 1] if n.op != "get_attr" and any(pos[u] > k for u in n.users)}


def _module_path(entry: object, key: str) -> str:
    if isinstance(entry, tuple) and entry and isinstance(entry[0], str):
        return entry[0]
    return key


def list_exit_points(model: nn.Module, sample_input: torch.Tensor) -> list[ExitPoint]:
    """The dotted module names of ``model`` where an exit may go, with their output shapes.

    Args:
        model: any ``torch.fx``-traceable module with one tensor input.
        sample_input: an input batch (e.g. ``torch.zeros(1, 3, 32, 32)``), used to infer shapes in eval mode.

    Returns:
        Valid points in execution order. A module is left out when it runs more than once, when a value other
        than its output is still needed after it (inside a residual block, say), or when its output is the
        network's output.

    Example:
        >>> from exitnet.backbones import resnet
        >>> pts = list_exit_points(resnet(depth=8, in_chans=1, num_classes=10), torch.zeros(1, 1, 8, 8))
        >>> [(p.name, p.shape) for p in pts if p.name.startswith("layer")]  # doctest: +NORMALIZE_WHITESPACE
        [('layer1.0', (1, 16, 8, 8)), ('layer1', (1, 16, 8, 8)), ('layer2.0', (1, 32, 4, 4)),
         ('layer2', (1, 32, 4, 4)), ('layer3.0', (1, 64, 2, 2)), ('layer3', (1, 64, 2, 2))]
    """
    gm = _trace(model)
    _placeholder(gm)
    with eval_mode(gm), torch.no_grad():
        ShapeProp(gm).propagate(sample_input)
    nodes = list(gm.graph.nodes)
    output_node = nodes[-1]
    spans: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for key, entry in node.meta.get("nn_module_stack", {}).items():
            spans.setdefault(_module_path(entry, key), []).append(i)
    modules = dict(model.named_modules())
    points = []
    for name, idx in spans.items():
        if name not in modules or name == "":
            continue
        last = idx[-1]
        contiguous = idx == list(range(idx[0], last + 1))
        node = nodes[last]
        meta = node.meta.get("tensor_meta")
        if not contiguous or not hasattr(meta, "shape") or output_node in node.users:
            continue
        if _live_after(nodes, last) != {node}:
            continue
        points.append((last, ExitPoint(name, tuple(meta.shape), type(modules[name]).__name__)))
    points.sort(key=lambda p: (p[0], p[1].name.count(".") * -1))
    return [p for _, p in points]


def _invalid_point_error(model: nn.Module, name: str, why: str, sample_input: torch.Tensor | None) -> ValueError:
    if sample_input is not None:
        valid = [p.name for p in list_exit_points(model, sample_input)]
        hint = f"valid exit points: {', '.join(valid) if valid else '(none)'}"
    else:
        hint = "list them with exitnet.list_exit_points(model, sample_input)"
    return ValueError(f"exit point {name!r} {why}; {hint}")


def split_module(
    model: nn.Module, points: Sequence[str], sample_input: torch.Tensor | None = None
) -> list[fx.GraphModule]:
    """Split ``model`` into ``len(points) + 1`` stages, cutting right after each named module.

    The stages share parameters with ``model`` and compose to it exactly:
    ``stages[-1](…stages[0](x))`` equals ``model(x)``.

    Raises:
        ValueError: an unknown or invalid point, or points out of execution order; the message lists the valid
            points (computed from ``sample_input`` when given).
    """
    names = list(points)
    if not names:
        raise ValueError("give at least one exit point; list them with exitnet.list_exit_points(model, x)")
    if len(set(names)) != len(names):
        raise ValueError(f"exit points must be distinct, got {names}")
    modules = dict(model.named_modules())
    for name in names:
        if name not in modules or name == "":
            raise _invalid_point_error(model, name, "is not a module of this network", sample_input)
        for other in names:
            if other != name and other.startswith(name + "."):
                raise ValueError(f"exit points {name!r} and {other!r} are nested; keep one of them")
    gm = _trace(model, leaves=names)
    placeholder = _placeholder(gm)
    nodes = list(gm.graph.nodes)
    cuts = []
    for name in names:
        found = [i for i, n in enumerate(nodes) if n.op == "call_module" and n.target == name]
        if len(found) != 1:
            why = "does not run in forward" if not found else f"runs {len(found)} times in forward"
            raise _invalid_point_error(model, name, why, sample_input)
        i = found[0]
        live = _live_after(nodes, i)
        if nodes[-1] in nodes[i].users:
            raise _invalid_point_error(
                model, name, "gives the network's output (the last exit is added for you)", sample_input
            )
        if live != {nodes[i]}:
            others = sorted(n.name for n in live - {nodes[i]})
            raise _invalid_point_error(model, name, f"is not a cut: {others} are still needed after it", sample_input)
        cuts.append(i)
    if cuts != sorted(cuts):
        order = [names[j] for j in sorted(range(len(names)), key=lambda j: cuts[j])]
        raise ValueError(f"exit points must be given in execution order: {order}")

    stages = []
    bounds = [-1, *cuts, len(nodes) - 1]  # node indices; the last bound is the output node
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        source = placeholder if k == 0 else nodes[lo]
        env[source] = graph.placeholder("x" if k == 0 else "h")

        def lookup(n: fx.Node, graph: fx.Graph = graph, env: dict[fx.Node, fx.Node] = env) -> fx.Node:
            if n not in env:
                if n.op != "get_attr":
                    raise RuntimeError(f"internal error: value {n.name} crosses a stage boundary")
                env[n] = graph.node_copy(n, lambda m: env[m])
            return env[n]

        for node in nodes[lo + 1 : hi + (0 if k == len(bounds) - 2 else 1)]:
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                break
            env[node] = graph.node_copy(node, lookup)
        if k == len(bounds) - 2:
            graph.output(fx.map_arg(nodes[-1].args[0], lookup))
        else:
            graph.output(env[nodes[hi]])
        graph.lint()
        stages.append(fx.GraphModule(gm, graph, class_name=f"Stage{k}"))
    return stages
