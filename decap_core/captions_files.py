"""A captions output on disk: one Parquet file per input shard, its dead letters, its marker, a manifest.

```
captions-<shard id>.parquet          the shard's captions, one row per key and strategy
errors/dead-letters-<shard id>.jsonl the shard's refused records (only shards that have some)
done/<shard id>.json                 the shard's marker, written last: counts, settings signature
manifest.json                        written at the end of every run: inputs, settings, totals
```

A shard's Parquet and dead letters are written under temporary names and renamed into place
before its marker; only a marked shard counts. A rerun captions only unmarked shards and writes
them under the same names, so a key is never written twice and a killed run resumes.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from decap_core import artifacts
from decap_core.errors import DecapError

MANIFEST = "manifest.json"
FORMAT = "decap-captions/1"
MARKER_FORMAT = "decap-captions-shard/1"
ERRORS_DIR = "errors"
DONE_DIR = "done"
CAPTIONS_GLOB = "captions-*.parquet"

NEIGHBOR = pa.struct([("text", pa.string()), ("weight", pa.float32())])
CAPTION_SCHEMA = pa.schema([
    ("key", pa.string()),
    ("source", pa.string()),
    ("strategy", pa.string()),
    ("caption", pa.string()),
    ("tau", pa.float64()),
    ("neighbors", pa.list_(NEIGHBOR)),
    ("clip_score", pa.float32()),
    ("url", pa.string()),
    ("source_caption", pa.string()),
    ("clip_fingerprint", pa.string()),
    ("memory_fingerprint", pa.string()),
    ("decoder_fingerprint", pa.string()),
])


def captions_name(shard_id: str) -> str:
    return f"captions-{shard_id}.parquet"


def dead_letters_name(shard_id: str) -> str:
    return f"{ERRORS_DIR}/dead-letters-{shard_id}.jsonl"


def marker_name(shard_id: str) -> str:
    return f"{DONE_DIR}/{shard_id}.json"


@dataclass(frozen=True)
class ShardMarker:
    """What one committed input shard produced (``done/<shard id>.json``)."""

    shard_id: str
    input_url: str
    signature: str
    read: int
    captioned: int
    rows: int
    dead: int
    dead_by_reason: dict[str, int] = field(default_factory=dict)
    members: tuple[str, ...] = ()  # image files of a files shard (so a rerun skips them)
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {"shard_id": self.shard_id, "input_url": self.input_url, "signature": self.signature,
                "read": self.read, "captioned": self.captioned, "rows": self.rows, "dead": self.dead,
                "dead_by_reason": dict(sorted(self.dead_by_reason.items())), "members": list(self.members),
                "seconds": round(self.seconds, 3)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardMarker":
        return cls(data["shard_id"], data["input_url"], data["signature"], data["read"], data["captioned"],
                   data["rows"], data["dead"], dict(data.get("dead_by_reason", {})), tuple(data.get("members", ())),
                   float(data.get("seconds", 0.0)))


class ShardOutput:
    """Streams one shard's caption rows into Parquet row groups and dead letters into JSON lines,
    under temporary names; ``commit`` renames both into place and then writes the marker."""

    def __init__(self, output: str, shard_id: str):
        self.output, self.shard_id = output.rstrip("/"), shard_id
        self._fs, root = fsspec.core.url_to_fs(self.output)
        self._root = root.rstrip("/")
        self._tag = f".partial-{shard_id}"
        self._captions_tmp = f"{self._root}/{captions_name(shard_id)}{self._tag}"
        self._dead_tmp = f"{self._root}/{dead_letters_name(shard_id)}{self._tag}"
        self._handle = self._fs.open(self._captions_tmp, "wb")
        self._writer = pq.ParquetWriter(self._handle, CAPTION_SCHEMA, compression="zstd")
        self._dead: list[str] = []
        self.rows = 0

    def write_rows(self, rows: Sequence[dict[str, Any]]) -> None:
        if rows:
            self._writer.write_table(pa.Table.from_pylist(list(rows), schema=CAPTION_SCHEMA))
            self.rows += len(rows)

    def write_dead_letter(self, key: str, source: str, stage: str, error: str, detail: str) -> None:
        self._dead.append(json.dumps({"key": key, "source": source, "stage": stage, "error": error, "detail": detail},
                                     ensure_ascii=False))

    def commit(self, marker: ShardMarker) -> None:
        self._writer.close()
        self._handle.close()
        self._fs.mv(self._captions_tmp, f"{self._root}/{captions_name(self.shard_id)}")
        dead_url = f"{self._root}/{dead_letters_name(self.shard_id)}"
        if self._dead:
            with self._fs.open(self._dead_tmp, "w") as handle:
                handle.write("\n".join(self._dead) + "\n")
            self._fs.mv(self._dead_tmp, dead_url)
        elif self._fs.exists(dead_url):
            self._fs.rm(dead_url)  # an earlier, killed attempt's
        artifacts.write_json(f"{self.output}/{marker_name(self.shard_id)}", MARKER_FORMAT, marker.to_json())

    def abort(self) -> None:
        try:
            self._writer.close()
            self._handle.close()
        finally:
            for path in (self._captions_tmp, self._dead_tmp):
                if self._fs.exists(path):
                    self._fs.rm(path)


def begin(output: str) -> None:
    """Make the output's folders, unmark its manifest, and delete what killed runs left half-written."""
    artifacts.begin(output, MANIFEST, (ERRORS_DIR, DONE_DIR))
    for folder in ("", f"/{ERRORS_DIR}", f"/{DONE_DIR}"):
        artifacts.remove_stale(f"{output.rstrip('/')}{folder}", "*.partial-*", ())


