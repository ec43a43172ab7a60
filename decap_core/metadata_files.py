"""JSON metadata files that mark a finished artifact (a memory's manifest, the shards' vocab.json)."""
from __future__ import annotations

import json
from typing import Any

import fsspec

from decap_core.errors import DecapError


def write_metadata(url: str, file_format: str, metadata: dict[str, Any]) -> None:
    """Write ``metadata`` as JSON at ``url``, tagged with ``file_format``."""
    with fsspec.open(url, "w") as handle:
        json.dump({"format": file_format, **metadata}, handle, indent=1, sort_keys=True)


def read_metadata(url: str, file_format: str, missing: str, what: str) -> dict[str, Any]:
    """The metadata at ``url``; one clear error (``missing`` when absent) if it is not ``file_format``."""
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
