"""Train shards: WebDataset tars of (text, CLIP tokens, CLIP text embedding), and ``vocab.json``.

One sample per sentence; its key is the memory id (hex, so never a dot, which webdataset would
split the key at). Members: ``txt`` (UTF-8 text), ``tokens.npy`` (int32 CLIP BPE ids, start and end
included), ``emb.npy`` (float16 or float32 unit-norm embedding). Shards are ``train-NNNNNN.tar``
and ``valid-NNNNNN.tar`` with a fixed number of samples each (the last may hold fewer).
``vocab.json`` beside them, written last, makes a directory a set of shards (an artifact directory,
see ``decap_core.artifacts``): the CLIP fingerprint, the embedding width and dtype, every shard
with its sample count, and the token counts of the training shards (from which the trainer builds
its compact vocabulary). ``ShardsManifest`` is that file's format, read and written here only.
"""
from __future__ import annotations

import dataclasses
import io
import logging
import posixpath
import tarfile
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Sequence

import fsspec
import numpy as np
from webdataset.shardlists import expand_urls
from webdataset.tariterators import group_by_keys, tar_file_expander
from webdataset.writer import TarWriter

from decap_core import artifacts, dead_letters, metadata_files
from decap_core.errors import DecapError
from decap_core.filesystems import glob_files
from decap_core.metadata_files import FileRows, pick
from decap_core.textnorm import LengthLimits
from decap_core.vocab import END_ID, START_ID, CompactVocab

VOCAB_FILE = "vocab.json"
FORMAT = "decap-train-shards/1"
SPLITS = ("train", "valid")
MEMBERS = ("txt", "tokens.npy", "emb.npy")
EMB_DTYPES = {"float16": np.float16, "float32": np.float32}
NORM_TOLERANCE = 0.01  # how far from 1 a read embedding's norm may be (float16 rounding moves it by about 1e-3)
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sample:
    """One training sentence: memory id, text, CLIP token ids, unit-norm embedding."""

    key: str
    text: str
    tokens: np.ndarray
    embedding: np.ndarray


@dataclass(frozen=True)
class Refusal:
    """What a reader left out, and why: one sample (``key``), or with ``key`` None a whole shard."""

    url: str
    key: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def brace_pattern(directory: str, split: str, count: int) -> str:
    """The brace-expansion URL of a split's shards, e.g. ``dir/train-{000000..000009}.tar``."""
    directory = directory.rstrip("/")
    if count == 1:
        return f"{directory}/{shard_name(split, 0)}"
    return f"{directory}/{split}-{{{0:06d}..{count - 1:06d}}}.tar"


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@dataclass(frozen=True)
class ShardsPlan:
    """How a set of shards is made, fixed before a sentence is read: the first half of ``vocab.json``."""

    clip_model: str
    clip_fingerprint: str
    dim: int
    normalisation: dict[str, Any]  # NormalisationOptions.describe(): version and options
    token_limits: LengthLimits
    source: dict[str, Any]  # {"inputs": [URL, ...]} or {"memory": URL, "memory_rows": N}
    samples_per_shard: int
    validation_samples: int
    emb_dtype: str
    seed: int

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardsPlan":
        values = pick(cls, data)
        return cls(**{**values, "token_limits": LengthLimits(**values["token_limits"])})


@dataclass(frozen=True)
class ShardFile:
    """A tar shard, named relative to its directory, and the samples it holds."""

    name: str
    samples: int


