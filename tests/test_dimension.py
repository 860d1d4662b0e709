"""geomsae.dimension: every estimator on manifolds of known dimension, invariances, bad input."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

matplotlib.use("Agg")

from geomsae import dimension as gd  # noqa: E402
from geomsae.dimension.corrint import correlation_integral  # noqa: E402
from geomsae.dimension.gride import gride_mle  # noqa: E402
from geomsae.dimension.lpca import dimension_from_eigenvalues, local_eigenvalues  # noqa: E402
from geomsae.dimension.mle import mle_pointwise_from_distances  # noqa: E402
from geomsae.dimension.twonn import twonn_from_log_ratios  # noqa: E402
from geomsae.manifolds import cube, gaussian_blobs, sphere, swiss_roll  # noqa: E402
from geomsae.neighbors import knn  # noqa: E402

# Global estimates on a flat 4-cube (n = 1500) rotated into R^12: relative tolerance per
# estimator. k-NN estimators are biased low by boundary effects (~5 % at d = 4, n = 1500);
# correlation dimension most of all. Global lPCA of a flat set is exact.
GLOBAL_TOL = {
    "lpca": 0.0,
    "mle": 0.12,
    "twonn": 0.12,
    "gride": 0.12,
    "corrint": 0.2,
    "mind_ml": 0.12,
    "calibrated": 0.1,
}


@pytest.fixture(scope="module")
def flat4() -> np.ndarray:
    return cube(1500, d=4, ambient_dim=12, random_state=0).X


def test_registry_is_complete():
    assert set(gd.ESTIMATORS) == set(GLOBAL_TOL)
    for name in ("LocalPCA", "MLE", "TwoNN", "GRIDE", "CorrelationDimension", "MiNDML"):
        assert name in gd.__all__


@pytest.mark.parametrize("name", list(gd.ESTIMATORS))
def test_every_estimator_on_a_flat_cube(name, flat4):
    est = gd.ESTIMATORS[name]()
    assert clone(est).get_params() == est.get_params()
    assert repr(est).startswith(type(est).__name__)
    with pytest.raises(NotFittedError):
        est.check_fitted()
    assert est.fit(flat4) is est
    assert isinstance(est.dimension_, float)
    assert abs(est.dimension_ - 4) <= 4 * GLOBAL_TOL[name] + 1e-9, est.dimension_
    est.fit_pointwise(flat4[:600], n_neighbors=30)
    assert est.dimension_pw_.shape == (600,) and np.isfinite(est.dimension_pw_).all()
    assert abs(np.median(est.dimension_pw_) - 4) < 1.2  # small neighbourhoods: loose


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "make, d",
    [
        (lambda s: sphere(1500, d=2, ambient_dim=10, random_state=s), 2),
        (lambda s: swiss_roll(1500, ambient_dim=10, random_state=s), 2),
        (lambda s: sphere(2000, d=5, ambient_dim=20, random_state=s), 5),
    ],
    ids=["S2", "swiss_roll", "S5"],
)
def test_known_dimension_several_seeds(make, d, seed):
    X = make(seed).X
    # tolerance: 10 % for the likelihood/ratio estimators, 20 % for correlation dimension
    assert abs(gd.twonn(X) - d) < 0.1 * d
    assert abs(gd.mle(X) - d) < 0.1 * d
    assert abs(gd.gride(X) - d) < 0.1 * d
    assert abs(gd.mind_ml(X) - d) < 0.1 * d
    assert abs(gd.correlation_dimension(X) - d) < 0.2 * d
    pw = gd.LocalPCA().fit_pointwise(X, n_neighbors=20).dimension_pw_
    assert np.median(pw) == d  # curved but well sampled: the FO rule counts d at k = 20


def test_pointwise_estimates_are_local():
    # a 1-D curve and a 3-D blob in one data set: pointwise estimates tell them apart
    rng = np.random.default_rng(0)
    t = rng.uniform(0, 1, 400)
    line = np.stack([t * 10, np.zeros_like(t), np.zeros_like(t)], 1) + [20, 0, 0]
    blob = rng.uniform(0, 1, (400, 3))
    X = np.vstack([line, blob])
    for est in (gd.MLE(), gd.TwoNN(), gd.GRIDE(), gd.MiNDML(), gd.LocalPCA()):
        pw = est.fit_pointwise(X, n_neighbors=20).dimension_pw_
        assert abs(np.median(pw[:400]) - 1) < 0.3, type(est).__name__
        assert abs(np.median(pw[400:]) - 3) < 0.6, type(est).__name__


@pytest.mark.parametrize("name", list(gd.ESTIMATORS))
def test_invariance_to_rotation_translation_scaling(name):
    X = sphere(600, d=3, ambient_dim=8, random_state=3).X
    Q, _ = np.linalg.qr(np.random.default_rng(1).standard_normal((8, 8)))
    base = gd.ESTIMATORS[name]().fit(X).dimension_
    for Y in (X @ Q, X + 100.0, 7.5 * X):
        assert gd.ESTIMATORS[name]().fit(Y).dimension_ == pytest.approx(base, rel=1e-7)
    pw = gd.ESTIMATORS[name]().fit_pointwise(X, n_neighbors=15).dimension_pw_
    pw_rot = gd.ESTIMATORS[name]().fit_pointwise(3.0 * X @ Q - 5, n_neighbors=15).dimension_pw_
    np.testing.assert_allclose(pw_rot, pw, rtol=1e-7)


def test_torch_input_gives_the_same_answer():
    X = sphere(500, d=2, ambient_dim=5, random_state=0).X
    Xt = torch.tensor(X, dtype=torch.float32)
    assert gd.twonn(Xt) == pytest.approx(gd.twonn(X.astype(np.float32)), rel=1e-12)
    assert gd.MLE().fit_pointwise(Xt, n_neighbors=10).dimension_pw_.dtype == np.float64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    X = torch.tensor(sphere(800, d=3, ambient_dim=10, random_state=0).X)
    for cls in (gd.MLE, gd.TwoNN, gd.GRIDE, gd.LocalPCA):
        cpu = cls().fit_pointwise(X, n_neighbors=20).dimension_pw_
        gpu = cls().fit_pointwise(X.cuda(), n_neighbors=20).dimension_pw_
        np.testing.assert_allclose(gpu, cpu, rtol=1e-8)


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("name", list(gd.ESTIMATORS))
def test_bad_input_gives_one_clear_error(name):
    est = gd.ESTIMATORS[name]
    X = np.random.default_rng(0).normal(size=(50, 3))
    with pytest.raises(ValueError, match="NaN or Inf"):
        est().fit(np.where(np.arange(150).reshape(50, 3) == 7, np.nan, X))
    with pytest.raises(ValueError, match="NaN or Inf"):
        est().fit(np.where(np.arange(150).reshape(50, 3) == 7, np.inf, X))
    with pytest.raises(ValueError, match="2-D"):
        est().fit(X[:, 0])
    with pytest.raises(ValueError, match="n_neighbors=50"):
        est().fit_pointwise(X, n_neighbors=50)


@pytest.mark.parametrize("name", [n for n in gd.ESTIMATORS if n != "lpca"])
def test_duplicates_raise_with_the_fix_or_are_dropped(name):
    X = sphere(300, d=2, random_state=0).X
    X[10] = X[20]
    with pytest.raises(ValueError, match="deduplicate"):
        gd.ESTIMATORS[name]().fit(X)
    est = gd.ESTIMATORS[name](on_duplicates="drop").fit(X)
    assert np.isfinite(est.dimension_) and len(est.kept_) == 299 and 20 not in est.kept_


def test_too_few_points_and_bad_parameters():
    with pytest.raises(ValueError, match="at least"):
        gd.twonn(np.eye(2))
    X = cube(200, d=2, random_state=0).X
    with pytest.raises(ValueError, match="rule"):
        gd.local_pca(X, rule="nope")
    with pytest.raises(ValueError, match="n1 < n2"):
        gd.gride(X, 4, 3)
    with pytest.raises(ValueError, match="aggregate"):
        gd.mle(X, aggregate="max")
    with pytest.raises(ValueError, match="discard_fraction"):
        gd.twonn(X, 1.0)
    with pytest.raises(ValueError, match="on_duplicates"):
        gd.twonn(X, on_duplicates="maybe")
    # the message names what to change
    for method in ("linear", "mle"):
        with pytest.raises(ValueError, match=r"keeps 0 of 200 ratios .*lower discard_fraction"):
            gd.twonn(X, 0.998, method=method)
    with pytest.raises(ValueError, match="40 points have r1 = 0"):
        gd.twonn(np.vstack([X, X[:20]]), on_duplicates="ignore")
    with pytest.raises(ValueError, match=r"use k <= 28"):
        gd.mind_ml(X[:30], 29)
    assert np.isfinite(gd.mind_ml(X[:30], 28))  # the bound it names works


# ------------------------------------------------------------------------------ closed forms


def test_gride_and_twonn_reduce_to_the_pareto_mle():
    log_mu = torch.tensor(np.random.default_rng(0).exponential(1 / 3.0, 4000))[None]
    closed = (4000 - 1) / log_mu.sum()
    assert gride_mle(log_mu, 1, 2)[0][0] == pytest.approx(float(closed), rel=1e-10)
    assert twonn_from_log_ratios(log_mu, discard_fraction=0, method="mle")[0] == pytest.approx(
        float(closed), rel=1e-12
    )
    assert float(closed) == pytest.approx(3.0, rel=0.05)  # and it recovers the Pareto shape


def test_mle_on_exact_power_law_distances():
    # T_j = c j^(1/d) exactly: m_k = d (k - 1) / sum_{j<k} log(k / j)
    d, k = 7.0, 12
    j = np.arange(1, k + 1)
    T = torch.tensor(2.5 * j ** (1 / d))[None]
    expected = d * (k - 1) / np.log(k / j[:-1]).sum()
    assert mle_pointwise_from_distances(T)[0] == pytest.approx(expected, rel=1e-12)


def test_correlation_integral_matches_brute_force():
    X = np.random.default_rng(0).normal(size=(120, 4))
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    np.fill_diagonal(D, np.inf)
    radii = np.array([0.5, 1.0, 2.0])
    ours = correlation_integral(torch.tensor(X), torch.tensor(radii)).numpy()
    np.testing.assert_allclose(ours, [(D < r).sum() / (120 * 119) for r in radii], atol=1e-12)


@pytest.mark.parametrize("n", [200, 201])
def test_medians_are_numpys_for_even_and_odd_counts(n):
    # scikit-dimension takes np.median (the mean of the two middle values for an even count)
    X = np.random.default_rng(3).normal(size=(n, 5))
    D = np.sort(cdist(X, X), axis=1)[:, 1:]
    est = gd.CorrelationDimension(k1=3, k2=6, n_radii=2).fit(X)
    want = np.array([np.median(D[:, 2]), np.median(D[:, 5])]) * (1 + 1e-9)
    np.testing.assert_allclose(est.radii_, want, rtol=1e-12)
    pw = gd.MLE(10).fit_pointwise(X, n_neighbors=10).dimension_pw_
    assert gd.mle(X, 10, aggregate="median") == pytest.approx(np.median(pw), rel=1e-12)
    assert float(gd.base.median(torch.tensor([4.0, 1.0, 3.0, 2.0]))) == 2.5


def _grid_points(rotate: bool) -> np.ndarray:
    # 400 distinct points of an integer grid in R^3: many tied neighbour distances
    rng = np.random.default_rng(0)
    X = np.unique(rng.integers(0, 12, size=(600, 3)).astype(float), axis=0)[:400]
    return X @ np.linalg.qr(rng.normal(size=(3, 3)))[0] if rotate else X


@pytest.mark.parametrize("rotate", [False, True])
def test_gride_leaves_tied_distances_out(rotate, caplog):
    X = _grid_points(rotate)
    # the same distances as the estimator (on a grid, q50 = q95 can make the overlap cut
    # depend on the last bit of a distance)
    r = knn(X, 8).distances
    for n1, n2 in ((1, 2), (4, 8)):
        lm = np.log(r[:, n2 - 1] / r[:, n1 - 1])
        lm = lm[lm > 1e-10]  # ties (0 up to the distances' rounding) are left out first
        mu = np.exp(lm)
        q50, q95 = np.percentile(mu, [50, 95])
        want = gride_mle(torch.tensor(lm[mu < q50 + 20 * (q95 - q50)])[None], n1, n2)[0]
        with caplog.at_level("WARNING", logger="geomsae.dimension.gride"):
            got = gd.gride(X, n1, n2)
        assert got == pytest.approx(float(want[0]), rel=1e-9)
        assert 1.5 < got < 4.0  # the grid is 3-dimensional; ties no longer blow it up
    assert "tied distances" in caplog.text


def test_gride_mle_weights_out_ties_and_flags_empty_rows():
    lm = torch.tensor([[0.0, 0.2, 0.3, 0.0], [0.0, 0.0, 0.0, 0.1]], dtype=torch.float64)
    d, se = gride_mle(lm, 2, 4)
    ref, _ = gride_mle(torch.tensor([[0.2, 0.3]], dtype=torch.float64), 2, 4)
    assert float(d[0]) == pytest.approx(float(ref[0]), rel=1e-12)
    assert torch.isnan(d[1]) and torch.isnan(se[1])  # one untied ratio: no estimate


def test_twonn_on_a_pure_grid_raises():
    g = np.stack(np.meshgrid(np.arange(20.0), np.arange(20.0)), -1).reshape(-1, 2)
    for X in (g, g @ np.linalg.qr(np.random.default_rng(1).normal(size=(2, 2)))[0]):
        with pytest.raises(ValueError, match="equidistant"):
            gd.twonn(X)


def test_correlation_integral_from_the_radius_graph_matches_brute_force():
    # n >= 2000 with few pairs in reach: counted from the (projected) radius graph
    rng = np.random.default_rng(1)
    X = rng.normal(size=(2400, 3)) @ rng.normal(size=(3, 40)) + 0.01 * rng.normal(size=(2400, 40))
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    radii = np.quantile(D[:200, :], [1e-3, 4e-3])
    ours = correlation_integral(torch.tensor(X), torch.tensor(radii)).numpy()
    np.testing.assert_allclose(ours, [(D < r).sum() / (2400 * 2399) for r in radii], atol=1e-15)


@pytest.mark.parametrize("n, k", [(150, 5), (150, 40), (2600, 20)])
def test_correlation_integral_from_knn_rows_matches_brute_force(n, k):
    """With the k-NN rows given, the points whose k-th neighbour is beyond the largest radius
    are counted from their rows and only the rest are searched again: same counts (with a
    duplicated point, radii below and above most k-th distances, n on both search paths)."""
    rng = np.random.default_rng(n + k)
    X = rng.normal(size=(n, 3)) @ rng.normal(size=(3, 40)) + 0.02 * rng.normal(size=(n, 40))
    X[1] = X[0]  # a duplicate pair: distance 0 counts below every radius
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    kth = np.sort(D, axis=1)[:, k - 1]
    for radii in (np.quantile(kth, [0.1, 0.5]), np.quantile(kth, [0.05, 0.99]), [1e-9, 1e-6]):
        nb = knn(X, k)
        ours = correlation_integral(torch.tensor(X), torch.tensor(radii), nb).numpy()
        expected = [(D < r).sum() / (n * (n - 1)) for r in radii]
        np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="rows"):
        correlation_integral(torch.tensor(X[:-1]), torch.tensor(radii), nb)


def test_eigenvalue_rules():
    lam = torch.tensor([[10.0, 5.0, 1.0, 0.4, 0.0], [1.0, 1.0, 1.0, 1.0, 1.0]])
    assert dimension_from_eigenvalues(lam, "fo", alpha=0.05).tolist() == [3, 5]
    assert dimension_from_eigenvalues(lam, "variance", variance=0.9).tolist() == [2, 5]
    assert dimension_from_eigenvalues(lam, "gap")[0] == 4  # 0.4 / 0 is the largest ratio
    pr = dimension_from_eigenvalues(lam, "participation_ratio")
    assert pr[1] == pytest.approx(5.0) and pr[0] == pytest.approx(16.4**2 / 126.16)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("rule", ["fo", "variance", "gap"])
def test_every_counting_rule_on_manifolds_of_known_dimension(rule, seed):
    """Pointwise local PCA under each rule on a flat 4-dim Gaussian in R^30 and a 3-sphere in
    R^20 (both with noise 0.01, k = 40): every neighbourhood gets the true dimension; globally
    the sphere spans its 4 embedding dimensions."""
    flat = gaussian_blobs(1500, d=4, ambient_dim=30, n_blobs=1, spread=0.0, noise=0.01,
                          random_state=seed).X  # fmt: skip
    S = sphere(1500, d=3, ambient_dim=20, noise=0.01, random_state=seed).X
    for X, d, span in ((flat, 4, 4), (S, 3, 4)):
        pw = gd.LocalPCA(rule=rule).fit_pointwise(X, n_neighbors=40).dimension_pw_
        assert np.mean(pw == d) >= 0.95, (rule, d, np.bincount(pw.astype(int)))
        assert gd.LocalPCA(rule=rule).fit(X).dimension_ == span


def test_largest_gap_counts_the_curvature_direction_without_noise():
    """Documented behaviour of the largest-gap rule (scikit-dimension's maxgap does the same):
    on a noise-free curved manifold the largest ratio is from the curvature eigenvalue to the
    numerical zeros, so it counts d + 1; Fukunaga-Olsen and the variance fraction do not."""
    X = sphere(1500, d=3, ambient_dim=20, random_state=0).X
    med = {r: np.median(gd.LocalPCA(rule=r).fit_pointwise(X, n_neighbors=40).dimension_pw_)
           for r in ("fo", "variance", "gap")}  # fmt: skip
    assert med == {"fo": 3, "variance": 3, "gap": 4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_largest_gap_with_no_more_points_than_dimensions(dtype):
    """m centred points span m - 1 dimensions: with m <= D the m-th eigenvalue is a rounding
    zero, and the largest ratio must not be taken to it (that counted k, or n - 1 globally)."""
    rng = np.random.default_rng(0)
    X = np.zeros((1000, 50))
    X[:, :3] = rng.standard_normal((1000, 3))
    X += 0.01 * rng.standard_normal(X.shape)
    for rule in ("gap", "fo", "variance"):
        est = gd.LocalPCA(rule=rule, dtype=dtype)
        assert np.all(est.fit_pointwise(X, n_neighbors=20).dimension_pw_ == 3), rule
        assert gd.LocalPCA(rule=rule, dtype=dtype).fit(X[:40]).dimension_ == 3, rule


def test_float32_tight_cluster_far_from_the_mean():
    """A 2-dim cluster of spread 1e-5 at distance 100 from the rest: rounding a globally
    centred float32 copy swamps its spread (counts 2..7 before), so such neighbourhoods are
    re-based on their own point in float64 first, then rounded."""
    rng = np.random.default_rng(0)
    D = 80
    Q, _ = np.linalg.qr(rng.standard_normal((D, D)))
    A = np.zeros((2000, D))
    A[:, :3] = rng.standard_normal((2000, 3))
    B = np.zeros((300, D))
    B[:, 3:5] = 1e-5 * rng.standard_normal((300, 2))
    B[:, 10] = 100.0
    X = np.vstack([A, B]) @ Q
    for rule in ("fo", "variance", "gap"):
        pw = gd.LocalPCA(rule).fit_pointwise(X, n_neighbors=20).dimension_pw_
        pw64 = gd.LocalPCA(rule, dtype=torch.float64).fit_pointwise(X, n_neighbors=20)
        np.testing.assert_array_equal(pw, pw64.dimension_pw_)
        assert np.all(pw[2000:] == 2) and np.mean(pw[:2000] == 3) > 0.99, rule
    est = gd.LocalPCA()
    radius = torch.as_tensor(knn(A, 20).distances[:, -1])
    assert est._tight(torch.as_tensor(A), radius).numel() == 0  # ordinary data: no extra work


def test_global_noise_floor_follows_float64_eigenvalues():
    """Global PCA's eigenvalues are float64: its noise floor is n eps64, not n eps32 (at
    n = 50 000 that floored the third eigenvalue, 0.4 % of the first, and the gap rule gave 2)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((50_000, 10)) * np.r_[1, 0.95, 0.063, [1e-3] * 7]
    assert gd.local_pca(X, rule="gap") == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_variance_one_counts_the_rank_in_either_precision(dtype):
    """variance=1 on exactly rank-3 data: eigenvalues at the working precision's rounding
    level are zeros, not variance to explain (float32 counted 6.5 on average)."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((500, 3)) @ rng.standard_normal((3, 10))
    est = gd.LocalPCA("variance", variance=1.0, dtype=dtype)
    assert np.all(est.fit_pointwise(X, n_neighbors=20).dimension_pw_ == 3)
    assert est.fit(X).dimension_ == 3


@pytest.mark.parametrize("D", [3, 40])  # covariance branch and Gram branch
def test_local_eigenvalues_match_numpy(D):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, D))
    idx = torch.tensor(rng.integers(0, 60, size=(5, 8)))
    lam = local_eigenvalues(torch.tensor(X), idx, block_size=2).numpy()
    for i in range(5):
        ref = np.sort(np.linalg.eigvalsh(np.cov(X[idx[i].numpy()].T)))[::-1][: min(8, D)]
        np.testing.assert_allclose(lam[i], ref, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(
    c=st.floats(0.05, 20.0),
    seed=st.integers(0, 2**31 - 1),
    n1=st.sampled_from([1, 2, 4]),
)
def test_property_ratio_estimators_are_homogeneous(c, seed, n1):
    """Dividing every log-ratio by c multiplies the estimate by c (a change of dimension)."""
    log_mu = torch.tensor(np.random.default_rng(seed).exponential(0.3, (2, 200))) + 1e-3
    d, _ = gride_mle(log_mu, n1, 2 * n1)
    d_c, _ = gride_mle(log_mu / c, n1, 2 * n1)
    np.testing.assert_allclose(d_c.numpy(), c * d.numpy(), rtol=1e-8)
    t = twonn_from_log_ratios(log_mu)
    np.testing.assert_allclose(twonn_from_log_ratios(log_mu / c).numpy(), c * t.numpy(), rtol=1e-10)


@settings(max_examples=20, deadline=None)
@given(scale=st.floats(1e-3, 1e3), shift=st.floats(-1e3, 1e3), seed=st.integers(0, 1000))
def test_property_mle_invariant_to_similarity_transforms(scale, shift, seed):
    X = np.random.default_rng(seed).uniform(size=(150, 3))
    a = gd.MLE(10).fit_pointwise(X, n_neighbors=10).dimension_pw_
    b = gd.MLE(10).fit_pointwise(scale * X + shift, n_neighbors=10).dimension_pw_
    np.testing.assert_allclose(a, b, rtol=1e-6)


# ------------------------------------------------------------------------------ calibration


def test_calibration_removes_the_high_dimension_bias():
    X = cube(1000, d=20, random_state=1).X
    est = gd.Calibrated(gd.TwoNN()).fit(X)
    assert est.raw_dimension_ < 17  # raw TwoNN is biased low here
    assert abs(est.dimension_ - 20) < 2.5
    assert est.calibration_dims_[0] == 1 and est.calibration_dims_[-1] >= 20
    low = gd.Calibrated().fit(sphere(1000, d=2, random_state=0).X)
    assert abs(low.dimension_ - 2) < 0.2  # and leaves low dimensions alone
    assert clone(gd.Calibrated(gd.MLE(10))).get_params()["estimator__n_neighbors"] == 10


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_calibration_at_high_dimension_several_seeds(seed):
    """Where raw TwoNN is biased low (d = 10 and 20 at n = 1000-1500), the calibrated estimate
    is within 15 % on every seed (raw TwoNN: 13-17 for the 20-cube)."""
    c20 = gd.Calibrated().fit(cube(1000, d=20, random_state=seed).X)
    s10 = gd.Calibrated().fit(sphere(1500, d=10, ambient_dim=20, random_state=seed).X)
    assert abs(c20.dimension_ - 20) < 3.0 and c20.raw_dimension_ < c20.dimension_
    assert abs(s10.dimension_ - 10) < 1.5


def test_calibration_splits_large_data_into_parts():
    X = sphere(1200, d=3, ambient_dim=6, random_state=0).X
    whole = gd.Calibrated().fit(X)
    parts = gd.Calibrated(max_samples=600).fit(X)  # two disjoint parts of 600, curve at n=600
    assert abs(parts.dimension_ - 3) < 0.3 and abs(whole.dimension_ - 3) < 0.3
    assert parts.raw_dimension_ != whole.raw_dimension_


# ------------------------------------------------------------------------------ scale


def test_id_scale_curve_and_plateau_rule():
    X = cube(1000, d=3, ambient_dim=6, random_state=0).X
    curve = gd.id_scale_curve(X, max_rank=32, n_bootstrap=30)
    np.testing.assert_array_equal(curve.scales, [1, 2, 4, 8, 16])
    assert (np.diff(curve.radius) > 0).all()
    assert (curve.ci_low <= curve.dimension).all() and (curve.dimension <= curve.ci_high).all()
    assert abs(curve.dimension[0] - gd.gride(X)) < 1e-8  # scale 1 is GRIDE(1, 2)
    assert abs(curve.choose() - 3) < 0.4
    mle_curve = gd.id_scale_curve(X, estimator="mle", max_rank=40, n_bootstrap=0)
    np.testing.assert_array_equal(mle_curve.ci_low, mle_curve.dimension)
    assert mle_curve.dimension[1] == pytest.approx(gd.mle(X, 10), rel=1e-10)
    assert set(curve.as_dict()) == {"scale", "radius", "dimension", "ci_low", "ci_high"}
    ax = gd.plot_id_scale_curve({"gride": curve, "mle": mle_curve})
    assert ax.get_ylabel() == "intrinsic dimension"
    with pytest.raises(ValueError, match="do not fit"):
        gd.id_scale_curve(X[:10], scales=[8])


def test_mle_scale_curve_leaves_out_what_mle_leaves_out():
    """Points with r_1 = r_k (a lattice line) or r_1 = 0 (duplicates kept) are left out of the
    curve's MLE, point and resamples, as MLE(n_neighbors=k) leaves them out (the curve gave
    4.67 against MLE's 2.36 with ties, 0 with duplicates)."""
    rng = np.random.default_rng(0)
    line = np.c_[np.arange(200.0), np.zeros(200)]
    L = np.vstack([line, rng.standard_normal((200, 2)) * 50 + [100, 500]])
    curve = gd.id_scale_curve(L, estimator="mle", scales=[2, 5, 10], n_bootstrap=50)
    np.testing.assert_allclose(curve.dimension, [gd.mle(L, k) for k in (2, 5, 10)], rtol=1e-12)
    assert (curve.ci_low <= curve.dimension).all() and (curve.dimension <= curve.ci_high).all()
    X = rng.standard_normal((500, 3))
    Xd = np.vstack([X, X[:20]])
    curve = gd.id_scale_curve(Xd, estimator="mle", scales=[5, 10], on_duplicates="ignore")
    expected = [gd.mle(Xd, k, on_duplicates="ignore") for k in (5, 10)]
    np.testing.assert_allclose(curve.dimension, expected, rtol=1e-12)


