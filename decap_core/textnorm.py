"""Sentence normalisation, ids and token counts: what makes two corpus lines the same sentence.

The id of a sentence is a hash of its normalised text, so deduplication is a key comparison.
Token counts use CLIP's own BPE (``decap_core.vocab``), start and end tokens included.
Change ``NORMALISATION_VERSION`` whenever ``normalise`` changes what it returns: the version goes
into every memory manifest, and ids from different versions are not comparable.
"""
from __future__ import annotations

import hashlib
import unicodedata
from dataclasses import asdict, dataclass

import regex

from decap_core.errors import DecapError

NORMALISATION_VERSION = "nfc-ws-2"  # 2: invisible format characters removed, control characters as spaces


@dataclass(frozen=True)
class NormalisationOptions:
    """How corpus lines become sentences (recorded in the manifest beside the version)."""

    lowercase: bool = False

    def describe(self) -> dict:
        return {"version": NORMALISATION_VERSION, **asdict(self)}


_INVISIBLE = regex.compile(r"\p{Cf}+")  # byte-order marks, zero-width spaces and joiners, soft hyphens
_CONTROL = regex.compile(r"\p{Cc}")  # NUL, other C0/C1 controls (tabs and newlines are whitespace anyway)


def normalise(text: str, options: NormalisationOptions = NormalisationOptions()) -> str:
    """Unicode NFC, invisible format characters removed, control characters and runs of whitespace
    collapsed to one space, ends stripped; optionally lower-cased.

    ``str.split()`` splits on the same Unicode whitespace as ``\\s``; printable ASCII is already clean.
    """
    if not (text.isascii() and text.isprintable()):
        text = _CONTROL.sub(" ", _INVISIBLE.sub("", unicodedata.normalize("NFC", text)))
    text = " ".join(text.split())
    return text.lower() if options.lowercase else text


def sentence_id(normalised_text: str) -> str:
    """The dedupe key: 32 hex digits of the SHA-256 of the normalised text."""
    return hashlib.sha256(normalised_text.encode("utf-8")).hexdigest()[:32]


def shard_of(sentence_id_hex: str, num_shards: int) -> int:
    """The shard a sentence id belongs to: stable across runs, machines and Python versions."""
    return int(sentence_id_hex[:16], 16) % num_shards


@dataclass(frozen=True)
class LengthLimits:
    """Token-count bounds, start and end tokens included (the length the text tower sees)."""

    context_length: int
    min_tokens: int = 3
    max_tokens: int | None = None

    def __post_init__(self) -> None:
        if self.min_tokens < 0 or (self.max_tokens is not None and self.max_tokens < self.min_tokens):
            raise DecapError(f"--min-tokens {self.min_tokens} and --max-tokens {self.max_tokens}: need "
                             "0 <= min <= max")

    def problem(self, token_count: int) -> str | None:
        """Why a sentence of ``token_count`` tokens is refused, or None when it is kept."""
        if token_count > self.context_length:
            return "exceeds_clip_context"  # never truncated: the embedding would not be of this text
        if token_count < self.min_tokens:
            return "too_short"
        if self.max_tokens is not None and token_count > self.max_tokens:
            return "too_long"
        return None
