"""The support memory: CLIP text embeddings of a corpus, with their texts."""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
from tqdm import tqdm

from decap_core.clip import ClipModel


@dataclass
class SupportMemory:
    """Texts and their unit-norm CLIP text embeddings ``[M, D]``, made with one CLIP."""

    texts: list[str]
    embeddings: torch.Tensor
    clip_fingerprint: str

    def __len__(self) -> int:
        return len(self.texts)

    @functools.cached_property
    def fingerprint(self) -> str:
        """Hash of the CLIP that embedded the memory, its texts and its embeddings' bytes."""
        digest = hashlib.blake2b(self.clip_fingerprint.encode(), digest_size=8)
        for text in self.texts:
            digest.update(text.encode() + b"\n")
        digest.update(self.embeddings.float().contiguous().numpy().tobytes())
        return digest.hexdigest()

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def chunks(self, chunk_size: int = 65536) -> Iterator[torch.Tensor]:
        for start in range(0, len(self.texts), chunk_size):
            yield self.embeddings[start : start + chunk_size]

    @classmethod
    def from_texts(cls, clip: ClipModel, texts: Sequence[str], batch_size: int = 512) -> "SupportMemory":
        """Encode ``texts`` in process (small corpora; the Beam pipeline builds large ones)."""
        unique = list(dict.fromkeys(texts))
        batches = [unique[i : i + batch_size] for i in range(0, len(unique), batch_size)]
        embeddings = [clip.encode_text(b) for b in tqdm(batches, desc="memory", unit="batch", leave=False)]
        return cls(texts=unique, embeddings=torch.cat(embeddings), clip_fingerprint=clip.fingerprint)