def test_plateau_rule_picks_the_flat_part():
    c = gd.IDScaleCurve(
        "gride", np.arange(6.0), np.arange(1.0, 7), np.array([9.0, 6.0, 5.1, 5.0, 5.05, 3.0]),
        np.zeros(6), np.zeros(6), 0.9, 0, 100,
    )  # fmt: skip
    assert c.choose(window=3) == pytest.approx((5.1 + 5.0 + 5.05) / 3)


@pytest.mark.parametrize("rule", ["fo", "gap", "variance", "participation_ratio"])
@pytest.mark.parametrize("n_features", [10, 100])
@pytest.mark.parametrize("shift, scale", [(1e4, 1.0), (1e7, 1.0), (0.0, 1e20), (0.0, 1e-25)])
def test_pointwise_local_pca_float32_translation_and_scale(rule, n_features, shift, scale):
    """float32 neighbourhoods are formed after centring and a power-of-two scaling in float64:
    far offsets and extreme scales give the float64 answer (before: 11.8 instead of 3 at an
    offset of 1e4 with the gap rule, NaN, or a LinAlgError from an overflowing Gram)."""
    rng = np.random.default_rng(0)
    basis = np.linalg.qr(rng.standard_normal((n_features, 3)))[0]
    X = rng.standard_normal((600, 3)) @ basis.T
    ref = gd.LocalPCA(rule, dtype=torch.float64).fit_pointwise(X, n_neighbors=20).dimension_pw_
    got = gd.LocalPCA(rule).fit_pointwise(X * scale + shift, n_neighbors=20).dimension_pw_
    if rule == "participation_ratio":
        np.testing.assert_allclose(got, ref, rtol=1e-4)
    else:
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("rule", ["fo", "gap", "variance", "participation_ratio"])
def test_local_pca_flat_neighbourhoods_have_dimension_zero(rule):
    from geomsae.dimension.lpca import dimension_from_eigenvalues

    lam = torch.tensor([[0.0, 0.0, 0.0], [2.0, 1.0, 0.0]], dtype=torch.float64)
    got = dimension_from_eigenvalues(lam, rule)
    assert got[0] == 0.0 and got[1] > 0
    X = np.repeat(np.random.default_rng(0).standard_normal((20, 4)), 10, axis=0)
    pw = gd.LocalPCA(rule).fit_pointwise(X, n_neighbors=5).dimension_pw_
    np.testing.assert_array_equal(pw, 0.0)


