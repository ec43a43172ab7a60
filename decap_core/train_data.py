"""What the decoder trainer eats: batches of (prefix embedding, compact token rows, shard index).

``ShardStream`` streams train shards (``decap_core.train_shards``) forever, epoch after epoch, through a
shuffle buffer; under torch's ``DataLoader`` each worker reads its own share of the shards given
to this rank. What the reader refused (samples, skipped shards) travels with the batches to the
trainer's ``ReadRecord``. ``EncodedCorpus`` is the in-process alternative for small corpora encoded here.
"""
from __future__ import annotations

import logging
from typing import Any, Iterator, NamedTuple, Sequence

import numpy as np
import torch

from decap_core.clip import ClipModel
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.train_shards import Refusal, Sample, ShardSet, iter_shards
from decap_core.vocab import PAD, CompactVocab, clip_token_ids, pad_batch

REFUSALS_LISTED = 100  # the most refusals a run summary lists one by one (it counts them all)
log = logging.getLogger(__name__)


class Batch(NamedTuple):
    """Prefixes ``[B, D]``, compact token rows ``[B, T]``, each row's shard index ``[B]``, and what the
    reader refused since the batch before (a stream's refusals ride on the next batch it yields)."""

    prefix: torch.Tensor
    tokens: torch.Tensor
    shards: torch.Tensor
    refusals: tuple[Refusal, ...] = ()


class Item(tuple):
    """A row of the stream, ``(embedding, compact tokens, shard index)``; its ``refusals`` are what the
    reader refused since the row before, so that they reach the trainer with the rows."""

    refusals: tuple[Refusal, ...] = ()

    @classmethod
    def of(cls, row: tuple[np.ndarray, list[int], int], refusals: Sequence[Refusal]) -> "Item":
        item = cls(row)
        item.refusals = tuple(refusals)
        return item


def collate(items: Sequence[Item]) -> Batch:
    embeddings = torch.from_numpy(np.stack([item[0] for item in items]))
    tokens = torch.from_numpy(pad_batch([item[1] for item in items], PAD))
    return Batch(embeddings, tokens, torch.tensor([item[2] for item in items]),
                 tuple(refusal for item in items for refusal in item.refusals))


class ShardStream(torch.utils.data.IterableDataset):
    """Endless items ``(embedding, compact tokens, shard index)`` from ``urls`` (this rank's shards), as ``Item``.

    Shard order is reshuffled every epoch and samples pass a shuffle buffer; both are seeded by
    ``seed`` and the worker id, so a run is reproducible. Sentences longer than ``max_tokens``
    (start and end included) are skipped with a warning; refused samples and skipped shards ride
    on the next item.
    """

    def __init__(self, shard_set: ShardSet, urls: Sequence[str], vocab: CompactVocab, max_tokens: int,
                 shuffle_buffer: int, seed: int, skip_bad: bool):
        super().__init__()
        self.shard_set, self.urls, self.vocab = shard_set, list(urls), vocab
        self.max_tokens, self.shuffle_buffer, self.seed, self.skip_bad = max_tokens, shuffle_buffer, seed, skip_bad
        self.index = {url: i for i, url in enumerate(shard_set.urls)}

    def __iter__(self) -> Iterator[Item]:
        info = torch.utils.data.get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        mine = self.urls[worker::workers]
        if not mine:
            raise DecapError(f"loader worker {worker} has no shard: "
                             f"use fewer workers than this rank's {len(self.urls)} shards")
        rng = np.random.default_rng([self.seed, worker])
        buffer: list[tuple[np.ndarray, list[int], int]] = []
        refused: list[Refusal] = []
        while True:
            usable = too_long = 0
            shuffled = [mine[i] for i in rng.permutation(len(mine))]
            for url, sample in iter_shards(shuffled, self.shard_set, self.skip_bad):
                if isinstance(sample, Refusal):
                    refused.append(sample)
                    continue
                if len(sample.tokens) > self.max_tokens:
                    too_long += 1
                    continue
                usable += 1
                item = (sample.embedding, self.vocab.encode(sample.tokens), self.index[url])
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(item)
                    continue
                slot = int(rng.integers(len(buffer)))
                yield Item.of(buffer[slot], refused)
                refused.clear()
                buffer[slot] = item
            if too_long:
                log.warning("skipped %d sentences longer than %d tokens in one pass", too_long, self.max_tokens)
            if not usable:  # every shard bad, empty or too long: stop rather than spin forever
                raise DecapError(f"no usable samples in {len(mine)} shards (first {mine[0]})")


