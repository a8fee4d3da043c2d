"""`MultiExitNetwork`: stages and heads, the one seam every loop runs through, and the builders.

Survey §3.2: a backbone f = f_L ∘ … ∘ f_1 with auxiliary classifiers c_i on chosen embeddings h_i, eq. (3)
``y_i = c_i(h_i)``. Here the backbone is cut at the exit points into ``stages``; ``heads[i]`` maps the output of
``stages[i]`` to exit i's outputs. The last stage ends with the backbone's own output, so its head is the identity
and the last exit *is* the backbone (contract 1).

The seam (STYLE.md §14): every loop of the package (forward, runtime, cost, training strategies, calibration,
benchmark baselines) runs a network as

    h, ctx = net.begin(x)                       # inputs -> stream + side inputs
    h = net.forward_stage(i, h, ctx)            # stage i
    out = net.run_head(i, h, ctx)               # exit i

``ctx`` is a per-batch mapping of side inputs that cross every cut (attention mask, position ids, a graph, a
recurrent state, a key/value cache); it is compacted with the stream by :func:`exitnet.take_rows`. A stage or head
that reads side inputs names them in its ``ctx_keys`` attribute and is called as ``module(h, *[ctx[k] for k in
module.ctx_keys])``. Subclasses may override these three methods; nothing else runs stages or heads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from exitnet._utils import eval_mode, module_device, module_dtype, shape_str
from exitnet.cost import CostProfile, measure_time, profile
from exitnet.heads import create_head
from exitnet.outputs import ExitOutputs
from exitnet.points import normalize_inputs, split_module
from exitnet.rows import leaves, slice_rows, unwrap
from exitnet.scores import check_task

__all__ = ["MultiExitNetwork", "InputSpec"]

HeadSpec = str | Mapping[str, Any] | Callable[[tuple[int, ...], int], nn.Module]

_PER_POSITION_HEADS = ("tokenwise",)


@dataclass(frozen=True)
class InputSpec:
    """What a network takes: its inputs by name (the first is the stream into stage 0, the others become side
    inputs), each one's per-sample shape (``None`` for a dimension whose size may vary: sequence length, number of
    nodes) and dtype, and the form the inputs are passed in (``"tensor"``, ``"tuple"`` or ``"dict"``)."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int | None, ...], ...]
    dtypes: tuple[torch.dtype, ...]
    form: str = "tensor"

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": list(self.names),
            "shapes": [list(s) for s in self.shapes],
            "dtypes": [str(d).removeprefix("torch.") for d in self.dtypes],
            "form": self.form,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> InputSpec:
        dtypes = []
        for name in d["dtypes"]:
            dt = getattr(torch, str(name), None)
            if not isinstance(dt, torch.dtype):
                raise ValueError(f"unknown dtype {name!r} in an input spec")
            dtypes.append(dt)
        shapes = tuple(tuple(None if s is None else int(s) for s in shape) for shape in d["shapes"])
        return cls(tuple(str(n) for n in d["names"]), shapes, tuple(dtypes), str(d.get("form", "tensor")))

    def zeros(self, batch_size: int = 1, *, sizes: Mapping[str, tuple[int, ...]] | None = None) -> Any:
        """A neutral input of this spec (zeros; True for boolean masks), in the user's form."""
        parts = {}
        for name, shape, dtype in zip(self.names, self.shapes, self.dtypes, strict=True):
            concrete = (sizes or {}).get(name) or tuple(1 if s is None else s for s in shape)
            fill = True if dtype == torch.bool else 0
            parts[name] = torch.full((batch_size, *concrete), fill, dtype=dtype)
        return self.pack(parts)

    def pack(self, parts: Mapping[str, Any]) -> Any:
        """Inputs by name -> the user's form."""
        if self.form == "tensor":
            return parts[self.names[0]]
        if self.form == "tuple":
            return tuple(parts[n] for n in self.names)
        return {n: parts[n] for n in self.names}


