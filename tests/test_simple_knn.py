"""simple_knn.distCUDA2 against brute force."""

import pytest
import torch

import simple_knn


def brute_force(points: torch.Tensor) -> torch.Tensor:
    n = points.shape[0]
    if n < 2:
        return torch.zeros(n)
    d = torch.cdist(points.double(), points.double()) ** 2
    d.fill_diagonal_(float("inf"))
    k = min(3, n - 1)
    return d.topk(k, largest=False).values.mean(dim=1).float()


@pytest.mark.parametrize("n,seed", [(1000, 0), (5000, 1), (37, 2)])
def test_matches_brute_force_random(n, seed):
    p = torch.randn(n, 3, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(simple_knn.distCUDA2(p), brute_force(p), rtol=1e-5, atol=1e-7)


def test_surface_points_and_duplicates():
    g = torch.Generator().manual_seed(3)
    d = torch.randn(3000, 3, generator=g)
    p = d / d.norm(dim=1, keepdim=True) * torch.tensor([0.8, 1.0, 0.9])  # a head-like surface
    p = torch.cat([p, p[:100], p[:5]])  # duplicates (some triplicated)
    out = simple_knn.distCUDA2(p)
    torch.testing.assert_close(out, brute_force(p), rtol=1e-5, atol=1e-7)
    # Three copies of each of the first five points: two neighbours at distance 0, plus the nearest other point.
    third = torch.cdist(p[:5].double(), p[5:3000].double()).pow(2).min(dim=1).values / 3
    torch.testing.assert_close(out[:5], third.float(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n", [0, 1, 2, 3, 4])
def test_small_n(n):
    p = torch.randn(n, 3, generator=torch.Generator().manual_seed(n))
    out = simple_knn.distCUDA2(p)
    assert out.shape == (n,)
    torch.testing.assert_close(out, brute_force(p), rtol=1e-5, atol=1e-7)


def test_all_identical_points():
    p = torch.ones(50, 3)
    assert (simple_knn.distCUDA2(p) == 0).all()


def test_bad_input():
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        simple_knn.distCUDA2(torch.zeros(4, 2))


def test_build_info():
    assert simple_knn.build_info()["cpu"] is True


@pytest.mark.gpu
def test_cuda_matches_cpu():
    p = torch.randn(20000, 3, generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(simple_knn.distCUDA2(p.cuda()).cpu(), simple_knn.distCUDA2(p), rtol=1e-5, atol=1e-7)
