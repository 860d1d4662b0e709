"""Rayleigh-Ritz certified Fukunaga-Olsen counts: certified counts are exact, the rest flagged."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae import dimension as gd
from geomsae.dimension import lpca, ritz
from geomsae.dimension.ritz import ritz_bounds, ritz_certify, ritz_counts, ritz_rank


def _matrices(spectra: np.ndarray, seed: int = 0) -> torch.Tensor:
    """Symmetric matrices ``U diag(l) U^T`` with random orthogonal ``U``, float64."""
    rng = np.random.default_rng(seed)
    b, m = spectra.shape
    U = np.linalg.qr(rng.normal(size=(b, m, m)))[0]
    return torch.from_numpy(np.einsum("bij,bj,bkj->bik", U, spectra, U))


def _fo(spectra: np.ndarray, alpha: float = 0.05) -> np.ndarray:
    return (spectra > alpha * spectra.max(1, keepdims=True)).sum(1)


def _gapped(b: int, m: int, d: int, rng: np.random.Generator, noise: float) -> np.ndarray:
    lam = np.empty((b, m))
    lam[:, :d] = rng.uniform(0.5, 10.0, size=(b, d))
    lam[:, d:] = noise * rng.uniform(0, 1, size=(b, m - d))
    return -np.sort(-lam, 1)


@pytest.mark.parametrize("seed", range(4))
def test_certified_counts_are_exact_on_gapped_spectra(seed):
    rng = np.random.default_rng(seed)
    lam = _gapped(128, 50, int(rng.integers(2, 15)), rng, noise=0.01)
    G = _matrices(lam, seed)
    counts, ok = ritz_counts(G, torch.zeros(len(G), dtype=torch.float64), 0.05, 16)
    assert float(ok.double().mean()) > 0.95  # a clear gap: nearly all certified
    np.testing.assert_array_equal(counts.numpy()[ok.numpy()], _fo(lam)[ok.numpy()])


@pytest.mark.parametrize("seed", range(4))
def test_never_certifies_a_wrong_count_near_the_threshold(seed):
    """Eigenvalues a hair above or below alpha * l_1: certified rows (if any) are still right."""
    rng = np.random.default_rng(seed)
    b, m = 256, 40
    lam = _gapped(b, m, 6, rng, noise=0.002)
    near = lam[:, 0] * 0.05 * (1 + rng.choice([-1, 1], b) * 10.0 ** rng.uniform(-12, -1, b))
    lam[:, 6] = near  # one eigenvalue just around the threshold
    lam = -np.sort(-lam, 1)
    G = _matrices(lam, seed)
    for rank in (4, 7, 8, 12, 20, 39):
        counts, ok = ritz_counts(G, torch.zeros(b, dtype=torch.float64), 0.05, rank)
        np.testing.assert_array_equal(counts.numpy()[ok.numpy()], _fo(lam)[ok.numpy()])
        if rank <= 6:
            assert not ok.any()  # the count (6 or 7) is not below the rank


def test_flat_spectrum_is_not_certified_and_gets_no_rank():
    rng = np.random.default_rng(0)
    lam = -np.sort(-rng.uniform(0.5, 1.0, size=(64, 30)), 1)  # every eigenvalue counts
    G = _matrices(lam)
    err = torch.zeros(64, dtype=torch.float64)
    _, ok = ritz_counts(G, err, 0.05, 10)
    assert not ok.any()
    assert ritz_rank(torch.from_numpy(lam), err, 0.05) is None


def test_error_bound_moves_the_verdict():
    """A gap delta between the 4th eigenvalue and the threshold: certified for error well
    below delta, not for error above it; the threshold's own uncertainty counts."""
    lam = np.zeros((1, 30))
    lam[0, :3] = [10.0, 8.0, 6.0]
    lam[0, 3] = 0.5 + 0.02  # threshold alpha * 10 = 0.5
    lam[0, 4:] = 1e-4
    G = _matrices(lam)
    one = torch.ones(1, dtype=torch.float64)
    counts, ok = ritz_counts(G, 0.001 * one, 0.05, 8)
    assert ok.item() and counts.item() == 4
    _, ok = ritz_counts(G, 0.03 * one, 0.05, 8)
    assert not ok.item()


