"""CLIP BPE tokens and the compact vocabulary the decoder predicts over.

Sentences are tokenised with CLIP's own BPE (``open_clip``'s tokenizer), start and end tokens
included. The decoder predicts only the tokens its corpus uses: a compact vocabulary maps those
CLIP ids to ``0..V-1`` and back, with ``pad`` at 0 and ``unk`` at 1.
"""
from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from open_clip.tokenizer import SimpleTokenizer

_BPE = SimpleTokenizer()
START_ID: int = _BPE.sot_token_id
END_ID: int = _BPE.eot_token_id
PAD, UNK = 0, 1


def clip_token_ids(text: str) -> list[int]:
    """CLIP BPE ids of ``text``: start token, the words, end token (no padding, no truncation).

    Web corpora repeat sentences often; a repeat of one of the last 2**18 distinct texts is looked
    up instead of run through BPE again (a third of build-memory's time went to tokenising).
    """
    return [START_ID, *_bpe_ids(text), END_ID]


@functools.lru_cache(maxsize=1 << 18)
def _bpe_ids(text: str) -> tuple[int, ...]:
    return tuple(_BPE.encode(text))


def clip_ids_to_text(ids: Iterable[int]) -> str:
    """Text of CLIP BPE ids, start and end tokens dropped, stopping at the first end token."""
    words = []
    for token in ids:
        if token == END_ID:
            break
        if token != START_ID:
            words.append(int(token))
    return re.sub(r" ([,.;:!?])", r"\1", _BPE.decode(words).strip())  # CLIP's BPE spaces out punctuation


@dataclass(frozen=True)
class CompactVocab:
    """The CLIP ids a corpus uses; compact id ``i`` stands for ``clip_ids[i]`` (0: pad, 1: unk)."""

    clip_ids: tuple[int, ...]

    @classmethod
    def from_counts(cls, counts: dict[int, int] | Counter, min_count: int = 1) -> "CompactVocab":
        kept = sorted(int(t) for t, n in counts.items() if n >= min_count and int(t) not in (START_ID, END_ID))
        return cls(clip_ids=(-1, -1, START_ID, END_ID, *kept))

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CompactVocab":
        counts: Counter = Counter()
        for text in texts:
            counts.update(clip_token_ids(text))
        return cls.from_counts(counts)

    def __len__(self) -> int:
        return len(self.clip_ids)

    @property
    def start_id(self) -> int:
        return 2

    @property
    def end_id(self) -> int:
        return 3

    def encode(self, clip_ids: Sequence[int]) -> list[int]:
        index = self._index
        return [index.get(int(t), UNK) for t in clip_ids]

    def decode_text(self, compact_ids: Iterable[int]) -> str:
        """Text of compact ids (start, end, pad and unk dropped; stops at the end token)."""
        clip_ids = []
        for token in compact_ids:
            token = int(token)
            if token == self.end_id:
                break
            if token > self.end_id:
                clip_ids.append(self.clip_ids[token])
        return clip_ids_to_text(clip_ids)

    @property
    def _index(self) -> dict[int, int]:
        cached = self.__dict__.get("_index_cache")
        if cached is None:
            cached = {clip_id: i for i, clip_id in enumerate(self.clip_ids) if i > UNK}
            object.__setattr__(self, "_index_cache", cached)
        return cached


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int = PAD) -> np.ndarray:
    """Right-pad token rows into an int64 array."""
    out = np.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=np.int64)
    for i, row in enumerate(rows):
        out[i, : len(row)] = row
    return out
