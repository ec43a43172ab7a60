import pytest
import torch
import torch.nn.functional as F

from decap_core import projection


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
    with pytest.raises(ValueError, match="tau"):
        projection.project_pd(queries, [memory], tau=0)
    with pytest.raises(ValueError, match="empty"):
        projection.project_pd(queries, [], tau=0.01)
    with pytest.raises(ValueError, match="empty"):
        projection.nearest(queries, [], k=1)
