"""fsspec URLs to file systems, with one clear error where a URL's protocol has no driver installed."""
from __future__ import annotations

import fsspec

from decap_core.errors import DecapError


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(file system, path)`` of ``url``; a ``DecapError`` when its protocol is unknown or its driver missing."""
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as error:  # "Install s3fs to access S3", "Protocol not known: nosuch"
        raise DecapError(f"cannot open {url}: {error}") from None
