"""Weighted local PCA tangent spaces against the exact tangents of synthetic manifolds."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from geomsae.grassmann import principal_angles
from geomsae.manifolds import sphere, swiss_roll, torus
from geomsae.neighbors import radius_neighbors
from geomsae.tangent import (
    LocalTangentSpaces,
    estimate_local_dimension,
    smooth_tangent_spaces,
    tangent_spaces,
    weighted_local_pca,
)


def max_angle_deg(bases, exact) -> np.ndarray:
    return np.degrees(principal_angles(bases, exact).max(axis=1))


@pytest.fixture(scope="module")
def sph():
    return sphere(1000, random_state=0)


def random_rotation(D: int, seed: int) -> np.ndarray:
    return np.linalg.qr(np.random.default_rng(seed).standard_normal((D, D)))[0]


# ------------------------------------------------------------------------------------------
# accuracy on known manifolds


@pytest.mark.parametrize(
    "kw", [{"n_neighbors": 15}, {"bandwidth": 0.1}, {"bandwidth": 0.1, "n_neighbors": 30}]
)
def test_sphere_tangents(sph, kw) -> None:
    ts = tangent_spaces(sph.X, 2, **kw)
    assert ts.bases.shape == (1000, 3, 2)
    ang = max_angle_deg(ts.bases, sph.tangents)
    assert ang.mean() < 3.0 and np.median(ang) < 2.5, ang.mean()


def test_sphere_in_high_dimension() -> None:
    m = sphere(800, 3, ambient_dim=30, random_state=1)
    ts = tangent_spaces(m.X, 3, n_neighbors=20)
    ang = max_angle_deg(ts.bases, m.tangents)
    assert ts.bases.shape == (800, 30, 3) and ang.mean() < 5.0


def test_torus_and_swiss_roll_tangents() -> None:
    m = torus(1500, random_state=0)
    ang = max_angle_deg(tangent_spaces(m.X, 2, n_neighbors=15).bases, m.tangents)
    assert np.median(ang) < 6.0
    m = swiss_roll(1500, ambient_dim=10, random_state=0)
    ang = max_angle_deg(tangent_spaces(m.X, 2, n_neighbors=15).bases, m.tangents)
    assert np.median(ang) < 3.0


def test_error_shrinks_with_sampling_density() -> None:
    """Local PCA is consistent: more points at the same neighbour count, smaller angles."""
    errs = []
    for n in (300, 3000):
        m = sphere(n, random_state=2)
        errs.append(max_angle_deg(tangent_spaces(m.X, 2, n_neighbors=12).bases, m.tangents).mean())
    assert errs[1] < 0.5 * errs[0], errs


def test_circle_tangent_is_exact_on_a_symmetric_grid() -> None:
    """On an even grid, neighbourhoods are symmetric, so the tangent is exact."""
    t = np.linspace(0, 2 * np.pi, 90, endpoint=False)
    X = np.c_[np.cos(t), np.sin(t)]
    ts = tangent_spaces(X, 1, n_neighbors=6)
    exact = np.c_[-np.sin(t), np.cos(t)][:, :, None]
    assert principal_angles(ts.bases, exact).max() < 1e-10


# ------------------------------------------------------------------------------------------
# the math, conventions and invariances


def test_local_pca_matches_direct_formula() -> None:
    rng = np.random.default_rng(3)
    X = rng.standard_normal((50, 4)) * [3.0, 2.0, 1.0, 0.5]
    nbr = np.array([[0, 5, 7, 9, 11, 13], [1, 2, 3, -1, -1, -1]])
    w = rng.uniform(0.1, 1.0, size=nbr.shape)
    for square in (False, True):
        ts = weighted_local_pca(X, nbr, w, 2, square_weights=square)
        for r in range(2):
            keep = nbr[r] >= 0
            P, ww = X[nbr[r][keep]], w[r][keep] / w[r][keep].sum()
            mu = ww @ P
            C = ((ww**2 if square else ww)[:, None] * (P - mu)).T @ (P - mu)
            lam, U = np.linalg.eigh(C)
            np.testing.assert_allclose(ts.centers[r], mu, atol=1e-12)
            n_eig = min(nbr.shape[1], 4)
            np.testing.assert_allclose(ts.eigenvalues[r], lam[::-1][:n_eig], atol=1e-12)
            assert principal_angles(ts.bases[r], U[:, ::-1][:, :2]).max() < 1e-8
    assert (ts.neighbor_indices[1, 3:] == -1).all() and (ts.weights[1, 3:] == 0).all()
    np.testing.assert_allclose(ts.weights.sum(1), 1.0)


def test_gaussian_weights_and_radius_neighbourhoods_are_exact(sph) -> None:
    """Radius mode finds all points within 3 eps (even past the first 32); weights exp(-r²/eps²)."""
    eps = 0.12  # ~ 75 neighbours within 3 eps: exercises the doubling of k
    ts = tangent_spaces(sph.X, 2, bandwidth=eps, indices=np.arange(40))
    G = radius_neighbors(sph.X, 3 * eps)
    counts = np.diff(G.indptr)[:40] + 1  # + the point itself
    np.testing.assert_array_equal(ts.n_neighbors, counts)
    assert counts.max() > 33
    assert (ts.neighbor_indices[:, 0] == np.arange(40)).all()  # itself first
    r = 7
    nb = ts.neighbor_indices[r][ts.neighbor_indices[r] >= 0]
    d = np.linalg.norm(sph.X[nb] - sph.X[r], axis=1)
    k = np.exp(-((d / eps) ** 2))
    np.testing.assert_allclose(ts.weights[r][: nb.size], k / k.sum(), rtol=1e-10)
    assert ts.bandwidth == eps


def test_max_neighbors_caps_radius_neighbourhoods(sph, caplog) -> None:
    with caplog.at_level("WARNING", logger="geomsae.tangent"):
        ts = tangent_spaces(sph.X, 2, bandwidth=0.5, max_neighbors=20, indices=np.arange(5))
    np.testing.assert_array_equal(ts.n_neighbors, 21)
    assert "truncated" in caplog.text
    full = tangent_spaces(sph.X, 2, n_neighbors=20, bandwidth=0.5, indices=np.arange(5))
    np.testing.assert_allclose(ts.weights, full.weights)  # the 20 nearest, Gaussian weights


def test_max_neighbors_warns_only_when_something_was_left_out(caplog) -> None:
    """Five clusters of 10 points: with max_neighbors=9 every radius neighbourhood is whole
    (the 10th neighbour is in another cluster), so nothing is reported truncated."""
    rng = np.random.default_rng(0)
    X = np.repeat(np.eye(5) * 100, 10, axis=0) + rng.standard_normal((50, 5))
    with caplog.at_level("WARNING", logger="geomsae.tangent"):
        ts = tangent_spaces(X, 2, bandwidth=3.0, max_neighbors=9)
    np.testing.assert_array_equal(ts.n_neighbors, 10)
    assert "truncated" not in caplog.text
    with caplog.at_level("WARNING", logger="geomsae.tangent"):
        ts = tangent_spaces(X, 2, bandwidth=3.0, max_neighbors=8)
    assert "truncated 50 rows" in caplog.text


def test_knn_weights_uniform_and_indices_subset(sph) -> None:
    full = tangent_spaces(sph.X, 2, n_neighbors=10)
    np.testing.assert_allclose(full.weights, 1 / 11)
    sub = tangent_spaces(sph.X, 2, n_neighbors=10, indices=[5, 900, 17])
    np.testing.assert_array_equal(sub.indices, [5, 900, 17])
    np.testing.assert_allclose(sub.bases, full.bases[[5, 900, 17]], atol=1e-12)
    np.testing.assert_allclose(sub.eigenvalues, full.eigenvalues[[5, 900, 17]], atol=1e-14)


def test_orthonormal_deterministic_signs_and_torch_parity(sph) -> None:
    ts = tangent_spaces(sph.X, 2, n_neighbors=12)
    gram = np.einsum("mji,mjk->mik", ts.bases, ts.bases)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(2), gram.shape), atol=1e-12)
    B = ts.bases
    top = np.take_along_axis(B, np.abs(B).argmax(axis=1)[:, None, :], axis=1)
    assert (top > 0).all()
    tt = tangent_spaces(torch.from_numpy(sph.X), 2, n_neighbors=12)
    assert isinstance(tt.bases, torch.Tensor) and tt.bases.dtype == torch.float64
    np.testing.assert_allclose(tt.bases.numpy(), B, atol=1e-12)
    np.testing.assert_array_equal(tangent_spaces(sph.X, 2, n_neighbors=12).bases, B)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_rotation_and_translation_invariance(seed: int) -> None:
    m = swiss_roll(300, random_state=seed % 1000)
    R = random_rotation(3, seed)
    shift = np.random.default_rng(seed).uniform(-50, 50, size=3)
    a = tangent_spaces(m.X, 2, n_neighbors=10)
    b = tangent_spaces(m.X @ R.T + shift, 2, n_neighbors=10)
    rotated = np.einsum("ij,mjk->mik", R, a.bases)
    assert principal_angles(rotated, b.bases).max() < 1e-6
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(b.centers, a.centers @ R.T + shift, atol=1e-8)


def test_estimated_dimension() -> None:
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    circle = np.c_[np.cos(t), np.sin(t), np.zeros_like(t), np.zeros_like(t)]
    assert tangent_spaces(circle, None, n_neighbors=8).d == 1
    assert tangent_spaces(sphere(600, random_state=0).X, None, n_neighbors=15).d == 2
    m = sphere(800, 3, ambient_dim=8, random_state=0)
    assert tangent_spaces(m.X, None, n_neighbors=25).d == 3
    ts = tangent_spaces(m.X, 3, n_neighbors=25)
    assert estimate_local_dimension(m.X, ts.neighbor_indices, ts.weights) == 3


# ------------------------------------------------------------------------------------------
# smoothing and the estimator


def test_karcher_smoothing_reduces_noise() -> None:
    m = sphere(1500, noise=0.02, random_state=4)
    ts = tangent_spaces(m.X, 2, n_neighbors=15)
    sm = smooth_tangent_spaces(ts)
    raw, smooth = max_angle_deg(ts.bases, m.tangents), max_angle_deg(sm.bases, m.tangents)
    assert smooth.mean() < 0.85 * raw.mean(), (raw.mean(), smooth.mean())
    np.testing.assert_array_equal(sm.eigenvalues, ts.eigenvalues)


def test_smoothing_a_subset_uses_only_computed_neighbours(sph) -> None:
    ts = tangent_spaces(sph.X, 2, n_neighbors=10, indices=[0, 1, 2])
    sm = smooth_tangent_spaces(ts)  # neighbours are mostly not queries: means of what there is
    assert sm.bases.shape == (3, 3, 2)
    assert principal_angles(sm.bases, sph.tangents[[0, 1, 2]]).max() < np.radians(10)


def test_estimator_wraps_function(sph) -> None:
    est = LocalTangentSpaces(2, n_neighbors=12)
    assert clone(est).get_params()["n_neighbors"] == 12
    est.fit(sph.X)
    np.testing.assert_allclose(est.bases_, tangent_spaces(sph.X, 2, n_neighbors=12).bases)
    assert est.d_ == 2 and est.eigenvalues_.shape[0] == 1000
    sm = LocalTangentSpaces(2, n_neighbors=12, smooth=True).fit(sph.X)
    assert sm.bases_.shape == (1000, 3, 2)


# ------------------------------------------------------------------------------------------
# bad input


def test_bad_input_messages(sph) -> None:
    X = sph.X.copy()
    with pytest.raises(ValueError, match="NaN or Inf"):
        tangent_spaces(np.where(np.arange(3) == 1, np.nan, X), 2, n_neighbors=5)
    with pytest.raises(ValueError, match="1 <= d < D"):
        tangent_spaces(X, 3, n_neighbors=5)
    with pytest.raises(ValueError, match="1 <= d < D"):
        tangent_spaces(X, 0, n_neighbors=5)
    with pytest.raises(ValueError, match="bandwidth= .* or n_neighbors="):
        tangent_spaces(X, 2)
    with pytest.raises(ValueError, match="bandwidth must be"):
        tangent_spaces(X, 2, bandwidth=-1.0)
    with pytest.raises(ValueError, match="n_neighbors must be"):
        tangent_spaces(X, 2, n_neighbors=1000)
    with pytest.raises(ValueError, match="fewer than d \\+ 1"):
        tangent_spaces(X, 2, n_neighbors=1)
    with pytest.raises(ValueError, match="larger bandwidth"):
        tangent_spaces(X, 2, bandwidth=1e-4)
    with pytest.raises(ValueError, match="indices must lie"):
        tangent_spaces(X, 2, n_neighbors=5, indices=[1000])


def test_duplicates_give_a_clear_error() -> None:
    X = np.repeat(sphere(100, random_state=0).X, 6, axis=0)  # every point six times
    with pytest.raises(ValueError, match="deduplicate"):
        tangent_spaces(X, 2, n_neighbors=5)
    # with enough neighbours beyond the copies it works
    assert tangent_spaces(X, 2, n_neighbors=30).bases.shape == (600, 3, 2)


@pytest.mark.parametrize(("scale", "offset"), [(1.0, 1e9), (1e-3, 1e6), (1.0, 1e12)])
def test_far_from_the_origin_is_not_a_duplicate(scale, offset) -> None:
    """A unit sphere translated by 1e9 (or 1 mm at 1000 km) has real neighbourhoods: the
    rank check's rounding floor follows the mean's error (~k eps |x|), not 1e-10 |x|."""
    X = sphere(500, d=2, random_state=0).X
    ref = tangent_spaces(X, 2, n_neighbors=10)
    far = tangent_spaces(scale * X + offset, 2, n_neighbors=10)
    assert principal_angles(ref.bases, far.bases).max() < 1e-3
    with pytest.raises(ValueError, match="deduplicate"):  # copies are still copies there
        tangent_spaces(np.repeat(scale * X[:50] + offset, 6, axis=0), 2, n_neighbors=5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(sph) -> None:
    cpu = tangent_spaces(sph.X, 2, bandwidth=0.1)
    gpu = tangent_spaces(torch.from_numpy(sph.X).cuda(), 2, bandwidth=0.1)
    assert gpu.bases.is_cuda
    np.testing.assert_allclose(gpu.bases.cpu().numpy(), cpu.bases, atol=1e-10)


def test_duplicate_neighbourhoods_are_refused_at_d1():
    t = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    C = np.c_[np.cos(t), np.sin(t), 0 * t]
    Xd = np.r_[C, np.repeat(C[:1], 7, 0)]  # point 0 and 7 exact copies: a rank-0 neighbourhood
    with pytest.raises(ValueError, match="span fewer than d"):
        tangent_spaces(Xd, 1, n_neighbors=5)
    with pytest.raises(ValueError, match="span fewer than d"):
        tangent_spaces(np.repeat([[0.3, 0.7, 0.1]], 20, 0), 1, n_neighbors=5)


def test_indices_must_be_row_numbers():
    t = np.linspace(0, 2 * np.pi, 300, endpoint=False)
    C = np.c_[np.cos(t), np.sin(t), 0 * t]
    with pytest.raises(ValueError, match="boolean mask"):
        tangent_spaces(C, 1, n_neighbors=5, indices=np.arange(300) < 3)
    with pytest.raises(ValueError, match="integers"):
        tangent_spaces(C, 1, n_neighbors=5, indices=[1.7])
    ts = tangent_spaces(C, 1, n_neighbors=5, indices=torch.tensor([0, 5]))
    assert ts.bases.shape == (2, 3, 1)
    with pytest.raises(ValueError, match="d must be an integer"):
        tangent_spaces(C, True, n_neighbors=5)


def test_weighted_local_pca_refuses_float_indices_and_wrong_lengths():
    X = np.random.default_rng(0).standard_normal((10, 3))
    nbr = np.array([[0, 1, 2, 3], [1, 2, 3, -1]])
    w = np.ones((2, 4))
    with pytest.raises(ValueError, match="integers"):
        weighted_local_pca(X, nbr + 0.7, w, 2)
    with pytest.raises(ValueError, match="one per row"):
        weighted_local_pca(X, nbr, w, 2, indices=np.arange(5))
    assert weighted_local_pca(X, nbr, w, 2, indices=np.array([0, 1])).bases.shape == (2, 3, 2)
