"""Prepared sentences spilled to Parquet files by group, so that no runner holds a whole corpus in memory.

A corpus file's kept sentences go to one spill file per group (``SPILL_DIR/<hash of the file's URL>-GGGGG.parquet``,
written under a temporary name and renamed when whole), and only the files' names travel through the
pipeline's shuffle. Names are fixed by the input, so a retried or rerun step overwrites its own files.
"""
from __future__ import annotations

import hashlib
import uuid
from typing import Any, Iterator

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from decap_core import artifacts
from decap_core.corpus import Sentence
from decap_core.filesystems import filesystem

SPILL_DIR = "_spill"
_CHUNK = 1024
_SCHEMA = pa.schema([("id", pa.string()), ("text", pa.string()), ("source", pa.string()),
                     ("tokens", pa.list_(pa.int32()))])


class SpillWriter:
    """Streams one corpus file's sentences into its group files, ``_CHUNK`` rows at a time."""

    def __init__(self, directory: str, input_url: str):
        self._fs, root = filesystem(directory.rstrip("/"))
        self._fs.makedirs(root, exist_ok=True)
        self._prefix = f"{root}/{hashlib.sha256(input_url.encode()).hexdigest()[:20]}"
        self._pending: dict[int, list[Sentence]] = {}
        self._writers: dict[int, tuple[pq.ParquetWriter, Any, str]] = {}

    def add(self, group: int, sentence: Sentence) -> None:
        rows = self._pending.setdefault(group, [])
        rows.append(sentence)
        if len(rows) == _CHUNK:
            self._flush(group)

    def close(self) -> dict[int, str]:
        """Finish every group file; their URLs by group."""
        for group in list(self._pending):
            self._flush(group)
        urls = {}
        for group, (writer, handle, temporary) in sorted(self._writers.items()):
            writer.close()
            handle.close()
            path = f"{self._prefix}-{group:05d}.parquet"
            self._fs.mv(temporary, path)
            urls[group] = self._fs.unstrip_protocol(path)
        return urls

    def _flush(self, group: int) -> None:
        rows = self._pending.pop(group, [])
        if not rows:
            return
        if group not in self._writers:
            temporary = f"{self._prefix}-{group:05d}.parquet{artifacts.TEMPORARY_INFIX}{uuid.uuid4().hex[:12]}"
            handle = self._fs.open(temporary, "wb")
            self._writers[group] = (pq.ParquetWriter(handle, _SCHEMA), handle, temporary)
        columns = list(zip(*rows))
        table = pa.Table.from_arrays([pa.array(columns[0], pa.string()), pa.array(columns[1], pa.string()),
                                      pa.array(columns[2], pa.string()), pa.array(columns[3], _SCHEMA[3].type)],
                                     schema=_SCHEMA)
        self._writers[group][0].write_table(table)


def read_spill(url: str) -> Iterator[Sentence]:
    """The sentences of one spill file, in the order written."""
    with fsspec.open(url, "rb") as handle:
        parquet = pq.ParquetFile(handle)
        for batch in parquet.iter_batches():
            ids, texts, sources, tokens = (batch.column(i).to_pylist() for i in range(4))
            for row in zip(ids, texts, sources, tokens):
                yield Sentence(row[0], row[1], row[2], tuple(row[3]))


def spill_dir(output: str) -> str:
    """Where a pipeline writing ``output`` spills its sentences."""
    return f"{output.rstrip('/')}/{SPILL_DIR}"


def remove_spill(output: str) -> None:
    """Delete the spill files of a pipeline writing ``output`` (after it, or those a killed run left)."""
    fs, root = filesystem(spill_dir(output))
    if fs.exists(root):
        fs.rm(root, recursive=True)
