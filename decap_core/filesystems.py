"""fsspec URLs to file systems, with one clear error where a URL's protocol has no driver installed, and globs
to the URLs they match."""
from __future__ import annotations

import fsspec

from decap_core.errors import DecapError


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(file system, path)`` of ``url``; a ``DecapError`` when its protocol is unknown or its driver missing."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:  # "Install s3fs to access S3", "Protocol not known: nosuch"
        raise DecapError(f"cannot open {url}: {error}") from None


def has_wildcard(pattern: str) -> bool:
    """Whether ``pattern`` is a glob (``*``, ``?`` or ``[``) rather than one URL."""
    return any(char in pattern for char in "*?[")


def url_of(fs: fsspec.AbstractFileSystem, path: str, pattern: str) -> str:
    """``path``, found by ``fs`` for ``pattern``, as a URL of the same kind (with its protocol when it has one)."""
    return fs.unstrip_protocol(path) if "://" in pattern else path


def glob_files(pattern: str) -> list[str]:
    """Sorted URLs of the files a glob matches (none: an empty list); a URL without wildcards stands for itself."""
    if not has_wildcard(pattern):
        return [pattern]
    fs, _ = filesystem(pattern)
    return sorted(url_of(fs, path, pattern) for path in fs.glob(pattern) if fs.isfile(path))
