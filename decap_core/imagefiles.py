"""Image files behind fsspec URLs: list a glob, derive keys, decode with a clear error."""
from __future__ import annotations

import io
import posixpath

import fsspec
from PIL import Image, UnidentifiedImageError

from decap_core.errors import DecapError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_image_urls(pattern: str) -> list[str]:
    """Sorted URLs of the image files matching an fsspec glob (protocol kept)."""
    fs, _ = fsspec.core.url_to_fs(pattern)
    paths = sorted(p for p in fs.glob(pattern.split("://", 1)[-1] if "://" in pattern else pattern)
                   if p.lower().endswith(IMAGE_SUFFIXES))
    return [fs.unstrip_protocol(p) if "://" in pattern else p for p in paths]


def key_of(url: str) -> str:
    """The caption key of a file: its name without the extension."""
    return posixpath.splitext(posixpath.basename(url))[0]


def decode_image(payload: bytes, name: str) -> Image.Image:
    """An RGB image from encoded bytes, or a DecapError saying why it could not be decoded."""
    try:
        image = Image.open(io.BytesIO(payload))
        image.load()
        return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as error:
        raise DecapError(f"cannot decode image {name}: {type(error).__name__}: {error}") from None


def read_image(url: str) -> Image.Image:
    """Read and decode the image at ``url``."""
    with fsspec.open(url, "rb") as handle:
        return decode_image(handle.read(), url)
