"""Exit points: where in a backbone an exit may go, and splitting a backbone there with ``torch.fx``.

An exit point is a dotted module name (``"layer2.0"``, ``"blocks.1"``). It is valid when the module runs once and,
right after it, the only values the rest of the network still needs are the module's output (the *stream*) and
*side values*: values computed from the inputs by parameter-free operations (an attention mask, ``ids == 0``,
position ids, the raw inputs themselves). Side values are computed once, up front, by the network's *prologue*
and cross every cut in ``ctx``; the stream flows from stage to stage. Then the backbone is exactly
``stage_k ∘ … ∘ stage_0 ∘ prologue``.

A module that returns a tuple (``nn.LSTM``, ``nn.GRU``: ``out, state = self.rnn(x)``) is a valid point when the
rest of the network uses one element of the tuple: the cut is then on that element.

:func:`list_exit_points` lists the points (STYLE.md §2: the twin of ``MultiExitNetwork.from_module(points=…)``);
``include_invalid=True`` also lists the modules that cannot be points, each with the reason.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from exitnet._utils import eval_mode

__all__ = ["ExitPoint", "Split", "list_exit_points", "split_module", "normalize_inputs"]


@dataclass(frozen=True)
class ExitPoint:
    """A place where an exit may go: the module's dotted name, its output shape (batch dim first) and type.

    ``side_inputs`` are the side values (ctx keys) that cross the cut after it; for an invalid point (listed with
    ``include_invalid=True``) ``valid`` is False and ``reason`` says why.
    """

    name: str
    shape: tuple[int, ...]
    module_type: str
    valid: bool = True
    reason: str = ""
    side_inputs: tuple[str, ...] = ()


@dataclass
class Split:
    """What :func:`split_module` returns: the prologue (``None`` when the input goes straight into stage 0), the
    stages (each with ``ctx_keys``: the side values it reads), the input names and the stage output shapes."""

    prologue: fx.GraphModule | None
    stages: list[fx.GraphModule]
    input_names: tuple[str, ...]
    feature_shapes: list[tuple[int, ...]] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------ inputs
def normalize_inputs(model: nn.Module, sample_input: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(given, concrete)``: the sample input by ``forward`` parameter name, and the defaults of the parameters
    not given (fixed while tracing, like ``mask=None``).

    ``sample_input`` is a tensor (the first parameter), a tuple of tensors (positional) or a dict (by name).
    """
    try:
        params = [
            p
            for p in inspect.signature(model.forward).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        ]
    except (TypeError, ValueError):  # builtins without a signature
        params = []
    names = [p.name for p in params]
    if isinstance(sample_input, torch.Tensor):
        given = {names[0] if names else "x": sample_input}
    elif isinstance(sample_input, (tuple, list)):
        if len(sample_input) > len(names) and names:
            raise ValueError(f"got {len(sample_input)} sample inputs but {type(model).__name__}.forward takes {names}")
        given = {names[i] if names else f"x{i}": v for i, v in enumerate(sample_input)}
    elif isinstance(sample_input, Mapping):
        unknown = sorted(set(sample_input) - set(names)) if names else []
        if unknown:
            raise ValueError(f"sample input keys {unknown} are not parameters of forward; it takes {names}")
        given = dict(sample_input)
    else:
        raise TypeError(
            "sample_input must be a tensor, a tuple of tensors (positional inputs) or a dict of tensors (by name), "
            f"got {type(sample_input).__name__}"
        )
    for k, v in given.items():
        if not isinstance(v, torch.Tensor) or v.dim() < 1 or v.shape[0] < 1:
            raise ValueError(
                f"sample input {k!r} must be a tensor batch with at least one sample, e.g. torch.zeros(1, …)"
            )
    concrete: dict[str, Any] = {}
    for p in params:
        if p.name in given:
            continue
        if p.default is inspect.Parameter.empty:
            raise ValueError(
                f"{type(model).__name__}.forward needs {p.name!r}, which the sample input does not give; "
                "pass sample_input as a tuple or a dict with every input"
            )
        concrete[p.name] = p.default
    return given, concrete


class _LeafTracer(fx.Tracer):
    def __init__(self, leaves: Sequence[str]) -> None:
        super().__init__()
        self.leaves = set(leaves)

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return module_qualified_name in self.leaves or super().is_leaf_module(m, module_qualified_name)


