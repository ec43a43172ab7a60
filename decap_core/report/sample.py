"""The report's sample: which captioned keys it looks at, and their images and CLIP embeddings.

The images are read again from the run's input shards (or other patterns naming the same keys),
decoded and embedded as the captioning pipeline does it, so the embeddings are the run's own.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np
import torch
from PIL import Image

from decap_core.bulk_caption import checked_embedding
from decap_core.caption_inputs import EmbeddingRecord, ImageRecord, InputShard, read_shard
from decap_core.clip import ClipModel
from decap_core.errors import DecapError
from decap_core.image_decoding import ImageLimits, ImageRejected, decode_image, fit_for_preprocessing

THUMBNAIL_SIDE = 160


@dataclass(frozen=True)
class SampledInput:
    """One sampled key: its unit-norm CLIP image embedding and, for an image input, a PNG thumbnail."""

    key: str
    embedding: torch.Tensor = field(repr=False)
    thumbnail: bytes | None = field(default=None, repr=False)


def choose_keys(keys: Iterable[str], count: int, seed: int) -> list[str]:
    """``count`` distinct keys drawn with ``seed`` (all when there are fewer), in key order."""
    if count < 1:
        raise DecapError(f"--sample must be at least 1, got {count}")
    distinct = sorted(set(keys))
    if len(distinct) <= count:
        return distinct
    picked = np.random.default_rng(seed).choice(len(distinct), size=count, replace=False)
    return [distinct[i] for i in sorted(picked)]


def read_sample(shards: Sequence[InputShard], keys: Sequence[str], clip: ClipModel, image_size: int,
                limits: ImageLimits = ImageLimits(), batch_size: int = 64) -> list[SampledInput]:
    """The inputs of ``keys`` (in that order) from ``shards``, read until every key is found.

    A key's first readable record counts; a key that no shard holds, or whose image no longer
    decodes, is a ``DecapError``.
    """
    wanted = set(keys)
    pixels: dict[str, torch.Tensor] = {}
    thumbnails: dict[str, bytes] = {}
    found: dict[str, torch.Tensor] = {}
    for shard in shards:
        for record in read_shard(shard):
            if record.key not in wanted or record.key in pixels or record.key in found:
                continue
            if isinstance(record, ImageRecord):
                image = _decode(record, limits)
                pixels[record.key] = clip.preprocess(fit_for_preprocessing(image, image_size))
                thumbnails[record.key] = thumbnail_png(image)
            elif isinstance(record, EmbeddingRecord):
                checked = checked_embedding(record.embedding, clip.embed_dim)
                if isinstance(checked, tuple):
                    raise DecapError(f"the embedding of {record.key} ({record.source}) is refused: {checked[1]}")
                found[record.key] = torch.from_numpy(checked)
        if len(pixels) + len(found) == len(wanted):
            break
    missing = [key for key in keys if key not in pixels and key not in found]
    if missing:
        raise DecapError(f"{len(missing)} of the {len(keys)} sampled keys are not in the images read "
                         f"(first: {missing[0]}); --images names where the run's inputs are now")
    image_keys = list(pixels)
    for start in range(0, len(image_keys), batch_size):
        chunk = image_keys[start : start + batch_size]
        found.update(zip(chunk, clip.encode_pixels(torch.stack([pixels[key] for key in chunk]))))
    return [SampledInput(key, found[key], thumbnails.get(key)) for key in keys]


def _decode(record: ImageRecord, limits: ImageLimits) -> Image.Image:
    try:
        return decode_image(record.payload, record.source, limits)
    except ImageRejected as rejected:
        raise DecapError(f"sampled image {record.key} no longer decodes: {rejected}") from None


def thumbnail_png(image: Image.Image, side: int = THUMBNAIL_SIDE) -> bytes:
    """The image scaled to fit ``side`` pixels, as PNG bytes."""
    small = image.copy()
    small.thumbnail((side, side))
    buffer = io.BytesIO()
    small.save(buffer, format="PNG")
    return buffer.getvalue()
