"""Uniform scaling far from 1 (1e-200 ... 1e200) leaves every estimate unchanged and scales the
lengths it reports: the estimators and local PCA work on a copy scaled by a power of two when
the data's range lies outside [2^-40, 2^40] (float64 squares over- or underflow beyond ~1e154)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae import dimension
from geomsae.neighbors import unit_scale
from geomsae.tangent import tangent_spaces, weighted_local_pca

SCALES = [1e155, 1e-160, 1e200, 1e-200]


@pytest.fixture(scope="module")
def cloud() -> np.ndarray:
    rng = np.random.default_rng(0)
    B = np.linalg.qr(rng.normal(size=(10, 3)))[0]
    return rng.normal(size=(600, 3)) @ B.T + 1e-3 * rng.normal(size=(600, 10))


ESTIMATORS = [
    dimension.LocalPCA(),
    dimension.LocalPCA(rule="gap"),
    dimension.MLE(),
    dimension.TwoNN(),
    dimension.GRIDE(),
    dimension.MiNDML(),
    dimension.CorrelationDimension(),
]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("est", ESTIMATORS, ids=lambda e: repr(e))
def test_estimates_do_not_depend_on_the_scale(cloud, est, scale):
    ref = est.fit(cloud).dimension_
    assert est.fit(cloud * scale).dimension_ == pytest.approx(ref, rel=1e-9)
    ref_pw = est.fit_pointwise(cloud, n_neighbors=20).dimension_pw_
    got_pw = est.fit_pointwise(cloud * scale, n_neighbors=20).dimension_pw_
    np.testing.assert_allclose(got_pw, ref_pw, rtol=1e-9)


def test_reported_lengths_are_in_data_units(cloud):
    s = 1e100  # squares (1e200) still representable
    c1, c2 = dimension.CorrelationDimension().fit(cloud), dimension.CorrelationDimension()
    np.testing.assert_allclose(c2.fit(cloud * s).radii_, c1.radii_ * s, rtol=1e-12)
    p1, p2 = dimension.LocalPCA().fit(cloud), dimension.LocalPCA().fit(cloud * s)
    tol = 2 * p2.eigenvalue_error_  # the certified float32 covariance's bound
    np.testing.assert_allclose(p2.eigenvalues_, p1.eigenvalues_ * s * s, rtol=1e-9, atol=tol)
    assert p2.eigenvalue_error_ == pytest.approx(p1.eigenvalue_error_ * s * s, rel=1e-5)
    k1 = dimension.id_scale_curve(cloud, n_bootstrap=0)
    k2 = dimension.id_scale_curve(cloud * s, n_bootstrap=0)
    np.testing.assert_allclose(k2.radius, k1.radius * s, rtol=1e-12)
    np.testing.assert_allclose(k2.dimension, k1.dimension, rtol=1e-9)


@pytest.mark.parametrize("scale", SCALES)
def test_tangent_spaces_do_not_depend_on_the_scale(cloud, scale):
    ref = tangent_spaces(cloud, 3, n_neighbors=15)
    got = tangent_spaces(cloud * scale, 3, n_neighbors=15)
    # same subspaces: the projections agree
    P_ref = ref.bases @ ref.bases.transpose(0, 2, 1)
    P_got = got.bases @ got.bases.transpose(0, 2, 1)
    np.testing.assert_allclose(P_got, P_ref, atol=1e-9)
    np.testing.assert_array_equal(got.neighbor_indices, ref.neighbor_indices)
    with np.errstate(over="ignore", under="ignore"):
        np.testing.assert_allclose(got.centers, ref.centers * scale, rtol=1e-9, atol=0)
        if 1e-150 < scale < 1e150:
            np.testing.assert_allclose(got.eigenvalues, ref.eigenvalues * scale**2, rtol=1e-9)


def test_weighted_local_pca_rank_check_on_tiny_data(cloud):
    nbr = np.argsort(((cloud[:, None] - cloud[None]) ** 2).sum(-1), axis=1)[:50, :12]
    w = np.ones(nbr.shape)
    ts = weighted_local_pca(cloud * 1e-200, nbr, w, 3)  # no false "span fewer" error
    assert ts.bases.shape == (50, 10, 3)
    with pytest.raises(ValueError, match="span fewer than d = 3.*smaller steps"):
        weighted_local_pca(np.zeros((20, 10)), np.tile(np.arange(5), (3, 1)), np.ones((3, 5)),
                           3, check_rank="take smaller steps")  # fmt: skip


def test_unit_scale_is_a_power_of_two_only_when_needed():
    rng = np.random.default_rng(1)
    X = torch.from_numpy(rng.normal(size=(1000, 4)))
    assert unit_scale(X) == 1.0
    assert unit_scale(X * 1e10) == 1.0  # a range of ~1e11 is within [2^-40, 2^40]
    assert unit_scale(X * 5e-324 * 2**40) == 2.0**1023  # subnormal: as far as a factor reaches
    for s in (1e30, 1e-30, 1e300, 1e-300):
        u = unit_scale(X * s)
        assert np.frexp(u)[0] == 0.5  # a power of two
        Y = (X * s * u).numpy()
        assert 0.5 <= (Y.max(0) - Y.min(0)).max() < 4.0  # [0.5, 1) on the sampled rows
    assert unit_scale(torch.zeros(5, 3)) == 1.0
    Z = torch.zeros(1000, 3, dtype=torch.float64)
    Z[1::3] = 1e-300  # the strided sample sees only equal rows: all rows decide
    assert unit_scale(Z) != 1.0


def test_an_outlier_the_sample_misses_does_not_overflow():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(1000, 3)) * 1e-160
    X[1] = 1e150  # not among the sampled rows
    u = unit_scale(torch.from_numpy(X))
    assert np.isfinite(X * u).all()
    dimension.LocalPCA().fit(X)  # a LinAlgError before
    Y = rng.normal(size=(1000, 3)) * 1e-100
    Y[1] = 1e210
    for est in (dimension.TwoNN(), dimension.MLE(), dimension.CorrelationDimension()):
        est.fit(Y)  # "contains NaN or Inf" before
    dimension.id_scale_curve(Y, n_bootstrap=0)
    # each neighbourhood is scaled on its own: only the outlier's (one direction, 1e210 long,
    # the rest 1e-310 of it) is degenerate
    with pytest.raises(ValueError, match="^1 neighbourhoods span fewer.*point 1\\)"):
        tangent_spaces(Y, 2, n_neighbors=10)
    ts = tangent_spaces(Y, 2, n_neighbors=10, indices=np.arange(2, 1000))
    Y[1] = 1e110  # still far from the cloud: the same neighbourhoods, at 1e100 times the scale
    ref = tangent_spaces(Y * 1e100, 2, n_neighbors=10, indices=np.arange(2, 1000))
    P, P_ref = (t.bases @ t.bases.transpose(0, 2, 1) for t in (ts, ref))
    np.testing.assert_allclose(P, P_ref, atol=1e-9)


def test_a_constant_column_far_from_zero_does_not_overflow():
    rng = np.random.default_rng(3)
    X = np.c_[rng.normal(size=(500, 3)) * 1e-20, np.full(500, 1e300)]
    u = unit_scale(torch.from_numpy(X))
    assert np.isfinite(X * u).all()
    ref = dimension.TwoNN().fit(X[:, :3]).dimension_
    assert dimension.TwoNN().fit(X).dimension_ == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("scale", [1e-200, 1e200])
def test_select_radius_does_not_depend_on_the_scale(scale):
    from geomsae.graph import select_radius
    from geomsae.manifolds import sphere

    X = sphere(400, 2, random_state=0).X
    ref = select_radius(X, 2)
    got = select_radius(X * scale, 2)
    assert got.radius == pytest.approx(ref.radius * scale, rel=1e-9)
    assert got.bandwidth == pytest.approx(ref.bandwidth * scale, rel=1e-9)
    np.testing.assert_allclose(got.radii, ref.radii * scale, rtol=1e-9)
    np.testing.assert_allclose(got.distortion, ref.distortion, rtol=1e-6)
    got2 = select_radius(X * scale, 2, radii=ref.radii * scale)  # given radii, in data units
    assert got2.radius == pytest.approx(ref.radius * scale, rel=1e-9)


def test_scaling_epps_out_of_range_is_named():
    from geomsae.graph import laplacian_matrix

    K = np.array([[0.0, 1.0], [1.0, 0.0]])
    for eps in (1e-200, 1e200):
        with pytest.raises(ValueError, match="outside float64's range"):
            laplacian_matrix(K, "geometric", scaling_epps=eps)


def test_select_radius_radii_beyond_the_data_are_named():
    from geomsae.graph import select_radius
    from geomsae.manifolds import sphere

    X = sphere(200, 2, random_state=0).X * 2.0**-1000
    with pytest.raises(ValueError, match="exceed the data's extent"):
        select_radius(X, 1, radii=[1e300])