def _trace(
    model: nn.Module, given: dict[str, Any], concrete: dict[str, Any], leaves: Sequence[str] = ()
) -> tuple[fx.GraphModule, list[fx.Node]]:
    try:
        graph = _LeafTracer(leaves).trace(model, concrete_args=concrete or None)
    except Exception as err:  # fx raises many kinds of errors on untraceable code
        raise TypeError(
            f"cannot trace {type(model).__name__} with torch.fx ({type(err).__name__}: {err}). "
            "Use MultiExitNetwork.from_sequential for an nn.Sequential, or build the stages yourself and "
            "call MultiExitNetwork(stages, heads)."
        ) from err
    # Parameters fixed while tracing (mask=None): drop their guards and placeholders.
    for node in list(graph.nodes):
        if node.op == "placeholder" and node.target not in given:
            for user in list(node.users):
                if user.op == "call_function" and getattr(user.target, "__name__", "") == "_assert_is_none":
                    graph.erase_node(user)
            if not node.users:
                graph.erase_node(node)
    # Unused elements of a tuple output (the state of ``out, _ = self.rnn(x)``) are not uses of the tuple.
    for node in reversed(list(graph.nodes)):
        if node.op == "call_function" and node.target is operator.getitem and not node.users:
            graph.erase_node(node)
    gm = fx.GraphModule(model, graph, class_name=type(model).__name__)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    missing = [n.target for n in placeholders if n.target not in given]
    if missing:
        raise ValueError(f"the sample input lacks {missing}, which {type(model).__name__}.forward uses")
    return gm, placeholders


def _propagate(gm: fx.GraphModule, placeholders: list[fx.Node], given: dict[str, Any]) -> None:
    with eval_mode(gm), torch.no_grad():
        ShapeProp(gm).propagate(*[given[str(n.target)] for n in placeholders])


# ------------------------------------------------------------------------------------------------ analysis
def _param_attrs(gm: fx.GraphModule) -> set[str]:
    return {name for name, _ in gm.named_parameters()}


def side_values(nodes: list[fx.Node], params: set[str]) -> set[fx.Node]:
    """Nodes computed from the inputs by parameter-free operations only: they may cross a cut in ``ctx``."""
    side: set[fx.Node] = set()
    for n in nodes:
        if n.op == "placeholder":
            side.add(n)
        elif n.op == "get_attr":
            if str(n.target) not in params:
                side.add(n)
        elif n.op in ("call_function", "call_method") and all(i in side for i in n.all_input_nodes):
            side.add(n)
    return side


def _live_after(nodes: list[fx.Node], pos: dict[fx.Node, int], k: int) -> set[fx.Node]:
    """Values defined at or before position k that a node after k uses (get_attr nodes excluded: free)."""
    return {n for n in nodes[: k + 1] if n.op != "get_attr" and any(pos[u] > k for u in n.users)}


def _module_path(entry: object, key: str) -> str:
    if isinstance(entry, tuple) and entry and isinstance(entry[0], str):
        return entry[0]
    return key


def _stream_node(node: fx.Node) -> tuple[fx.Node | None, str]:
    """The node that carries the stream after a module's call node: itself, or the one ``getitem`` of its tuple
    output that the rest of the network uses. ``(None, reason)`` when there is none."""
    users = list(node.users)
    if not users or not all(u.op == "call_function" and u.target is operator.getitem for u in users):
        return node, ""
    indices = {u.args[1] for u in users}
    if len(users) == 1:
        return users[0], ""
    return None, (
        f"returns a tuple whose elements {sorted(map(str, indices))} are used after it; an exit needs one tensor to "
        "flow on: wrap the module so that it returns the one tensor the rest of the network reads"
    )


def _why_not_batch_first(model: nn.Module, name: str) -> str:
    module = dict(model.named_modules()).get(name)
    if isinstance(module, nn.RNNBase) and not module.batch_first:
        return (
            f"is an {type(module).__name__} with batch_first=False: its output has the batch in dim 1, and exitnet "
            "compacts samples along dim 0; build it with batch_first=True"
        )
    return ""


def _check_cut(
    nodes: list[fx.Node], pos: dict[fx.Node, int], side: set[fx.Node], stream: fx.Node
) -> tuple[bool, str, tuple[fx.Node, ...]]:
    """Is the position of ``stream`` a cut? ``(valid, reason, side values crossing it)``."""
    if nodes[-1] in stream.users:
        return False, "gives the network's output (the last exit is added for you)", ()
    live = _live_after(nodes, pos, pos[stream])
    others = live - {stream}
    blocking = sorted(n.name for n in others if n not in side)
    if blocking:
        return False, f"is not a cut: {blocking} are still needed after it", ()
    return True, "", tuple(sorted(others, key=lambda n: pos[n]))


