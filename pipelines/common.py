"""Transforms shared by the pipelines that read, normalise and encode text corpora.

``ReadCorpus`` -> ``NormaliseAndFilter`` -> (group as the pipeline needs) -> ``EncodeText``.
Refused inputs leave every step on the ``DEAD`` output as ``decap_core.corpus.DeadLetter``s.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.utils.shared import Shared

from decap_core import corpus
from decap_core.clip import ClipModel, encode_tokens_packed, load_clip
from decap_core.textnorm import LengthLimits, NormalisationOptions
from decap_core.vocab import pad_batch

DEAD = "dead"
NAMESPACE = "decap"


def count(name: str, value: int = 1) -> None:
    beam.metrics.Metrics.counter(NAMESPACE, name).inc(value)


class _ReadFile(beam.DoFn):
    def __init__(self, field: str):
        self._field = field

    def process(self, url: str) -> Iterator[Any]:
        records = 0
        for record in corpus.read_records(url, self._field):
            records += 1
            if isinstance(record, corpus.DeadLetter):
                yield beam.pvalue.TaggedOutput(DEAD, record)
            else:
                yield record
        count("read", records)  # once a file: a counter update per line cost more than the read


class ReadCorpus(beam.PTransform):
    """Files (already expanded, see ``corpus.expand_inputs``) -> ``RawText`` records, + ``DEAD``.

    Files are spread over workers; each file is read by one worker, line by line.
    """

    def __init__(self, files: Sequence[str], field: str = "text"):
        super().__init__()
        self._files = list(files)
        self._field = field

    def expand(self, pbegin):
        return (
            pbegin
            | "ListFiles" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadLines" >> beam.ParDo(_ReadFile(self._field)).with_outputs(DEAD, main="records")
        )


class _Prepare(beam.DoFn):
    def __init__(self, options: NormalisationOptions, limits: LengthLimits):
        self._options, self._limits = options, limits

    def process(self, raw: corpus.RawText) -> Iterator[Any]:
        result = corpus.prepare(raw, self._options, self._limits)
        if isinstance(result, corpus.DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD, result)
        else:
            yield result


class NormaliseAndFilter(beam.PTransform):
    """``RawText`` -> ``Sentence`` (normalised, id, CLIP tokens), + ``DEAD`` for refused texts."""

    def __init__(self, options: NormalisationOptions, limits: LengthLimits):
        super().__init__()
        self._options, self._limits = options, limits

    def expand(self, records):
        return records | "Prepare" >> beam.ParDo(_Prepare(self._options, self._limits)).with_outputs(
            DEAD, main="sentences"
        )


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

    def process(self, element: tuple[Any, list[corpus.Sentence]]) -> Iterator[tuple[Any, list[corpus.Sentence], np.ndarray]]:
        key, sentences = element
        tokens = torch.from_numpy(pad_batch([s.tokens for s in sentences]))
        with torch.no_grad():
            embeddings = encode_tokens_packed(self._clip.model, tokens).float().numpy()
        count("encoded", len(sentences))
        yield key, sentences, embeddings


class EncodeText(beam.PTransform):
    """``(key, [Sentence])`` batches -> ``(key, [Sentence], float32 [n, D] unit-norm embeddings)``.

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
