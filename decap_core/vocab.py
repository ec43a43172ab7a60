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

from decap_core.errors import DecapError

_BPE = SimpleTokenizer()
START_ID: int = _BPE.sot_token_id
END_ID: int = _BPE.eot_token_id
PAD, UNK = 0, 1
MAX_UNKNOWN_SHARE = 0.2  # the most of the training text's words a vocabulary to train on may leave out
MIN_WORDS = 3  # the fewest words it may keep
LONGEST_TOKEN: int = max(len(symbols.removesuffix("</w>")) for symbols in _BPE.encoder)  # byte symbols, >= characters


def clip_token_ids(text: str) -> list[int]:
    """CLIP BPE ids of ``text``: start token, the words, end token (no padding, no truncation).

    Web corpora repeat sentences often; a repeat of one of the last 2**18 distinct texts is looked
    up instead of run through BPE again (a third of build-memory's time went to tokenising).
    """
    return [START_ID, *_bpe_ids(text), END_ID]


def fewest_clip_tokens(text: str) -> int:
    """A lower bound on ``len(clip_token_ids(text))``, without BPE (which is quadratic in a word's length).

    No BPE token covers more than ``LONGEST_TOKEN`` characters, and no token spans a space.
    """
    return 2 + sum(-(-len(word) // LONGEST_TOKEN) for word in text.split())


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
    def for_training(cls, counts: dict[int, int] | Counter, min_count: int) -> "CompactVocab":
        """``from_counts``, refused when it cannot represent the training text ``counts`` were taken from.

        A ``DecapError`` when more than ``MAX_UNKNOWN_SHARE`` of the text's word tokens (start and
        end aside) fall outside it, or when it keeps fewer than ``MIN_WORDS`` words.
        """
        vocab = cls.from_counts(counts, min_count)
        words = {int(t): n for t, n in counts.items() if int(t) not in (START_ID, END_ID)}
        total = sum(words.values())
        unknown = sum(n for t, n in words.items() if t not in vocab._index)
        kept = len(vocab) - vocab.end_id - 1  # after pad, unk, start and end
        share = unknown / total if total else 1.0
        if share > MAX_UNKNOWN_SHARE or kept < MIN_WORDS:
            raise DecapError(f"--min-count {min_count} keeps {kept} of {len(words)} words: {share:.1%} of the "
                             f"{total:,} word tokens of the training text would be unknown (at most "
                             f"{MAX_UNKNOWN_SHARE:.0%} may be, and at least {MIN_WORDS} words must be kept); "
                             "lower --min-count or train on more text")
        return vocab

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

    def words(self, compact_ids: Iterable[int]) -> list[int]:
        """The word ids of a row of compact ids: up to its end token, start and pad dropped, unk kept."""
        words = []
        for token in compact_ids:
            token = int(token)
            if token == self.end_id:
                break
            if token not in (PAD, self.start_id):
                words.append(token)
        return words

    def decode_text(self, compact_ids: Iterable[int]) -> str:
        """Text of compact ids (start, end, pad and unk dropped; stops at the end token)."""
        return clip_ids_to_text(self.clip_ids[token] for token in self.words(compact_ids) if token != UNK)

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
