"""Projection strategies: how an image embedding becomes something the text decoder can read.

CLIP's image and text embeddings sit apart (the modality gap), so DeCap projects an image into
text space as a softmax-weighted mix of support-memory text embeddings (``pd``). The paper's
baselines: ``nnd`` decodes the nearest memory embedding, ``clipre`` returns the nearest memory
text, ``vd`` decodes the image embedding as it is. The exact functions stream over memory chunks,
so a memory of any size fits; ``project_pd_topk`` takes the softmax over only the ``k`` nearest
rows that a faiss inner-product index finds. Tensors in, tensors out.
"""
from __future__ import annotations

import math
from typing import Iterable

import faiss
import numpy as np
import torch
import torch.nn.functional as F

from decap_core.errors import DecapError

STRATEGIES = ("pd", "nnd", "clipre", "vd")
DEFAULT_TAU = 0.01


class ProjectionError(DecapError, ValueError):
    """Bad arguments to a projection: a user error (``DecapError``) and a ``ValueError``."""


def project_pd(queries: torch.Tensor, memory_chunks: Iterable[torch.Tensor], tau: float = DEFAULT_TAU) -> torch.Tensor:
    """``normalise(softmax(queries @ memory.T / tau) @ memory)``, one memory chunk at a time.

    A running log-sum-exp keeps the softmax exact: each chunk's weights are taken relative to the
    largest similarity seen so far, and earlier sums are rescaled when a larger one appears.
    """
    _check_tau(tau)
    queries = _check_queries(queries)
    softmax = _RunningSoftmax(len(queries))
    mixed = torch.zeros_like(queries)
    for chunk in memory_chunks:
        chunk = _check_chunk(chunk, queries)
        rescale, weights = softmax.add(queries @ chunk.T / tau)
        mixed = mixed * rescale + weights @ chunk
    softmax.check_not_empty()
    return F.normalize(mixed / softmax.total, dim=-1)


def top_neighbors(queries: torch.Tensor, memory_chunks: Iterable[torch.Tensor], k: int,
                  tau: float = DEFAULT_TAU) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest memory rows of each query and their exact ``pd`` weights: ``(rows, weights)``, ``[N, k]``.

    The weights are those of the softmax over the whole memory (as ``project_pd`` uses them), so
    they sum to less than one when the rest of the memory holds weight too. ``k`` above the memory
    size means the whole memory.
    """
    _check_tau(tau)
    _check_k(k)
    queries = _check_queries(queries)
    softmax = _RunningSoftmax(len(queries))
    top = _RunningTopK(len(queries), k)
    for chunk in memory_chunks:
        scores = queries @ _check_chunk(chunk, queries).T
        softmax.add(scores / tau)
        top.add(scores)
    softmax.check_not_empty()
    return top.rows, torch.exp(top.scores / tau - softmax.log_total)


def project_pd_topk(queries: torch.Tensor, index: faiss.Index, memory_embeddings: torch.Tensor | np.ndarray,
                    k: int, tau: float = DEFAULT_TAU) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``pd`` over the ``k`` rows ``index`` finds nearest: ``(projected [N, D], rows [N, k], weights [N, k])``.

    ``index`` is an inner-product faiss index over ``memory_embeddings`` (same rows, same order).
    Similarities are recomputed exactly from the embeddings, so a compressed or approximate index only
    decides which rows take part; rows come sorted by similarity and their weights sum to one (rows
    the index did not find are ``-1`` with weight 0). ``k`` above the memory size means the whole memory.
    """
    _check_tau(tau)
    _check_k(k)
    queries = _check_queries(queries)
    memory = torch.as_tensor(memory_embeddings)
    if memory.ndim != 2:
        raise ProjectionError(f"memory embeddings must be [M, D], got shape {tuple(memory.shape)}")
    if len(memory) == 0:
        raise ProjectionError("the support memory is empty")
    if memory.shape[1] != queries.shape[1] or index.d != queries.shape[1]:
        raise ProjectionError(f"widths differ: queries {queries.shape[1]}, memory {memory.shape[1]}, index {index.d}")
    if index.ntotal != len(memory):
        raise ProjectionError(f"the index holds {index.ntotal} rows but the memory {len(memory)}")
    memory = memory.detach().float().contiguous()  # no copy for float32 rows in order
    query_array = np.ascontiguousarray(queries.detach().numpy())
    _, found = index.search(query_array, min(k, len(memory)))
    missing = torch.from_numpy(found < 0)  # an inverted file may find fewer than k rows in the lists it probes
    if missing.all(dim=1).any():
        raise ProjectionError("the index found no memory rows for some queries (search more lists)")
    scores = torch.from_numpy(_similarities(query_array, memory.numpy(), found)).masked_fill(missing, float("-inf"))
    weights = torch.softmax(scores / tau, dim=1)
    rows = torch.from_numpy(found)
    mixed = F.embedding_bag(rows.clamp(min=0), memory, per_sample_weights=weights, mode="sum")
    weights, order = weights.sort(dim=1, descending=True)
    return F.normalize(mixed, dim=-1), rows.gather(1, order), weights


