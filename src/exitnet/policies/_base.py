"""The policy base class: one checked contract for every exit policy, and the not-fitted error.

:class:`ExitPolicy` is a scikit-learn estimator (``sklearn.base.clone``, ``get_params`` / ``set_params``). Its
public methods are final: they check once (the exit count, the task, the state schema) and call a hook that a
subclass implements (``_step``, ``_decide``, ``_init_state``, ``_final_prediction``, ``_fallback_prediction``,
``_fit``). :meth:`ExitPolicy.check_exits` is *the* place that compares the exit count a policy was fitted for
(``num_exits_``) with the network's, and the task of the outputs with the tasks the policy supports.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar, TypeVar, final

import torch
from sklearn.base import BaseEstimator, clone

from exitnet.outputs import ExitOutputs, as_stack
from exitnet.policies._registry import policies_for
from exitnet.policies._stats import expand_mask
from exitnet.scores import TASKS, prediction

__all__ = ["ExitPolicy", "NotFittedError", "State", "Outputs"]

State = dict[str, torch.Tensor]
Outputs = ExitOutputs | torch.Tensor
P = TypeVar("P", bound="ExitPolicy")

_FINAL = ("fit", "check_exits", "init_state", "step", "final_prediction", "decide", "predict", "fallback_prediction")


class NotFittedError(RuntimeError):
    """A policy was used before ``fit`` (or before :func:`exitnet.calibrate`)."""


def _short(v: Any) -> str:
    """Learned numbers as a person reads them (4 significant digits)."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_short(x) for x in v) + "]"
    return repr(v)


