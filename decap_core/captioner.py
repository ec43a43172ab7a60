"""Captioning: image embeddings -> projection strategy -> batched decoding -> text."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from decap_core import projection
from decap_core.checkpoint import DecoderBundle
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.vocab import UNK


@dataclass
class Captioner:
    """Captions unit-norm CLIP image embeddings with one decoder and one support memory."""

    decoder: DecoderBundle
    memory: SupportMemory
    tau: float = projection.DEFAULT_TAU
    beam_width: int = 1
    max_tokens: int = 30

    def __post_init__(self) -> None:
        if self.decoder.clip_fingerprint != self.memory.clip_fingerprint:
            raise DecapError(
                f"decoder was trained with CLIP {self.decoder.clip_fingerprint} but the memory "
                f"was built with CLIP {self.memory.clip_fingerprint}"
            )

    @torch.no_grad()
    def decode(self, prefixes: torch.Tensor) -> list[str]:
        """Text for each unit-norm prefix embedding."""
        vocab = self.decoder.vocab
        model = self.decoder.model
        device = next(model.parameters()).device
        tokens = model.generate(
            prefixes.to(device), end_id=vocab.end_id, pad_id=0,
            max_tokens=self.max_tokens, beam_width=self.beam_width, banned_ids=(UNK, vocab.start_id),
        )
        return [vocab.decode_text(row.tolist()) for row in tokens.cpu()]

    def caption(self, image_embeddings: torch.Tensor, strategy: str = "pd") -> list[str]:
        """Captions for ``[N, D]`` unit-norm image embeddings with one projection strategy."""
        if image_embeddings.shape[-1] != self.memory.dim:
            raise DecapError(
                f"image embeddings have width {image_embeddings.shape[-1]}, the memory has {self.memory.dim}"
            )
        if strategy == "pd":
            return self.decode(projection.project_pd(image_embeddings, self.memory.chunks(), self.tau))
        if strategy == "vd":
            return self.decode(image_embeddings)
        _, rows = projection.nearest(image_embeddings, self.memory.chunks(), k=1)
        if strategy == "nnd":
            return self.decode(self.memory.embeddings[rows[:, 0]])
        if strategy == "clipre":
            return [self.memory.texts[int(r)] for r in rows[:, 0]]
        raise DecapError(f"unknown strategy {strategy!r}; choose one of {', '.join(projection.STRATEGIES)}")
