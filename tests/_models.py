"""Tiny backbones of every kind the core must carry (importable: tests/ is on sys.path).

Each :class:`Case` holds a backbone, its exit points, a sample input and ``batch(n, seed)``, which makes a batch of
``n`` inputs (with its own padding, graph, length) that the network takes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import exitnet as ee


@dataclass
class Case:
    """One backbone kind: how to build its multi-exit network and make inputs for it."""

    name: str
    backbone: nn.Module
    points: list[str]
    sample: Any
    batch: Callable[[int, int], Any]
    task: str = "classification"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def network(self) -> ee.MultiExitNetwork:
        return ee.MultiExitNetwork.from_module(
            self.backbone, self.points, sample_input=self.sample, task=self.task, **self.kwargs
        ).eval()


# ------------------------------------------------------------------------------------------------ encoder
class Block(nn.Module):
    """Pre-norm transformer block; padding keys are masked out."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, h: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        a = self.norm1(h)
        h = h + self.attn(a, a, a, key_padding_mask=pad, need_weights=False)[0]
        return h + self.ff(self.norm2(h))


class Encoder(nn.Module):
    """``forward(ids, mask)``: padded token ids ``[B, T]`` and a validity mask ``[B, T]`` (1 = token).

    With ``per_token`` the output is logits per position ``[B, T, C]``; otherwise the masked mean of the tokens
    goes to a linear classifier ``[B, C]``.
    """

    def __init__(self, vocab: int = 20, d: int = 16, classes: int = 3, depth: int = 3, per_token: bool = False):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(1, 32, d) * 0.1)
        self.blocks = nn.ModuleList(Block(d) for _ in range(depth))
        self.norm = nn.LayerNorm(d)
        self.out = nn.Linear(d, classes)
        self.per_token = per_token

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        pad = mask == 0  # side value: computed from the inputs only
        m = mask.unsqueeze(-1).float()  # [B, T, 1]
        h = self.emb(ids) + self.pos[:, : ids.shape[1]]
        for block in self.blocks:
            h = block(h, pad)
        h = self.norm(h)
        if self.per_token:
            return self.out(h)  # [B, T, C]
        return self.out((h * m).sum(dim=1) / m.sum(dim=1))  # [B, C]


def token_batch(n: int, seed: int, *, length: int = 7, vocab: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, length + 1, (n,), generator=g)
    mask = (torch.arange(length).unsqueeze(0) < lengths.unsqueeze(1)).long()  # [n, T]
    ids = torch.randint(1, vocab, (n, length), generator=g) * mask
    return ids, mask


def encoder_case(per_token: bool = False) -> Case:
    torch.manual_seed(1)
    enc = Encoder(per_token=per_token).eval()
    kwargs: dict[str, Any] = {"head": {"kind": "tokenwise"} if per_token else {"kind": "token", "pooling": "mean",
                                                                                "mask_key": "mask"}}  # fmt: skip
    if per_token:
        kwargs["output_mask"] = "mask"
    return Case(
        "token_classifier" if per_token else "encoder",
        enc,
        ["blocks.0", "blocks.1"],
        token_batch(2, 0),
        lambda n, seed: token_batch(n, seed),
        kwargs=kwargs,
    )


# ------------------------------------------------------------------------------------------------ recurrent
class RNNStack(nn.Module):
    """Two recurrent layers (exits over depth) and a classifier on the last time step."""

    def __init__(self, kind: str = "gru", d_in: int = 4, d: int = 12, classes: int = 3) -> None:
        super().__init__()
        cls = nn.GRU if kind == "gru" else nn.LSTM
        self.rnn1 = cls(d_in, d, batch_first=True)
        self.rnn2 = cls(d, d, batch_first=True)
        self.rnn3 = cls(d, d, batch_first=True)
        self.out = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, _ = self.rnn1(x)
        h, _ = self.rnn2(h)
        h, _ = self.rnn3(h)
        return self.out(h[:, -1])


def rnn_case(kind: str) -> Case:
    torch.manual_seed(2)
    return Case(
        kind,
        RNNStack(kind).eval(),
        ["rnn1", "rnn2"],
        torch.zeros(1, 6, 4),
        lambda n, seed: torch.randn(n, 6, 4, generator=torch.Generator().manual_seed(seed)),
        kwargs={"head": {"kind": "token", "pooling": "last"}},
    )


# ------------------------------------------------------------------------------------------------ graph
class GraphNet(nn.Module):
    """Message passing over one graph per sample: ``forward(x [B, N, F], adj [B, N, N])`` -> graph class."""

    def __init__(self, f: int = 5, d: int = 12, classes: int = 3) -> None:
        super().__init__()
        self.inp = nn.Linear(f, d)
        self.mp1, self.mp2, self.mp3 = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
        deg = adj.sum(dim=-1, keepdim=True).clamp_min(1.0)
        norm = adj / deg  # side value: row-normalised adjacency
        h = torch.relu(self.inp(x))
        h = torch.relu(self.mp1(norm @ h))
        h = torch.relu(self.mp2(norm @ h))
        h = torch.relu(self.mp3(norm @ h))
        return self.out(h.mean(dim=1))


def graph_batch(n: int, seed: int, nodes: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, nodes, 5, generator=g)
    adj = (torch.rand(n, nodes, nodes, generator=g) < 0.4).float()
    adj = ((adj + adj.transpose(1, 2)) > 0).float()
    return x, adj


def graph_case() -> Case:
    torch.manual_seed(3)
    head = {"kind": "token", "pooling": "mean"}
    return Case("graph", GraphNet().eval(), ["mp1", "mp2"], graph_batch(1, 0), lambda n, seed: graph_batch(n, seed),
                kwargs={"head": head})  # fmt: skip


# ------------------------------------------------------------------------------------------------ simple
def cnn_case() -> Case:
    torch.manual_seed(4)
    backbone = ee.backbones.resnet(depth=8, in_chans=1, num_classes=4, width=4).eval()
    return Case("cnn", backbone, ["layer1", "layer2.0"], torch.zeros(1, 1, 8, 8),
                lambda n, seed: torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(seed)))  # fmt: skip


def regression_case() -> Case:
    torch.manual_seed(5)
    backbone = ee.backbones.mlp(6, [16, 16, 16], 2).eval()
    return Case("regression", backbone, ["blocks.0", "blocks.1"], torch.zeros(1, 6),
                lambda n, seed: torch.randn(n, 6, generator=torch.Generator().manual_seed(seed)), task="regression",
                kwargs={"head": "linear"})  # fmt: skip


def all_cases() -> list[Case]:
    return [
        cnn_case(),
        encoder_case(),
        rnn_case("gru"),
        rnn_case("lstm"),
        graph_case(),
        regression_case(),
        encoder_case(per_token=True),
    ]