class ExitPolicy(BaseEstimator):
    """Base class of exit policies: decides, per sample and exit, stop here or go on.

    A policy decides at exit i only from what is known there: the outputs of exit i and the per-sample state it
    carries from earlier exits. The runtime asks it exit by exit::

        policy.check_exits(num_exits, task=task)                  # once per run: the one place of the checks
        state = policy.init_state(b, device, output_shape)         # every key the policy will ever use
        leaves, state = policy.step(i, outputs_i, state, mask)     # i = 0 .. E-2; compact with take_rows
        pred = policy.final_prediction(outputs_last, state, mask, task=task)   # the samples left at the last exit

    and on cached outputs of every exit, :meth:`decide` (the exit of each sample) and :meth:`predict` (its
    answer) give the same result (contract 3). Every state tensor has the batch as dim 0.

    Subclasses implement the hooks and may override the vectorised ``_decide`` / ``_fallback_prediction``. Class
    attributes: ``name`` (registry key), ``tasks`` (the output kinds it supports), ``_fitted_attrs`` (learned
    state, including ``num_exits_``).
    """

    name: ClassVar[str] = "policy"
    tasks: ClassVar[tuple[str, ...]] = ("classification",)
    _fitted_attrs: ClassVar[tuple[str, ...]] = ("num_exits_",)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for method in _FINAL:
            if method in cls.__dict__:
                raise TypeError(
                    f"{cls.__name__} overrides ExitPolicy.{method}(), which checks the policy contract once for "
                    f"every policy; implement the hook _{method}() instead"
                )

    # ---------------------------------------------------------------- scikit-learn plumbing
    def config_params(self) -> dict[str, Any]:
        """The ``__init__`` arguments in JSON form (what a checkpoint stores); see :meth:`from_config_params`."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.get_params(deep=False).items()}

    @classmethod
    def from_config_params(cls, params: dict[str, Any]) -> ExitPolicy:
        """Inverse of :meth:`config_params`."""
        return cls(**params)

    def fitted_state(self) -> dict[str, Any]:
        """The learned state (attributes ending in ``_``), JSON-serialisable."""
        self.check_is_fitted()
        return {k: copy.deepcopy(getattr(self, k)) for k in self._fitted_attrs}

    def set_fitted_state(self: P, state: dict[str, Any]) -> P:
        """Restore what :meth:`fitted_state` returned; checks the values. (A state written before ``num_exits_``
        existed gets it from the other learned values.)"""
        for k in self._fitted_attrs:
            if k == "num_exits_":
                continue
            if k not in state:
                raise ValueError(f"{type(self).__name__} state is missing {k!r}")
            setattr(self, k, copy.deepcopy(state[k]))
        self.num_exits_ = state["num_exits_"] if "num_exits_" in state else self._infer_num_exits()
        self._validate_fitted()
        return self

    def clone(self: P) -> P:
        """A new, unfitted policy with the same arguments (``sklearn.base.clone``)."""
        return clone(self)

    def is_fitted(self) -> bool:
        return all(hasattr(self, k) for k in self._fitted_attrs)

    def check_is_fitted(self) -> None:
        if not self.is_fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call .fit(logits, y) "
                "or exitnet.calibrate(policy, net, data, …) first"
            )

    def __repr__(self) -> str:
        try:
            defaults = {
                k: p.default for k, p in inspect.signature(type(self).__init__).parameters.items() if k != "self"
            }
        except (TypeError, ValueError):  # pragma: no cover - builtin __init__
            defaults = {}
        parts = []
        for k, v in self.get_params(deep=False).items():
            if k not in defaults or not _same(v, defaults[k]):
                parts.append(f"{k}={v!r}")
        if self.is_fitted():
            parts += [f"{k}={_short(v) if not isinstance(v, ExitPolicy) else repr(v)}" for k, v in self._repr_fitted()]
        return f"{type(self).__name__}({', '.join(parts)})"

    # ---------------------------------------------------------------- hooks a subclass may implement
    def _check_params(self) -> None:
        """Check the ``__init__`` arguments; raise ``ValueError`` on a bad one."""

    def _data_free(self) -> bool:
        """True when the arguments alone fix the learned state for any exit count (no data to fit on)."""
        return False

    def _params_state(self, num_exits: int) -> dict[str, Any]:
        """The learned state the arguments give for ``num_exits`` exits (only when :meth:`_data_free`)."""
        return {}

    def _fit(self, stack: torch.Tensor, y: torch.Tensor | None, mask: torch.Tensor | None, task: str) -> None:
        """Learn from cached outputs ``[E, N, ...]`` (and labels); ``num_exits_`` is set by :meth:`fit`."""
        for k, v in self._params_state(stack.shape[0]).items():
            setattr(self, k, v)

    def _validate_fitted(self) -> None:
        """Check the learned state; subclasses raise ``ValueError`` on bad values (call ``super()`` first)."""
        n = getattr(self, "num_exits_", None)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{type(self).__name__}.num_exits_ must be a positive integer, got {n!r}")

    def _infer_num_exits(self) -> int:
        """``num_exits_`` from the other learned values (for states saved without it)."""
        raise ValueError(f"{type(self).__name__} state is missing 'num_exits_'")

    def _repr_fitted(self) -> list[tuple[str, Any]]:
        """The learned values a ``repr`` shows."""
        return []

    def _default_task(self) -> str:
        """The task of outputs given as a plain tensor."""
        return self.tasks[0]

    def _check_task_params(self, task: str) -> None:
        """Refuse arguments that do not fit ``task`` (e.g. a regression tolerance on class logits)."""

    def state_keys(self) -> frozenset[str]:
        """Every key of the per-sample state (the fixed schema :meth:`init_state` returns and :meth:`step` keeps)."""
        return frozenset()

    def _init_state(self, batch_size: int, device: torch.device, output_shape: tuple[int, ...]) -> State:
        return {}

    def _step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, State]:
        raise NotImplementedError(f"{type(self).__name__} must implement _step(i, logits, state, mask)")

    def _final_prediction(
        self, logits: torch.Tensor, state: State, mask: torch.Tensor | None, task: str
    ) -> torch.Tensor:
        return prediction(logits, task)

    def _decide(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        """Exit index ``[B]`` from outputs ``[E, B, ...]``: the exit-by-exit rule over the whole batch."""
        num_exits, batch = stack.shape[0], stack.shape[1]
        exit_index = torch.full((batch,), num_exits - 1, dtype=torch.long, device=stack.device)
        decided = torch.zeros(batch, dtype=torch.bool, device=stack.device)
        state = self.init_state(batch, stack.device, tuple(stack.shape[2:]))
        for i in range(num_exits - 1):
            leaves, state = self.step(i, stack[i], state, mask)  # checked: the same path as the runtime's
            exit_index[leaves & ~decided] = i
            decided |= leaves
        return exit_index

    def _fallback_prediction(self, stack: torch.Tensor, mask: torch.Tensor | None, task: str) -> torch.Tensor:
        """What a sample that reaches the last exit is answered, from the outputs of every exit."""
        return prediction(stack[-1], task)

    def calibration_candidates(self, outputs: Outputs, y: torch.Tensor | None = None) -> list[ExitPolicy]:
        """Fitted settings that :func:`exitnet.calibrate` chooses among, from the most conservative (the first
        leaves nobody early) to the most aggressive. Policies with per-exit thresholds are searched otherwise.

        Args:
            outputs: calibration outputs of every exit (``ExitOutputs`` or ``[E, N, C]``).
            y: labels (unused by most policies).
        """
        raise TypeError(
            f"{type(self).__name__} has nothing to calibrate; fit it with .fit(logits, y) and use it as it is"
        )

    # ---------------------------------------------------------------- the checks, in one place
    def check_task(self, task: str) -> None:
        """Refuse outputs of a task this policy does not support (part of :meth:`check_exits`; calibration calls it
        before fitting anything)."""
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; choose one of: {', '.join(TASKS)}")
        if task not in self.tasks:
            others = policies_for(task)
            raise ValueError(
                f"{type(self).__name__} supports {' and '.join(self.tasks)} outputs only; these outputs are a "
                f"{task}'s. Policies for {task} outputs: {', '.join(others)}"
            )
        self._check_task_params(task)

    def _matches_params(self) -> bool:
        """Is the learned state exactly what the arguments give (nothing learned from data)?"""
        if not self._data_free():
            return False
        try:
            derived = self._params_state(self.num_exits_)
        except ValueError:
            return False
        return all(getattr(self, k, None) == v for k, v in derived.items())

    def _fit_params(self, num_exits: int) -> None:
        self._check_params()
        state = {**self._params_state(num_exits), "num_exits_": int(num_exits)}
        before = {k: getattr(self, k) for k in state if hasattr(self, k)}
        self.__dict__.update(state)
        try:
            self._validate_fitted()
        except ValueError:  # leave the policy as it was: bad arguments are reported at every use
            for k in state:
                if k in before:
                    setattr(self, k, before[k])
                else:
                    delattr(self, k)
            raise

    @final
    def check_exits(self, num_exits: int, *, task: str | None = None) -> None:
        """The one place that checks this policy against a network: its exit count and its outputs' task.

        A policy whose arguments fix everything (explicit thresholds, ``Patience(k)``, ``NeverExit()``) fits
        itself here for ``num_exits`` exits, at first use and again on a network of another depth (a list of
        thresholds of the wrong length is an error). A policy learned from data must have been fitted or
        calibrated for ``num_exits`` exits. The runtime calls this once per run; :meth:`decide`, :meth:`predict`,
        :func:`exitnet.save` and :func:`exitnet.load_policy` call it too.

        Args:
            num_exits: the network's number of exits.
            task: ``"classification"`` or ``"regression"`` when known; a policy refuses a task it does not support.

        Raises:
            NotFittedError: a policy that needs data and was not fitted.
            ValueError: fitted for another number of exits, or a task it does not support.

        Example:
            >>> from exitnet.policies import Entropy
            >>> policy = Entropy(thresholds=0.5)
            >>> policy.check_exits(4); policy.thresholds_
            [0.5, 0.5, 0.5]
        """
        if isinstance(num_exits, bool) or not isinstance(num_exits, int) or num_exits < 1:
            raise ValueError(f"num_exits must be a positive integer, got {num_exits!r}")
        if task is not None:
            self.check_task(task)
            self._checked_task = task  # what final_prediction answers with when not told (not learned state)
        fitted = self.is_fitted()
        if fitted and self.num_exits_ == num_exits:
            return
        why = ""
        if self._data_free() and not fitted:
            self._fit_params(num_exits)  # a list of thresholds of the wrong length raises here
            return
        if self._data_free() and self._matches_params():
            try:
                self._fit_params(num_exits)
                return
            except ValueError as err:
                why = f" ({err})"
        self.check_is_fitted()
        raise ValueError(
            f"this {type(self).__name__} was fitted for {self.num_exits_} exits; the network has {num_exits}: "
            f"fit or calibrate it on this network{why}"
        )

    def _check_state(self, state: Any, where: str) -> None:
        keys = set(state) if isinstance(state, dict) else None
        expected = self.state_keys()
        if keys != expected:
            if keys is None:
                raise TypeError(f"the policy state {where} must be a dict of tensors, got {type(state).__name__}")
            missing, extra = sorted(expected - keys), sorted(keys - expected)
            raise ValueError(
                f"the state {where} does not follow {type(self).__name__}'s schema {sorted(expected)}: missing "
                f"{missing}, extra {extra}; start from policy.init_state(...) and return every key it has"
            )

    def _unpack(
        self, outputs: Outputs, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, str | None, str]:
        """``(stack [E, B, ...], mask, task as given or None, task to use)``."""
        if isinstance(outputs, ExitOutputs):
            stack, task = outputs.stack(), outputs.task
            mask = outputs.mask if mask is None else mask
        else:
            stack, task = as_stack(outputs), None
        use = task if task is not None else self._default_task()
        if use == "classification" and stack.dim() < 3:
            raise ValueError(
                f"class logits must be [E, B, C] (exits, batch, classes) or [E, B, *, C]; got shape "
                f"{tuple(stack.shape)}"
            )
        if mask is not None:
            positions = stack.shape[1:-1] if use == "classification" else stack.shape[1:]
            if mask.dim() > len(positions):
                raise ValueError(
                    f"the mask of valid positions {tuple(mask.shape)} has more dims than the outputs' positions "
                    f"{tuple(positions)}"
                )
            expand_mask(mask, (stack.shape[0], *positions), 2)  # raises on a shape that does not fit
        return stack, mask, task, use

    # ---------------------------------------------------------------- the public contract (final)
    @final
    def fit(self: P, outputs: Outputs | None = None, y: torch.Tensor | None = None) -> P:
        """Fit on cached outputs of every exit (``ExitOutputs`` or ``[E, N, C]``) and labels; returns ``self``.

        Records ``num_exits_``. A policy whose arguments fix everything may be fitted without outputs
        (``fit()`` checks the arguments; it then fits itself at first use, see :meth:`check_exits`).
        """
        self._check_params()
        if outputs is None:
            if not self._data_free():
                raise ValueError(f"{type(self).__name__}.fit needs the outputs of every exit (and the labels)")
            return self
        stack, mask, task, use = self._unpack(outputs, None)
        if task is not None:
            self.check_task(task)
        self._fit(stack, y, mask, use)
        self.num_exits_ = int(stack.shape[0])
        self._validate_fitted()
        return self

    @final
    def init_state(
        self, batch_size: int, device: torch.device | str = "cpu", output_shape: tuple[int, ...] | torch.Size = ()
    ) -> State:
        """Per-sample state carried from exit to exit: every key the policy will use, each ``[batch_size, ...]``.

        Args:
            batch_size: samples in the batch.
            device: where the state lives.
            output_shape: one sample's outputs at an exit (``logits.shape[1:]``: ``(C,)``, ``(T, C)``, or a
                regression's ``(*,)``); ``()`` stands for ``(C,)`` of plain class logits.
        """
        state = self._init_state(int(batch_size), torch.device(device), tuple(output_shape))
        self._check_state(state, "returned by init_state")
        for k, v in state.items():
            if v.dim() == 0 or v.shape[0] != batch_size:
                raise ValueError(f"state {k!r} must have the batch ({batch_size}) as dim 0, got {tuple(v.shape)}")
        return state

    @final
    def step(
        self, i: int, logits: torch.Tensor, state: State, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, State]:
        """Decide at auxiliary exit ``i`` from its outputs ``[b, ...]``: a bool mask ``[b]`` (True = leave here)
        and the new state (the same keys). ``mask`` ``[b, *]``: valid positions of token-level outputs."""
        if not self.is_fitted():
            raise NotFittedError(
                f"this {type(self).__name__} is not fitted yet; call .fit(logits, y), exitnet.calibrate(…), or "
                "check_exits(num_exits) for a policy whose arguments fix everything, before step()"
            )
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.num_exits_ - 1:
            raise ValueError(
                f"step(i={i!r}): this {type(self).__name__} was fitted for {self.num_exits_} exits, so exits "
                f"0..{self.num_exits_ - 2} decide and the last one takes every sample left (final_prediction); "
                "fit or calibrate it on this network"
            )
        self._check_state(state, "given to step")
        leaves, new = self._step(i, logits, state, mask)
        self._check_state(new, f"returned by {type(self).__name__}._step")
        return leaves, new

    @final
    def final_prediction(
        self, logits: torch.Tensor, state: State, mask: torch.Tensor | None = None, *, task: str | None = None
    ) -> torch.Tensor:
        """The answer of the samples still there at the last exit, from its outputs ``[b, ...]`` and the state:
        the task's prediction of the last exit, or, for ``fallback="most_confident"``, of the most confident exit.
        ``task`` defaults to the one last given to :meth:`check_exits` (else the policy's own: classification,
        or regression for ``Patience(tau=…)``).
        """
        self._check_state(state, "given to final_prediction")
        if task is not None:
            self.check_task(task)
        else:
            task = getattr(self, "_checked_task", None) or self._default_task()
        return self._final_prediction(logits, state, mask, task)

    @final
    def decide(self, outputs: Outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Exit index ``[B]`` of every sample from cached outputs of all exits (``ExitOutputs``, whose mask and task
        are used, or a stacked tensor ``[E, B, ...]``)."""
        stack, mask, task, use = self._unpack(outputs, mask)
        self.check_exits(int(stack.shape[0]), task=task)
        return self._decide(stack, mask, use)

    @final
    def fallback_prediction(self, outputs: Outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """What a sample that reaches the last exit is answered (``[B, *]``), from cached outputs of every exit:
        the last exit's prediction, or the most confident exit's with ``fallback="most_confident"``. Uses no
        threshold (calibration computes it before any is chosen)."""
        stack, mask, task, use = self._unpack(outputs, mask)
        if task is not None:
            self.check_task(task)
        return self._fallback_prediction(stack, mask, use)

    @final
    def predict(self, outputs: Outputs, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The answer of every sample from cached outputs of all exits: the task's prediction (class ``[B, *]`` or
        values) of the exit :meth:`decide` picks, or :meth:`fallback_prediction` for samples at the last exit.

        Example:
            >>> from exitnet.policies import MaxProb
            >>> logits = torch.tensor([[[3.0, 0.0], [0.0, 0.1]], [[0.0, 3.0], [3.0, 0.0]]])  # [E=2, B=2, C=2]
            >>> MaxProb(thresholds=0.9).predict(logits)  # sample 0 leaves at exit 0, sample 1 at the last
            tensor([0, 0])
        """
        stack, mask, task, use = self._unpack(outputs, mask)
        self.check_exits(int(stack.shape[0]), task=task)
        exits = self._decide(stack, mask, use)  # [B]
        rows = torch.arange(stack.shape[1], device=stack.device)
        chosen = prediction(stack, use)[exits, rows]  # [B, *]
        last = self._fallback_prediction(stack, mask, use)
        at_last = (exits == stack.shape[0] - 1).view(-1, *([1] * (chosen.dim() - 1)))
        return torch.where(at_last, last, chosen)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a is b or (type(a) is type(b) and a == b))
    except Exception:  # pragma: no cover - values whose == is not a bool (tensors)
        return False
