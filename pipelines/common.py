"""Transforms shared by the pipelines that read, normalise, dedupe and encode text corpora.

``DistinctSentences`` (read, normalise, filter, dedupe, batch) -> ``EncodeText``. Refused inputs
leave on the ``DEAD`` output as ``decap_core.corpus.DeadLetter``s.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.utils.shared import Shared

from decap_core import corpus
from decap_core.clip import ClipModel, encode_tokens_packed, load_clip
from decap_core.textnorm import LengthLimits, NormalisationOptions, shard_of
from decap_core.vocab import pad_batch

DEAD = "dead"
STATS = "stats"
NAMESPACE = "decap"


def count(name: str, value: int = 1) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(value)


class _ReadAndPrepare(beam.DoFn):
    """One corpus file -> its kept sentences as ``(group, [fields])`` lists, + ``DEAD`` records.

    Sentences leave in lists of up to ``chunk`` per group rather than one element each, so the
    shuffle that follows moves a few thousand elements instead of one per line, and as plain
    tuples of ``Sentence``'s fields: Beam's default coder writes a tuple natively but pickles a
    NamedTuple, four times slower per sentence.
    """

    def __init__(self, field: str, options: NormalisationOptions, limits: LengthLimits, groups: int, chunk: int = 1024):
        self._field, self._options, self._limits = field, options, limits
        self._groups, self._chunk = groups, chunk

    def process(self, url: str) -> Iterator[Any]:
        lists: dict[int, list[tuple]] = {}
        records = 0
        for record in corpus.read_records(url, self._field):
            records += 1
            if not isinstance(record, corpus.DeadLetter):
                record = corpus.prepare(record, self._options, self._limits)
            if isinstance(record, corpus.DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD, record)
                continue
            group = shard_of(record.id, self._groups)
            sentences = lists.setdefault(group, [])
            sentences.append(tuple(record))
            if len(sentences) == self._chunk:
                yield group, lists.pop(group)
        yield from lists.items()
        count("read", records)  # once a file: a counter update per line cost more than the read


class DedupeAndBatch(beam.DoFn):
    """One group's sentences -> its distinct ids as fixed batches ``((group, n), [fields])``.

    Copies share an id, so they share a group: deduping within a group is global. The kept copy
    is the one with the smallest source, so reruns choose the same. Rows (``Sentence`` fields, as
    plain tuples) are batched in (token count, id) order: the same batches every run make the
    encoded numbers identical from run to run.
    """

    def __init__(self, batch_size: int):
        self._batch_size = batch_size

    def process(self, element: tuple[int, Iterable[list[tuple]]]) -> Iterator[Any]:
        group, lists = element
        first: dict[str, tuple] = {}
        seen = 0
        for sentences in lists:
            seen += len(sentences)
            for fields in sentences:
                sentence = corpus.Sentence._make(fields)
                kept = first.get(sentence.id)
                if kept is None or sentence.source < kept.source:
                    first[sentence.id] = sentence
        count("duplicates", seen - len(first))
        yield beam.pvalue.TaggedOutput(STATS, {"shard": group, "sentences": seen, "distinct": len(first)})
        rows = [tuple(sentence) for sentence in sorted(first.values(), key=lambda s: (len(s.tokens), s.id))]
        for number, batch in enumerate(batches_of(rows, self._batch_size)):
            yield (group, number), batch


class DistinctSentences(beam.PTransform):
    """Corpus files -> their distinct sentences in fixed batches ``((group, n), [Sentence fields])``.

    Each file is read, normalised and filtered by one worker (files are spread over workers);
    sentences are grouped by ``hash(id) mod groups`` and deduped there. Outputs, by name:
    ``batches``; ``STATS``, one ``{shard, sentences, distinct}`` per group; ``DEAD``, the refused
    records as ``decap_core.corpus.DeadLetter``s.
    """

    def __init__(self, files: Sequence[str], field: str, options: NormalisationOptions, limits: LengthLimits,
                 groups: int, batch_size: int):
        super().__init__()
        self._files, self._field = list(files), field
        self._options, self._limits = options, limits
        self._groups, self._batch_size = groups, batch_size

    def expand(self, pbegin):
        prepared = (
            pbegin
            | "ListFiles" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAndPrepare" >> beam.ParDo(
                _ReadAndPrepare(self._field, self._options, self._limits, self._groups)
            ).with_outputs(DEAD, main="lists")
        )
        deduped = (
            prepared.lists
            | "GroupById" >> beam.GroupByKey()
            | "DedupeAndBatch" >> beam.ParDo(DedupeAndBatch(self._batch_size)).with_outputs(STATS, main="batches")
        )
        return {"batches": deduped.batches, STATS: deduped[STATS], DEAD: prepared[DEAD]}


class _EncodeBatches(beam.DoFn):
    """Encodes batches with one CLIP per worker process (a Beam ``Shared`` handle), made in setup."""

    def __init__(self, clip_model: str, clip_checkpoint: str | None):
        self._clip_model, self._clip_checkpoint = clip_model, clip_checkpoint
        self._shared = Shared()
        self._clip: ClipModel | None = None

    def setup(self) -> None:
        self._clip = self._shared.acquire(self._load, tag=(self._clip_model, self._clip_checkpoint))

    def _load(self) -> ClipModel:
        return load_clip(self._clip_model, self._clip_checkpoint)  # no checkpoint: seeded random weights

    def process(self, element: tuple[Any, list[tuple]]) -> Iterator[tuple[Any, list[corpus.Sentence], np.ndarray]]:
        key, rows = element
        sentences = [corpus.Sentence._make(row) for row in rows]
        tokens = torch.from_numpy(pad_batch([s.tokens for s in sentences]))
        with torch.no_grad():
            embeddings = encode_tokens_packed(self._clip.model, tokens).float().numpy()
        count("encoded", len(sentences))
        yield key, sentences, embeddings


class EncodeText(beam.PTransform):
    """``(key, [Sentence or its fields])`` -> ``(key, [Sentence], float32 [n, D] unit-norm embeddings)``.

    The tokens carried by each ``Sentence`` are encoded without their padding, packed several to
    a row (``decap_core.clip.encode_tokens_packed``): the same numbers as open_clip's
    ``encode_text``, without re-tokenising. A batch's rows keep their order.
    """

    def __init__(self, clip_model: str, clip_checkpoint: str | None = None):
        super().__init__()
        self._clip_model, self._clip_checkpoint = clip_model, clip_checkpoint

    def expand(self, batches):
        return batches | "Encode" >> beam.ParDo(_EncodeBatches(self._clip_model, self._clip_checkpoint))


def batches_of(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    return (items[start : start + size] for start in range(0, len(items), size))
