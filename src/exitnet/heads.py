"""Exit heads (the survey's auxiliary classifiers c_i, eq. (3)) and `create_head`.

A head maps the output of a stage (the embedding h_i) to logits ``[B, C]``. Survey §4: for fully-connected
features a linear classifier or a small MLP; for convolutional features strong dimensionality reduction first
(global average pooling, or SDN's mixed max/average pooling); for transformers a token pooling.

Pick one with :func:`create_head`; :func:`list_heads` lists the kinds (STYLE.md §2).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

__all__ = [
    "create_head",
    "list_heads",
    "LinearHead",
    "MLPHead",
    "PoolHead",
    "SDNHead",
    "TokenHead",
    "TokenwiseHead",
    "SklearnHead",
    "pool_tokens",
]


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


class LinearHead(nn.Module):
    """Flatten, then one linear layer: ``[B, *feature_shape] -> [B, num_classes]``."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        self.fc = nn.Linear(_numel(feature_shape), num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(h, 1))  # [B, F] -> [B, C]


class MLPHead(nn.Module):
    """Flatten, one hidden layer with ReLU, then a linear layer (the 'small network' of survey §4)."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, hidden: int = 128) -> None:
        super().__init__()
        if hidden < 1:
            raise ValueError(f"mlp head hidden size must be >= 1, got {hidden}")
        self.net = nn.Sequential(
            nn.Linear(_numel(feature_shape), hidden), nn.ReLU(inplace=False), nn.Linear(hidden, num_classes)
        )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(torch.flatten(h, 1))


class PoolHead(nn.Module):
    """Global average pooling over every dimension after the channels, then a linear layer.

    ``[B, C, *spatial] -> mean over spatial -> [B, C] -> [B, num_classes]``; on ``[B, C]`` features it is a
    plain linear head.
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) < 1:
            raise ValueError("pool head needs features with a channel dimension, got a scalar per sample")
        self.spatial_dims = tuple(range(2, 1 + len(feature_shape)))
        self.fc = nn.Linear(int(feature_shape[0]), num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.spatial_dims:
            h = h.mean(dim=self.spatial_dims)  # [B, C, *spatial] -> [B, C]
        return self.fc(h)


class SDNHead(nn.Module):
    """Shallow-Deep Networks' internal classifier (Kaya et al., 2019): mixed max/avg pooling + linear.

    The feature map ``[B, C, H, W]`` is reduced to at most ``size x size`` (4 x 4 in SDN) by
    ``alpha * maxpool + (1 - alpha) * avgpool`` with a learned scalar ``alpha`` (initialised to 0.5), then
    flattened into a linear layer.
    """

    def __init__(self, feature_shape: Sequence[int], num_classes: int, *, size: int = 4) -> None:
        super().__init__()
        if len(feature_shape) != 3:
            raise ValueError(
                f"sdn head needs image features (C, H, W), got shape {tuple(feature_shape)}; "
                "use 'pool', 'linear' or 'mlp' for these features"
            )
        c, height, width = (int(s) for s in feature_shape)
        self.out_hw = (min(size, height), min(size, width))
        self.max_pool = nn.AdaptiveMaxPool2d(self.out_hw)
        self.avg_pool = nn.AdaptiveAvgPool2d(self.out_hw)
        self.alpha = nn.Parameter(torch.tensor(0.5))
        self.fc = nn.Linear(c * self.out_hw[0] * self.out_hw[1], num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        mixed = self.alpha * self.max_pool(h) + (1 - self.alpha) * self.avg_pool(h)  # [B, C, s, s]
        return self.fc(torch.flatten(mixed, 1))  # [B, C*s*s] -> [B, num_classes]


class TokenHead(nn.Module):
    """Token pooling for sequence features ``[B, T, D]``: the CLS token (index 0), the last token, or the mean
    token, then LayerNorm and a linear layer: ``[B, T, D] -> [B, num_classes]``.

    With ``mask_key`` (a side input of the network, e.g. ``"attention_mask"``), the mean runs over the valid tokens
    only and ``"last"`` takes each sequence's last valid token, so padding changes nothing.

    Example:
        >>> head = TokenHead((5, 8), 3, pooling="mean", mask_key="mask")
        >>> h, mask = torch.randn(2, 5, 8), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
        >>> torch.allclose(head(h, mask)[0], head(h[:1, :3], mask[:1, :3])[0])
        True
    """

    def __init__(
        self, feature_shape: Sequence[int], num_classes: int, *, pooling: str = "cls", mask_key: str | None = None
    ) -> None:
        super().__init__()
        if len(feature_shape) != 2:
            raise ValueError(f"token head needs token features (T, D), got shape {tuple(feature_shape)}")
        if pooling not in ("cls", "mean", "last"):
            raise ValueError(f"token head pooling must be 'cls', 'mean' or 'last', got {pooling!r}")
        self.pooling = pooling
        self.ctx_keys: tuple[str, ...] = (mask_key,) if mask_key is not None else ()
        dim = int(feature_shape[1])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc(self.norm(pool_tokens(h, self.pooling, mask)))


def pool_tokens(h: torch.Tensor, pooling: str, mask: torch.Tensor | None = None) -> torch.Tensor:
    """``[B, T, D] -> [B, D]``: the first token, the last (valid) token or the mean of the (valid) tokens."""
    if pooling == "cls":
        return h[:, 0]
    if mask is None:
        return h[:, -1] if pooling == "last" else h.mean(dim=1)
    m = mask.to(h.dtype).unsqueeze(-1)  # [B, T] -> [B, T, 1]
    if pooling == "last":
        last = (mask.to(torch.long).sum(dim=1) - 1).clamp_min(0)  # [B]: index of the last valid token
        return h[torch.arange(h.shape[0], device=h.device), last]
    return (h * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)


class TokenwiseHead(nn.Module):
    """A prediction per position: LayerNorm and a linear layer on the last dim, ``[B, *, D] -> [B, *, C]`` (token
    tagging, per-node classification)."""

    def __init__(self, feature_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        if len(feature_shape) < 1:
            raise ValueError("tokenwise head needs features with a last (feature) dimension")
        dim = int(feature_shape[-1])
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(h))


class SklearnHead(nn.Module):
    """A non-neural exit head (survey §5.4): any scikit-learn classifier with ``predict_proba`` on pooled features.

    Features ``[B, C, *spatial]`` are averaged over the spatial dimensions (``pool="avg"``; token features
    ``[B, T, D]`` over the tokens) or flattened (``pool="flatten"``). The head returns log-probabilities as logits,
    so softmax gives back the estimator's probabilities and policies, calibration and the runtime treat it as any
    head. Fit it with :meth:`fit` on stage outputs, or let ``exitnet.train.Separate`` fit it; until then it predicts
    the uniform distribution (with a warning). It has no tensors, so a checkpoint cannot hold it: keep the
    estimator with your own tools (joblib, skops).

    Args:
        estimator: an unfitted scikit-learn classifier with ``predict_proba`` (logistic regression, an SVM in
            ``CalibratedClassifierCV``, a decision tree, kNN, …).
        num_classes: number of logits (default: the largest label seen by :meth:`fit` plus one).
        pool: ``"avg"`` or ``"flatten"``.

    Example:
        >>> from sklearn.linear_model import LogisticRegression
        >>> head = SklearnHead(LogisticRegression(), num_classes=3)
        >>> h, y = torch.randn(30, 4, 2, 2), torch.arange(30) % 3
        >>> head.fit(h, y)(h).shape
        torch.Size([30, 3])
    """

    def __init__(self, estimator: Any, num_classes: int | None = None, *, pool: str = "avg") -> None:
        super().__init__()
        if not (hasattr(estimator, "fit") and hasattr(estimator, "predict_proba")):
            raise TypeError(
                f"SklearnHead needs an estimator with fit and predict_proba, got {type(estimator).__name__}"
            )
        if pool not in ("avg", "flatten"):
            raise ValueError(f"SklearnHead pool must be 'avg' or 'flatten', got {pool!r}")
        self.estimator = estimator
        self.num_classes = num_classes
        self.pool = pool
        self.classes_: list[int] | None = None
        self._warned = False

    def features(self, h: torch.Tensor) -> torch.Tensor:
        """The pooled features the estimator sees, ``[B, F]`` (float32, detached)."""
        h = h.detach().float()
        if self.pool == "avg" and h.dim() == 3:
            return h.mean(dim=1)  # tokens [B, T, D] -> [B, D]
        if self.pool == "avg" and h.dim() > 3:
            return h.mean(dim=tuple(range(2, h.dim())))  # [B, C, *spatial] -> [B, C]
        return torch.flatten(h, 1)  # [B, ...] -> [B, F]

    def fit(self, h: torch.Tensor, y: torch.Tensor, *, pooled: bool = False) -> SklearnHead:
        """Fit the estimator on stage outputs ``h`` (or on :meth:`features` already, with ``pooled=True``)."""
        feats = (h.detach().float() if pooled else self.features(h)).cpu().numpy()
        labels = y.detach().cpu().reshape(-1).numpy()
        if len(feats) != len(labels) or len(labels) == 0:
            raise ValueError(
                f"SklearnHead.fit needs as many labels as samples (> 0), got {len(feats)} and {len(labels)}"
            )
        self.estimator.fit(feats, labels)
        classes = [int(c) for c in self.estimator.classes_]
        if self.num_classes is None:
            self.num_classes = max(classes) + 1
        if min(classes) < 0 or max(classes) >= self.num_classes:
            raise ValueError(f"labels must lie in [0, {self.num_classes - 1}], got classes {classes}")
        self.classes_ = classes
        return self

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        if self.classes_ is None or self.num_classes is None:
            if self.num_classes is None:
                raise RuntimeError(
                    "this SklearnHead is not fitted yet; call head.fit(stage_outputs, y) or train with "
                    "exitnet.train.Separate()"
                )
            if not self._warned:
                warnings.warn("an unfitted SklearnHead predicts the uniform distribution", stacklevel=2)
                self._warned = True
            return torch.zeros(h.shape[0], self.num_classes, device=h.device)  # uniform: it knows nothing yet
        proba = self.estimator.predict_proba(self.features(h).cpu().numpy())  # [B, len(classes_)]
        out = torch.full((h.shape[0], self.num_classes), -30.0)  # classes never seen get ~zero probability
        out[:, self.classes_] = torch.from_numpy(proba).float().clamp_min(1e-13).log()
        return out.to(h.device)

    def extra_repr(self) -> str:
        return f"estimator={type(self.estimator).__name__}, num_classes={self.num_classes}, pool={self.pool!r}"


def _sklearn_head(
    feature_shape: Sequence[int], num_classes: int, *, estimator: Any = None, pool: str = "avg"
) -> nn.Module:
    if estimator is None:
        raise ValueError("head kind 'sklearn' needs estimator=<a scikit-learn classifier with predict_proba>")
    return SklearnHead(estimator, num_classes, pool=pool)


_HEADS: dict[str, Callable[..., nn.Module]] = {
    "linear": LinearHead,
    "mlp": MLPHead,
    "pool": PoolHead,
    "sdn": SDNHead,
    "token": TokenHead,
    "tokenwise": TokenwiseHead,
    "sklearn": _sklearn_head,
}


def list_heads() -> list[str]:
    """Names accepted by :func:`create_head`."""
    return sorted(_HEADS)


def register_head(kind: str, factory: Callable[..., nn.Module]) -> None:
    """Add a head kind: ``factory(feature_shape, num_classes, **kwargs) -> nn.Module``."""
    if kind in _HEADS:
        raise ValueError(f"head kind {kind!r} is already registered")
    _HEADS[kind] = factory


def create_head(kind: str, feature_shape: Sequence[int], num_classes: int, **kwargs: Any) -> nn.Module:
    """Build an exit head for features of ``feature_shape`` (per sample, no batch dimension).

    Args:
        kind: one of :func:`list_heads`.
        feature_shape: the stage output's shape without the batch dimension, e.g. ``(16, 8, 8)``.
        num_classes: number of output logits.
        **kwargs: options of that head (``hidden`` for mlp, ``size`` for sdn, ``pooling`` and ``mask_key`` for token,
            ``estimator`` and ``pool`` for sklearn).

    Returns:
        A module mapping ``[B, *feature_shape]`` to ``[B, num_classes]``.

    Example:
        >>> head = create_head("pool", (16, 8, 8), 10)
        >>> head(torch.zeros(2, 16, 8, 8)).shape
        torch.Size([2, 10])
    """
    if kind not in _HEADS:
        raise ValueError(f"unknown head kind {kind!r}; choose one of: {', '.join(list_heads())}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    shape = tuple(int(s) for s in feature_shape)
    if any(s < 1 for s in shape):
        raise ValueError(f"feature shape must be positive, got {shape}")
    return _HEADS[kind](shape, int(num_classes), **kwargs)