def test_local_pca_accepts_tensors_that_require_grad():
    X = torch.randn(300, 5, dtype=torch.float64, requires_grad=True)
    assert gd.LocalPCA().fit(X).dimension_ == gd.LocalPCA().fit(X.detach()).dimension_


@pytest.mark.parametrize("ver", ["MLk", "MLi"])
def test_mind_ml_leaves_tied_ratios_out(ver, caplog):
    """A point with r_1 = r_(k+1) has likelihood 0 for k > 1; before, 30 such points made the
    global estimate 1e-06 (MLi: 1)."""
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal((1000, 3)), np.zeros((1000, 27))]
    XS = np.r_[X, 100 + 0.01 * np.eye(30)]  # 30 far-away, mutually equidistant points
    clean = gd.MiNDML(ver=ver).fit(X).dimension_
    with caplog.at_level("WARNING"):
        tied = gd.MiNDML(ver=ver).fit(XS).dimension_
    assert "left out of the likelihood" in caplog.text
    assert abs(tied - clean) < 0.05
    pw = gd.MiNDML(ver=ver).fit_pointwise(XS, n_neighbors=20).dimension_pw_
    assert np.all(np.isfinite(pw[:1000]))


def test_mind_ml_all_tied_raises():
    """The vertices of a regular simplex: every pair at the same distance, every ratio 1."""
    with pytest.raises(ValueError, match="fewer than 2 are left"):
        gd.MiNDML(k=5).fit(np.eye(30))


