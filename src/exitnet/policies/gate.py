"""Learned exit gates g_i (survey §6 and eq. (9); the IDK-cascade idea of the survey's [75]).

A gate maps exit i's logits ``[b, C]`` to the probability ``[b]`` that exit i is right; the policy leaves exit i
when ``g_i(logits_i) > β_i`` (for token-level logits ``[b, *, C]`` the gate reads every position and a sample is
as sure as its least sure valid position). Gates come from the gated training strategy (:meth:`Gate.from_gates`)
or are fitted post hoc (:meth:`Gate.fit`): one small MLP per auxiliary exit on that exit's softmax, trained with binary
cross-entropy to predict "the arg-max of this exit is the label". Its input is the exit's softmax sorted in
decreasing order (so the gate sees the confidence, not the class: max probability, margin and entropy are all
functions of it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from exitnet._utils import eval_mode, module_device
from exitnet.policies._base import Outputs
from exitnet.policies._registry import register_policy
from exitnet.policies._stats import expand_mask
from exitnet.policies.threshold import ThresholdPolicy
from exitnet.scores import as_targets

__all__ = ["Gate", "SortedSoftmax", "gate_to_config", "gate_from_config"]


class SortedSoftmax(nn.Module):
    """Softmax probabilities sorted in decreasing order: class-free confidence features (``[b, C] -> [b, C]``)."""

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=-1).sort(dim=-1, descending=True).values


_LAYERS: dict[type[nn.Module], str] = {
    SortedSoftmax: "sorted_softmax",
    nn.Linear: "linear",
    nn.ReLU: "relu",
    nn.Tanh: "tanh",
    nn.Sigmoid: "sigmoid",
    nn.Softmax: "softmax",
    nn.Flatten: "flatten",
}


def gate_to_config(gate: nn.Module) -> list[dict[str, Any]]:
    """A gate as JSON: a list of layers (weights as nested lists). Only ``nn.Sequential`` of Linear, ReLU, Tanh,
    Sigmoid, Softmax, :class:`SortedSoftmax` and Flatten layers can be stored; anything else raises
    ``ValueError``."""
    layers = list(gate) if isinstance(gate, nn.Sequential) else [gate]
    out: list[dict[str, Any]] = []
    for layer in layers:
        kind = _LAYERS.get(type(layer))
        if kind is None:
            raise ValueError(
                f"a Gate built from a custom gate module ({type(layer).__name__}) cannot be stored as JSON in a "
                "checkpoint; build gates as nn.Sequential of Linear/ReLU/Tanh/Sigmoid/Softmax/Flatten layers, "
                "or save the network without this policy"
            )
        entry: dict[str, Any] = {"type": kind}
        if isinstance(layer, nn.Linear):
            entry["weight"] = layer.weight.detach().cpu().double().tolist()
            entry["bias"] = layer.bias.detach().cpu().double().tolist() if layer.bias is not None else None
        elif isinstance(layer, nn.Softmax):
            entry["dim"] = layer.dim
        elif isinstance(layer, nn.Flatten):
            entry["start_dim"], entry["end_dim"] = layer.start_dim, layer.end_dim
        out.append(entry)
    return out


def gate_from_config(config: list[dict[str, Any]]) -> nn.Sequential:
    """Inverse of :func:`gate_to_config`."""
    layers: list[nn.Module] = []
    for entry in config:
        kind = entry.get("type")
        if kind == "linear":
            weight = torch.tensor(entry["weight"], dtype=torch.float32)
            if weight.dim() != 2:
                raise ValueError(f"a gate's linear weight must be 2-D, got shape {tuple(weight.shape)}")
            lin = nn.Linear(weight.shape[1], weight.shape[0], bias=entry.get("bias") is not None)
            with torch.no_grad():
                lin.weight.copy_(weight)
                if lin.bias is not None:
                    lin.bias.copy_(torch.tensor(entry["bias"], dtype=torch.float32))
            layers.append(lin)
        elif kind in ("relu", "tanh", "sigmoid", "sorted_softmax"):
            layers.append(
                {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "sorted_softmax": SortedSoftmax}[kind]()
            )
        elif kind == "softmax":
            layers.append(nn.Softmax(dim=entry.get("dim", -1)))
        elif kind == "flatten":
            layers.append(nn.Flatten(entry.get("start_dim", 1), entry.get("end_dim", -1)))
        else:
            raise ValueError(f"unknown gate layer {kind!r}; expected one of: {', '.join(sorted(_LAYERS.values()))}")
    return nn.Sequential(*layers)


@register_policy
class Gate(ThresholdPolicy):
    """Leave exit i when the gate ``g_i(logits_i)`` (a probability that exit i is right) exceeds ``β_i``.

    Args:
        threshold: β, one for all auxiliary exits or one per auxiliary exit; :func:`exitnet.calibrate` searches
            per-exit values.
        hidden: hidden width of the post-hoc gates fitted by :meth:`fit`.
        epochs: full-batch Adam steps per gate.
        lr: Adam learning rate.
        seed: seed of the gates' initialisation.

    Example:
        >>> logits, y = torch.randn(3, 64, 4), torch.randint(0, 4, (64,))
        >>> policy = Gate(0.5, epochs=20).fit(logits, y)
        >>> len(policy.gates_), policy.decide(logits).shape
        (2, torch.Size([64]))
    """

    name = "gate"
    _fitted_attrs: ClassVar[tuple[str, ...]] = ("thresholds_", "gates_", "num_exits_")

    def __init__(
        self,
        threshold: float | Sequence[float] = 0.5,
        *,
        hidden: int = 16,
        epochs: int = 200,
        lr: float = 1e-2,
        seed: int = 0,
    ) -> None:
        self.threshold = threshold
        self.hidden = hidden
        self.epochs = epochs
        self.lr = lr
        self.seed = seed

    def _threshold_spec(self) -> float | Sequence[float] | None:
        return self.threshold

    def _data_free(self) -> bool:
        return False  # the gates are learned

    @classmethod
    def from_gates(cls, gates: Sequence[nn.Module], threshold: float | Sequence[float] = 0.5) -> Gate:
        """A fitted policy from trained gate modules (one per auxiliary exit), each ``[b, C] -> [b]`` in [0, 1].

        The modules are used as they are (not copied) and run in eval mode without gradients.
        """
        if len(gates) == 0:
            raise ValueError("Gate.from_gates needs one gate module per auxiliary exit, got none")
        for i, g in enumerate(gates):
            if not isinstance(g, nn.Module):
                raise TypeError(f"gate {i} must be an nn.Module mapping logits [b, C] to [b], got {type(g).__name__}")
        policy = cls(threshold)
        policy.gates_ = list(gates)
        policy.thresholds_ = policy._num_thresholds(len(gates) + 1)
        policy.num_exits_ = len(gates) + 1
        policy._validate_fitted()
        return policy

    def _make_gate(self, num_classes: int) -> nn.Sequential:
        return nn.Sequential(
            SortedSoftmax(),
            nn.Linear(num_classes, int(self.hidden)),
            nn.ReLU(),
            nn.Linear(int(self.hidden), 1),
            nn.Sigmoid(),
            nn.Flatten(0),  # [b, 1] -> [b]
        )

    def _check_params(self) -> None:
        if int(self.hidden) < 1 or int(self.epochs) < 0 or not float(self.lr) > 0:
            raise ValueError(
                f"Gate needs hidden >= 1, epochs >= 0 and lr > 0, got {self.hidden}, {self.epochs}, {self.lr}"
            )

    def _fit(self, stack: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, task: str) -> None:
        """Fit one gate per auxiliary exit on ``stack`` ``[E, N, *, C]`` to predict whether that exit is right
        (at each valid position of token-level outputs)."""
        if y is None:
            raise ValueError("Gate.fit needs the labels y: each gate learns whether its exit predicts y")
        stack = stack.detach().float().cpu()
        num_exits, n, num_classes = stack.shape[0], stack.shape[1], stack.shape[-1]
        if y.shape[0] != n:
            raise ValueError(f"logits hold {n} samples but there are {y.shape[0]} labels")
        y = as_targets(y.cpu(), tuple(stack.shape[1:]), "classification", num_classes=num_classes)
        thresholds = self._num_thresholds(num_exits)
        valid = torch.ones(stack.shape[1:-1], dtype=torch.bool)  # [N, *]
        if mask is not None:
            valid = expand_mask(mask.cpu(), (1, *valid.shape), 2)[0]
        flat = stack.reshape(num_exits, -1, num_classes)  # [E, N*, C]: every position a training example
        right = (stack.argmax(dim=-1) == y.unsqueeze(0)).reshape(num_exits, -1)  # [E, N*]
        keep = torch.isfinite(flat).all(dim=-1) & valid.reshape(1, -1)  # [E, N*]
        threads = torch.get_num_threads()
        # Tiny full-batch steps: one thread is fastest (several threads spin on a shared machine).
        torch.set_num_threads(1)
        try:
            gates = self._train_gates(flat, right, keep)
        finally:
            torch.set_num_threads(threads)
        self.gates_ = gates
        self.thresholds_ = thresholds

    def _train_gates(self, flat: torch.Tensor, right: torch.Tensor, keep: torch.Tensor) -> list[nn.Module]:
        num_exits, _, num_classes = flat.shape
        gates: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(int(self.seed))
            for i in range(num_exits - 1):
                gate = self._make_gate(num_classes)
                x, target = flat[i][keep[i]], right[i][keep[i]].float()
                body = gate[:-2]  # train on the pre-sigmoid score: BCE with logits is stabler
                opt = torch.optim.Adam(gate.parameters(), lr=float(self.lr))
                for _ in range(int(self.epochs)):
                    opt.zero_grad()
                    loss = nn.functional.binary_cross_entropy_with_logits(body(x).squeeze(-1), target)
                    loss.backward()
                    opt.step()
                gates.append(gate.eval().requires_grad_(False))
        return gates

    def calibration_base(self, outputs: Outputs, y: torch.Tensor) -> Gate:
        """Keep the gates of a fitted policy (from :meth:`from_gates` or :meth:`fit`); fit new ones otherwise."""
        if hasattr(self, "gates_"):
            base = self.clone()
            base.gates_ = list(self.gates_)
            return base
        return self.clone().fit(outputs, y)

    def _validate_fitted(self) -> None:
        super()._validate_fitted()
        if len(self.gates_) != len(self.thresholds_):
            raise ValueError(f"Gate has {len(self.gates_)} gates but {len(self.thresholds_)} thresholds")

    # ---------------------------------------------------------------- the statistic
    def exit_statistic(self, i: int, logits: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "gates_"):
            self.check_is_fitted()  # raises NotFittedError
        if not 0 <= i < len(self.gates_):
            raise IndexError(f"Gate has gates for {len(self.gates_)} auxiliary exits, got i={i}")
        gate = self.gates_[i]
        if module_device(gate, logits.device) != logits.device:
            gate.to(logits.device)
        flat = logits.float().reshape(-1, logits.shape[-1])  # [b*, C]: every position of token-level logits
        with torch.no_grad(), eval_mode(gate):
            out = gate(flat)
        if out.dim() == 2 and out.shape[1] == 1:
            out = out.squeeze(1)  # [b*, 1] -> [b*]
        if out.shape != flat.shape[:1]:
            raise ValueError(
                f"gate {i} must map logits {tuple(flat.shape)} to [{flat.shape[0]}], got {tuple(out.shape)}"
            )
        return out.reshape(logits.shape[:-1])  # [b, *]

    def statistic(self, logits: torch.Tensor) -> torch.Tensor:
        raise TypeError("a Gate's statistic depends on the exit; use exit_statistic(i, logits) or statistics(stack)")

    def position_statistics(self, stack: torch.Tensor) -> torch.Tensor:
        if stack.shape[0] == 0:
            return stack.new_zeros(stack.shape[:-1])
        return torch.stack([self.exit_statistic(i, stack[i]) for i in range(stack.shape[0])])  # [E', B, *]

    # ---------------------------------------------------------------- storage
    def _repr_fitted(self) -> list[tuple[str, Any]]:
        return [("thresholds_", self.thresholds_), ("num_exits_", self.num_exits_)]

    def fitted_state(self) -> dict[str, Any]:
        self.check_is_fitted()
        return {
            "thresholds_": list(self.thresholds_),
            "gates_": [gate_to_config(g) for g in self.gates_],
            "num_exits_": self.num_exits_,
        }

    def set_fitted_state(self, state: dict[str, Any]) -> Gate:
        for k in ("thresholds_", "gates_"):
            if k not in state:
                raise ValueError(f"Gate state is missing {k!r}")
        self.thresholds_ = [float(t) for t in state["thresholds_"]]
        self.gates_ = [gate_from_config(c).eval().requires_grad_(False) for c in state["gates_"]]
        self.num_exits_ = state.get("num_exits_", len(self.gates_) + 1)
        self._validate_fitted()
        return self
