"""take_rows and friends: compaction of any per-sample state, checked against a plain loop over rows."""

from __future__ import annotations

from collections import namedtuple

import pytest
import torch

from exitnet.rows import Shared, cat_rows, num_rows, slice_rows, take_rows, to_device

Pair = namedtuple("Pair", ["a", "b"])


def _loop(t: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """Rows one by one, stacked: what take_rows must equal."""
    return torch.stack([t[r] for r in rows]) if rows else t[:0]


def _state() -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "h": torch.randn(5, 3, 4, generator=g),
        "ctx": {"mask": torch.rand(5, 7, generator=g) > 0.5, "pos": torch.arange(35).view(5, 7)},
        "pair": Pair(torch.randn(5, 2, generator=g), [torch.ones(5), torch.zeros(5, 1)]),
        "graph": Shared(torch.eye(3)),
        "step": 3,
        "name": "x",
        "none": None,
        "scalar": torch.tensor(2.0),
    }


@pytest.mark.parametrize("rows", [[4, 0, 2], [1], [], [3, 3, 1]])
def test_take_rows_equals_a_plain_loop(rows: list[int]) -> None:
    s = _state()
    out = take_rows(s, torch.tensor(rows, dtype=torch.long))
    assert torch.equal(out["h"], _loop(s["h"], rows))
    assert torch.equal(out["ctx"]["mask"], _loop(s["ctx"]["mask"], rows))
    assert torch.equal(out["ctx"]["pos"], _loop(s["ctx"]["pos"], rows))
    assert isinstance(out["pair"], Pair)
    assert torch.equal(out["pair"].a, _loop(s["pair"].a, rows))
    assert torch.equal(out["pair"].b[1], _loop(s["pair"].b[1], rows))
    assert out["graph"] is s["graph"]  # shared: never compacted
    assert (out["step"], out["name"], out["none"]) == (3, "x", None)
    assert out["scalar"] is s["scalar"]  # a 0-dim tensor is a per-batch constant


def test_take_rows_keeps_channels_last() -> None:
    x = torch.randn(6, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    out = take_rows(x, torch.tensor([5, 1]))
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, _loop(x, [5, 1]))
    x5 = torch.randn(4, 2, 3, 3, 3).contiguous(memory_format=torch.channels_last_3d)
    assert take_rows(x5, torch.tensor([2])).is_contiguous(memory_format=torch.channels_last_3d)


class Cache:
    """Like a Hugging Face cache: selects rows in place."""

    def __init__(self, k: torch.Tensor) -> None:
        self.k = k

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.k = self.k[indices]


class Graphs:
    """An object that knows its own rows."""

    def __init__(self, sizes: torch.Tensor) -> None:
        self.sizes = sizes

    def take_rows(self, rows: torch.Tensor) -> Graphs:
        return Graphs(self.sizes[rows])


def test_take_rows_protocols() -> None:
    cache = Cache(torch.arange(8).view(4, 2))
    out = take_rows({"cache": cache, "g": Graphs(torch.tensor([3, 4, 5, 6]))}, torch.tensor([2, 0]))
    assert out["cache"] is cache and cache.k.tolist() == [[4, 5], [0, 1]]
    assert out["g"].sizes.tolist() == [5, 3]


def test_take_rows_refuses_unknown_objects_with_advice() -> None:
    with pytest.raises(TypeError, match="take_rows.*Shared"):
        take_rows({"x": object()}, torch.tensor([0]))


def test_slice_num_cat_and_move() -> None:
    s = {"ids": torch.arange(12).view(6, 2), "mask": torch.ones(6, 2), "g": Shared(1)}
    assert num_rows(s) == 6
    parts = [slice_rows(s, 0, 4), slice_rows(s, 4, 6)]
    assert [num_rows(p) for p in parts] == [4, 2]
    back = cat_rows(parts)
    assert torch.equal(back["ids"], s["ids"]) and back["g"] is s["g"]
    assert to_device(s, "cpu")["ids"].device.type == "cpu"
    with pytest.raises(ValueError, match="disagree"):
        num_rows({"a": torch.zeros(2), "b": torch.zeros(3)})
    with pytest.raises(ValueError, match="no tensor"):
        num_rows({"a": 1})