def read_markers(output: str) -> list[ShardMarker]:
    """Every committed shard's marker, by shard id."""
    fs, root = fsspec.core.url_to_fs(f"{output.rstrip('/')}/{DONE_DIR}")
    markers = []
    for path in sorted(fs.glob(f"{root.rstrip('/')}/*.json")):
        url = fs.unstrip_protocol(path) if "://" in output else path
        markers.append(ShardMarker.from_json(artifacts.read_json(url, MARKER_FORMAT, f"marker {url} vanished",
                                                                 "captions shard marker")))
    return markers


def write_manifest(output: str, manifest: dict[str, Any]) -> None:
    artifacts.finish(output, MANIFEST, FORMAT, manifest)


def read_manifest(output: str) -> dict[str, Any]:
    return artifacts.read_json(f"{output.rstrip('/')}/{MANIFEST}", FORMAT,
                               missing=f"{output} is not a finished captions output (no {MANIFEST})",
                               what="captions manifest")


def read_captions(output: str, columns: Iterable[str] | None = None) -> pa.Table:
    """The rows of every committed shard of a captions output, shard by shard."""
    tables = []
    fs, root = fsspec.core.url_to_fs(output.rstrip("/"))
    for marker in read_markers(output):
        with fs.open(f"{root.rstrip('/')}/{captions_name(marker.shard_id)}", "rb") as handle:
            tables.append(pq.read_table(handle, columns=list(columns) if columns else None))
    if not tables:
        raise DecapError(f"{output} holds no committed captions")
    return pa.concat_tables(tables)


def read_dead_letters(output: str) -> list[dict[str, Any]]:
    """Every dead letter of the committed shards."""
    fs, root = fsspec.core.url_to_fs(output.rstrip("/"))
    letters = []
    for marker in read_markers(output):
        path = f"{root.rstrip('/')}/{dead_letters_name(marker.shard_id)}"
        if marker.dead and fs.exists(path):
            with fs.open(path, "r") as handle:
                letters += [json.loads(line) for line in handle if line.strip()]
    return letters


def first_row_per_key(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    """Caption rows by ``(key, strategy)``, in that sorted order; a key that two input shards share keeps its
    first row by source."""
    chosen: dict[tuple[str, str], dict[str, Any]] = {}
    for row in sorted(rows, key=lambda r: (r["strategy"], r["key"], r["source"])):
        chosen.setdefault((row["key"], row["strategy"]), row)
    return chosen