def _shape(node: fx.Node) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    shape = getattr(meta, "shape", None)
    return tuple(shape) if shape is not None else None


def list_exit_points(model: nn.Module, sample_input: Any, *, include_invalid: bool = False) -> list[ExitPoint]:
    """The dotted module names of ``model`` where an exit may go, with their output shapes.

    Args:
        model: any ``torch.fx``-traceable module (one input, or several: a mask, ids, a graph).
        sample_input: an input batch: a tensor, a tuple of tensors (positional inputs) or a dict (by name), of any
            dtype (integer token ids included); used to infer shapes in eval mode.
        include_invalid: also list the modules that cannot be exit points, with ``valid=False`` and the reason.

    Returns:
        Points in execution order. A module cannot be a point when it runs more than once, when a value other than
        its output and side values is still needed after it (inside a residual block, say), or when its output is
        the network's output.

    Example:
        >>> from exitnet.backbones import resnet
        >>> pts = list_exit_points(resnet(depth=8, in_chans=1, num_classes=10), torch.zeros(1, 1, 8, 8))
        >>> [(p.name, p.shape) for p in pts if p.name.startswith("layer")]  # doctest: +NORMALIZE_WHITESPACE
        [('layer1.0', (1, 16, 8, 8)), ('layer1', (1, 16, 8, 8)), ('layer2.0', (1, 32, 4, 4)),
         ('layer2', (1, 32, 4, 4)), ('layer3.0', (1, 64, 2, 2)), ('layer3', (1, 64, 2, 2))]
    """
    given, concrete = normalize_inputs(model, sample_input)
    gm, placeholders = _trace(model, given, concrete)
    _propagate(gm, placeholders, given)
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    side = side_values(nodes, _param_attrs(gm))
    spans: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for key, entry in node.meta.get("nn_module_stack", {}).items():
            spans.setdefault(_module_path(entry, key), []).append(i)
    modules = dict(model.named_modules())
    points: list[tuple[int, ExitPoint]] = []
    for name, idx in spans.items():
        if name not in modules or name == "":
            continue
        kind = type(modules[name]).__name__
        last = idx[-1]
        stream, reason = _stream_node(nodes[last])
        shape = _shape(stream) if stream is not None else None
        if stream is not None and idx != list(range(idx[0], last + 1)):
            stream, reason = None, "runs more than once, or in pieces, in forward"
        if stream is not None and shape is None:
            stream, reason = None, "does not output one tensor"
        if stream is not None:
            reason = _why_not_batch_first(model, name)
            if reason:
                stream = None
        crossing: tuple[fx.Node, ...] = ()
        if stream is not None:
            ok, reason, crossing = _check_cut(nodes, pos, side, stream)
            if not ok:
                stream = None
        if stream is None:
            if include_invalid:
                points.append((last, ExitPoint(name, shape or (), kind, valid=False, reason=reason)))
            continue
        assert shape is not None
        keys = tuple(_ctx_key(n) for n in crossing)
        points.append((pos[stream], ExitPoint(name, shape, kind, side_inputs=keys)))
    points.sort(key=lambda p: (p[0], p[1].name.count(".") * -1))
    return [p for _, p in points]


def _ctx_key(node: fx.Node) -> str:
    return str(node.target) if node.op == "placeholder" else node.name


def _invalid_point_error(model: nn.Module, name: str, why: str, sample_input: Any) -> ValueError:
    if sample_input is not None:
        valid = [p.name for p in list_exit_points(model, sample_input)]
        hint = f"valid exit points: {', '.join(valid) if valid else '(none)'}"
    else:
        hint = "list them with exitnet.list_exit_points(model, sample_input)"
    return ValueError(f"exit point {name!r} {why}; {hint}")


