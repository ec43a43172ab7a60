"""Measures: the modality gap, zero-shot retrieval, and object accuracy of toy-world captions."""
from __future__ import annotations

from typing import Iterable, Sequence

import torch

from decap_core import toyworld


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


def object_scores(captions: Iterable[str], truths: Iterable[frozenset[tuple[str, str]]]) -> dict[str, float]:
    """Toy-world caption quality, judged on ``<colour> <shape>`` pairs (size words aside).

    ``object_recall``: share of true objects the caption names. ``exact``: share of captions that
    name every object and invent none. ``hallucination``: share of named objects that are absent.
    """
    named_true = total_true = invented = total_named = exact = images = 0
    for text, truth in zip(captions, truths):
        named = set(toyworld.parse_objects(text))
        named_true += len(named & truth)
        total_true += len(truth)
        invented += len(named - truth)
        total_named += len(named)
        exact += named == set(truth)
        images += 1
    return {
        "object_recall": named_true / max(1, total_true),
        "exact": exact / max(1, images),
        "hallucination": invented / max(1, total_named),
    }
