"""The docstring examples of the policies, calibration and analysis run (einops runs its docstrings as tests)."""

from __future__ import annotations

import doctest
import importlib

import pytest
import torch

MODULES = [
    "exitnet.policies._base",
    "exitnet.policies._stats",
    "exitnet.policies.threshold",
    "exitnet.policies.patience",
    "exitnet.policies.budgeted",
    "exitnet.policies.gate",
    "exitnet.policies.temperature",
    "exitnet.calibration._inputs",
    "exitnet.calibration._core",
    "exitnet.calibration._front",
    "exitnet.calibration.iterative",
    "exitnet.calibration.risk",
    "exitnet.analysis",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name: str) -> None:
    torch.manual_seed(0)
    result = doctest.testmod(importlib.import_module(name), extraglobs={"torch": torch}, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0