def _similarities(queries: np.ndarray, memory: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``queries[i] . memory[rows[i, j]]``, exact, without gathering the rows into a new array."""
    out = np.empty(rows.shape, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    faiss.fvec_inner_products_by_idx(faiss.swig_ptr(out), faiss.swig_ptr(queries), faiss.swig_ptr(memory),
                                     faiss.swig_ptr(rows), queries.shape[1], len(queries), rows.shape[1])
    return out


def nearest(queries: torch.Tensor, memory_chunks: Iterable[torch.Tensor],
            k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` memory rows by cosine similarity: ``(scores [N, k], row indices [N, k])``."""
    _check_k(k)
    queries = _check_queries(queries)
    top = _RunningTopK(len(queries), k)
    for chunk in memory_chunks:
        top.add(queries @ _check_chunk(chunk, queries).T)
    if top.seen == 0:
        raise ProjectionError("the support memory is empty")
    return top.scores, top.rows


class _RunningSoftmax:
    """The running maximum of each row's logits and the sum of ``exp(logit - maximum)`` so far."""

    def __init__(self, rows: int) -> None:
        self.maximum = torch.full((rows, 1), float("-inf"))
        self.total = torch.zeros(rows, 1)

    def add(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Take in one chunk's logits; returns the factor for earlier sums and this chunk's weights."""
        new_maximum = torch.maximum(self.maximum, logits.max(dim=1, keepdim=True).values)
        rescale = torch.exp(self.maximum - new_maximum)
        weights = torch.exp(logits - new_maximum)
        self.total = self.total * rescale + weights.sum(dim=1, keepdim=True)
        self.maximum = new_maximum
        return rescale, weights

    @property
    def log_total(self) -> torch.Tensor:
        return self.maximum + torch.log(self.total)

    def check_not_empty(self) -> None:
        if not torch.isfinite(self.maximum).all():
            raise ProjectionError("the support memory is empty")


class _RunningTopK:
    """The ``k`` best scores of each row and their memory row numbers, chunk by chunk."""

    def __init__(self, rows: int, k: int) -> None:
        self.k = k
        self.scores = torch.full((rows, 0), float("-inf"))
        self.rows = torch.zeros((rows, 0), dtype=torch.long)
        self.seen = 0

    def add(self, scores: torch.Tensor) -> None:
        numbers = torch.arange(self.seen, self.seen + scores.shape[1]).expand(len(scores), -1)
        merged_scores = torch.cat([self.scores, scores], dim=1)
        merged_rows = torch.cat([self.rows, numbers], dim=1)
        self.scores, picks = merged_scores.topk(min(self.k, merged_scores.shape[1]), dim=1)
        self.rows = merged_rows.gather(1, picks)
        self.seen += scores.shape[1]


def _check_tau(tau: float) -> None:
    if not (math.isfinite(tau) and tau > 0):
        raise ProjectionError(f"tau must be a finite number above 0, got {tau}")


def _check_k(k: int) -> None:
    if k < 1:
        raise ProjectionError(f"k must be at least 1, got {k}")


def _check_queries(queries: torch.Tensor) -> torch.Tensor:
    if queries.ndim != 2:
        raise ProjectionError(f"queries must be [N, D], got shape {tuple(queries.shape)}")
    return queries.float()


def _check_chunk(chunk: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
    if chunk.ndim != 2 or chunk.shape[1] != queries.shape[1]:
        raise ProjectionError(f"widths differ: queries {queries.shape[1]}, memory chunk of shape {tuple(chunk.shape)}")
    return chunk.float()