def _make_head(spec: HeadSpec, shape: tuple[int, ...], num_outputs: int) -> tuple[nn.Module, dict | None]:
    """Build a head from a kind name, ``{"kind": ..., **options}`` or a factory; also return its JSON spec."""
    if isinstance(spec, str):
        return create_head(spec, shape, num_outputs), {"kind": spec}
    if isinstance(spec, Mapping):
        options = dict(spec)
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise ValueError(f"a head given as a dict needs a 'kind' key, got {dict(spec)}")
        return create_head(kind, shape, num_outputs, **options), dict(spec)
    if callable(spec):
        return spec(shape, num_outputs), None
    raise TypeError(f"head must be a kind name, a dict with 'kind', or a factory; got {type(spec).__name__}")


class _Squeeze(nn.Module):
    """``[B, 1] -> [B]``: a head for a scalar regression output."""

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h.squeeze(-1)


class MultiExitNetwork(nn.Module):
    """A backbone split into stages, with one head per exit.

    Args:
        stages: modules run one after the other; ``stages[i]`` takes the output of ``stages[i-1]`` (and the side
            inputs named in its ``ctx_keys`` attribute, if it has one).
        heads: one per stage; ``heads[i]`` maps the output of ``stages[i]`` to exit i's outputs. Use
            ``nn.Identity()`` for the last one when the last stage already ends in the outputs.
        exit_names: one name per exit (defaults to ``exit0``, ``exit1``, …, ``final``).
        input_shape: per-sample shape of the (single tensor) input; when given, inputs are checked against it.
        feature_shapes: per-sample output shape of every stage (filled by the builders).
        num_classes: number of classes every exit predicts (classification).
        task: ``"classification"`` (logits ``[B, C]`` or ``[B, *, C]``) or ``"regression"``.
        inputs: the :class:`InputSpec` for networks with several inputs (the first is the stream, the others go
            into ``ctx`` by name); builders fill it.
        prologue: a module mapping the inputs (by position, in ``inputs.names`` order) to ``(h, ctx)``; builders
            make one when side values cross cuts.
        output_mask: the ``ctx`` key of a ``[B, *]`` mask of valid output positions (padding tokens False), for
            per-position outputs.

    Example:
        >>> from exitnet.backbones import resnet
        >>> backbone = resnet(depth=8, in_chans=1, num_classes=10)
        >>> net = MultiExitNetwork.from_module(backbone, points=["layer1", "layer2"], num_classes=10,
        ...                                    sample_input=torch.zeros(1, 1, 8, 8))
        >>> out = net(torch.zeros(4, 1, 8, 8))
        >>> out.stack().shape, out.names
        (torch.Size([3, 4, 10]), ('layer1', 'layer2', 'final'))
    """

    def __init__(
        self,
        stages: Sequence[nn.Module],
        heads: Sequence[nn.Module],
        *,
        exit_names: Sequence[str] | None = None,
        input_shape: Sequence[int | None] | None = None,
        feature_shapes: Sequence[Sequence[int]] | None = None,
        num_classes: int | None = None,
        task: str = "classification",
        inputs: InputSpec | None = None,
        prologue: nn.Module | None = None,
        output_mask: str | None = None,
    ) -> None:
        super().__init__()
        if len(stages) == 0:
            raise ValueError("a multi-exit network needs at least one stage")
        if len(stages) != len(heads):
            raise ValueError(f"got {len(stages)} stages but {len(heads)} heads; give one head per stage")
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        self.prologue = prologue
        names = list(exit_names) if exit_names is not None else [f"exit{i}" for i in range(len(stages) - 1)]
        if exit_names is None:
            names.append("final")
        if len(names) != len(stages):
            raise ValueError(f"got {len(names)} exit names for {len(stages)} exits")
        if len(set(names)) != len(names):
            raise ValueError(f"exit names must be distinct, got {names}")
        self.exit_names: tuple[str, ...] = tuple(names)
        if inputs is None and input_shape is not None:
            shape = tuple(None if s is None else int(s) for s in input_shape)
            inputs = InputSpec(("x",), (shape,), (torch.float32,), "tensor")
            self._dtype_checked = False  # a user-built network: the input dtype is not known
        else:
            self._dtype_checked = inputs is not None
        self.inputs = inputs
        self.feature_shapes = (
            tuple(tuple(int(s) for s in f) for f in feature_shapes) if feature_shapes is not None else None
        )
        self.num_classes = num_classes
        self.task = check_task(task)
        self.output_mask = output_mask
        # JSON-serialisable recipe to rebuild this network (set by the builders; read by exitnet.checkpoint).
        self.spec: dict[str, Any] | None = None
        # Cost profiles, one per input shape (exitnet.cost.profile through the seam; see cost_profile).
        self.profile_cache: dict[Any, CostProfile] = {}
        # Layout the runtime gives each input batch (set by exitnet.runtime.optimize_for_inference).
        self.input_memory_format: torch.memory_format | None = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        points: Sequence[str],
        *,
        sample_input: Any,
        num_classes: int | None = None,
        head: HeadSpec | Sequence[HeadSpec] | None = None,
        task: str = "classification",
        dynamic_axes: Mapping[str, Sequence[int]] | str | None = "auto",
        output_mask: str | None = None,
    ) -> MultiExitNetwork:
        """Cut any ``torch.fx``-traceable ``model`` after each named module and put a head there.

        Args:
            model: the backbone; its output is the final exit's (logits ``[B, C]`` or ``[B, *, C]``, or regression
                values). Its parameters are shared.
            points: dotted module names in execution order (see :func:`exitnet.list_exit_points`).
            sample_input: an input batch used to infer every head's input shape (run in eval mode): a tensor, a
                tuple of tensors (positional inputs) or a dict (by name), any dtype (integer ids included).
            num_classes: classes of every exit (classification; checked against the backbone's output, inferred
                when ``None``).
            head: one head spec for all exits, or one per exit point: a kind of :func:`exitnet.list_heads`,
                a dict ``{"kind": ..., **options}``, or a factory ``(feature_shape, num_outputs) -> nn.Module``.
                Default: ``"pool"``, or ``"tokenwise"`` when the outputs are per position.
            task: ``"classification"`` or ``"regression"``.
            dynamic_axes: which input dims may change size between calls (sequence length, image size):
                ``"auto"`` (default) tries each group of equal-sized dims with one more element and keeps those
                the network accepts; a dict ``{input name: [dims]}`` (dims counted without the batch); or
                ``None`` (every dim fixed).
            output_mask: name of the input (or side value) that marks valid output positions (padding False),
                for per-position outputs.
        """
        split = split_module(model, points, sample_input)
        given, _ = normalize_inputs(model, sample_input)
        form = (
            "tensor"
            if isinstance(sample_input, torch.Tensor)
            else ("dict" if isinstance(sample_input, Mapping) else "tuple")
        )
        names = split.input_names
        spec = InputSpec(
            names,
            tuple(tuple(int(s) for s in given[n].shape[1:]) for n in names),
            tuple(given[n].dtype for n in names),
            form,
        )
        sample = spec.pack({n: given[n][:1] for n in names})
        net = cls._with_heads(
            split.stages, list(points), head, num_classes, sample, task=task, inputs=spec, prologue=split.prologue,
            output_mask=output_mask,
        )  # fmt: skip
        net._set_dynamic_axes(dynamic_axes, sample)
        net.spec = {"builder": "from_module", "points": list(points)}
        _attach_backbone_spec(net, model, head)
        return net

    @classmethod
    def from_sequential(
        cls,
        seq: nn.Sequential,
        exits: Sequence[int],
        *,
        sample_input: torch.Tensor,
        num_classes: int | None = None,
        head: HeadSpec | Sequence[HeadSpec] | None = None,
        task: str = "classification",
    ) -> MultiExitNetwork:
        """Put an exit after ``seq[i]`` for each ``i`` in ``exits`` (negative indices count from the end)."""
        if not isinstance(seq, nn.Sequential):
            raise TypeError(f"from_sequential needs an nn.Sequential, got {type(seq).__name__}; try from_module")
        n = len(seq)
        idx = [i + n if i < 0 else i for i in exits]
        if not idx:
            raise ValueError("give at least one exit index")
        if any(not 0 <= i < n - 1 for i in idx):
            raise ValueError(f"exit indices must lie in [0, {n - 2}] for a Sequential of {n} modules, got {exits}")
        if idx != sorted(set(idx)):
            raise ValueError(f"exit indices must be increasing and distinct, got {list(exits)}")
        if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 1 or sample_input.shape[0] < 1:
            raise ValueError("sample_input must be a tensor batch with at least one sample, e.g. torch.zeros(1, …)")
        bounds = [0, *(i + 1 for i in idx), n]
        stages = [seq[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]
        names = [str(i) for i in idx]
        spec = InputSpec(("x",), (tuple(int(s) for s in sample_input.shape[1:]),), (sample_input.dtype,))
        net = cls._with_heads(stages, names, head, num_classes, sample_input[:1], task=task, inputs=spec)
        net.spec = {"builder": "from_sequential", "exits": idx}
        _attach_backbone_spec(net, seq, head)
        return net

    @classmethod
    def _with_heads(
        cls,
        stages: Sequence[nn.Module],
        names: list[str],
        head: HeadSpec | Sequence[HeadSpec] | None,
        num_classes: int | None,
        sample: Any,
        *,
        task: str,
        inputs: InputSpec,
        prologue: nn.Module | None = None,
        output_mask: str | None = None,
    ) -> MultiExitNetwork:
        check_task(task)
        probe = cls(stages, [nn.Identity() for _ in stages], exit_names=[*names, "final"], inputs=inputs,
                    prologue=prologue, task=task)  # fmt: skip
        shapes = []
        with torch.no_grad(), eval_mode(probe):
            h, ctx = probe.begin(sample)
            for i in range(len(stages)):
                h = probe.forward_stage(i, h, ctx)
                if not isinstance(h, torch.Tensor):
                    raise TypeError(
                        f"stage {i} outputs a {type(h).__name__}, not a tensor; wrap the module before the exit "
                        "point so that it returns one tensor"
                    )
                shapes.append(tuple(int(s) for s in h.shape[1:]))
        out_shape = shapes[-1]
        if task == "classification":
            if len(out_shape) < 1:
                raise ValueError(f"a classifier's output must be logits (B, *, C), got {shape_str(out_shape)}")
            if num_classes is None:
                num_classes = out_shape[-1]
            if out_shape[-1] != num_classes:
                raise ValueError(
                    f"the backbone's output must be logits (B, {num_classes}), got {shape_str(out_shape)}; "
                    "check num_classes"
                )
        per_position = task == "classification" and len(out_shape) > 1
        if head is None:
            head = "tokenwise" if per_position else "pool"
        specs = list(head) if isinstance(head, Sequence) and not isinstance(head, str) else [head] * len(names)
        if len(specs) != len(names):
            raise ValueError(f"got {len(specs)} head specs for {len(names)} exit points")
        heads = []
        for s, shape in zip(specs, shapes[:-1], strict=True):
            heads.append(_head_for(s, shape, out_shape, task))
        net = cls(
            stages,
            [*heads, nn.Identity()],
            exit_names=[*names, "final"],
            feature_shapes=shapes,
            num_classes=num_classes if task == "classification" else None,
            task=task,
            inputs=inputs,
            prologue=prologue,
            output_mask=output_mask,
        )
        net.__dict__["_sample"] = sample  # plain attributes (nn.Module would type them as submodules)
        net.__dict__["_head_specs"] = specs
        with torch.no_grad(), eval_mode(net):
            out = net(sample)
        if tuple(out.logits[0].shape[1:]) != out_shape:
            raise ValueError(
                f"the heads give outputs {shape_str(tuple(out.logits[0].shape[1:]))}, the backbone "
                f"{shape_str(out_shape)}; every exit must give the backbone's output shape"
            )
        return net

    def _set_dynamic_axes(self, dynamic_axes: Mapping[str, Sequence[int]] | str | None, sample: Any) -> None:
        """Mark the input dims whose size may vary (see ``from_module``'s ``dynamic_axes``)."""
        spec = self.inputs
        assert spec is not None
        if dynamic_axes is None:
            return
        if isinstance(dynamic_axes, str):
            if dynamic_axes != "auto":
                raise ValueError(
                    f"dynamic_axes must be 'auto', None or a dict of input name -> dims, got {dynamic_axes!r}"
                )
            free = _probe_dynamic(self, spec, sample)
        else:
            free = {}
            for name, dims in dynamic_axes.items():
                if name not in spec.names:
                    raise ValueError(f"dynamic_axes names an unknown input {name!r}; inputs: {list(spec.names)}")
                rank = len(spec.shapes[spec.names.index(name)])
                bad = [d for d in dims if not -rank <= int(d) < rank]
                if bad:
                    raise ValueError(
                        f"dynamic_axes[{name!r}] = {list(dims)}: input {name!r} has {rank} dims after the batch"
                    )
                free[name] = {int(d) % rank for d in dims}
        shapes = tuple(
            tuple(None if d in free.get(name, ()) else s for d, s in enumerate(shape))
            for name, shape in zip(spec.names, spec.shapes, strict=True)
        )
        self.inputs = InputSpec(spec.names, shapes, spec.dtypes, spec.form)

    # ------------------------------------------------------------------ metadata
    @property
    def num_exits(self) -> int:
        return len(self.stages)

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Per-sample shape of the stream input as built (``None`` entries of a dynamic dim read as the built
        size); ``None`` when the network does not know it."""
        if self.inputs is None:
            return None
        sample = getattr(self, "_sample", None)
        if sample is not None:
            first = leaves(sample)[0]
            return tuple(int(s) for s in first.shape[1:])
        return tuple(1 if s is None else s for s in self.inputs.shapes[0])

    @property
    def device(self) -> torch.device:
        return module_device(self)

    # ------------------------------------------------------------------ inputs
    def pack_inputs(self, *inputs: Any, **named: Any) -> Any:
        """``net(ids, mask)`` / ``net(ids=…, mask=…)`` / ``net((ids, mask))`` -> one input object."""
        if named:
            names = self.inputs.names if self.inputs is not None else ()
            if len(inputs) > len(names):
                raise TypeError(f"got {len(inputs)} positional inputs; the network takes {list(names)}")
            parts = dict(zip(names, inputs, strict=False))
            dup = sorted(set(parts) & set(named))
            if dup:
                raise TypeError(f"inputs {dup} given twice")
            parts.update(named)
            return parts
        if len(inputs) == 1:
            return inputs[0]
        if not inputs:
            raise TypeError("the network needs an input")
        return tuple(inputs)

    def named_inputs(self, x: Any) -> dict[str, Any]:
        """The inputs ``x`` (a tensor, tuple or dict) by name, checked against the network's input names."""
        spec = self.inputs
        assert spec is not None
        if isinstance(x, Mapping):
            missing = [n for n in spec.names if n not in x]
            unknown = sorted(set(x) - set(spec.names))
            if missing or unknown:
                raise ValueError(f"the network takes inputs {list(spec.names)}; missing {missing}, unknown {unknown}")
            return {n: x[n] for n in spec.names}
        if isinstance(x, (tuple, list)):
            if len(x) != len(spec.names):
                raise ValueError(f"the network takes {len(spec.names)} inputs {list(spec.names)}, got {len(x)}")
            return dict(zip(spec.names, x, strict=True))
        if len(spec.names) != 1:
            raise ValueError(f"the network takes {len(spec.names)} inputs {list(spec.names)}; pass a tuple or a dict")
        return {spec.names[0]: x}

    def check_input(self, x: Any) -> None:
        """Raise a ``ValueError`` naming what is expected if ``x`` does not fit the network (form, shapes with their
        fixed dims, dtype kinds, one batch size)."""
        spec = self.inputs
        if spec is None:
            return
        parts = self.named_inputs(x)
        batch = None
        for (name, value), shape, dtype in zip(parts.items(), spec.shapes, spec.dtypes, strict=True):
            what = "input" if len(spec.names) == 1 else f"input {name!r}"
            value = unwrap(value)
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"{what} must be a torch.Tensor, got {type(value).__name__}")
            got = tuple(value.shape[1:])
            if value.dim() != len(shape) + 1 or any(s is not None and s != g for s, g in zip(shape, got, strict=False)):
                raise ValueError(f"the network expects {what} {shape_str(shape)}, got {tuple(value.shape)}")
            if batch is None:
                batch = value.shape[0]
            elif value.shape[0] != batch:
                raise ValueError(f"the inputs disagree on the batch size: {batch} and {value.shape[0]} ({name!r})")
            _check_dtype(self, what, value, dtype if self._dtype_checked else None)

    # ------------------------------------------------------------------ the seam
    def begin(self, x: Any) -> tuple[Any, dict[str, Any]]:
        """Inputs -> ``(h, ctx)``: the stream into stage 0 and the side inputs that cross every cut.

        A single-tensor network returns ``(x, {})``. Multi-input networks put every input but the first into
        ``ctx`` by name, and side values computed from the inputs (a mask ``ids == 0``, position ids) too.
        """
        if self.inputs is None or (len(self.inputs.names) == 1 and self.prologue is None):
            if isinstance(x, Mapping) and self.inputs is not None:
                x = self.named_inputs(x)[self.inputs.names[0]]
            return x, {}
        parts = self.named_inputs(x)
        if self.prologue is None:
            names = self.inputs.names
            return parts[names[0]], {n: parts[n] for n in names[1:]}
        h, ctx = self.prologue(*(unwrap(parts[n]) for n in self.inputs.names))
        ctx = dict(ctx)
        for n in self.inputs.names[1:]:  # keep Shared wrappers (never compacted) as the user passed them
            ctx[n] = parts[n]
        return h, ctx

    def forward_stage(self, i: int, h: Any, ctx: Mapping[str, Any] | None = None) -> Any:
        """Run stage ``i`` on the output of stage ``i - 1`` (or on the stream input, for ``i == 0``)."""
        return _call(self.stages[i], h, ctx, "stage", i)

    def run_head(self, i: int, h: Any, ctx: Mapping[str, Any] | None = None) -> torch.Tensor:
        """Outputs of exit ``i`` from the output of stage ``i``."""
        return _call(self.heads[i], h, ctx, "head", i)

    def outputs_mask(self, ctx: Mapping[str, Any]) -> torch.Tensor | None:
        """The ``[B, *]`` mask of valid output positions (``None`` when every position counts)."""
        if self.output_mask is None:
            return None
        if self.output_mask not in ctx:
            raise KeyError(f"output_mask {self.output_mask!r} is not among the side inputs {sorted(ctx)}")
        return unwrap(ctx[self.output_mask]).to(torch.bool)

    def forward(self, *inputs: Any, return_features: bool = False, **named: Any) -> ExitOutputs:
        """Run every stage and every head: the outputs of all exits (and the features, if asked)."""
        x = self.pack_inputs(*inputs, **named)
        self.check_input(x)
        h, ctx = self.begin(x)
        outs, feats = [], []
        for i in range(self.num_exits):
            h = self.forward_stage(i, h, ctx)
            outs.append(self.run_head(i, h, ctx))
            if return_features:
                feats.append(h)
        return ExitOutputs(
            tuple(outs),
            self.exit_names,
            task=self.task,
            mask=self.outputs_mask(ctx),
            features=tuple(feats) if return_features else None,
        )

    def forward_backbone(self, *inputs: Any, **named: Any) -> torch.Tensor:
        """The backbone alone: every stage, no auxiliary head (the baseline of every speed-up)."""
        x = self.pack_inputs(*inputs, **named)
        self.check_input(x)
        h, ctx = self.begin(x)
        for i in range(self.num_exits):
            h = self.forward_stage(i, h, ctx)
        return self.run_head(self.num_exits - 1, h, ctx)

    # ------------------------------------------------------------------ samples and cost
    def sample_input(self, batch_size: int = 1) -> Any:
        """A neutral input batch of the network's input spec (zeros; True for boolean masks), on its device."""
        if self.inputs is None:
            raise ValueError("this network has no input_shape; pass a sample input explicitly")
        sizes = None
        sample = getattr(self, "_sample", None)
        if sample is not None:
            sizes = {n: tuple(int(s) for s in unwrap(v).shape[1:]) for n, v in self.named_inputs(sample).items()}
        x = self.inputs.zeros(batch_size, sizes=sizes)
        from exitnet.rows import to_device

        return to_device(x, self.device)

    def cost_profile(self, x: Any = None) -> CostProfile:
        """The :class:`~exitnet.cost.CostProfile` for inputs shaped like ``x`` (default: the built sample), counted
        once per input shape and cached: FLOPs of attention grow with the sequence length."""
        if x is None:
            sample = getattr(self, "_sample", None)
            x = sample if sample is not None else self.sample_input()
        key = _shape_key(x)
        if key not in self.profile_cache:
            one = slice_rows(x, 0, 1)
            from exitnet.rows import to_device

            self.profile_cache[key] = profile(self, to_device(one, self.device))
        return self.profile_cache[key]

    def measure_time(self, x: Any, *, policy: Any = None, repeats: int = 9) -> CostProfile:
        """Measure seconds per sample of each stage, head (and ``policy`` decision) on the batch ``x``
        (:func:`exitnet.cost.measure_time`), add them to the cost profile of ``x``'s shape, and return it."""
        profile_ = self.cost_profile(x)
        timed = profile_.with_timing(measure_time(self, x, policy=policy, repeats=repeats))
        self.profile_cache[_shape_key(x)] = timed
        return timed

    def extra_repr(self) -> str:
        shape = self.inputs.shapes if self.inputs is not None else None
        return f"exits={list(self.exit_names)}, inputs={shape}, task={self.task}, num_classes={self.num_classes}"


