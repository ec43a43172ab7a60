"""Support memories on disk: Parquet shards, ``manifest.json``, and reading them back.

A memory is one directory (any fsspec URL): ``memory-00000-of-000NN.parquet`` shards with
columns ``id``, ``text``, ``embedding`` (fixed_size_list<float32>[D], unit norm) and ``source``,
and ``manifest.json``, written last, which is what makes the directory a memory.
"""
from __future__ import annotations

import json
from typing import Any, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.metadata_files import read_metadata, write_metadata

MANIFEST = "manifest.json"
FORMAT = "decap-support-memory/1"
SHARD_GLOB = "memory-*-of-*.parquet"
DEAD_LETTER_GLOB = "dead-letters-*-of-*.jsonl"


def memory_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("source", pa.string()),
    ])


def shard_name(index: int, num_shards: int) -> str:
    return f"memory-{index:05d}-of-{num_shards:05d}.parquet"


def dead_letter_name(index: int, num_shards: int) -> str:
    return f"dead-letters-{index:05d}-of-{num_shards:05d}.jsonl"


def write_shard(
    url: str, ids: Sequence[str], texts: Sequence[str], embeddings: np.ndarray, sources: Sequence[str]
) -> None:
    """Write one shard; rows in the order given (callers sort by id)."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    dim = embeddings.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim)
    table = pa.Table.from_arrays(
        [pa.array(ids, pa.string()), pa.array(texts, pa.string()), column, pa.array(sources, pa.string())],
        schema=memory_schema(dim),
    )
    with fsspec.open(url, "wb") as handle:
        pq.write_table(table, handle, compression="zstd")


def write_manifest(directory: str, manifest: dict[str, Any]) -> None:
    write_metadata(f"{directory.rstrip('/')}/{MANIFEST}", FORMAT, manifest)


def read_manifest(directory: str) -> dict[str, Any]:
    """The manifest of a built memory, or a clear error when the directory is not one."""
    return read_metadata(
        f"{directory.rstrip('/')}/{MANIFEST}", FORMAT,
        missing=f"{directory} is not a built support memory (no {MANIFEST}; was the build finished?)",
        what="support-memory manifest",
    )


def write_dead_letters(url: str, letters: Sequence[Sequence[str]]) -> None:
    """JSON lines ``{"key", "stage", "error", "detail"}``: the source, where and why it was refused."""
    with fsspec.open(url, "w", encoding="utf-8") as handle:
        for key, stage, error, detail in letters:
            handle.write(json.dumps({"key": key, "stage": stage, "error": error, "detail": detail},
                                    ensure_ascii=False) + "\n")


def begin_build(directory: str, subdirectories: Sequence[str] = ()) -> None:
    """Make the directories, and unmark an earlier memory there so a failed rebuild is never read."""
    fs, root = fsspec.core.url_to_fs(directory.rstrip("/"))
    for path in (root, *(f"{root}/{sub}" for sub in subdirectories)):
        fs.makedirs(path, exist_ok=True)
    if fs.exists(f"{root}/{MANIFEST}"):
        fs.rm(f"{root}/{MANIFEST}")


def remove_stale(directory: str, pattern: str, keep: Sequence[str]) -> list[str]:
    """Delete files matching ``pattern`` in ``directory`` that ``keep`` does not name (an earlier build's)."""
    fs, root = fsspec.core.url_to_fs(directory)
    keep = set(keep)
    stale = [p for p in fs.glob(f"{root.rstrip('/')}/{pattern}") if p.rsplit("/", 1)[-1] not in keep]
    for path in stale:
        fs.rm(path)
    return stale


def iter_chunks(directory: str, manifest: dict[str, Any] | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(texts, embeddings [n, D] float32)`` one Parquet row group at a time, shard by shard."""
    manifest = manifest or read_manifest(directory)
    for shard in manifest["shards"]:
        url = f"{directory.rstrip('/')}/{shard['name']}"
        try:
            with fsspec.open(url, "rb") as handle:
                parquet = pq.ParquetFile(handle)
                width = parquet.schema_arrow.field("embedding").type.list_size
                if width != manifest["dim"]:
                    raise DecapError(f"memory shard {url} has width {width}, its manifest says {manifest['dim']}")
                for batch in parquet.iter_batches(columns=["text", "embedding"]):
                    flat = batch.column(1).values.to_numpy(zero_copy_only=False)
                    yield batch.column(0).to_pylist(), flat.reshape(len(batch), manifest["dim"])
        except FileNotFoundError:
            raise DecapError(f"memory shard missing: {url}") from None


def load_memory(directory: str, clip_fingerprint: str | None = None) -> SupportMemory:
    """Read a built memory into a ``SupportMemory``, checking it against its manifest.

    ``clip_fingerprint``, when given, must match the CLIP the memory was built with.
    """
    manifest = read_manifest(directory)
    if clip_fingerprint is not None and manifest["clip_fingerprint"] != clip_fingerprint:
        raise DecapError(
            f"memory {directory} was built with CLIP {manifest['clip_fingerprint']}, not {clip_fingerprint}"
        )
    texts: list[str] = []
    embeddings: list[np.ndarray] = []
    for chunk_texts, chunk_embeddings in iter_chunks(directory, manifest):
        texts += chunk_texts
        embeddings.append(chunk_embeddings)
    if len(texts) != manifest["rows"]:
        raise DecapError(f"memory {directory} holds {len(texts)} rows but its manifest says {manifest['rows']}")
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, manifest["dim"]), np.float32)
    return SupportMemory(texts=texts, embeddings=torch.from_numpy(matrix), clip_fingerprint=manifest["clip_fingerprint"])
