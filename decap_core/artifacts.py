"""An artifact directory (a memory, a set of train shards, a captions output) and its marker file.

The marker (``manifest.json``, ``vocab.json``) is what makes a directory a finished artifact:
``begin`` removes an earlier one first (and the temporaries a killed run left), files are written,
stale files of an earlier run are removed, and ``finish`` writes the marker last, so a failed or
killed run never leaves a directory that reads as finished. ``write_atomically`` gives single files
the same property: a temporary name, then a rename (atomic on local disks; on object stores a copy
that appears whole).
"""
from __future__ import annotations

import json
import uuid
from typing import Any, Callable, Sequence

import fsspec

from decap_core.errors import DecapError
from decap_core.filesystems import filesystem

TEMPORARY_INFIX = ".tmp-"


def begin(directory: str, marker: str, subdirectories: Sequence[str] = ()) -> None:
    """Make the directory (and subdirectories), unmark an earlier artifact there and delete the
    temporary files (``write_atomically``'s) that a killed run left in them."""
    fs, root = _fs(directory)
    if fs.isfile(root):
        raise DecapError(f"output {directory} is a file, not a directory")
    try:
        for path in (root, *(f"{root}/{sub}" for sub in subdirectories)):
            fs.makedirs(path, exist_ok=True)
            remove_stale(path, f"*{TEMPORARY_INFIX}*", ())
        if fs.exists(f"{root}/{marker}"):
            fs.rm(f"{root}/{marker}")
    except OSError as error:  # read-only, under a file, in a system folder
        raise DecapError(f"cannot write to {directory}: {type(error).__name__}: {error}") from None


def remove_stale(directory: str, pattern: str, keep: Sequence[str]) -> list[str]:
    """Delete files matching ``pattern`` in ``directory`` that ``keep`` does not name (an earlier run's)."""
    fs, root = _fs(directory)
    keep = set(keep)
    stale = [p for p in fs.glob(f"{root}/{pattern}") if p.rsplit("/", 1)[-1] not in keep]
    for path in stale:
        fs.rm(path)
    return stale


def write_atomically(url: str, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Call ``write(handle)`` on a temporary file beside ``url``, then rename it to ``url``."""
    fs, path = fsspec.core.url_to_fs(url)
    temporary = f"{path}{TEMPORARY_INFIX}{uuid.uuid4().hex[:12]}"
    try:
        with fs.open(temporary, mode) as handle:
            write(handle)
        fs.mv(temporary, path)
    finally:
        if fs.exists(temporary):
            fs.rm(temporary)


def write_json(url: str, file_format: str, metadata: dict[str, Any]) -> None:
    """``metadata`` as JSON tagged with ``file_format``, written atomically."""
    text = json.dumps({"format": file_format, **metadata}, indent=1, sort_keys=True)
    write_atomically(url, lambda handle: handle.write(text), mode="w")


def read_json(url: str, file_format: str, missing: str, what: str) -> dict[str, Any]:
    """The JSON at ``url``; one clear error (``missing`` when absent) unless it is ``file_format``."""
    try:
        with fsspec.open(url, "r") as handle:
            metadata = json.load(handle)
    except FileNotFoundError:
        raise DecapError(missing) from None
    except (OSError, ValueError) as error:
        raise DecapError(f"{what} {url} is unreadable: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != file_format:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise DecapError(f"{url} is not a {what} (format {found!r})")
    return metadata


def finish(directory: str, marker: str, file_format: str, metadata: dict[str, Any]) -> None:
    """Write the marker last: the directory now reads as a finished artifact."""
    write_json(f"{directory.rstrip('/')}/{marker}", file_format, metadata)


def _fs(directory: str):
    fs, root = filesystem(directory.rstrip("/"))
    return fs, root.rstrip("/")
