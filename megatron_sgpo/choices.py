"""Enumerated settings declared once, as ``Literal`` annotations, and checked generically.

Every config dataclass calls :func:`check_choices` in ``__post_init__``, so an enumeration is
validated the same way whether the object is built from YAML or in code, and the allowed values
live only in the annotation.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Literal


@functools.lru_cache(maxsize=None)
def literal_fields(cls) -> dict[str, tuple]:
    """``{field: allowed values}`` of a dataclass's ``Literal`` (or ``Optional[Literal]``) fields."""
    out = {}
    for name, hint in typing.get_type_hints(cls).items():
        allowed = literal_values(hint)
        if allowed is not None and name in {f.name for f in dataclasses.fields(cls)}:
            out[name] = allowed
    return out


def literal_values(hint) -> tuple | None:
    """The values a ``Literal[...]`` hint admits (None included for ``Optional[Literal[...]]``), else None."""
    if typing.get_origin(hint) is Literal:
        return typing.get_args(hint)
    args = typing.get_args(hint)
    literals = [a for a in args if typing.get_origin(a) is Literal]
    if len(literals) == 1 and set(args) - set(literals) <= {type(None)}:
        return typing.get_args(literals[0]) + ((None,) if type(None) in args else ())
    return None


def check_choices(obj) -> None:
    """Raise ValueError naming the first field whose value is not one its ``Literal`` allows."""
    for name, allowed in literal_fields(type(obj)).items():
        value = getattr(obj, name)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}; got {value!r}")
