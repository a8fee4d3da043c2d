"""Per-position statistics and their per-sample reductions: eq. (11), masks of valid positions, token-level outputs.

Outputs of one exit are ``[b, C]`` class logits, ``[b, *, C]`` logits per position (a token-level classifier), or
regression values ``[b, *]``. A statistic is computed per position (``[b, *]``) and reduced to one number per
sample; positions where the mask is False (padding) are ignored, and a sample with no valid position gets NaN,
which never leaves early.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "normalized_entropy",
    "expand_mask",
    "least_confident",
    "all_valid",
    "max_valid",
    "finite_samples",
    "has_valid",
]


def normalized_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Normalised entropy of the softmax of ``logits`` over the last dim, eq. (11) of the survey.

    ``H[c] = -(1 / log C) Σ_t c_t log c_t``, in [0, 1]: 1 for a uniform prediction, 0 for a one-hot one. (The
    survey prints eq. (11) without the minus sign; the entropy is the negative sum.) Computed from ``log_softmax``
    in one pass over the classes for ``log c`` and one for the sum; a class of probability 0 (logit -inf) adds
    0, as ``0 log 0 = 0``. NaN logits give NaN.

    Example:
        >>> normalized_entropy(torch.zeros(1, 4))  # uniform over 4 classes
        tensor([1.])
        >>> normalized_entropy(torch.tensor([[0.0, -float("inf")]]))  # one-hot
        tensor([0.])
    """
    num_classes = logits.shape[-1]
    if num_classes < 2:
        raise ValueError(f"entropy needs at least 2 classes, got logits of shape {tuple(logits.shape)}")
    log_p = torch.log_softmax(logits.float(), dim=-1)  # [..., C]
    # clamp: log 0 = -inf would make 0 * -inf = NaN; the most negative float keeps 0 * log 0 = 0.
    h = -(log_p.exp() * log_p.clamp_min(torch.finfo(log_p.dtype).min)).sum(dim=-1) / math.log(num_classes)
    return h.clamp(0.0, 1.0) + 0.0  # + 0.0 turns -0.0 into 0.0


def expand_mask(mask: torch.Tensor, shape: torch.Size | tuple[int, ...], lead: int) -> torch.Tensor:
    """``mask`` ``[B, *m]`` broadcast to ``shape`` = ``[*L, B, *p]`` (``lead`` = number of dims up to and including
    ``B``; ``m`` a prefix of ``p``)."""
    m = mask.to(torch.bool)
    extra = len(shape) - lead - (m.dim() - 1)
    if extra < 0 or tuple(shape[lead - 1 : lead - 1 + m.dim()]) != tuple(m.shape):
        raise ValueError(
            f"the mask of valid positions {tuple(m.shape)} does not fit outputs whose positions are "
            f"{tuple(shape[lead - 1 :])} ([B, *] with the outputs' leading dims)"
        )
    m = m.view(*([1] * (lead - 1)), *m.shape, *([1] * extra))
    return m.expand(*shape)


def has_valid(mask: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
    """``[B]``: does the sample have at least one valid position."""
    if mask is None:
        return torch.ones(batch, dtype=torch.bool, device=device)
    m = mask.to(torch.bool)
    return m if m.dim() == 1 else m.flatten(1).any(dim=1)


def least_confident(
    stat: torch.Tensor, mask: torch.Tensor | None, *, lower_is_confident: bool, lead: int = 1
) -> torch.Tensor:
    """Per sample, the statistic of its least confident valid position: ``[*L, B, *p] -> [*L, B]``.

    The maximum over positions when a low statistic means confident (entropy), the minimum otherwise. NaN at a
    valid position gives NaN (never leaves early); so does a sample with no valid position.

    Example:
        >>> stat = torch.tensor([[0.9, 0.2, 0.7], [0.8, 0.95, 0.1]])  # max probability of [B=2, T=3] positions
        >>> least_confident(stat, torch.tensor([[True, False, True], [True, True, False]]), lower_is_confident=False)
        tensor([0.7000, 0.8000])
    """
    if stat.dim() == lead:
        if mask is None:
            return stat
        return torch.where(expand_mask(mask, stat.shape, lead), stat, torch.full_like(stat, math.nan))
    fill = -math.inf if lower_is_confident else math.inf
    if mask is not None:
        m = expand_mask(mask, stat.shape, lead)
        stat = torch.where(m, stat, torch.full_like(stat, fill))
    flat = stat.flatten(lead)  # [*L, B, P]
    out = flat.amax(dim=-1) if lower_is_confident else flat.amin(dim=-1)  # NaN propagates
    if mask is not None:
        valid = m.flatten(lead).any(dim=-1)
        out = torch.where(valid, out, torch.full_like(out, math.nan))
    return out


def all_valid(cond: torch.Tensor, mask: torch.Tensor | None, lead: int = 1) -> torch.Tensor:
    """``[*L, B, *p] -> [*L, B]``: ``cond`` holds at every valid position (True for a sample with none)."""
    if mask is not None:
        cond = cond | ~expand_mask(mask, cond.shape, lead)
    return cond if cond.dim() == lead else cond.flatten(lead).all(dim=-1)


def max_valid(x: torch.Tensor, mask: torch.Tensor | None, lead: int = 1) -> torch.Tensor:
    """``[*L, B, *p] -> [*L, B]``: the maximum of ``x`` over valid positions (0 for none; NaN propagates)."""
    if mask is not None:
        x = torch.where(expand_mask(mask, x.shape, lead), x, torch.zeros_like(x))
    return x if x.dim() == lead else x.flatten(lead).amax(dim=-1)


def finite_samples(outputs: torch.Tensor, mask: torch.Tensor | None, *, classification: bool, lead: int = 1):
    """``[*L, B]``: every valid position of the sample is finite, and it has one (``outputs`` ``[*L, B, *p(, C)]``)."""
    fin = torch.isfinite(outputs)
    if classification:
        fin = fin.all(dim=-1)  # [*L, B, *p]: all logits of a position
    ok = all_valid(fin, mask, lead)
    if mask is not None:
        ok = ok & has_valid(mask, ok.shape[-1], ok.device)
    return ok