# ------------------------------------------------------------------------------------------------ splitting
def split_module(model: nn.Module, points: Sequence[str], sample_input: Any) -> Split:
    """Split ``model`` into a prologue and ``len(points) + 1`` stages, cutting right after each named module.

    The stages share parameters with ``model`` and compose to it exactly. Stage ``k`` is called as
    ``stage(h, *[ctx[key] for key in stage.ctx_keys])``; the prologue (``None`` when the first input goes straight
    into stage 0 and nothing crosses a cut) maps the inputs, by name, to ``(h, ctx)``.

    Raises:
        ValueError: an unknown or invalid point, or points out of execution order; the message lists the valid
            points.
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
    given, concrete = normalize_inputs(model, sample_input)
    gm, placeholders = _trace(model, given, concrete, leaves=names)
    _propagate(gm, placeholders, given)
    nodes = list(gm.graph.nodes)
    pos = {n: i for i, n in enumerate(nodes)}
    side = side_values(nodes, _param_attrs(gm))
    streams: list[fx.Node] = []
    crossing: set[fx.Node] = set()
    for name in names:
        found = [n for n in nodes if n.op == "call_module" and n.target == name]
        if len(found) != 1:
            why = "does not run in forward" if not found else f"runs {len(found)} times in forward"
            raise _invalid_point_error(model, name, why, sample_input)
        stream, why = _stream_node(found[0])
        if stream is None:
            raise _invalid_point_error(model, name, why, sample_input)
        why = _why_not_batch_first(model, name)
        if why:
            raise _invalid_point_error(model, name, why, sample_input)
        if _shape(stream) is None:
            raise _invalid_point_error(model, name, "does not output one tensor", sample_input)
        ok, why, cross = _check_cut(nodes, pos, side, stream)
        if not ok:
            raise _invalid_point_error(model, name, why, sample_input)
        streams.append(stream)
        crossing.update(cross)
    cuts = [pos[s] for s in streams]
    if cuts != sorted(cuts):
        order = [names[j] for j in sorted(range(len(names)), key=lambda j: cuts[j])]
        raise ValueError(f"exit points must be given in execution order: {order}")

    primary = placeholders[0]
    # Side values that cross a cut are computed once by the prologue (with the side values they derive from).
    provided = set(crossing)  # values stages read from ctx
    needed = set()
    stack = list(crossing)
    while stack:
        n = stack.pop()
        if n in needed:
            continue
        needed.add(n)
        stack.extend(n.all_input_nodes)
    # Every other input comes through ctx too (as itself).
    for ph in placeholders[1:]:
        provided.add(ph)
        needed.add(ph)
    keys = {n: _ctx_key(n) for n in provided}

    prologue = None
    if provided:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        for ph in placeholders:
            env[ph] = graph.placeholder(str(ph.target))
        for n in nodes:
            if n in needed and n.op not in ("placeholder", "output"):
                env[n] = graph.node_copy(n, lambda m: env[m])
        graph.output((env[primary], {keys[n]: env[n] for n in sorted(provided, key=lambda m: pos[m])}))
        graph.lint()
        prologue = fx.GraphModule(gm, graph, class_name="Prologue")

    stages = []
    bounds = [-1, *cuts, len(nodes) - 1]  # node positions; the last bound is the output node
    for k in range(len(bounds) - 1):
        lo, hi = bounds[k], bounds[k + 1]
        graph = fx.Graph()
        env = {}
        source = primary if k == 0 else streams[k - 1]
        env[source] = graph.placeholder("x" if k == 0 else "h")
        ctx_keys: list[str] = []

        def lookup(n: fx.Node, graph: fx.Graph = graph, env: dict[fx.Node, fx.Node] = env,
                   ctx_keys: list[str] = ctx_keys) -> fx.Node:  # fmt: skip
            if n not in env:
                if n in provided:
                    ctx_keys.append(keys[n])
                    env[n] = graph.placeholder(f"ctx_{len(ctx_keys) - 1}_{keys[n]}")
                elif n.op == "get_attr":
                    env[n] = graph.node_copy(n, lambda m: env[m])
                else:
                    raise RuntimeError(f"internal error: value {n.name} crosses a stage boundary")
            return env[n]

        last_stage = k == len(bounds) - 2
        for node in nodes[lo + 1 : hi + (0 if last_stage else 1)]:
            if node.op in ("placeholder", "get_attr") or node in provided:
                continue
            if node.op == "output":
                break
            env[node] = graph.node_copy(node, lookup)
        if last_stage:
            graph.output(fx.map_arg(nodes[-1].args[0], lookup))
        else:
            graph.output(env[streams[k]])
        # Placeholders must come first: move the ctx placeholders created on demand to the front, in order.
        first = next(iter(graph.nodes))
        for ph in [n for n in graph.nodes if n.op == "placeholder" and n is not first]:
            first.append(ph)
            first = ph
        graph.lint()
        stage = fx.GraphModule(gm, graph, class_name=f"Stage{k}")
        setattr(stage, "ctx_keys", tuple(ctx_keys))  # noqa: B010 (a plain attribute, not a submodule)
        stages.append(stage)
    shapes = [_shape(s)[1:] for s in streams]  # type: ignore[index]
    return Split(prologue, stages, tuple(str(p.target) for p in placeholders), shapes)
