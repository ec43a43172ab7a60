"""Projection strategies: how an image embedding becomes something the text decoder can read.

CLIP's image and text embeddings sit apart (the modality gap), so DeCap projects an image into
text space as a softmax-weighted mix of support-memory text embeddings (``pd``). The paper's
baselines: ``nnd`` decodes the nearest memory embedding, ``clipre`` returns the nearest memory
text, ``vd`` decodes the image embedding as it is. Every function streams over memory chunks,
so a memory of any size fits. Tensors in, tensors out.
"""
from __future__ import annotations

from typing import Iterable

import torch
import torch.nn.functional as F

STRATEGIES = ("pd", "nnd", "clipre", "vd")
DEFAULT_TAU = 0.01


def project_pd(queries: torch.Tensor, memory_chunks: Iterable[torch.Tensor], tau: float = DEFAULT_TAU) -> torch.Tensor:
    """``normalise(softmax(queries @ memory.T / tau) @ memory)``, one memory chunk at a time.

    A running log-sum-exp keeps the softmax exact: each chunk's weights are taken relative to the
    largest similarity seen so far, and earlier sums are rescaled when a larger one appears.
    """
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    queries = queries.float()
    running_max = torch.full((len(queries), 1), float("-inf"))
    weight_sum = torch.zeros(len(queries), 1)
    mixed = torch.zeros_like(queries)
    for chunk in memory_chunks:
        logits = queries @ chunk.float().T / tau
        new_max = torch.maximum(running_max, logits.max(dim=1, keepdim=True).values)
        rescale = torch.exp(running_max - new_max)
        weights = torch.exp(logits - new_max)
        weight_sum = weight_sum * rescale + weights.sum(dim=1, keepdim=True)
        mixed = mixed * rescale + weights @ chunk.float()
        running_max = new_max
    if not torch.isfinite(running_max).all():
        raise ValueError("the support memory is empty")
    return F.normalize(mixed / weight_sum, dim=-1)


def nearest(queries: torch.Tensor, memory_chunks: Iterable[torch.Tensor], k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` memory rows by cosine similarity: ``(scores [N, k], row indices [N, k])``."""
    queries = queries.float()
    best_scores = torch.full((len(queries), 0), float("-inf"))
    best_rows = torch.zeros((len(queries), 0), dtype=torch.long)
    offset = 0
    for chunk in memory_chunks:
        scores = queries @ chunk.float().T
        rows = torch.arange(offset, offset + len(chunk)).expand(len(queries), -1)
        merged_scores = torch.cat([best_scores, scores], dim=1)
        merged_rows = torch.cat([best_rows, rows], dim=1)
        best_scores, picks = merged_scores.topk(min(k, merged_scores.shape[1]), dim=1)
        best_rows = merged_rows.gather(1, picks)
        offset += len(chunk)
    if offset == 0:
        raise ValueError("the support memory is empty")
    return best_scores, best_rows
