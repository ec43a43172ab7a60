"""Support memories on disk: Parquet shards, ``manifest.json``, and reading them back.

A memory is one artifact directory (any fsspec URL, see ``decap_core.artifacts``):
``memory-00000-of-000NN.parquet`` shards with columns ``id``, ``text``, ``embedding``
(fixed_size_list<float32>[D], unit norm) and ``source``; refused inputs in ``errors/``; and
``manifest.json``, written last, which is what makes the directory a memory. ``MemoryManifest``
is that file's format, read and written here only.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Iterator

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from decap_core import artifacts, dead_letters, metadata_files
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.metadata_files import FileRows, pick
from decap_core.textnorm import LengthLimits

MANIFEST = "manifest.json"
FORMAT = "decap-support-memory/1"
SHARD_GLOB = "memory-*-of-*.parquet"
COLUMNS = ("id", "text", "embedding", "source")


@dataclasses.dataclass(frozen=True)
class MemoryPlan:
    """How a memory is built, fixed before a line is read: the first half of its manifest."""

    clip_model: str
    clip_fingerprint: str
    dim: int
    num_shards: int
    normalisation: dict[str, Any]  # NormalisationOptions.describe(): version and options
    token_limits: LengthLimits
    inputs: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "inputs": list(self.inputs)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemoryPlan":
        values = pick(cls, data)
        return cls(**{**values, "token_limits": LengthLimits(**values["token_limits"]),
                      "inputs": tuple(values["inputs"])})


@dataclasses.dataclass(frozen=True)
class MemoryCounts:
    """What a build read: ``read = kept + duplicates + dead``."""

    read: int
    kept: int
    duplicates: int
    dead: int
    dead_by_reason: dict[str, int]


@dataclasses.dataclass(frozen=True)
class IndexInfo:
    """The faiss index beside the shards, and its recall@10 against exact search."""

    file: str
    factory: str
    metric: str
    recall_at_10: float
    recall_queries: int


@dataclasses.dataclass(frozen=True)
class MemoryManifest:
    """``manifest.json``: the plan, then what was built (JSON keys all at the top level)."""

    plan: MemoryPlan
    rows: int
    shards: tuple[FileRows, ...]
    dead_letters: tuple[FileRows, ...]
    counts: MemoryCounts
    index: IndexInfo | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "rows": self.rows,
            "shards": [shard.to_json() for shard in self.shards],
            "dead_letters": [letters.to_json() for letters in self.dead_letters],
            "counts": dataclasses.asdict(self.counts),
            "index": dataclasses.asdict(self.index) if self.index else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "MemoryManifest":
        return cls(
            plan=MemoryPlan.from_json(data),
            rows=data["rows"],
            shards=tuple(FileRows.from_json(shard) for shard in data["shards"]),
            dead_letters=tuple(FileRows.from_json(letters) for letters in data["dead_letters"]),
            counts=MemoryCounts(**pick(MemoryCounts, data["counts"])),
            index=IndexInfo(**pick(IndexInfo, data["index"])) if data["index"] else None,
        )


@dataclasses.dataclass(frozen=True)
class ShardRows:
    """The rows of one memory shard, column by column; ``embeddings`` is float32 ``[n, D]``."""

    ids: list[str]
    texts: list[str]
    embeddings: np.ndarray
    sources: list[str]


def memory_schema(dim: int) -> pa.Schema:
    return pa.schema([
        ("id", pa.string()),
        ("text", pa.string()),
        ("embedding", pa.list_(pa.float32(), dim)),
        ("source", pa.string()),
    ])


def shard_name(index: int, num_shards: int) -> str:
    return f"memory-{index:05d}-of-{num_shards:05d}.parquet"


def begin(directory: str) -> None:
    """Unmark an earlier memory in ``directory`` (a failed rebuild is never read) and make ``errors/``."""
    artifacts.begin(directory, MANIFEST, [dead_letters.DIRECTORY])


def write_shard(url: str, rows: ShardRows) -> None:
    """Write one shard atomically, rows in the order given (callers sort by id)."""
    embeddings = np.ascontiguousarray(rows.embeddings, dtype=np.float32)
    dim = embeddings.shape[1]
    column = pa.FixedSizeListArray.from_arrays(pa.array(embeddings.reshape(-1)), dim)
    table = pa.Table.from_arrays(
        [pa.array(rows.ids, pa.string()), pa.array(rows.texts, pa.string()), column,
         pa.array(rows.sources, pa.string())],
        schema=memory_schema(dim),
    )
    artifacts.write_atomically(url, lambda handle: pq.write_table(table, handle, compression="zstd"))


def write_manifest(directory: str, manifest: MemoryManifest) -> None:
    """Write ``manifest.json`` last: the directory now reads as a memory."""
    artifacts.finish(directory, MANIFEST, FORMAT, manifest.to_json())


def read_manifest(directory: str) -> MemoryManifest:
    """The manifest of a built memory, or a clear error when the directory is not one."""
    return metadata_files.read(
        f"{directory.rstrip('/')}/{MANIFEST}", MemoryManifest.from_json, FORMAT,
        missing=f"{directory} is not a built support memory (no {MANIFEST}; was the build finished?)",
        what="support-memory manifest",
    )


def shard_urls(directory: str, manifest: MemoryManifest) -> list[str]:
    return [f"{directory.rstrip('/')}/{shard.name}" for shard in manifest.shards]


def read_shard(url: str, dim: int) -> ShardRows:
    """Every row of one shard (a shard fits in a worker's memory by construction)."""
    with _parquet(url, dim) as parquet:
        table = parquet.read(columns=list(COLUMNS))
    ids, texts, sources = (table.column(name).to_pylist() for name in ("id", "text", "source"))
    return ShardRows(ids, texts, _matrix(table.column("embedding").combine_chunks(), dim), sources)


def iter_chunks(directory: str, manifest: MemoryManifest | None = None) -> Iterator[tuple[list[str], np.ndarray]]:
    """``(texts, embeddings [n, D] float32)`` one Parquet row group at a time, shard by shard."""
    manifest = manifest or read_manifest(directory)
    for url in shard_urls(directory, manifest):
        with _parquet(url, manifest.plan.dim) as parquet:
            for batch in parquet.iter_batches(columns=["text", "embedding"]):
                yield batch.column(0).to_pylist(), _matrix(batch.column(1), manifest.plan.dim)


def load_memory(directory: str, clip_fingerprint: str | None = None) -> SupportMemory:
    """Read a built memory into a ``SupportMemory``, checking it against its manifest.

    ``clip_fingerprint``, when given, must match the CLIP the memory was built with.
    """
    manifest = read_manifest(directory)
    built_with = manifest.plan.clip_fingerprint
    if clip_fingerprint is not None and built_with != clip_fingerprint:
        raise DecapError(f"memory {directory} was built with CLIP {built_with}, not {clip_fingerprint}")
    texts: list[str] = []
    embeddings: list[np.ndarray] = []
    for chunk_texts, chunk_embeddings in iter_chunks(directory, manifest):
        texts += chunk_texts
        embeddings.append(chunk_embeddings)
    if len(texts) != manifest.rows:
        raise DecapError(f"memory {directory} holds {len(texts)} rows but its manifest says {manifest.rows}")
    matrix = np.concatenate(embeddings) if embeddings else np.zeros((0, manifest.plan.dim), np.float32)
    return SupportMemory(texts=texts, embeddings=torch.from_numpy(matrix), clip_fingerprint=built_with)


@contextlib.contextmanager
def _parquet(url: str, dim: int) -> Iterator[pq.ParquetFile]:
    """One shard opened, its embedding width checked; a missing shard is a clear error."""
    try:
        with fsspec.open(url, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            width = parquet.schema_arrow.field("embedding").type.list_size
            if width != dim:
                raise DecapError(f"memory shard {url} has width {width}, its manifest says {dim}")
            yield parquet
    except FileNotFoundError:
        raise DecapError(f"memory shard missing: {url}") from None


def _matrix(column: pa.FixedSizeListArray, dim: int) -> np.ndarray:
    """A fixed-size-list column as a float32 ``[n, dim]`` array."""
    return column.values.to_numpy(zero_copy_only=False).reshape(len(column), dim)