def _call(module: nn.Module, h: Any, ctx: Mapping[str, Any] | None, what: str, i: int) -> Any:
    keys = getattr(module, "ctx_keys", ())
    if not keys:
        return module(h)
    if ctx is None:
        raise ValueError(f"{what} {i} reads side inputs {list(keys)}; pass ctx (from net.begin(x))")
    try:
        args = [unwrap(ctx[k]) for k in keys]
    except KeyError as err:
        raise KeyError(f"{what} {i} reads side input {err.args[0]!r}, which ctx lacks (it has {sorted(ctx)})") from None
    return module(h, *args)


def _head_for(spec: HeadSpec, feature_shape: tuple[int, ...], out_shape: tuple[int, ...], task: str) -> nn.Module:
    """A head mapping features of ``feature_shape`` to the backbone's output shape ``out_shape``."""
    kind = spec if isinstance(spec, str) else (spec.get("kind") if isinstance(spec, Mapping) else None)
    if kind in _PER_POSITION_HEADS:
        if task == "regression" and len(out_shape) < len(feature_shape):  # [B, T, D] -> [B, T]
            return nn.Sequential(_make_head(spec, feature_shape, 1)[0], _Squeeze())
        return _make_head(spec, feature_shape, out_shape[-1])[0]
    if len(out_shape) == 1:
        return _make_head(spec, feature_shape, out_shape[-1])[0]
    if len(out_shape) == 0:
        return nn.Sequential(_make_head(spec, feature_shape, 1)[0], _Squeeze())
    # Per-sample outputs of several dims: a head with their product as outputs, then unflattened.
    total = 1
    for s in out_shape:
        total *= s
    return nn.Sequential(_make_head(spec, feature_shape, total)[0], nn.Unflatten(1, out_shape))


