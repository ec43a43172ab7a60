"""A faiss inner-product index over a support memory: choose, build, measure recall, save, load.

The choice follows autofaiss's rule of thumb: exact (``Flat``) search below about a million rows,
an inverted file with an HNSW coarse quantiser above, with the number of lists growing as the
square root of the row count. Recall@k is measured against exact search on sampled memory rows.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable, Iterator

import faiss
import fsspec
import numpy as np

from decap_core.errors import DecapError

FLAT_BELOW_ROWS = 1_000_000
TRAIN_POINTS_PER_LIST = 64


def choose_factory(rows: int) -> str:
    """A faiss factory string for ``rows`` unit vectors searched by inner product."""
    if rows < FLAT_BELOW_ROWS:
        return "Flat"
    lists = 2 ** round(math.log2(4 * math.sqrt(rows)))
    return f"IVF{lists}_HNSW32,Flat"


def build_index(factory: str, dim: int, chunks: Callable[[], Iterable[np.ndarray]], rows: int,
                seed: int = 0) -> faiss.Index:
    """Build ``factory`` over the vectors that ``chunks()`` yields (called again for training)."""
    index = empty_index(factory, dim)
    if not index.is_trained:
        try:
            index.train(_training_sample(chunks(), rows, _train_size(index, rows), seed))
        except RuntimeError as error:  # e.g. an IVF of more lists than there are rows
            raise DecapError(f"faiss cannot train index {factory!r} on {rows} rows: {_reason(error)}") from None
    for chunk in chunks():
        index.add(np.ascontiguousarray(chunk, dtype=np.float32))
    _set_default_search_breadth(index)
    return index


def empty_index(factory: str, dim: int) -> faiss.Index:
    """An untrained inner-product index; a factory string faiss cannot parse is a user error."""
    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise DecapError(f"faiss cannot build index {factory!r}: {_reason(error)}") from None


def _reason(error: RuntimeError) -> str:
    """The last line of a faiss C++ exception, without its source location."""
    return str(error).strip().splitlines()[-1].split(": ")[-1]


def recall_at_k(index: faiss.Index, chunks: Callable[[], Iterable[np.ndarray]], rows: int,
                k: int = 10, queries: int = 1000, seed: int = 0) -> float:
    """Share of the exact top-``k`` neighbours (streamed over ``chunks()``) that ``index`` finds."""
    sample = _training_sample(chunks(), rows, min(queries, rows), seed)
    k = min(k, rows)
    exact = _exact_top_k(sample, chunks(), k)
    _, found = index.search(sample, k)
    hits = sum(len(set(e) & set(f)) for e, f in zip(exact.tolist(), found.tolist()))
    return hits / exact.size


def save_index(index: faiss.Index, url: str) -> None:
    with fsspec.open(url, "wb") as handle:
        handle.write(faiss.serialize_index(index).tobytes())


def load_index(url: str) -> faiss.Index:
    try:
        with fsspec.open(url, "rb") as handle:
            return faiss.deserialize_index(np.frombuffer(handle.read(), dtype=np.uint8))
    except FileNotFoundError:
        raise DecapError(f"faiss index not found: {url}") from None


def _train_size(index: faiss.Index, rows: int) -> int:
    try:
        lists = faiss.extract_index_ivf(index).nlist
    except RuntimeError:  # not an inverted file: a few thousand points train any quantiser
        lists = 1
    return min(rows, max(lists * TRAIN_POINTS_PER_LIST, 10_000))


def _set_default_search_breadth(index: faiss.Index) -> None:
    try:
        ivf = faiss.extract_index_ivf(index)
    except RuntimeError:
        return
    ivf.nprobe = max(1, ivf.nlist // 64)


def _training_sample(chunks: Iterable[np.ndarray], rows: int, size: int, seed: int) -> np.ndarray:
    """``size`` rows drawn uniformly without replacement, read in one streaming pass."""
    wanted = np.sort(np.random.default_rng(seed).choice(rows, size=size, replace=False))
    picked, offset = [], 0
    for chunk in chunks:
        inside = wanted[(wanted >= offset) & (wanted < offset + len(chunk))] - offset
        picked.append(np.asarray(chunk, dtype=np.float32)[inside])
        offset += len(chunk)
    return np.ascontiguousarray(np.concatenate(picked))


def _exact_top_k(queries: np.ndarray, chunks: Iterator[np.ndarray], k: int) -> np.ndarray:
    best_scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 0), dtype=np.int64)
    offset = 0
    for chunk in chunks:
        scores = queries @ np.asarray(chunk, dtype=np.float32).T
        rows = np.broadcast_to(np.arange(offset, offset + len(chunk)), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, rows], axis=1)
        keep = np.argsort(-best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
        offset += len(chunk)
    return best_rows
