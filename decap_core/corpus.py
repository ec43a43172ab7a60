"""Corpus files to sentences: parse txt / jsonl / parquet (optionally gzip or zstd) into records.

Every line or row becomes either a ``Sentence`` (normalised, with its id, CLIP tokens and source)
or a ``DeadLetter`` (``decap_core.dead_letters``) naming its source, the stage that refused it and
why. Nothing is dropped silently. A source is ``URL:N``: the 1-based line of a text file, the
0-based row of a Parquet file.
"""
from __future__ import annotations

import io
import json
from typing import Iterator, NamedTuple, Sequence

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from decap_core.dead_letters import DeadLetter
from decap_core.errors import DecapError
from decap_core.filesystems import filesystem
from decap_core.textnorm import LengthLimits, NormalisationOptions, normalise, sentence_id
from decap_core.vocab import clip_token_ids, fewest_clip_tokens

FORMATS = ("txt", "jsonl", "parquet")
COMPRESSIONS = {"gz": "gzip", "zst": "zstd"}
MAX_LINE_BYTES = 1 << 20  # a longer line is refused unread: no sentence within CLIP's context comes near it


class Sentence(NamedTuple):
    """A kept corpus sentence: id (hash of the normalised text), text, source, CLIP token ids."""

    id: str
    text: str
    source: str
    tokens: tuple[int, ...]


class RawText(NamedTuple):
    """A line or cell as read, before normalisation."""

    text: str
    source: str


def expand_inputs(patterns: Sequence[str]) -> list[str]:
    """The sorted files that fsspec globs match; a glob matching nothing is a user error."""
    files: set[str] = set()
    for pattern in patterns:
        fs, _ = filesystem(pattern)
        matches = [p for p in fs.glob(pattern) if fs.isfile(p)]
        if not matches:
            raise DecapError(f"no input files match {pattern!r}")
        files.update(fs.unstrip_protocol(p) if "://" in pattern else p for p in matches)
    return sorted(files)


def file_format(url: str) -> tuple[str, str | None]:
    """``(format, compression)`` from a file name such as ``part-1.jsonl.zst``."""
    name = url.rsplit("/", 1)[-1]
    stem, _, extension = name.rpartition(".")
    compression = COMPRESSIONS.get(extension)
    if compression is not None:
        stem, _, extension = stem.rpartition(".")
    return extension, compression


def read_records(url: str, field: str = "text") -> Iterator[RawText | DeadLetter]:
    """Every line or row of one corpus file: its raw text, or why it could not be read.

    ``field`` names the JSON key of ``.jsonl`` rows and the column of ``.parquet`` files.
    """
    kind, compression = file_format(url)
    if kind not in FORMATS:
        yield DeadLetter(url, "read", "unknown_format", f"expected one of {FORMATS}, optionally .gz or .zst")
        return
    try:
        with fsspec.open(url, "rb", compression=None if compression == "zstd" else compression) as raw:
            handle = io.BufferedReader(_ZstdFrames(raw)) if compression == "zstd" else raw
            if kind == "parquet":  # Parquet seeks to its footer: a zstd stream cannot, so it is read whole
                yield from _parquet_records(io.BytesIO(handle.read()) if compression == "zstd" else handle, url, field)
            else:
                for number, line in enumerate(_bounded_lines(handle), start=1):
                    source = f"{url}:{number}"
                    if line is None:
                        yield DeadLetter(source, "read", "line_too_long", f"over {MAX_LINE_BYTES} bytes")
                    else:
                        yield _line_record(line, source, kind == "jsonl", field)
    except (OSError, EOFError, ValueError) as error:  # damaged compression or Parquet footer
        yield DeadLetter(url, "read", "unreadable_file", f"{type(error).__name__}: {error}"[:200])


