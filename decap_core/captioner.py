"""Captioning: image embeddings -> projection strategy -> batched decoding -> text."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import faiss
import torch

from decap_core import projection
from decap_core.decoder_files import DecoderBundle
from decap_core.errors import DecapError
from decap_core.memory import SupportMemory
from decap_core.vocab import UNK


@dataclass(frozen=True)
class CaptionBatch:
    """Captions of one batch of images under each strategy, and each image's top memory neighbours."""

    captions: dict[str, list[str]]
    neighbor_rows: torch.Tensor  # [N, n] memory rows, nearest first
    neighbor_weights: torch.Tensor  # [N, n] their pd weights


@dataclass
class Captioner:
    """Captions unit-norm CLIP image embeddings with one decoder and one support memory.

    With ``index`` (a faiss inner-product index over the memory's rows) and ``topk``, ``pd`` mixes
    only the ``topk`` nearest rows the index finds; without, the exact softmax over the whole memory.
    """

    decoder: DecoderBundle
    memory: SupportMemory
    tau: float = projection.DEFAULT_TAU
    beam_width: int = 1
    max_tokens: int = 30
    index: faiss.Index | None = None
    topk: int | None = None

    def __post_init__(self) -> None:
        if self.decoder.clip_fingerprint != self.memory.clip_fingerprint:
            raise DecapError(
                f"decoder was trained with CLIP {self.decoder.clip_fingerprint} but the memory "
                f"was built with CLIP {self.memory.clip_fingerprint}"
            )
        if self.decoder.model.config.prefix_dim != self.memory.dim:
            raise DecapError(f"the decoder reads {self.decoder.model.config.prefix_dim}-d prefixes, "
                             f"the memory holds {self.memory.dim}-d embeddings")
        if (self.index is None) != (self.topk is None):
            raise DecapError("top-k projection needs both a faiss index and k")

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
        return self.caption_batch(image_embeddings, (strategy,), neighbors=0).captions[strategy]

    def caption_batch(self, image_embeddings: torch.Tensor, strategies: Sequence[str],
                      neighbors: int = 5) -> CaptionBatch:
        """Captions under each of ``strategies``, and the ``neighbors`` nearest memory rows with their weights."""
        unknown = [s for s in strategies if s not in projection.STRATEGIES]
        if unknown:
            raise DecapError(f"unknown strategy {unknown[0]!r}; choose one of {', '.join(projection.STRATEGIES)}")
        if image_embeddings.ndim != 2 or image_embeddings.shape[-1] != self.memory.dim:
            raise DecapError(
                f"image embeddings have width {image_embeddings.shape[-1]}, the memory has {self.memory.dim}"
            )
        queries = image_embeddings.float()
        needs_nearest = "nnd" in strategies or "clipre" in strategies
        wanted = max(1, neighbors) if needs_nearest else neighbors
        if self.index is not None:  # pd mixes the topk rows; the neighbours shown may be more
            projected, rows, weights = projection.project_pd_topk(
                queries, self.index, self.memory.embeddings, self.topk, self.tau)
            if wanted > self.topk:
                _, rows, weights = projection.project_pd_topk(queries, self.index, self.memory.embeddings, wanted,
                                                              self.tau)
        else:
            projected = projection.project_pd(queries, self.memory.chunks(), self.tau) if "pd" in strategies else None
            if wanted:  # one more pass over the memory, only when neighbours or the nearest row are asked for
                rows, weights = projection.top_neighbors(queries, self.memory.chunks(), wanted, self.tau)
            else:
                rows, weights = torch.zeros(len(queries), 0, dtype=torch.long), torch.zeros(len(queries), 0)
        nearest = rows[:, 0] if needs_nearest else None
        captions: dict[str, list[str]] = {}
        for strategy in strategies:
            if strategy == "pd":
                captions[strategy] = self.decode(projected)
            elif strategy == "vd":
                captions[strategy] = self.decode(queries)
            elif strategy == "nnd":
                captions[strategy] = self.decode(self.memory.embeddings[nearest])
            else:
                captions[strategy] = [self.memory.texts[int(r)] for r in nearest]
        return CaptionBatch(captions, rows[:, :wanted], weights[:, :wanted])
