"""`MultiExitNetwork`: stages and heads, and the builders that make one from a backbone.

Survey §3.2: a backbone f = f_L ∘ … ∘ f_1 with auxiliary classifiers c_i on chosen embeddings h_i, eq. (3)
``y_i = c_i(h_i)``. Here the backbone is cut at the exit points into ``stages``; ``heads[i]`` maps the output of
``stages[i]`` to logits. The last stage ends with the backbone's own output, so its head is the identity and the
last exit *is* the backbone (contract 1).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from exitnet._utils import eval_mode, shape_str
from exitnet.cost import CostProfile, profile
from exitnet.heads import create_head
from exitnet.outputs import ExitOutputs
from exitnet.points import split_module

__all__ = ["MultiExitNetwork"]

HeadSpec = str | Mapping[str, Any] | Callable[[tuple[int, ...], int], nn.Module]


def _make_head(spec: HeadSpec, shape: tuple[int, ...], num_classes: int) -> tuple[nn.Module, dict | None]:
    """Build a head from a kind name, ``{"kind": ..., **options}`` or a factory; also return its JSON spec."""
    if isinstance(spec, str):
        return create_head(spec, shape, num_classes), {"kind": spec}
    if isinstance(spec, Mapping):
        options = dict(spec)
        kind = options.pop("kind", None)
        if not isinstance(kind, str):
            raise ValueError(f"a head given as a dict needs a 'kind' key, got {dict(spec)}")
        return create_head(kind, shape, num_classes, **options), dict(spec)
    if callable(spec):
        return spec(shape, num_classes), None
    raise TypeError(f"head must be a kind name, a dict with 'kind', or a factory; got {type(spec).__name__}")


class MultiExitNetwork(nn.Module):
    """A backbone split into stages, with one head per exit.

    Args:
        stages: modules run one after the other; ``stages[i]`` takes the output of ``stages[i-1]``.
        heads: one per stage; ``heads[i]`` maps the output of ``stages[i]`` to logits ``[B, C]``. Use
            ``nn.Identity()`` for the last one when the last stage already ends in logits.
        exit_names: one name per exit (defaults to ``exit0``, ``exit1``, …, ``final``).
        input_shape: per-sample input shape; when given, inputs are checked against it.
        feature_shapes: per-sample output shape of every stage (filled by the builders).
        num_classes: number of classes every exit predicts.

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
        input_shape: Sequence[int] | None = None,
        feature_shapes: Sequence[Sequence[int]] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if len(stages) == 0:
            raise ValueError("a multi-exit network needs at least one stage")
        if len(stages) != len(heads):
            raise ValueError(f"got {len(stages)} stages but {len(heads)} heads; give one head per stage")
        self.stages = nn.ModuleList(stages)
        self.heads = nn.ModuleList(heads)
        names = list(exit_names) if exit_names is not None else [f"exit{i}" for i in range(len(stages) - 1)]
        if exit_names is None:
            names.append("final")
        if len(names) != len(stages):
            raise ValueError(f"got {len(names)} exit names for {len(stages)} exits")
        self.exit_names: tuple[str, ...] = tuple(names)
        self.input_shape = tuple(int(s) for s in input_shape) if input_shape is not None else None
        self.feature_shapes = (
            tuple(tuple(int(s) for s in f) for f in feature_shapes) if feature_shapes is not None else None
        )
        self.num_classes = num_classes
        # JSON-serialisable recipe to rebuild this network (set by the builders; read by exitnet.checkpoint).
        self.spec: dict[str, Any] | None = None
        self._cost_profile: CostProfile | None = None
        # dtype of the sample input the builders saw (None = unchecked); integer inputs suit embedding backbones.
        self.input_dtype: torch.dtype | None = None
        # Layout the runtime gives each input batch (set by exitnet.runtime.optimize_for_inference).
        self.input_memory_format: torch.memory_format | None = None

    # ------------------------------------------------------------------ builders
    @classmethod
    def from_module(
        cls,
        model: nn.Module,
        points: Sequence[str],
        *,
        num_classes: int,
        sample_input: torch.Tensor,
        head: HeadSpec | Sequence[HeadSpec] = "pool",
    ) -> MultiExitNetwork:
        """Cut any ``torch.fx``-traceable ``model`` after each named module and put a head there.

        Args:
            model: the backbone; its output must be the logits ``[B, num_classes]``. Its parameters are shared.
            points: dotted module names in execution order (see :func:`exitnet.list_exit_points`).
            num_classes: classes of every exit.
            sample_input: an input batch used to infer every head's input shape (run in eval mode).
            head: one head spec for all exits, or one per exit point: a kind of :func:`exitnet.list_heads`,
                a dict ``{"kind": ..., **options}``, or a factory ``(feature_shape, num_classes) -> nn.Module``.
        """
        stages = split_module(model, points, sample_input)
        net = cls._with_heads(stages, list(points), head, num_classes, sample_input)
        net.spec = {"builder": "from_module", "points": list(points)}
        _attach_backbone_spec(net, model, head)
        return net

    @classmethod
    def from_sequential(
        cls,
        seq: nn.Sequential,
        exits: Sequence[int],
        *,
        num_classes: int,
        sample_input: torch.Tensor,
        head: HeadSpec | Sequence[HeadSpec] = "pool",
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
        bounds = [0, *(i + 1 for i in idx), n]
        stages = [seq[bounds[k] : bounds[k + 1]] for k in range(len(bounds) - 1)]
        names = [str(i) for i in idx]
        net = cls._with_heads(stages, names, head, num_classes, sample_input)
        net.spec = {"builder": "from_sequential", "exits": idx}
        _attach_backbone_spec(net, seq, head)
        return net

    @classmethod
    def _with_heads(
        cls,
        stages: Sequence[nn.Module],
        names: list[str],
        head: HeadSpec | Sequence[HeadSpec],
        num_classes: int,
        sample_input: torch.Tensor,
    ) -> MultiExitNetwork:
        if not isinstance(sample_input, torch.Tensor) or sample_input.dim() < 1 or sample_input.shape[0] < 1:
            raise ValueError("sample_input must be a tensor batch with at least one sample, e.g. torch.zeros(1, …)")
        specs = list(head) if isinstance(head, Sequence) and not isinstance(head, str) else [head] * len(names)
        if len(specs) != len(names):
            raise ValueError(f"got {len(specs)} head specs for {len(names)} exit points")
        shapes = []
        with torch.no_grad():
            h = sample_input
            for stage in stages:
                with eval_mode(stage):
                    h = stage(h)
                if not isinstance(h, torch.Tensor):
                    raise TypeError(f"stage outputs must be tensors, got {type(h).__name__}")
                shapes.append(tuple(h.shape[1:]))
        if shapes[-1] != (num_classes,):
            raise ValueError(
                f"the backbone's output must be logits (B, {num_classes}), got {shape_str(shapes[-1])}; "
                "check num_classes"
            )
        heads = [_make_head(s, shape, num_classes)[0] for s, shape in zip(specs, shapes[:-1], strict=True)]
        net = cls(
            stages,
            [*heads, nn.Identity()],
            exit_names=[*names, "final"],
            input_shape=tuple(sample_input.shape[1:]),
            feature_shapes=shapes,
            num_classes=num_classes,
        )
        net.input_dtype = sample_input.dtype
        return net

    # ------------------------------------------------------------------ running
    @property
    def num_exits(self) -> int:
        return len(self.stages)

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ``ValueError`` naming the expected shape if ``x`` does not fit the network."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
        if self.input_shape is not None and tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"the network expects input {shape_str(self.input_shape)}, got {tuple(x.shape)}")
        _check_dtype(self, x)

    def forward_stage(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Run stage ``i`` on the output of stage ``i - 1`` (or on the input, for ``i == 0``)."""
        return self.stages[i](h)

    def run_head(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Logits of exit ``i`` from the output of stage ``i``."""
        return self.heads[i](h)

    def forward(self, x: torch.Tensor) -> ExitOutputs:
        """Run every stage and every head: the logits of all exits."""
        self.check_input(x)
        logits = []
        h = x
        for stage, head in zip(self.stages, self.heads, strict=True):
            h = stage(h)
            logits.append(head(h))
        return ExitOutputs(tuple(logits), self.exit_names)

    def forward_backbone(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone alone: every stage, no auxiliary head (the baseline of every speed-up)."""
        self.check_input(x)
        h = x
        for stage in self.stages:
            h = stage(h)
        return self.heads[-1](h)

    def sample_input(self, batch_size: int = 1) -> torch.Tensor:
        """A zero input of the network's input shape (needs ``input_shape``)."""
        if self.input_shape is None:
            raise ValueError("this network has no input_shape; pass a sample input explicitly")
        p = next(self.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        return torch.zeros(batch_size, *self.input_shape, device=device)

    def cost_profile(self) -> CostProfile:
        """The network's :class:`~exitnet.cost.CostProfile`, computed once from ``sample_input()``."""
        if self._cost_profile is None:
            self._cost_profile = profile(self, self.sample_input())
        return self._cost_profile

    def extra_repr(self) -> str:
        return f"exits={list(self.exit_names)}, input_shape={self.input_shape}, num_classes={self.num_classes}"


def _autocast_on(device_type: str) -> bool:
    try:
        return bool(torch.is_autocast_enabled(device_type))
    except TypeError:  # torch < 2.4 takes no argument
        return bool(torch.is_autocast_enabled() or torch.is_autocast_cpu_enabled())


def _check_dtype(net: MultiExitNetwork, x: torch.Tensor) -> None:
    """Raise a ``ValueError`` if ``x``'s dtype cannot go into ``net`` (the built-in kind, or the weights' dtype)."""
    kind = net.input_dtype
    if kind is not None and x.is_floating_point() != kind.is_floating_point:
        raise ValueError(
            f"the network expects {'floating-point' if kind.is_floating_point else 'integer'} input "
            f"(it was built with {kind}), got {x.dtype}"
        )
    p = next(net.parameters(), None)
    if (
        x.is_floating_point()
        and p is not None
        and p.is_floating_point()
        and p.dtype != x.dtype
        and not _autocast_on(x.device.type)
    ):
        raise ValueError(f"the network's weights are {p.dtype} but the input is {x.dtype}; convert it: x.to({p.dtype})")


def _attach_backbone_spec(net: MultiExitNetwork, model: nn.Module, head: Any) -> None:
    """Record what a checkpoint needs to rebuild ``net`` without pickling: backbone config and head specs."""
    assert net.spec is not None
    config = getattr(model, "config", None)
    net.spec["backbone"] = config if isinstance(config, Mapping) and "name" in config else None
    specs = list(head) if isinstance(head, Sequence) and not isinstance(head, str) else [head] * (net.num_exits - 1)
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
    net.spec["input_shape"] = list(net.input_shape) if net.input_shape is not None else None
