"""The support memory: CLIP text embeddings of a corpus, with their texts."""
from __future__ import annotations

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

    @property
    def fingerprint(self) -> str:
        """Hash of the texts and the CLIP that embedded them."""
        digest = hashlib.sha256(self.clip_fingerprint.encode())
        for text in self.texts:
            digest.update(text.encode() + b"\n")
        return digest.hexdigest()[:16]

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