def test_scale_curve_choose_skips_undefined_scales(caplog):
    g = np.stack(np.meshgrid(np.arange(40.0), np.arange(40.0)), -1).reshape(-1, 2)
    with caplog.at_level("WARNING"):
        c = gd.id_scale_curve(g, n_bootstrap=5)
    assert np.isnan(c.dimension[0]) and "undefined" in caplog.text
    chosen = c.choose()
    assert np.isfinite(chosen) and 1.5 < chosen < 2.5
    assert np.isfinite(c.choose(window=1))


def test_mle_ties_and_unbiased_k2():
    rng = np.random.default_rng(0)
    X = np.c_[rng.standard_normal((1000, 3)), np.zeros((1000, 27))]
    XS = np.r_[X, 100 + 0.01 * np.eye(30)]  # 30 points with r_1 = ... = r_k
    assert np.isfinite(gd.MLE(aggregate="mean").fit(XS).dimension_)
    assert abs(gd.MLE().fit(XS).dimension_ - gd.MLE().fit(X).dimension_) < 0.02
    with pytest.raises(ValueError, match="n_neighbors >= 3"):
        gd.MLE(2, unbiased=True).fit(X)
    with pytest.raises(ValueError, match="tied"):
        gd.MLE(5).fit(np.eye(30))


