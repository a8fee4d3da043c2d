from __future__ import annotations

import pytest
import torch

from exitnet.heads import SDNHead, create_head, list_heads


@pytest.mark.parametrize(
    "kind, shape, kwargs",
    [
        ("linear", (4, 5, 5), {}),
        ("mlp", (4, 5, 5), {"hidden": 7}),
        ("pool", (4, 5, 5), {}),
        ("pool", (6,), {}),
        ("sdn", (4, 9, 9), {}),
        ("sdn", (4, 2, 2), {}),
        ("token", (5, 8), {"pooling": "cls"}),
        ("token", (5, 8), {"pooling": "mean"}),
    ],
)
def test_heads_map_features_to_logits(kind, shape, kwargs) -> None:
    head = create_head(kind, shape, 3, **kwargs)
    assert head(torch.randn(2, *shape)).shape == (2, 3)


def test_list_heads_names_every_kind() -> None:
    assert {"linear", "mlp", "pool", "sdn", "token"} <= set(list_heads())


def test_unknown_head_lists_valid_ones() -> None:
    with pytest.raises(ValueError, match="choose one of: .*linear.*pool"):
        create_head("conv", (4, 4, 4), 3)


def test_pool_head_is_global_average_pool_then_linear() -> None:
    head = create_head("pool", (3, 4, 4), 2)
    h = torch.randn(5, 3, 4, 4)
    assert torch.allclose(head(h), head.fc(h.mean(dim=(2, 3))))


def test_sdn_head_mixes_max_and_avg_pooling() -> None:
    head = SDNHead((2, 8, 8), 3)
    h = torch.randn(4, 2, 8, 8)
    with torch.no_grad():
        head.alpha.fill_(1.0)  # pure max pooling over 2x2 windows to a 4x4 map
    expected = head.fc(torch.nn.functional.max_pool2d(h, 2).flatten(1))
    assert torch.allclose(head(h), expected, atol=1e-6)


@pytest.mark.parametrize(
    "kind, shape, match",
    [("sdn", (4, 4), "image features"), ("token", (4, 4, 4), "token features"), ("linear", (0, 3), "positive")],
)
def test_head_rejects_unsuitable_features(kind, shape, match) -> None:
    with pytest.raises(ValueError, match=match):
        create_head(kind, shape, 3)
