"""What the captioning pipeline reads: input shards of images or image embeddings, one reader each.

Four layouts, each split into *input shards*, the unit of work and of commit:

- ``wds``: WebDataset tars as img2dataset writes them (``KEY.jpg|png|webp`` with optional
  ``KEY.json``/``KEY.txt``; the sibling ``SHARD.parquet`` lists every input row with ``url`` and
  ``caption``). One tar is one shard; ``key`` is the sample's ``__key__``.
- ``files``: image files; ``key`` is the file name without its extension. The files of one
  directory are cut into shards of ``files_per_shard`` in name order.
- ``embeddings``: Parquet files of ``key`` + ``embedding`` (a list of floats). One file, one shard.
- ``clip-retrieval``: ``img_emb/img_emb_N.npy`` (float16, unit norm) row-aligned with
  ``metadata/metadata_N.parquet`` (``image_path`` is the key). One ``N``, one shard.

A reader yields ``ImageRecord``, ``EmbeddingRecord`` or ``RefusedRecord`` (a dead letter with
its reason); it never raises on bad data, so one bad record or a truncated tar loses only itself
(or the rest of that tar).
"""
from __future__ import annotations

import hashlib
import io
import json
import posixpath
import tarfile
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Iterator, Sequence

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset.shardlists import expand_urls
from webdataset.tariterators import base_plus_ext

from decap_core.errors import DecapError
from decap_core.filesystems import filesystem, has_wildcard, url_of

FORMATS = ("wds", "files", "embeddings", "clip-retrieval")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff")
EMBEDDING_COLUMNS = ("key", "embedding")


@dataclass(frozen=True)
class InputShard:
    """One unit of work: its stable id (names its output), layout, URL and, for files, its members."""

    shard_id: str
    format: str
    url: str
    members: tuple[str, ...] = ()
    duplicates: tuple[tuple[str, str], ...] = ()  # files: (url, the url whose key it repeats)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InputShard":
        return cls(data["shard_id"], data["format"], data["url"], tuple(data.get("members", ())),
                   tuple(tuple(pair) for pair in data.get("duplicates", ())))


@dataclass(frozen=True)
class ImageRecord:
    key: str
    source: str
    payload: bytes
    url: str | None = None
    source_caption: str | None = None


@dataclass(frozen=True)
class EmbeddingRecord:
    key: str
    source: str
    embedding: np.ndarray = field(repr=False)
    url: str | None = None
    source_caption: str | None = None


@dataclass(frozen=True)
class RefusedRecord:
    """A dead letter: the record's key, where it came from, the stage and reason, one detail line."""

    key: str
    source: str
    stage: str
    error: str
    detail: str = ""


Record = ImageRecord | EmbeddingRecord | RefusedRecord


def digest(text: str, length: int = 10) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def detect_format(url: str) -> str | None:
    """The layout a file belongs to, by its name (None: not an input file)."""
    name = url.rsplit("/", 1)[-1].lower()
    if name.endswith(".tar"):
        return "wds"
    if name.endswith(".npy") and posixpath.basename(posixpath.dirname(url)) == "img_emb":
        return "clip-retrieval"
    if name.endswith(".parquet"):
        return "embeddings"
    if name.rsplit(".", 1)[-1] in IMAGE_SUFFIXES:
        return "files"
    return None


def expand_patterns(patterns: Sequence[str]) -> list[str]:
    """Sorted input files of fsspec globs and brace patterns; a pattern that matches nothing is an error.

    A directory holding clip-retrieval's ``img_emb/`` stands for its embedding files.
    """
    found: set[str] = set()
    for pattern in patterns:
        matched: list[str] = []
        for expanded in expand_urls(pattern):
            fs, _ = filesystem(expanded)
            for path in fs.glob(expanded) if fs.exists(expanded) or has_wildcard(expanded) else []:
                if fs.isdir(path):  # clip-retrieval's output folder, or a folder of files
                    inside = fs.glob(f"{path.rstrip('/')}/img_emb/img_emb_*.npy") or fs.glob(f"{path.rstrip('/')}/*")
                    matched += [url_of(fs, p, expanded) for p in inside if fs.isfile(p)]
                elif fs.isfile(path):
                    matched.append(url_of(fs, path, expanded))
        if not matched:
            raise DecapError(f"no input files match {pattern!r}")
        found.update(matched)
    return sorted(found)


