"""Settings dataclasses of the trainers: fields that carry their own description, and range checks.

A value out of range raises one ``DecapError`` line naming the field, when the settings are made,
so a bad flag stops a run before it loads or encodes anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

from decap_core.errors import DecapError


def described(default: Any, text: str) -> Any:
    """A dataclass field with a default and a one-line description (the command line's help)."""
    return field(default=default, metadata={"help": text})


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Rule:
    """What a field must be, in words, and the test of it."""

    wanted: str
    holds: Callable[[Any], bool]


AT_LEAST_ONE = Rule("an integer >= 1", lambda v: _integer(v) and v >= 1)
NON_NEGATIVE_INT = Rule("an integer >= 0", lambda v: _integer(v) and v >= 0)
POSITIVE = Rule("a finite number > 0", lambda v: _finite(v) and v > 0)
NON_NEGATIVE = Rule("a finite number >= 0", lambda v: _finite(v) and v >= 0)
FRACTION = Rule("a number from 0 up to, not including, 1", lambda v: _finite(v) and 0 <= v < 1)


def require(settings: object, rule: Rule, *names: str) -> None:
    """Raise ``DecapError`` for the first of the ``names`` fields of ``settings`` that breaks ``rule``."""
    for name in names:
        value = getattr(settings, name)
        if not rule.holds(value):
            raise DecapError(f"{name} must be {rule.wanted}, got {value!r}")
