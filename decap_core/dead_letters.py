"""Dead letters: the inputs a stage refused, each with where it came from, the stage and the reason.

An artifact directory keeps them in ``errors/dead-letters-SSSSS-of-NNNNN.jsonl``, JSON lines
``{"key", "stage", "error", "detail"}``; a letter's file is a stable hash of its key, so the same
inputs give the same files.
"""
from __future__ import annotations

import json
from typing import Iterable, NamedTuple

from decap_core.artifacts import write_atomically
from decap_core.textnorm import sentence_id, shard_of

DIRECTORY = "errors"
GLOB = "dead-letters-*-of-*.jsonl"


class DeadLetter(NamedTuple):
    """A refused input: where it came from, the stage that refused it, the reason, a detail."""

    key: str
    stage: str
    error: str
    detail: str = ""


def file_of(key: str, num_files: int) -> int:
    """The file a letter with this key goes to."""
    return shard_of(sentence_id(key), num_files)


def relative_path(index: int, num_files: int) -> str:
    """A dead-letter file's path inside its artifact directory (as manifests name it)."""
    return f"{DIRECTORY}/dead-letters-{index:05d}-of-{num_files:05d}.jsonl"


def write(url: str, letters: Iterable[DeadLetter]) -> None:
    """Write the letters, in the order given, as UTF-8 JSON lines (atomically)."""
    lines = "".join(json.dumps(letter._asdict(), ensure_ascii=False) + "\n" for letter in letters)
    write_atomically(url, lambda handle: handle.write(lines.encode("utf-8")))