def test_mle_leaves_duplicates_out_when_they_are_not_dropped(caplog):
    """With the duplicate check skipped, r_1 = 0 is undefined (NaN), not an estimate of 0 that
    drags the MacKay-Ghahramani aggregate to 0 (before: ``mle(..., "ignore")`` gave 0.0)."""
    X = sphere(1000, d=3, ambient_dim=10, random_state=0).X
    Xd = np.vstack([X, X[:1]])
    with caplog.at_level("WARNING"):
        assert abs(gd.mle(Xd, on_duplicates="ignore") - gd.mle(X)) < 0.01
        pw = gd.MLE(on_duplicates="ignore").fit_pointwise(Xd, n_neighbors=10).dimension_pw_
    assert "r_1 = 0" in caplog.text and "2 of 1001" in caplog.text
    assert np.isnan(pw[[0, -1]]).all() and np.isfinite(pw[1:-1]).all()


@pytest.mark.parametrize("name", ["MLE", "CorrelationDimension"])
def test_pointwise_on_tied_distances_is_undefined_not_rounding_noise(name):
    """On the vertices of a simplex every distance is sqrt(2) up to rounding: MLE gave inf
    and the correlation dimension 1.33 (a 0 / 0 slope of rounding noise) without a word."""
    X = sphere(500, d=2, ambient_dim=40, random_state=0).X
    XS = np.r_[X, 100 + np.eye(40)]  # 40 far, mutually equidistant points
    pw = getattr(gd, name)().fit_pointwise(XS, n_neighbors=6).dimension_pw_
    assert np.isnan(pw[-40:]).all() and np.isfinite(pw[:-40]).all()
    with pytest.raises(ValueError, match="undefined"):
        getattr(gd, name)().fit_pointwise(np.eye(30), n_neighbors=5)


