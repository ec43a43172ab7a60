"""Measures of embeddings: the modality gap and zero-shot retrieval."""
from __future__ import annotations

from typing import Sequence

import torch


def modality_gap(image_embeddings: torch.Tensor, text_embeddings: torch.Tensor) -> dict[str, float]:
    """How far apart the two modalities sit, from matched rows of unit-norm embeddings."""
    def mean_off_diagonal(x: torch.Tensor) -> float:
        sims = x @ x.T
        n = len(x)
        return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))

    return {
        "matched_cosine": float((image_embeddings * text_embeddings).sum(-1).mean()),
        "text_text_cosine": mean_off_diagonal(text_embeddings),
        "image_image_cosine": mean_off_diagonal(image_embeddings),
        "centroid_distance": float((image_embeddings.mean(0) - text_embeddings.mean(0)).norm()),
    }


def top1_accuracy(queries: torch.Tensor, candidates: torch.Tensor, answers: Sequence[int]) -> float:
    """Share of queries whose most similar candidate is the right one."""
    best = (queries @ candidates.T).argmax(dim=1)
    return float((best == torch.as_tensor(answers)).float().mean())