def plan_shards(patterns: Sequence[str], input_format: str = "auto", files_per_shard: int = 1000,
                done_files: Iterable[str] = ()) -> list[InputShard]:
    """The input shards of ``patterns``, in order; ``done_files`` (image files captioned by an earlier
    run) are left out, so a grown directory yields only shards of its new files."""
    if input_format != "auto" and input_format not in FORMATS:
        raise DecapError(f"unknown --input-format {input_format!r}; choose auto or one of {', '.join(FORMATS)}")
    shards: list[InputShard] = []
    files: list[str] = []
    for url in expand_patterns(patterns):
        kind = detect_format(url) if input_format == "auto" else input_format
        if kind is None:
            continue  # not an input file (a sidecar .json, stats, notes)
        if kind == "files":
            files.append(url)
        elif kind == "wds" and url.endswith(".parquet"):
            continue  # img2dataset's sibling of a tar, read with it
        else:
            stem = url.rsplit("/", 1)[-1].rsplit(".", 1)[0]
            shards.append(InputShard(f"{stem}-{digest(url, 8)}", kind, url))
    if not shards and not files:
        raise DecapError(f"no {'input' if input_format == 'auto' else input_format} files among {', '.join(patterns)}")
    return shards + _file_shards(files, files_per_shard, set(done_files))


def _file_shards(urls: list[str], per_shard: int, done: set[str]) -> list[InputShard]:
    """Image files grouped by directory into shards; a file whose key an earlier file has is refused."""
    first_of_key: dict[str, str] = {}
    duplicates: dict[str, str] = {}
    for url in urls:  # sorted: the first file of a key is the same on every run
        key = file_key(url)
        if key in first_of_key:
            duplicates[url] = first_of_key[key]
        else:
            first_of_key[key] = url
    by_directory: dict[str, list[str]] = {}
    for url in urls:
        if url not in done:
            by_directory.setdefault(posixpath.dirname(url), []).append(url)
    shards = []
    for directory, members in sorted(by_directory.items()):
        for start in range(0, len(members), per_shard):
            chunk = tuple(members[start : start + per_shard])
            name = posixpath.basename(directory) or "root"
            shards.append(InputShard(f"files-{name}-{digest(directory, 6)}-{digest(chr(10).join(chunk), 8)}", "files",
                                     directory, chunk, tuple((u, duplicates[u]) for u in chunk if u in duplicates)))
    return shards


def file_key(url: str) -> str:
    """The caption key of an image file: its name without the extension."""
    return posixpath.splitext(posixpath.basename(url))[0]


def read_shard(shard: InputShard) -> Iterator[Record]:
    """Every record of one input shard, refused ones included, in the shard's order."""
    readers = {"wds": _read_tar, "files": _read_files, "embeddings": _read_embeddings_parquet,
               "clip-retrieval": _read_clip_retrieval}
    try:
        yield from readers[shard.format](shard)
    except FileNotFoundError as error:
        yield RefusedRecord(shard.url, shard.url, "read", "missing_file", str(error)[:200])


def _read_tar(shard: InputShard) -> Iterator[Record]:
    sidecar = _img2dataset_sidecar(shard.url)
    seen: set[str] = set()
    samples = 0
    try:
        with fsspec.open(shard.url, "rb") as handle:
            for key, members in _group_members(_tar_members(handle, shard.url)):
                samples += 1
                yield _tar_record(shard.url, key, members, sidecar, seen)
        _check_tar_end(shard.url)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as error:
        if isinstance(error, FileNotFoundError):
            raise
        yield RefusedRecord(shard.url, shard.url, "read", "truncated_tar",
                            f"after {samples} samples: {type(error).__name__}: {error}"[:200])