def test_correlation_dimension_without_a_range_of_scales_raises():
    with pytest.raises(ValueError, match="no range of scales"):
        gd.CorrelationDimension().fit(np.eye(30))


@pytest.mark.parametrize("name", ["TwoNN", "GRIDE"])
def test_pointwise_all_undefined_raises(name):
    """On a square lattice every r_2 / r_1 is 1 (before: 900 NaNs without a word)."""
    g = np.stack(np.meshgrid(np.arange(30.0), np.arange(30.0)), -1).reshape(-1, 2)
    with pytest.raises(ValueError, match="undefined"):
        getattr(gd, name)().fit_pointwise(g, n_neighbors=10)


def test_gride_ranks_accept_numpy_integers_not_bools():
    X = np.random.default_rng(0).standard_normal((300, 3))
    assert gd.GRIDE(np.int64(2)).fit(X).dimension_ == gd.GRIDE(2).fit(X).dimension_
    with pytest.raises(ValueError, match="integers"):
        gd.GRIDE(True, 2).fit(X)


def test_complex_points_are_refused():
    Z = np.random.default_rng(0).standard_normal((50, 3)) * (1 + 1j)
    for X in (Z, torch.from_numpy(Z)):
        with pytest.raises(TypeError, match="complex"):
            gd.TwoNN().fit(X)


