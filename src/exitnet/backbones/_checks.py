"""Argument checks shared by the backbone builders.

Every check raises ``ValueError`` whose message names the builder, the argument, the valid
range and the value received, e.g. ``"resnet: width must be an int >= 1, got 0"``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any


def check_int(builder: str, name: str, value: Any, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is an integer ``>= minimum`` (bools are rejected).

    Example:
        >>> check_int("mlp", "num_classes", 10, minimum=2)
        10
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{builder}: {name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_float(builder: str, name: str, value: Any, low: float, high: float, *, include_low: bool = True) -> float:
    """Return ``value`` as a ``float`` if it lies in ``[low, high)`` (or ``(low, high)``).

    Example:
        >>> check_float("mlp", "dropout", 0.5, 0.0, 1.0)
        0.5
    """
    number = float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else None
    if number is None or not (low <= number if include_low else low < number) or not number < high:
        bracket = "[" if include_low else "("
        raise ValueError(f"{builder}: {name} must be a number in {bracket}{low}, {high}), got {value!r}")
    return number


def check_int_list(builder: str, name: str, value: Any, minimum: int = 1) -> list[int]:
    """Return ``value`` as a list of ints ``>= minimum``; ``value`` must be a sequence (not a string).

    Example:
        >>> check_int_list("mlp", "hidden", (128, 64))
        [128, 64]
    """
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{builder}: {name} must be a sequence of ints >= {minimum}, got {value!r}")
    return [check_int(builder, f"{name}[{i}]", v, minimum) for i, v in enumerate(value)]


def check_num_classes(builder: str, value: Any) -> int:
    """Return ``num_classes`` as an ``int`` if it is at least 2 (a classifier needs two classes).

    Example:
        >>> check_num_classes("vgg", 100)
        100
    """
    return check_int(builder, "num_classes", value, minimum=2)
