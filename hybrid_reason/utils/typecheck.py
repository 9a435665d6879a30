"""Checks of plain values (from YAML recipes and suites) against simple type hints."""

from __future__ import annotations

import types
import typing
from typing import Any, Literal, Union


def fits(value: Any, hint: Any) -> bool:
    """Whether ``value`` fits a simple type hint (int, float, str, bool, dict, list, Literal, X | None).
    A bool is not an int here, and an int is a valid float."""
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return any(fits(value, h) for h in typing.get_args(hint))
    if origin is Literal:
        return value in typing.get_args(hint)
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or hint)


def type_name(hint: Any) -> str:
    """A readable name of a type hint."""
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