def test_parameter_validation_names_the_parameter():
    X = np.random.default_rng(0).standard_normal((300, 3))
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_dim"):
            gd.MiNDML(max_dim=bad).fit(X)
    for bad in (0, 20.0):
        with pytest.raises(ValueError, match="k must be"):
            gd.MiNDML(k=bad).fit(X)
    with pytest.raises(ValueError, match="k=20 uses"):
        gd.MiNDML(k=20).fit(X[:21])
    for bad in (-5, 2.5):
        with pytest.raises(ValueError, match="n_bootstrap"):
            gd.id_scale_curve(X, n_bootstrap=bad)
    with pytest.raises(ValueError, match="integers"):
        gd.id_scale_curve(X, scales=[1.7, 2.2])


def test_corrint_and_calibrated_parameter_checks():
    X = np.random.default_rng(0).standard_normal((300, 3))
    with pytest.raises(ValueError, match="k1"):
        gd.CorrelationDimension(k1=2.5).fit(X)
    with pytest.raises(ValueError, match="n_radii"):
        gd.CorrelationDimension(n_radii=2.5).fit(X)
    with pytest.raises(ValueError, match="max_dim"):
        gd.Calibrated(max_dim=0).fit(X)


def test_fit_pointwise_uses_the_estimators_own_n_neighbors():
    X = sphere(600, d=2, ambient_dim=5, random_state=0).X
    assert gd.MLE(n_neighbors=10).fit_pointwise(X).n_neighbors_ == 10
    assert gd.LocalPCA(n_neighbors=50).fit_pointwise(X).n_neighbors_ == 50
    assert gd.Calibrated(gd.MLE(n_neighbors=7)).fit_pointwise(X).n_neighbors_ == 7
    assert gd.TwoNN().fit_pointwise(X).n_neighbors_ == 20  # no parameter of its own
    assert gd.LocalPCA().fit_pointwise(X).n_neighbors_ == 20  # its n_neighbors is None
    assert gd.MLE(n_neighbors=10).fit_pointwise(X, n_neighbors=15).n_neighbors_ == 15
    mg = 1 / np.mean(1 / gd.MLE(n_neighbors=10).fit_pointwise(X).dimension_pw_)
    assert mg == pytest.approx(gd.mle(X, 10))  # fit and fit_pointwise: the same k


def test_calibrated_pointwise_ignores_undefined_raw_estimates():
    """400 grid points have tied neighbour distances (NaN raw estimates): they stay NaN, and
    the calibration curve stops where the defined ones need it (it ran to d = 187 before)."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(np.arange(20), np.arange(20)), -1).reshape(-1, 2)
    X = np.c_[np.vstack([grid, rng.random((600, 2)) * 20 + 100]), np.zeros((1000, 198))]
    est = gd.Calibrated().fit_pointwise(X, n_neighbors=4)
    assert np.isnan(est.dimension_pw_[:400]).all() and not np.isnan(est.dimension_pw_[400:]).any()
    assert est.calibration_dims_.max() == 30
    alone = gd.Calibrated().fit_pointwise(X[400:], n_neighbors=4)
    assert np.median(est.dimension_pw_[400:]) == pytest.approx(
        np.median(alone.dimension_pw_), abs=0.1
    )
