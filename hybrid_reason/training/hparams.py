"""Plain descriptions of the module's hyperparameters and config: what a checkpoint can hold and
``torch.load(..., weights_only=True)`` can read back (dicts, lists, strings, numbers, None)."""

from __future__ import annotations

import functools
from dataclasses import asdict, is_dataclass
from typing import Any


def plain(value: Any) -> Any:
    """A value made of dicts, lists, strings and numbers only: dataclasses become dicts, callables
    their description (:func:`describe_callable`), anything else its repr."""
    if is_dataclass(value) and not isinstance(value, type):
        return plain(asdict(value))
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if callable(value):
        return describe_callable(value)
    return repr(value)


def dotted_name(obj: Any) -> str:
    """``module.qualname`` of a class or function (of its type for other objects)."""
    target = obj if isinstance(obj, type) or hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def describe_callable(fn: Any) -> str | dict[str, Any]:
    """A plain description of an optimizer or scheduler callable, in the recipes' form.

    A ``functools.partial`` (what jsonargparse builds from ``{class_path, init_args}``) becomes
    ``{"class_path": ..., "init_args": {...}}``; a class or function, its dotted name."""
    if isinstance(fn, functools.partial):
        target = fn.func
        if target.__module__.startswith("jsonargparse"):  # partial(instantiator helpers..., cls, **init_args)
            target = next((a for a in reversed(fn.args) if isinstance(a, type)), target)
        return {"class_path": dotted_name(target), "init_args": plain(dict(fn.keywords))}
    return dotted_name(fn)


def as_dataclass(cls: type, value: Any, key: str):
    """A dataclass instance from itself or a dict (a recipe section), naming ``model.<key>`` on a bad field."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        try:
            return cls(**value)
        except TypeError as err:
            raise ValueError(f"model.{key}: {err}") from None
    raise TypeError(f"model.{key} must be a {cls.__name__} or a dict, got {type(value).__name__}")