class _ZstdFrames(io.RawIOBase):
    """The decompressed bytes of a zstd file, frame after frame.

    zstandard's own stream reader (fsspec's) ends quietly where a file is cut short, and raises
    ``ZstdError`` on damage; this raises ``EOFError`` and ``ValueError``, as gzip does.
    """

    def __init__(self, raw):
        super().__init__()
        self._raw, self._ready = raw, b""
        self._frame = zstandard.ZstdDecompressor().decompressobj()
        self._in_frame = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._ready:
            compressed = self._raw.read(1 << 16)
            if not compressed:
                if self._in_frame:
                    raise EOFError("zstd file ends inside a frame (cut short?)")
                return 0
            self._ready = self._decompress(compressed)
        size = min(len(buffer), len(self._ready))
        buffer[:size], self._ready = self._ready[:size], self._ready[size:]
        return size

    def _decompress(self, data: bytes) -> bytes:
        out = []
        while data:
            self._in_frame = True
            try:
                out.append(self._frame.decompress(data))
            except zstandard.ZstdError as error:
                raise ValueError(str(error)) from None
            if not self._frame.eof:
                break
            data, self._in_frame = self._frame.unused_data, False
            self._frame = zstandard.ZstdDecompressor().decompressobj()
        return b"".join(out)


def _bounded_lines(handle) -> Iterator[bytes | None]:
    """The lines of a binary file, each at most ``MAX_LINE_BYTES``; None for a longer one, skipped unkept."""
    while line := handle.readline(MAX_LINE_BYTES + 1):
        if len(line) <= MAX_LINE_BYTES or line.endswith(b"\n"):
            yield line
            continue
        while (rest := handle.readline(MAX_LINE_BYTES)) and not rest.endswith(b"\n"):
            pass  # the rest of the long line, read in bounded pieces
        yield None


def _line_record(line: bytes, source: str, is_json: bool, field: str) -> RawText | DeadLetter:
    try:
        text = line.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as error:
        return DeadLetter(source, "read", "undecodable_bytes", str(error)[:200])
    if not is_json or not text.strip():
        return RawText(text, source)
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return DeadLetter(source, "read", "invalid_json", str(error)[:200])
    except RecursionError:
        return DeadLetter(source, "read", "invalid_json", "nested too deeply")
    if not isinstance(row, dict) or field not in row:
        return DeadLetter(source, "read", "missing_field", f"no field {field!r}")
    if not isinstance(row[field], str):
        return DeadLetter(source, "read", "not_a_string", f"field {field!r} is {type(row[field]).__name__}")
    return _checked_text(row[field], source)


def _checked_text(text: str, source: str) -> RawText | DeadLetter:
    """JSON's ``\\ud800`` escapes give strings no UTF-8 can hold (lone surrogates): refused, not kept."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return DeadLetter(source, "read", "invalid_unicode", str(error)[:200])
    return RawText(text, source)


def _parquet_records(handle, url: str, column: str) -> Iterator[RawText | DeadLetter]:
    parquet = pq.ParquetFile(handle)
    if column not in parquet.schema_arrow.names:
        yield DeadLetter(url, "read", "missing_column", f"no column {column!r}")
        return
    row = 0
    for batch in parquet.iter_batches(columns=[column]):
        values = batch.column(0)
        is_text = pa.types.is_string(values.type) or pa.types.is_large_string(values.type)
        if is_text:  # as bytes, decoded cell by cell: one invalid cell must not lose the others
            values = values.cast(pa.large_binary())
        for value in values.to_pylist():
            source = f"{url}:{row}"
            if is_text and value is not None:
                yield _line_record(value, source, is_json=False, field=column)
            else:
                kind = "null" if value is None else type(value).__name__
                yield DeadLetter(source, "read", "not_a_string", f"column {column!r} holds {kind}")
            row += 1


def prepare(raw: RawText, options: NormalisationOptions, limits: LengthLimits) -> Sentence | DeadLetter:
    """Normalise one raw text, give it its id and tokens, or say why it is refused."""
    text = normalise(raw.text, options)
    if not text:
        return DeadLetter(raw.source, "normalise", "empty")
    if fewest_clip_tokens(text) > limits.context_length:  # refused before BPE, which is slow on such text
        return DeadLetter(raw.source, "filter", "exceeds_clip_context", f"{len(text)} characters: {text[:80]}")
    tokens = clip_token_ids(text)
    problem = limits.problem(len(tokens))
    if problem is not None:
        return DeadLetter(raw.source, "filter", problem, f"{len(tokens)} tokens: {text[:80]}")
    return Sentence(sentence_id(text), text, raw.source, tuple(tokens))


def source_order(source: str) -> tuple[str, int]:
    """Sort key of a source ``URL:N``: by file, then by line or row number (line 6 before line 41)."""
    url, _, number = source.rpartition(":")
    return (url, int(number)) if number.isdigit() else (source, -1)