def _shape_key(x: Any) -> tuple[Any, ...]:
    return tuple((tuple(t.shape[1:]), t.dtype) for t in leaves(x))


def _extend(t: torch.Tensor, dim: int) -> torch.Tensor:
    """``t`` with one more element along ``dim`` (a copy of its last slice)."""
    last = t.narrow(dim, t.shape[dim] - 1, 1)
    return torch.cat([t, last], dim=dim)


def _probe_dynamic(net: MultiExitNetwork, spec: InputSpec, sample: Any) -> dict[str, set[int]]:
    """Input dims whose size may change: each group of equal-sized dims (a sequence length shared by ids and
    mask, an image's height and width) is grown by one; if the whole network runs, the group is dynamic."""
    parts = net.named_inputs(sample)
    groups: dict[int, list[tuple[str, int]]] = {}
    for name, shape in zip(spec.names, spec.shapes, strict=True):
        for d, s in enumerate(shape):
            groups.setdefault(int(s or 0), []).append((name, d))
    free: dict[str, set[int]] = {}
    for members in groups.values():
        trial = dict(parts)
        for name, d in members:
            trial[name] = _extend(unwrap(trial[name]), d + 1)
        try:
            with torch.no_grad(), eval_mode(net):
                h, ctx = net.begin(spec.pack(trial))
                for i in range(net.num_exits):
                    h = net.forward_stage(i, h, ctx)
                    out = net.run_head(i, h, ctx)
        except (RuntimeError, ValueError, IndexError, TypeError, AssertionError):
            continue
        del out
        for name, d in members:
            free.setdefault(name, set()).add(d)
    return free


