"""The memory's faiss index: chosen by size, approximate recall measured against exact search."""
import numpy as np
import pytest

from decap_core import index
from decap_core.errors import DecapError


def clustered(rows=6000, dim=32, centres=60, seed=0):
    """Unit vectors around random centres: like real embeddings, unlike uniform noise."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(centres, dim))
    points = means[rng.integers(0, centres, rows)] + 0.3 * rng.normal(size=(rows, dim))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def test_choice_follows_the_size():
    assert index.choose_factory(999_999) == "Flat"
    assert index.choose_factory(1_000_000) == "IVF4096_HNSW32,Flat"
    assert index.choose_factory(16_000_000) == "IVF16384_HNSW32,Flat"


def test_flat_is_exact_and_an_inverted_file_is_measured_against_it():
    vectors = clustered()
    chunks = lambda: (vectors[i : i + 1000] for i in range(0, len(vectors), 1000))  # noqa: E731
    flat = index.build_index("Flat", 32, chunks, len(vectors))
    assert index.recall_at_k(flat, chunks, len(vectors), queries=200) == 1.0
    ivf = index.build_index("IVF64,Flat", 32, chunks, len(vectors))
    assert ivf.ntotal == len(vectors)
    recall = index.recall_at_k(ivf, chunks, len(vectors), queries=200)
    ivf_only = index.faiss.extract_index_ivf(ivf)
    ivf_only.nprobe = 64  # every list: exact again
    assert recall < 1.0 and index.recall_at_k(ivf, chunks, len(vectors), queries=200) == 1.0


def test_a_factory_faiss_cannot_parse_is_one_clear_error():
    with pytest.raises(DecapError, match="faiss cannot build index 'IVFbogus'"):
        index.empty_index("IVFbogus", 16)
