"""Typed marker files: a finished artifact's JSON (``manifest.json``, ``vocab.json``) as frozen dataclasses.

Each format is one dataclass with ``to_json`` and ``from_json`` (in ``memory_files`` and
``shards``); this module reads and writes them through ``decap_core.artifacts`` and holds the
pieces they share.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, TypeVar

from decap_core import artifacts
from decap_core.errors import DecapError

T = TypeVar("T")


def pick(record_type: type, data: dict[str, Any]) -> dict[str, Any]:
    """The values of ``data`` that ``record_type``'s fields name (a missing one raises ``KeyError``)."""
    return {field.name: data[field.name] for field in dataclasses.fields(record_type)}


@dataclasses.dataclass(frozen=True)
class FileRows:
    """A file of an artifact, named relative to its directory, and the rows it holds."""

    name: str
    rows: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "FileRows":
        return cls(**pick(cls, data))


def read(url: str, decode: Callable[[dict[str, Any]], T], file_format: str, missing: str, what: str) -> T:
    """The marker at ``url`` decoded by ``decode``; one clear error when absent, foreign or damaged."""
    data = artifacts.read_json(url, file_format, missing, what)
    try:
        return decode(data)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise DecapError(f"{what} {url} is damaged ({type(error).__name__}: {error})") from None
