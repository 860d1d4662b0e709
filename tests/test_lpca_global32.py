"""Global PCA through float32 Gram blocks: the bound holds, counts agree, else float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae import dimension as gd
from geomsae.dimension.lpca import _covariance_eigenvalues32


def _datasets() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(1)
    n, D = 4500, 64  # three Gram blocks, the last one partial
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    low = np.zeros((n, D))
    low[:, :6] = rng.normal(size=(n, 6)) * np.array([3.0, 2.0, 1.5, 1.0, 0.8, 0.6])
    return {
        "subspace+noise": (low + 0.01 * rng.normal(size=(n, D))) @ Q.T,
        "power-law spectrum": (rng.normal(size=(n, D)) * np.arange(1, D + 1) ** -0.7) @ Q.T,
        "far from the origin": 1e6 + (low + 0.01 * rng.normal(size=(n, D))) @ Q.T,
        "heavy tails": rng.standard_t(2, size=(n, D)),
        "outlier rows": np.concatenate([rng.normal(size=(n - 5, D)), 1e3 * np.eye(5, D)]),
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_float32_gram_bound_holds(name):
    X = _datasets()[name]
    lam, err = _covariance_eigenvalues32(X)
    exact = np.linalg.eigvalsh(np.cov(X.T))[::-1]
    assert lam.shape == exact.shape and err > 0
    assert np.all(np.abs(lam - exact) <= err)


@pytest.mark.parametrize("name", list(_datasets()))
def test_global_count_equals_float64(name):
    X = _datasets()[name]
    fast = gd.LocalPCA().fit(X)
    exact = gd.LocalPCA(dtype=torch.float64).fit(X)
    assert fast.dimension_ == exact.dimension_
    assert exact.eigenvalue_error_ == 0.0
    assert np.all(np.abs(fast.eigenvalues_ - exact.eigenvalues_) <= fast.eigenvalue_error_ + 1e-12)


def test_eigenvalue_at_the_threshold_falls_back_to_float64():
    # covariance eigenvalues exactly 1 and 0.05 (= alpha * l_1): no bound can certify the count
    rng = np.random.default_rng(0)
    n, D = 3000, 40
    U = np.linalg.qr(rng.normal(size=(n, D)) - 0.0)[0]
    U -= U.mean(0)
    U = np.linalg.qr(U)[0]  # orthonormal, centred columns
    s = np.sqrt((n - 1) * np.concatenate([[1.0, 0.05], np.full(D - 2, 1e-4)]))
    X = (U * s) @ np.linalg.qr(rng.normal(size=(D, D)))[0].T
    fast = gd.LocalPCA().fit(X)
    exact = gd.LocalPCA(dtype=torch.float64).fit(X)
    assert fast.eigenvalue_error_ == 0.0  # it fell back
    assert fast.dimension_ == exact.dimension_
    np.testing.assert_array_equal(fast.eigenvalues_, exact.eigenvalues_)


def test_other_rules_and_wide_data_stay_float64():
    X = _datasets()["subspace+noise"]
    assert gd.LocalPCA("variance").fit(X).eigenvalue_error_ == 0.0
    assert gd.LocalPCA().fit(X[:50]).eigenvalue_error_ == 0.0  # n <= D: the n x n Gram
    assert gd.LocalPCA().fit(X).eigenvalue_error_ > 0.0


@pytest.mark.parametrize("scale", [1e-23, 3e-23, 1e-22, 1e18, 1e25])
def test_tiny_and_huge_data_give_the_float64_count(scale):
    # the estimator scales such data by a power of two first (geomsae.neighbors.unit_scale), so
    # the float32 covariance applies at any scale; on unscaled data, float32 underflow (products
    # below ~1e-38 lose their relative accuracy) must not certify a wrong count, and float32
    # overflow (entries beyond ~1e19) must fall back (None), not crash
    from geomsae.dimension.lpca import _covariance_eigenvalues32

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3000, 3)) * np.array([1.0, 0.3, 0.01]) * scale
    for D in (3, 8):
        Y = X if D == 3 else rng.normal(size=(3000, 8)) * scale
        fast = gd.LocalPCA().fit(Y)
        exact = gd.LocalPCA(dtype=torch.float64).fit(Y)
        assert fast.dimension_ == exact.dimension_
        assert fast.eigenvalue_error_ > 0.0  # the float32 path, certified
        assert np.all(np.abs(fast.eigenvalues_ - exact.eigenvalues_) <= fast.eigenvalue_error_)
        raw = _covariance_eigenvalues32(Y)
        if scale >= 1e18:
            assert raw is None  # float32 overflow: the caller falls back
        elif raw is not None:
            lam, err = raw
            truth = np.linalg.eigvalsh(np.cov(Y.T))[::-1]
            assert np.all(np.abs(lam - truth) <= err)