def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


def _check_dtype(net: MultiExitNetwork, what: str, x: torch.Tensor, kind: torch.dtype | None) -> None:
    """Raise a ``ValueError`` if ``x``'s dtype cannot go into ``net`` (the built-in kind, or the weights' dtype)."""
    if kind is not None and (
        x.is_floating_point() != kind.is_floating_point or (kind == torch.bool) != (x.dtype == torch.bool)
    ):
        kinds = "floating-point" if kind.is_floating_point else ("boolean" if kind == torch.bool else "integer")
        raise ValueError(f"the network expects {kinds} {what} (it was built with {kind}), got {x.dtype}")
    p = module_dtype(net)
    if x.is_floating_point() and p is not None and p != x.dtype and not _autocast_on(x.device.type):
        raise ValueError(f"the network's weights are {p} but the {what} is {x.dtype}; convert it: x.to({p})")


def _attach_backbone_spec(net: MultiExitNetwork, model: nn.Module, head: Any) -> None:
    """Record what a checkpoint needs to rebuild ``net`` without pickling: backbone config and head specs."""
    assert net.spec is not None
    config = getattr(model, "config", None)
    net.spec["backbone"] = config if isinstance(config, Mapping) and "name" in config else None
    specs = getattr(net, "_head_specs", None) or []
    json_specs: list[Any] = []
    for s in specs:
        if isinstance(s, str):
            json_specs.append({"kind": s})
        elif isinstance(s, Mapping):
            json_specs.append(dict(s))
        else:
            json_specs.append(None)  # a factory: the checkpoint needs the network passed in to load
    net.spec["heads"] = json_specs
    net.spec["num_classes"] = net.num_classes
    net.spec["task"] = net.task
    net.spec["input_shape"] = list(net.input_shape) if net.input_shape is not None else None
    net.spec["inputs"] = net.inputs.to_dict() if net.inputs is not None else None
    net.spec["output_mask"] = net.output_mask
