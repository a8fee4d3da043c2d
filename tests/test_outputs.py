from __future__ import annotations

import pytest
import torch

from exitnet.outputs import ExitOutputs, as_stack


def test_stack_and_accessors() -> None:
    a, b = torch.randn(3, 4), torch.randn(3, 4)
    out = ExitOutputs((a, b), ("x", "final"))
    assert out.stack().shape == (2, 3, 4)
    assert torch.equal(out.final, b) and torch.equal(out[0], a) and len(out) == 2
    assert out.predictions().tolist() == [a.argmax(1).tolist(), b.argmax(1).tolist()]
    assert out.names == ("x", "final")


def test_default_names_and_cat() -> None:
    out = ExitOutputs((torch.zeros(2, 3), torch.ones(2, 3)))
    assert out.names == ("exit0", "exit1")
    both = ExitOutputs.cat([out, out])
    assert both.stack().shape == (2, 4, 3)


@pytest.mark.parametrize(
    "logits, names, match",
    [
        ((), (), "at least one exit"),
        ((torch.zeros(2, 3), torch.zeros(3, 3)), (), "one shape"),
        ((torch.zeros(2, 3),), ("a", "b"), "1 outputs but 2 names"),
    ],
)
def test_bad_outputs(logits, names, match) -> None:
    with pytest.raises(ValueError, match=match):
        ExitOutputs(logits, names)


def test_as_stack_rejects_wrong_rank() -> None:
    with pytest.raises(ValueError, match=r"\[E, B, \.\.\.\]"):
        as_stack(torch.zeros(3))