def shards_of_rank(urls: Sequence[str], rank: int, world_size: int) -> list[str]:
    """The shards one rank reads (round robin); every rank must get at least one."""
    if len(urls) < world_size:
        raise DecapError(f"{len(urls)} train shards cannot feed {world_size} ranks: make more, smaller shards")
    return list(urls[rank::world_size])


def read_samples(shard_set: ShardSet, skip_bad: bool, limit: int | None = None) -> tuple[list[Sample], list[Refusal]]:
    """Every usable sample of a (small) shard set, in order, up to ``limit``, and what was refused."""
    samples: list[Sample] = []
    refused: list[Refusal] = []
    for _, sample in iter_shards(shard_set.urls, shard_set, skip_bad):
        (refused if isinstance(sample, Refusal) else samples).append(sample)
        if limit is not None and len(samples) >= limit:
            break
    if not samples:
        raise DecapError(f"no usable samples in {shard_set.urls[0]} and the rest of its set")
    return samples, refused


class ReadRecord:
    """What a rank's batches came from: the shards their rows were read from, and every distinct refusal."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.refusals: dict[tuple[str, str | None], Refusal] = {}

    def add(self, refusals: Sequence[Refusal], shards: Sequence[int] = ()) -> None:
        self.seen.update(shards)
        for refusal in refusals:
            self.refusals.setdefault((refusal.url, refusal.key), refusal)

    def skipped(self) -> list[str]:
        """The shards left out whole (missing or damaged, with ``skip_bad``), in URL order."""
        return sorted(url for url, key in self.refusals if key is None)

    def read(self, urls: Sequence[str]) -> list[str]:
        """The shards (indices into ``urls``) rows were read from, less the skipped ones."""
        skipped = set(self.skipped())
        return [urls[i] for i in sorted(self.seen) if urls[i] not in skipped]

    def summary(self) -> dict[str, Any]:
        """The counts and the first ``REFUSALS_LISTED`` refusals, in (URL, key) order."""
        ordered = [self.refusals[k] for k in sorted(self.refusals, key=lambda k: (k[0], k[1] or ""))]
        return {"shards_skipped": len(self.skipped()), "samples_refused": len(ordered) - len(self.skipped()),
                "refusals": [refusal.to_json() for refusal in ordered[:REFUSALS_LISTED]]}


class EncodedCorpus:
    """Sentences as (unit-norm CLIP embedding, compact token row) pairs, sampled in random batches."""

    def __init__(self, embeddings: torch.Tensor, token_rows: Sequence[Sequence[int]]):
        self.embeddings = embeddings
        self.token_rows = list(token_rows)

    @classmethod
    def from_texts(cls, clip: ClipModel, texts: Sequence[str], vocab: CompactVocab) -> "EncodedCorpus":
        memory = SupportMemory.from_texts(clip, texts)
        return cls(memory.embeddings, [vocab.encode(clip_token_ids(t)) for t in memory.texts])

    @classmethod
    def from_samples(cls, samples: Sequence[Sample], vocab: CompactVocab) -> "EncodedCorpus":
        embeddings = torch.from_numpy(np.stack([s.embedding for s in samples]))
        return cls(embeddings, [vocab.encode(s.tokens) for s in samples])

    def __len__(self) -> int:
        return len(self.token_rows)

    def batches(self, batch_size: int, seed: int) -> Iterator[Batch]:
        """Endless shuffled full batches (shard index 0)."""
        generator = torch.Generator().manual_seed(seed)
        batch_size = min(batch_size, len(self))
        while True:
            for picks in torch.randperm(len(self), generator=generator).split(batch_size):
                if len(picks) < batch_size:
                    break
                rows = [self.token_rows[i] for i in picks.tolist()]
                yield Batch(self.embeddings[picks], torch.from_numpy(pad_batch(rows, PAD)),
                            torch.zeros(len(picks), dtype=torch.long))

    def ordered(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Every sentence once, in order (validation)."""
        for start in range(0, len(self), batch_size):
            rows = self.token_rows[start : start + batch_size]
            yield self.embeddings[start : start + len(rows)], torch.from_numpy(pad_batch(rows, PAD))