@dataclass(frozen=True)
class ShardsManifest:
    """``vocab.json``: the plan, then what was written (JSON keys all at the top level)."""

    plan: ShardsPlan
    samples: dict[str, int]  # per split
    shards: tuple[ShardFile, ...]
    train_pattern: str | None
    validation_pattern: str | None
    dead_letters: tuple[FileRows, ...]
    dead: int
    token_counts: dict[int, int]  # CLIP token id -> occurrences in the training shards

    def to_json(self) -> dict[str, Any]:
        return {
            **self.plan.to_json(),
            "samples": dict(self.samples),
            "shards": [dataclasses.asdict(shard) for shard in self.shards],
            "train_pattern": self.train_pattern,
            "validation_pattern": self.validation_pattern,
            "dead_letters": [letters.to_json() for letters in self.dead_letters],
            "dead": self.dead,
            "token_counts": {str(token): n for token, n in sorted(self.token_counts.items())},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ShardsManifest":
        return cls(
            plan=ShardsPlan.from_json(data),
            samples=dict(data["samples"]),
            shards=tuple(ShardFile(**pick(ShardFile, shard)) for shard in data["shards"]),
            train_pattern=data["train_pattern"],
            validation_pattern=data["validation_pattern"],
            dead_letters=tuple(FileRows.from_json(letters) for letters in data["dead_letters"]),
            dead=data["dead"],
            token_counts={int(token): n for token, n in data["token_counts"].items()},
        )


def begin(directory: str) -> None:
    """Unmark an earlier set of shards in ``directory`` (a failed rerun is never read) and make ``errors/``."""
    artifacts.begin(directory, VOCAB_FILE, [dead_letters.DIRECTORY])


def write_shard(url: str, samples: Sequence[Sample], emb_dtype: str) -> None:
    """Write one tar shard atomically (deterministic bytes: fixed mtime, owner and member order)."""
    for sample in samples:
        if "." in sample.key or "/" in sample.key:
            raise ValueError(f"sample key {sample.key!r} has a dot or slash; webdataset would split it")

    def write(handle) -> None:
        writer = TarWriter(handle, encoder=False, mtime=0, user="decap", group="decap")
        for sample in samples:
            writer.write({
                "__key__": sample.key,
                "txt": sample.text.encode("utf-8"),
                "tokens.npy": npy_bytes(np.asarray(sample.tokens, dtype=np.int32)),
                "emb.npy": npy_bytes(np.asarray(sample.embedding, dtype=EMB_DTYPES[emb_dtype])),
            })
        writer.close()

    artifacts.write_atomically(url, write)


def write_vocab(directory: str, manifest: ShardsManifest) -> None:
    """Write ``vocab.json`` last: the directory now reads as a set of shards."""
    artifacts.finish(directory, VOCAB_FILE, FORMAT, manifest.to_json())


def read_vocab(directory: str) -> ShardsManifest:
    """The ``vocab.json`` of a shard directory, or one clear error."""
    return metadata_files.read(
        f"{directory.rstrip('/')}/{VOCAB_FILE}", ShardsManifest.from_json, FORMAT,
        missing=f"{directory} holds no finished train shards (no {VOCAB_FILE}; did make-shards finish?)",
        what="train-shards vocab.json",
    )


def compact_vocab(manifest: ShardsManifest, min_count: int = 1) -> CompactVocab:
    """The compact vocabulary of the tokens the training shards use at least ``min_count`` times
    (``CompactVocab.for_training``: refused when it cannot represent their text)."""
    return CompactVocab.for_training(manifest.token_counts, min_count)


def expand(pattern: str | Sequence[str]) -> list[str]:
    """Shard URLs of brace patterns (``train-{000000..000009}.tar``; ``::`` separates several) and
    globs (``train-*.tar``, sorted)."""
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [url for p in patterns for expanded in expand_urls(p) for url in glob_files(expanded)]


@dataclass(frozen=True)
class ShardSet:
    """Shard URLs checked against the ``vocab.json`` beside them: one CLIP, one width, known shards."""

    urls: tuple[str, ...]
    expected: dict[str, int]  # samples each shard should hold
    metadata: ShardsManifest  # the first directory's vocab.json, token counts summed over directories

    @classmethod
    def open(cls, pattern: str | Sequence[str], clip_fingerprint: str | None = None) -> "ShardSet":
        urls = expand(pattern)
        if not urls:
            raise DecapError(f"no shard URLs in {pattern!r}")
        first: ShardsManifest | None = None
        counts: Counter = Counter()
        expected: dict[str, int] = {}
        for directory in dict.fromkeys(posixpath.dirname(url) for url in urls):
            manifest = read_vocab(directory)
            plan = manifest.plan
            if clip_fingerprint is not None and plan.clip_fingerprint != clip_fingerprint:
                raise DecapError(f"shards in {directory} were made with CLIP {plan.clip_fingerprint}, "
                                 f"not {clip_fingerprint}")
            if first is not None and (plan.clip_fingerprint, plan.dim) != (first.plan.clip_fingerprint, first.plan.dim):
                raise DecapError(f"shards in {directory} were made with CLIP {plan.clip_fingerprint} (dim {plan.dim}), "
                                 f"other shards with {first.plan.clip_fingerprint} (dim {first.plan.dim})")
            first = first or manifest
            counts.update(manifest.token_counts)
            expected.update({f"{directory}/{shard.name}": shard.samples for shard in manifest.shards})
        unknown = [url for url in urls if url not in expected]
        if unknown:
            raise DecapError(f"shard {unknown[0]} is not listed in the {VOCAB_FILE} beside it "
                             f"(a stale shard, or one from another make-shards run)")
        metadata = dataclasses.replace(first, token_counts=dict(sorted(counts.items())))
        return cls(tuple(urls), {url: expected[url] for url in urls}, metadata)


def read_shard(url: str, dim: int, expected: int | None = None) -> Iterator[Sample | Refusal]:
    """The samples of one shard, checked; a missing or damaged shard raises ``DecapError`` naming it.

    A sample whose embedding cannot train (``embedding_problem``) comes as a ``Refusal`` instead.
    Samples before the damage have been yielded by then; ``expected`` (from ``vocab.json``) catches
    shards that end early without a tar error (zeroed or cut at a block boundary).
    """
    seen = 0
    try:
        with fsspec.open(url, "rb") as handle:
            for raw in group_by_keys(tar_file_expander([{"url": url, "stream": handle}])):
                sample = decode_sample(raw)
                problem = embedding_problem(sample.embedding, dim)
                yield sample if problem is None else Refusal(url, sample.key, problem)
                seen += 1
    except FileNotFoundError:
        raise DecapError(f"shard missing: {url}") from None
    except (tarfile.TarError, OSError, ValueError, KeyError, EOFError) as error:
        detail = error.args[0] if error.args else ""  # webdataset appends the stream and URL to args
        message = f"shard damaged: {url} after {seen} samples ({type(error).__name__}: {detail})"
        raise DecapError(message[:300]) from None
    if expected is not None and seen != expected:
        raise DecapError(f"shard damaged: {url} holds {seen} samples, {VOCAB_FILE} says {expected}")


def decode_sample(raw: dict[str, Any]) -> Sample:
    """A ``Sample`` from webdataset's raw member bytes; ValueError when a member is missing or wrong."""
    missing = [m for m in MEMBERS if m not in raw]
    if missing:
        raise ValueError(f"sample {raw.get('__key__')!r} lacks {', '.join(missing)}")
    tokens = np.load(io.BytesIO(raw["tokens.npy"]), allow_pickle=False)
    embedding = np.load(io.BytesIO(raw["emb.npy"]), allow_pickle=False)
    if tokens.ndim != 1 or len(tokens) < 2 or tokens[0] != START_ID or tokens[-1] != END_ID:
        raise ValueError(f"sample {raw['__key__']!r} has tokens without start and end")
    return Sample(raw["__key__"], raw["txt"].decode("utf-8"), tokens.astype(np.int64), embedding.astype(np.float32))


def embedding_problem(embedding: np.ndarray, dim: int) -> str | None:
    """Why an embedding cannot train the decoder (wrong shape, not finite, not unit norm), or None."""
    if embedding.shape != (dim,):
        return f"embedding of shape {embedding.shape}, not ({dim},)"
    if not np.isfinite(embedding).all():
        return "embedding with NaN or infinite values"
    norm = float(np.linalg.norm(embedding))
    if abs(norm - 1) > NORM_TOLERANCE:
        return f"embedding of norm {norm:.4g}, not 1"
    return None


def iter_shards(urls: Iterable[str], shard_set: ShardSet, skip_bad: bool) -> Iterator[tuple[str, Sample | Refusal]]:
    """``(url, sample)`` over shards in order, with a warning for each ``Refusal`` among them.

    A refused sample is yielded as its ``Refusal``; a bad shard raises, or with ``skip_bad`` is
    yielded as a ``Refusal`` of the whole shard (key None) and the next shard is read.
    """
    for url in urls:
        try:
            for item in read_shard(url, shard_set.metadata.plan.dim, shard_set.expected[url]):
                if isinstance(item, Refusal):
                    log.warning("refusing sample %s of %s: %s", item.key, url, item.reason)
                yield url, item
        except DecapError as error:
            if not skip_bad:
                raise
            log.warning("skipping %s", error)
            yield url, Refusal(url, None, str(error))
