"""What the text pipelines (build-memory, make-shards) share: corpus flags and the text steps.

``add_corpus_flags`` defines the corpus, CLIP and token flags once; ``DistinctSentences`` (read,
normalise, filter, spill, dedupe by group) -> ``group_batches`` -> ``EncodeText`` (or a ``ClipDoFn`` of
one's own). Refused inputs leave on the ``DEAD`` output
as plain tuples of ``decap_core.dead_letters.DeadLetter``'s fields.
"""
from __future__ import annotations

import argparse
from typing import Any, Iterable, Iterator, Sequence

import apache_beam as beam
import numpy as np
import torch
from apache_beam.utils.shared import Shared

from decap_core import corpus, spill
from decap_core.clip import ClipModel, encode_tokens_packed, load_clip
from decap_core.textnorm import LengthLimits, NormalisationOptions, shard_of
from decap_core.vocab import pad_batch
from pipelines.steps import Split, batches_of, count

DEAD = "dead"
STATS = "stats"
GROUPS = "groups"
_SPILLED = "spilled"


def add_clip_flags(parser: argparse.ArgumentParser) -> None:
    """``--clip-model``, ``--clip-checkpoint`` and ``--batch-size``."""
    parser.add_argument("--clip-model", default="toy-clip", help="open_clip architecture or toy config")
    parser.add_argument("--clip-checkpoint", default=None, help="CLIP weights (path or fsspec URL); none: random")
    parser.add_argument("--batch-size", type=int, default=512, help="sentences per CLIP forward pass")


def add_corpus_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a text corpus, its CLIP and its token limits."""
    parser.add_argument("--input", action="extend", nargs="+", default=None,
                        help="fsspec glob(s) of .txt / .jsonl / .parquet files, optionally .gz or .zst")
    parser.add_argument("--field", default="text", help="JSON field of .jsonl rows, column of .parquet files")
    add_clip_flags(parser)
    parser.add_argument("--lowercase", action="store_true", help="lower-case sentences when normalising")
    parser.add_argument("--min-tokens", type=int, default=3, help="fewest CLIP tokens, start and end included")
    parser.add_argument("--max-tokens", type=int, default=None, help="most CLIP tokens (default: the context)")


def normalisation_of(args: argparse.Namespace) -> NormalisationOptions:
    return NormalisationOptions(lowercase=args.lowercase)


def limits_of(args: argparse.Namespace, context_length: int) -> LengthLimits:
    return LengthLimits(context_length=context_length, min_tokens=args.min_tokens, max_tokens=args.max_tokens)


class _ReadAndSpill(beam.DoFn):
    """One corpus file -> its kept sentences in spill files by group (``decap_core.spill``), and ``DEAD`` records.

    Only ``(group, spill file URL)`` pairs go on to the shuffle, so no runner holds the corpus in
    memory (Beam's in-process runner keeps a GroupByKey's whole input there).
    """

    def __init__(self, field: str, options: NormalisationOptions, limits: LengthLimits, groups: int, spill_dir: str):
        self._field, self._options, self._limits = field, options, limits
        self._groups, self._spill_dir = groups, spill_dir

    def process(self, url: str) -> Iterator[Any]:
        writer = spill.SpillWriter(self._spill_dir, url)
        records = 0
        for record in corpus.read_records(url, self._field):
            records += 1
            if not isinstance(record, corpus.DeadLetter):
                record = corpus.prepare(record, self._options, self._limits)
            if isinstance(record, corpus.DeadLetter):
                yield DEAD, tuple(record)
            else:
                writer.add(shard_of(record.id, self._groups), record)
        for group, spill_url in writer.close().items():
            yield _SPILLED, (group, spill_url)
        count("read", records)  # once a file: a counter update per line cost more than the read


class DedupeGroup(beam.DoFn):
    """One group's spill files -> its distinct sentences, one element ``(group, [Sentence fields])``.

    Copies share an id, so they share a group: deduping within a group is global. The kept copy
    is the first by file and line (``corpus.source_order``), so reruns choose the same. Rows are in
    (token count, id) order, so that batches of them are the same every run (and so are the
    encoded numbers); as plain tuples, which Beam's default coder writes natively.
    """

    def process(self, element: tuple[int, Iterable[str]]) -> Iterator[Any]:
        group, spill_urls = element
        first: dict[str, corpus.Sentence] = {}
        seen = 0
        for url in sorted(spill_urls):
            for sentence in spill.read_spill(url):
                seen += 1
                kept = first.get(sentence.id)
                if kept is None or corpus.source_order(sentence.source) < corpus.source_order(kept.source):
                    first[sentence.id] = sentence
        count("duplicates", seen - len(first))
        yield STATS, {"shard": group, "sentences": seen, "distinct": len(first)}
        rows = [tuple(sentence) for sentence in sorted(first.values(), key=lambda s: (len(s.tokens), s.id))]
        yield GROUPS, (group, rows)


def group_batches(element: tuple[int, list[tuple]], batch_size: int) -> Iterator[tuple[tuple[int, int], list[tuple]]]:
    """A group's distinct sentences as fixed batches ``((group, n), [Sentence fields])``."""
    group, rows = element
    for number, batch in enumerate(batches_of(rows, batch_size)):
        yield (group, number), list(batch)


