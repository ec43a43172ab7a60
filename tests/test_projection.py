import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from decap_core import projection
from decap_core.errors import DecapError


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    memory = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    queries = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    return queries, memory


@pytest.mark.parametrize("tau", [0.01, 0.05, 1.0])
@pytest.mark.parametrize("chunk", [300, 64, 1])
def test_pd_equals_its_formula(data, tau, chunk):
    queries, memory = data
    expected = F.normalize(torch.softmax(queries @ memory.T / tau, dim=-1) @ memory, dim=-1)
    got = projection.project_pd(queries, memory.split(chunk), tau)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(len(queries)))


def test_pd_is_stable_at_tiny_tau(data):
    queries, memory = data
    got = projection.project_pd(queries, memory.split(50), tau=1e-4)
    nearest = memory[(queries @ memory.T).argmax(dim=1)]
    torch.testing.assert_close(got, nearest, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("chunk", [300, 37])
def test_nearest_equals_topk(data, chunk):
    queries, memory = data
    scores, rows = projection.nearest(queries, memory.split(chunk), k=5)
    expected_scores, expected_rows = (queries @ memory.T).topk(5, dim=1)
    assert torch.equal(rows, expected_rows)
    torch.testing.assert_close(scores, expected_scores)


def test_errors(data):
    queries, memory = data
    with pytest.raises(ValueError, match="empty"):
        projection.project_pd(queries, [], tau=0.01)
    with pytest.raises(ValueError, match="empty"):
        projection.nearest(queries, [], k=1)


def flat_index(memory):
    return trained_index("Flat", memory)


def clustered(rows=4000, dim=32, centres=80, spread=0.05, seed=1):
    """Unit vectors around random centres, and queries that are fresh points of the same clusters."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(centres, dim, generator=g), dim=-1)
    points = means[torch.randint(0, centres, (rows + 50,), generator=g)]
    points = F.normalize(points + spread * torch.randn(points.shape, generator=g), dim=-1)
    return points[50:], points[:50]


@pytest.mark.parametrize("tau", [0.01, 0.05, 1.0])
def test_topk_over_the_whole_memory_is_exact_pd(data, tau):
    queries, memory = data
    projected, rows, weights = projection.project_pd_topk(queries, flat_index(memory), memory, k=len(memory), tau=tau)
    torch.testing.assert_close(projected, projection.project_pd(queries, memory.split(64), tau), atol=1e-5, rtol=1e-5)
    assert rows.shape == weights.shape == (len(queries), len(memory))
    assert all(sorted(r) == list(range(len(memory))) for r in rows.tolist())
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(queries)))


def test_topk_takes_numpy_memory_and_a_larger_k_means_all_rows(data):
    queries, memory = data
    projected, rows, _ = projection.project_pd_topk(queries, flat_index(memory), memory.numpy(), k=10_000, tau=0.05)
    assert rows.shape == (len(queries), len(memory))
    torch.testing.assert_close(projected, projection.project_pd(queries, [memory], 0.05), atol=1e-5, rtol=1e-5)


def trained_index(factory, memory, nprobe=1):
    index = faiss.index_factory(memory.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    index.train(memory.numpy())
    index.add(memory.numpy())
    if factory.startswith("IVF"):
        faiss.extract_index_ivf(index).nprobe = nprobe
    return index


@pytest.mark.parametrize("factory", ["Flat", "IVF16,Flat"])
def test_small_k_on_clustered_data_is_close_to_exact(factory):
    memory, queries = clustered()
    index = trained_index(factory, memory, nprobe=4)
    exact = projection.project_pd(queries, memory.split(1000), tau=0.01)
    projected, rows, weights = projection.project_pd_topk(queries, index, memory, k=32, tau=0.01)
    cosine = (projected * exact).sum(dim=1)
    assert cosine.min() > 0.999, cosine.min()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(queries)))
    assert (weights[:, :-1] >= weights[:, 1:]).all()  # rows come sorted by similarity
    assert torch.equal(rows[:, 0], (queries @ memory.T).argmax(dim=1))


def test_topk_drops_the_rows_an_inverted_file_did_not_find():
    memory, queries = clustered(rows=400)
    index = trained_index("IVF8,Flat", memory, nprobe=1)  # one list of about 50 rows, far fewer than k
    projected, rows, weights = projection.project_pd_topk(queries, index, memory, k=200, tau=0.05)
    found = rows >= 0
    assert (~found).any() and (weights[~found] == 0).all()
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(len(queries)))
    for got, query, row, hits in zip(projected, queries, rows, found):
        expected = projection.project_pd(query[None], [memory[row[hits]]], tau=0.05)[0]
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("chunk", [300, 41])
def test_top_neighbors_are_the_nearest_rows_with_their_full_softmax_weights(data, chunk):
    queries, memory = data
    rows, weights = projection.top_neighbors(queries, memory.split(chunk), k=5, tau=0.05)
    full = torch.softmax(queries @ memory.T / 0.05, dim=1)
    assert torch.equal(rows, (queries @ memory.T).topk(5, dim=1).indices)
    torch.testing.assert_close(weights, full.gather(1, rows))
    assert (weights.sum(dim=1) < 1).all()
    _, everything = projection.top_neighbors(queries, memory.split(chunk), k=len(memory), tau=0.05)
    torch.testing.assert_close(everything.sum(dim=1), torch.ones(len(queries)))


@pytest.mark.parametrize("tau", [0, -1, float("nan"), float("inf"), float("-inf")])
def test_tau_must_be_finite_and_positive(data, tau):
    queries, memory = data
    calls = [
        lambda: projection.project_pd(queries, [memory], tau=tau),
        lambda: projection.top_neighbors(queries, [memory], k=3, tau=tau),
        lambda: projection.project_pd_topk(queries, flat_index(memory), memory, k=3, tau=tau),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="tau must be a finite number above 0"):
            call()


@pytest.mark.parametrize("k", [0, -3])
def test_k_must_be_at_least_one(data, k):
    queries, memory = data
    for call in (lambda: projection.top_neighbors(queries, [memory], k=k, tau=0.01),
                 lambda: projection.project_pd_topk(queries, flat_index(memory), memory, k=k, tau=0.01),
                 lambda: projection.nearest(queries, [memory], k=k)):
        with pytest.raises(ValueError, match="k must be at least 1"):
            call()


def test_widths_sizes_and_empty_memories_are_clear_errors(data):
    queries, memory = data
    index = flat_index(memory)
    with pytest.raises(DecapError, match="widths differ: queries 8, memory 16, index 16"):
        projection.project_pd_topk(queries[:, :8], index, memory, k=3, tau=0.01)
    with pytest.raises(ValueError, match="widths differ: queries 16, memory chunk of shape \\(300, 8\\)"):
        projection.project_pd(queries, [memory[:, :8]], tau=0.01)
    with pytest.raises(ValueError, match="the index holds 300 rows but the memory 299"):
        projection.project_pd_topk(queries, index, memory[1:], k=3, tau=0.01)
    with pytest.raises(ValueError, match="empty"):
        projection.project_pd_topk(queries, faiss.IndexFlatIP(16), np.zeros((0, 16), np.float32), k=3, tau=0.01)
    with pytest.raises(ValueError, match="empty"):
        projection.top_neighbors(queries, [], k=3, tau=0.01)