def test_bounds_bracket_the_largest_eigenvalue():
    rng = np.random.default_rng(1)
    lam = _gapped(64, 50, 8, rng, noise=0.05)
    b = ritz_bounds(_matrices(lam), 12)
    assert bool((b.ritz[:, 0] <= torch.from_numpy(lam[:, 0]) + 1e-9).all())
    assert bool((b.top >= torch.from_numpy(lam[:, 0]) - 1e-9).all())
    assert bool((b.tail >= torch.from_numpy(lam[:, 12])).all())  # >= the complement's top


def test_rank_is_checked_and_chosen():
    G = torch.eye(10, dtype=torch.float64)[None]
    for bad in (0, 10):
        with pytest.raises(ValueError, match="rank must be in"):
            ritz_bounds(G, bad)
    rng = np.random.default_rng(2)
    lam = _gapped(256, 50, 10, rng, noise=1e-3)
    r = ritz_rank(torch.from_numpy(lam), torch.zeros(256, dtype=torch.float64), 0.05)
    assert r is not None and 10 < r <= 20


def test_float32_matrices_and_certify_from_bounds():
    rng = np.random.default_rng(3)
    lam = _gapped(64, 50, 5, rng, noise=1e-3)
    G = _matrices(lam).float()
    err = torch.full((64,), 1e-4, dtype=torch.float64)  # covers float32 rounding of G
    counts, ok = ritz_certify(ritz_bounds(G, 10), err, 0.05)
    assert ok.all()
    np.testing.assert_array_equal(counts.numpy(), _fo(lam))


def _curved_and_flat(n: int) -> np.ndarray:
    """Half the points on a 6-dim subspace (+ noise), half white noise: the certificate's
    rank fits the first half only."""
    rng = np.random.default_rng(0)
    D = 96
    low = np.zeros((n // 2, D))
    low[:, :6] = rng.normal(size=(n // 2, 6))
    low += 0.01 * rng.normal(size=low.shape)
    flat = 20 + rng.normal(size=(n - n // 2, D))
    return np.concatenate([low, flat]) @ np.linalg.qr(rng.normal(size=(D, D)))[0]


@pytest.mark.parametrize("data", ["subspace", "mixed"])
def test_local_pca_through_ritz_equals_float64(monkeypatch, data):
    monkeypatch.setattr(lpca, "native_bf16", lambda: True)
    monkeypatch.setattr(lpca, "_BF16_TRIAL", 64)
    calls = []
    real = lpca.ritz_bounds
    monkeypatch.setattr(lpca, "ritz_bounds", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(1)
    if data == "subspace":
        X = np.zeros((900, 96))
        X[:, :6] = rng.normal(size=(900, 6))
        X = (X + 0.01 * rng.normal(size=X.shape)) @ np.linalg.qr(rng.normal(size=(96, 96)))[0]
    else:
        X = _curved_and_flat(900)
    ours = gd.LocalPCA().fit_pointwise(X, n_neighbors=49).dimension_pw_
    exact = gd.LocalPCA(dtype=torch.float64).fit_pointwise(X, n_neighbors=49).dimension_pw_
    np.testing.assert_array_equal(ours, exact)
    assert calls  # the certificate ran (on the subspace rows at least)


def test_cost_constants_are_sane():
    assert ritz._RITZ_BASE + ritz._RITZ_PER_R2 * 100 < ritz._EIGVALSH_PER_M2 * 2500


def test_certificate_dropped_when_slower_than_eigvalsh(monkeypatch):
    """A CPU where the certificate loses to eigvalsh (forced: any time counts as too slow):
    one batch, then eigvalsh for the rest, with the same counts."""
    monkeypatch.setattr(lpca, "native_bf16", lambda: True)
    monkeypatch.setattr(lpca, "_BF16_TRIAL", 64)
    monkeypatch.setattr(lpca, "_RITZ_BLOCK", 128)
    monkeypatch.setattr(lpca, "_RITZ_SLOWER", 0.0)
    calls = []
    real = lpca.ritz_bounds
    monkeypatch.setattr(lpca, "ritz_bounds", lambda *a: calls.append(1) or real(*a))
    rng = np.random.default_rng(1)
    X = np.zeros((900, 96))
    X[:, :6] = rng.normal(size=(900, 6))
    X = (X + 0.01 * rng.normal(size=X.shape)) @ np.linalg.qr(rng.normal(size=(96, 96)))[0]
    ours = gd.LocalPCA().fit_pointwise(X, n_neighbors=49).dimension_pw_
    exact = gd.LocalPCA(dtype=torch.float64).fit_pointwise(X, n_neighbors=49).dimension_pw_
    np.testing.assert_array_equal(ours, exact)
    assert len(calls) == 1
