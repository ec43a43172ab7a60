"""Caption a glob of image files into Parquet, in process, with dead letters for bad files."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from decap_core.captioner import Captioner
from decap_core.clip import ClipModel
from decap_core.errors import DecapError
from decap_core.imagefiles import key_of, list_image_urls, read_image

CAPTION_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("caption", pa.string()),
        ("strategy", pa.string()),
        ("clip_fingerprint", pa.string()),
        ("memory_fingerprint", pa.string()),
        ("decoder_fingerprint", pa.string()),
    ]
)
DEAD_LETTER_SCHEMA = pa.schema([("key", pa.string()), ("stage", pa.string()), ("error", pa.string())])


@dataclass
class CaptionResult:
    rows: list[dict] = field(default_factory=list)
    dead_letters: list[dict] = field(default_factory=list)


def caption_images(
    clip: ClipModel,
    captioner: Captioner,
    pattern: str,
    strategies: Sequence[str] = ("pd",),
    batch_size: int = 64,
) -> CaptionResult:
    """Caption every image matching ``pattern`` with each strategy; bad files become dead letters."""
    urls = list_image_urls(pattern)
    if not urls:
        raise DecapError(f"no image files match {pattern}")
    result = CaptionResult()
    fingerprints = {
        "clip_fingerprint": clip.fingerprint,
        "memory_fingerprint": captioner.memory.fingerprint,
        "decoder_fingerprint": captioner.decoder.fingerprint,
    }
    for start in tqdm(range(0, len(urls), batch_size), desc="caption", unit="batch"):
        keys, images = [], []
        for url in urls[start : start + batch_size]:
            try:
                images.append(read_image(url))
                keys.append(key_of(url))
            except (DecapError, OSError) as error:
                result.dead_letters.append({"key": key_of(url), "stage": "decode", "error": str(error)})
        if not images:
            continue
        embeddings = clip.encode_images(images)
        for strategy in strategies:
            for key, text in zip(keys, captioner.caption(embeddings, strategy)):
                result.rows.append({"key": key, "caption": text, "strategy": strategy, **fingerprints})
    return result


def write_parquet(rows: list[dict], schema: pa.Schema, url: str) -> None:
    """Write ``rows`` as one Parquet file at an fsspec URL."""
    table = pa.Table.from_pylist(rows, schema=schema)
    with fsspec.open(url, "wb") as handle:
        pq.write_table(table, handle)


def write_result(result: CaptionResult, out: str) -> tuple[str, str]:
    """Write captions to ``out`` and dead letters beside it (``<out>.errors.parquet``)."""
    errors_url = out.removesuffix(".parquet") + ".errors.parquet"
    write_parquet(result.rows, CAPTION_SCHEMA, out)
    write_parquet(result.dead_letters, DEAD_LETTER_SCHEMA, errors_url)
    return out, errors_url
