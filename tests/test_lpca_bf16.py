"""Pointwise local PCA through certified bfloat16 Gram matrices: the bound holds, counts agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae import dimension as gd
from geomsae.dimension import lpca
from geomsae.dimension.lpca import _bf16_eigenvalues, _certified, local_eigenvalues
from geomsae.neighbors import knn


def _hoods(X: np.ndarray, k: int) -> torch.Tensor:
    idx = torch.as_tensor(knn(X, k).indices)
    return torch.cat([torch.arange(len(X))[:, None], idx], 1)


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    n, D = 400, 96
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    low = np.zeros((n, D))
    low[:, :5] = rng.normal(size=(n, 5))
    power = rng.normal(size=(n, D)) * np.arange(1, D + 1) ** -0.7  # a continuous spectrum
    line = np.zeros((n, D))
    line[:, 0] = rng.normal(size=n)
    return {
        "subspace+noise": (low + 0.01 * rng.normal(size=(n, D))) @ Q.T,
        "power-law spectrum": power @ Q.T,
        "far from the origin": 1e3 + rng.normal(size=(n, D)) @ Q.T,
        # centring at |x| ~ 1e6 leaves a float32 mean error far above the local spread unless
        # the rows are first taken relative to a point of the neighbourhood
        "noise at 2e6": 2e6 + rng.normal(size=(n, D)),
        "line at 1e6": 1e6 + line + 1e-3 * rng.normal(size=(n, D)),
        "heavy tails": rng.standard_t(2, size=(n, D)),
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_bf16_bounds_hold(name):
    X = _datasets()[name].astype(np.float32).astype(np.float64)  # exact in float32
    hood = _hoods(X, 30)
    lam, err = _bf16_eigenvalues(torch.tensor(X, dtype=torch.float32), hood)
    exact = local_eigenvalues(torch.tensor(X), hood, dtype=torch.float64)
    assert lam.shape == exact.shape
    assert bool(((lam - exact).abs() <= err[:, None]).all())
    assert bool((err > 0).all())


def test_certificate_logic():
    lam = torch.tensor([[10.0, 5.0, 0.52, 0.0], [10.0, 5.0, 0.9, 0.0]], dtype=torch.float64)
    e = torch.tensor([0.01, 0.01], dtype=torch.float64)
    # threshold 0.5: row 0's 0.52 is 0.02 away (> 1.05 e, < 1.05 x 3e); row 1's 0.9 is far
    assert _certified(lam, e, 0.05).tolist() == [True, True]
    assert _certified(lam, 3 * e, 0.05).tolist() == [False, True]
    assert _certified(lam, 3 * e, 0.088).tolist() == [True, False]  # threshold 0.88


@pytest.mark.parametrize("name", list(_datasets()))
def test_bf16_counts_equal_float64(monkeypatch, name):
    """The certified path (forced on, whatever the CPU) gives the float64 counts."""
    monkeypatch.setattr(lpca, "native_bf16", lambda: True)
    monkeypatch.setattr(lpca, "_BF16_TRIAL", 64)  # several blocks, and the early switch
    X = _datasets()[name]
    ours = gd.LocalPCA().fit_pointwise(X, n_neighbors=29).dimension_pw_
    exact = gd.LocalPCA(dtype=torch.float64).fit_pointwise(X, n_neighbors=29).dimension_pw_
    np.testing.assert_array_equal(ours, exact)


def test_bf16_path_used_only_where_it_applies(monkeypatch):
    calls = []
    monkeypatch.setattr(lpca, "native_bf16", lambda: True)
    real = lpca._bf16_gram
    monkeypatch.setattr(lpca, "_bf16_gram", lambda *a: calls.append(1) or real(*a))
    X = _datasets()["subspace+noise"]
    gd.LocalPCA().fit_pointwise(X, n_neighbors=20)
    assert calls  # fo, float32, CPU, D >= 64
    calls.clear()
    for est in (gd.LocalPCA("gap"), gd.LocalPCA("variance"), gd.LocalPCA(dtype=torch.float64)):
        est.fit_pointwise(X, n_neighbors=20)
    gd.LocalPCA().fit_pointwise(X[:, :40], n_neighbors=20)  # D < 64
    assert not calls
    monkeypatch.setattr(lpca, "native_bf16", lambda: False)
    gd.LocalPCA().fit_pointwise(X, n_neighbors=20)
    assert not calls


def _hard_clusters_first(rng: np.random.Generator, D: int = 64) -> np.ndarray:
    """8 far clusters of 50 points whose covariance is exactly diag(1, 0.052): the second
    eigenvalue sits within bfloat16's bound of the Fukunaga-Olsen threshold 0.05 (float32
    decides them), first; then 3000 points of a 3-dim cloud that bfloat16 certifies."""
    parts = []
    for j in range(8):
        Z = rng.normal(size=(50, 2))
        Z -= Z.mean(0)
        Z = Z @ np.linalg.inv(np.linalg.cholesky(np.cov(Z.T)).T)  # identity covariance
        C = np.zeros((50, D))
        C[:, :2] = Z * [1.0, np.sqrt(0.052)]
        C[:, 3 + j] += 100.0
        parts.append(C)
    bulk = rng.normal(size=(3000, 3)) @ rng.normal(size=(3, D)) + 0.01 * rng.normal(size=(3000, D))
    return np.vstack(parts + [bulk])


def test_sorted_input_does_not_send_everything_to_float32(monkeypatch):
    """The trial is evenly spaced rows and the Rayleigh-Ritz batches interleave the rest, so a
    run of hard neighbourhoods first does not decide for the whole set (before: 3400 of 3400
    rows redone in float32 with the hard ones first, 400 shuffled)."""
    monkeypatch.setattr(lpca, "native_bf16", lambda: True)
    redone = []
    real = lpca.local_eigenvalues

    def spy(X, idx, **kw):
        redone.append(idx.shape[0])
        return real(X, idx, **kw)

    monkeypatch.setattr(lpca, "local_eigenvalues", spy)
    X = _hard_clusters_first(np.random.default_rng(0))
    ours = gd.LocalPCA().fit_pointwise(X, n_neighbors=49).dimension_pw_
    assert sum(redone) <= 400 + 32
    exact = gd.LocalPCA(dtype=torch.float64).fit_pointwise(X, n_neighbors=49).dimension_pw_
    np.testing.assert_array_equal(ours, exact)
    assert set(ours[:400]) == {2.0} and set(ours[400:]) == {3.0}
    perm = np.random.default_rng(1).permutation(len(X))
    redone.clear()
    shuffled = gd.LocalPCA().fit_pointwise(X[perm], n_neighbors=49).dimension_pw_
    assert sum(redone) <= 400 + 32
    np.testing.assert_array_equal(shuffled, ours[perm])