def _tar_members(handle: Any, url: str) -> Iterator[dict[str, Any]]:
    """Regular members of a tar stream as ``{fname, data}``; a member cut short raises ``tarfile.ReadError``."""
    stream = tarfile.open(fileobj=handle, mode="r|*")
    for info in stream:
        if not info.isreg():
            continue
        data = stream.extractfile(info).read()
        if len(data) != info.size:
            raise tarfile.ReadError(f"member {info.name} ends after {len(data)} of {info.size} bytes")
        yield {"fname": info.name, "data": data}
        stream.members = []  # streaming: keep no member list


def _check_tar_end(url: str) -> None:
    """A whole tar ends with two zero blocks; a tar cut between members lacks them (tarfile stops silently)."""
    fs, path = fsspec.core.url_to_fs(url)
    size = fs.size(path)
    tail = fs.cat_file(path, start=max(0, size - 1024), end=size) if size >= 1024 else b"x"
    if size % 512 or tail.count(0) != len(tail):
        raise tarfile.ReadError(f"no end-of-archive blocks ({size} bytes): the tar is cut short")


def _group_members(members: Iterable[dict[str, Any]]) -> Iterator[tuple[str, dict[str, bytes]]]:
    """Consecutive tar members with one key (``KEY.ext``) as ``(key, {ext: bytes})``, as webdataset groups them."""
    key, current = None, {}
    for member in members:
        prefix, suffix = base_plus_ext(member["fname"])
        if prefix is None:
            prefix, suffix = member["fname"], ""
        if prefix != key and key is not None:
            yield key, current
            current = {}
        key = prefix
        current.setdefault(suffix.lower(), member["data"])
    if key is not None:
        yield key, current


def _tar_record(url: str, key: str, members: dict[str, bytes], sidecar: dict[str, tuple], seen: set[str]) -> Record:
    source = f"{url}#{key}"
    if key.startswith("/") or ".." in key.split("/"):
        return RefusedRecord(key, source, "read", "unsafe_member_name", "absolute or '..' member path")
    if key in seen:
        return RefusedRecord(key, source, "read", "duplicate_key", f"a second sample {key!r} in {url}")
    seen.add(key)
    image = next((members[s] for s in IMAGE_SUFFIXES if s in members), None)
    if image is None:
        return RefusedRecord(key, source, "read", "no_image", f"members: {', '.join(sorted(members)) or 'none'}")
    url_of, caption = sidecar.get(key, (None, None))
    if url_of is None and "json" in members:
        url_of, caption = _json_fields(members["json"], caption)
    if caption is None and "txt" in members:
        caption = members["txt"].decode("utf-8", errors="replace")
    return ImageRecord(key, source, image, url_of, caption)


def _json_fields(raw: bytes, caption: str | None) -> tuple[str | None, str | None]:
    try:
        meta = json.loads(raw)
    except ValueError:
        return None, caption
    if not isinstance(meta, dict):
        return None, caption
    text = meta.get("caption")
    return (meta.get("url") if isinstance(meta.get("url"), str) else None,
            caption if caption is not None else text if isinstance(text, str) else None)


def _img2dataset_sidecar(tar_url: str) -> dict[str, tuple[str | None, str | None]]:
    """``key -> (url, caption)`` from img2dataset's ``SHARD.parquet`` beside a tar (empty without one)."""
    url = tar_url[: -len(".tar")] + ".parquet"
    fs, path = fsspec.core.url_to_fs(url)
    if not fs.exists(path):
        return {}
    try:
        with fs.open(path, "rb") as handle:
            table = pq.read_table(handle)
    except (OSError, ValueError, pa.ArrowException):
        return {}
    names = table.column_names
    if "key" not in names:
        return {}
    columns = [_optional_column(table, c) for c in ("key", "url", "caption")]
    return {str(k): (u, c) for k, u, c in zip(*columns) if k is not None}


def _optional_column(data: pa.Table | pa.RecordBatch, name: str) -> list[Any]:
    """A column's values, or a None for every row when the table has no such column."""
    return data.column(name).to_pylist() if name in data.schema.names else [None] * data.num_rows