class DistinctSentences(beam.PTransform):
    """Corpus files -> their distinct sentences by group: ``(group, [Sentence fields])``, one element a group.

    Each file is read, normalised and filtered by one worker (files are spread over workers) into
    spill files under ``spill_dir``; sentences are grouped by ``hash(id) mod groups`` and deduped
    there, one group at a time. Outputs, by name: ``GROUPS``; ``STATS``, one ``{shard, sentences,
    distinct}`` per group; ``DEAD``, the refused records (``DeadLetter`` fields). ``spill_dir`` is
    ``decap_core.spill.spill_dir(output)``; the caller removes it (``spill.remove_spill(output)``).
    """

    def __init__(self, files: Sequence[str], field: str, options: NormalisationOptions, limits: LengthLimits,
                 groups: int, spill_dir: str):
        super().__init__()
        self._files, self._field = list(files), field
        self._options, self._limits = options, limits
        self._groups, self._spill_dir = groups, spill_dir

    def expand(self, pbegin):
        prepared = (
            pbegin
            | "ListFiles" >> beam.Create(self._files)
            | "SpreadFiles" >> beam.Reshuffle()
            | "ReadAndSpill" >> beam.ParDo(_ReadAndSpill(self._field, self._options, self._limits, self._groups,
                                                          self._spill_dir))
            | "SplitPrepared" >> Split(_SPILLED, DEAD)
        )
        deduped = (
            prepared[_SPILLED]
            | "GroupById" >> beam.GroupByKey()
            | "DedupeGroup" >> beam.ParDo(DedupeGroup())
            | "SplitDeduped" >> Split(GROUPS, STATS)
        )
        return {GROUPS: deduped[GROUPS], STATS: deduped[STATS], DEAD: prepared[DEAD]}


class ClipDoFn(beam.DoFn):
    """A DoFn that encodes sentences with one CLIP per worker process (a Beam ``Shared`` handle), made in setup."""

    def __init__(self, clip_model: str, clip_checkpoint: str | None):
        self._clip_model, self._clip_checkpoint = clip_model, clip_checkpoint
        self._shared = Shared()
        self._clip: ClipModel | None = None

    def setup(self) -> None:
        self._clip = self._shared.acquire(self._load, tag=(self._clip_model, self._clip_checkpoint))

    def _load(self) -> ClipModel:
        return load_clip(self._clip_model, self._clip_checkpoint)  # no checkpoint: seeded random weights

    def encode(self, rows: Sequence[tuple]) -> np.ndarray:
        """float32 [n, D] unit-norm embeddings of ``rows`` (``Sentence`` fields), from their own tokens."""
        tokens = torch.from_numpy(pad_batch([corpus.Sentence._make(row).tokens for row in rows]))
        with torch.no_grad():
            embeddings = encode_tokens_packed(self._clip.model, tokens).float().numpy()
        count("encoded", len(rows))
        return embeddings


class _EncodeBatches(ClipDoFn):
    def process(self, element: tuple[Any, list[tuple]]) -> Iterator[tuple[Any, list[tuple], np.ndarray]]:
        key, rows = element
        yield key, [tuple(row) for row in rows], self.encode(rows)


class EncodeText(beam.PTransform):
    """``(key, [Sentence fields])`` -> ``(key, [Sentence fields], float32 [n, D] unit-norm embeddings)``.

    The tokens carried by each ``Sentence`` are encoded without their padding, packed several to
    a row (``decap_core.clip.encode_tokens_packed``): the same numbers as open_clip's
    ``encode_text``, without re-tokenising. A batch's rows keep their order.
    """

    def __init__(self, clip_model: str, clip_checkpoint: str | None = None):
        super().__init__()
        self._clip_model, self._clip_checkpoint = clip_model, clip_checkpoint

    def expand(self, batches):
        return batches | "Encode" >> beam.ParDo(_EncodeBatches(self._clip_model, self._clip_checkpoint))