def _read_files(shard: InputShard) -> Iterator[Record]:
    duplicates = dict(shard.duplicates)
    for url in shard.members:
        key = file_key(url)
        if url in duplicates:
            yield RefusedRecord(key, url, "read", "duplicate_key", f"key {key!r} is already {duplicates[url]}")
            continue
        try:
            with fsspec.open(url, "rb") as handle:
                payload = handle.read()
        except OSError as error:
            yield RefusedRecord(key, url, "read", "unreadable_file", f"{type(error).__name__}: {error}"[:200])
            continue
        yield ImageRecord(key, url, payload)


def _read_embeddings_parquet(shard: InputShard) -> Iterator[Record]:
    try:
        with fsspec.open(shard.url, "rb") as handle:
            parquet = pq.ParquetFile(handle)
            names = parquet.schema_arrow.names
            missing = [c for c in EMBEDDING_COLUMNS if c not in names]
            if missing:
                yield RefusedRecord(shard.url, shard.url, "read", "missing_column", f"no column {missing[0]!r}")
                return
            extra = [c for c in ("url", "caption") if c in names]
            seen: set[str] = set()
            row = 0
            for batch in parquet.iter_batches(columns=[*EMBEDDING_COLUMNS, *extra], batch_size=4096):
                columns = [_optional_column(batch, c) for c in ("key", "embedding", "url", "caption")]
                for key, vector, url, caption in zip(*columns):
                    source = f"{shard.url}:{row}"
                    row += 1
                    yield _embedding_record(key, source, vector, url, caption, seen)
    except (OSError, ValueError, pa.ArrowException) as error:
        if isinstance(error, FileNotFoundError):
            raise
        yield RefusedRecord(shard.url, shard.url, "read", "unreadable_file", f"{type(error).__name__}: {error}"[:200])


def _embedding_record(key: Any, source: str, vector: Any, url: Any, caption: Any, seen: set[str]) -> Record:
    if key is None or str(key) == "":
        return RefusedRecord(source, source, "read", "missing_key")
    key = str(key)
    if key in seen:
        return RefusedRecord(key, source, "read", "duplicate_key", "a second row with this key in the file")
    seen.add(key)
    if vector is None:
        return RefusedRecord(key, source, "read", "missing_embedding")
    try:
        array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError):
        return RefusedRecord(key, source, "read", "not_a_vector", f"{type(vector).__name__}")
    return EmbeddingRecord(key, source, array, url if isinstance(url, str) else None,
                           caption if isinstance(caption, str) else None)


def _read_clip_retrieval(shard: InputShard) -> Iterator[Record]:
    directory, name = shard.url.rsplit("/", 2)[0], shard.url.rsplit("/", 1)[-1]
    number = name.removeprefix("img_emb_").removesuffix(".npy")
    metadata_url = f"{directory}/metadata/metadata_{number}.parquet"
    try:
        embeddings = _load_npy(shard.url)
        with fsspec.open(metadata_url, "rb") as handle:
            metadata = pq.read_table(handle)
    except (OSError, ValueError, pa.ArrowException) as error:
        reason = "missing_metadata" if isinstance(error, FileNotFoundError) else "unreadable_file"
        yield RefusedRecord(shard.url, shard.url, "read", reason, f"{type(error).__name__}: {error}"[:200])
        return
    if embeddings.ndim != 2 or len(embeddings) != metadata.num_rows or "image_path" not in metadata.column_names:
        yield RefusedRecord(shard.url, shard.url, "read", "misaligned_metadata",
                            f"{embeddings.shape} embeddings, {metadata.num_rows} metadata rows, "
                            f"columns {metadata.column_names}")
        return
    keys, urls, captions = (_optional_column(metadata, c) for c in ("image_path", "url", "caption"))
    seen: set[str] = set()
    for row, (key, url, caption) in enumerate(zip(keys, urls, captions)):
        yield _embedding_record(key, f"{shard.url}:{row}", embeddings[row], url, caption, seen)


def _load_npy(url: str) -> np.ndarray:
    """A ``.npy`` array, memory-mapped when local (clip-retrieval shards are large), never unpickled."""
    fs, path = fsspec.core.url_to_fs(url)
    if "file" in fs.protocol or fs.protocol == "local":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    with fs.open(path, "rb") as handle:
        return np.load(io.BytesIO(handle.read()), allow_pickle=False)
