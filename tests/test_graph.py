"""Affinities, Laplacians, spectra, Riemannian metric and radius selection vs known answers."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsae.graph import (
    LAPLACIANS,
    adjacency_matrix,
    affinity_matrix,
    laplacian_matrix,
    laplacian_spectrum,
    riemannian_metric,
    select_radius,
)
from geomsae.graph.laplacian import ROW_SUMS_ZERO, SYMMETRIC
from geomsae.grassmann import principal_angles
from geomsae.manifolds import sphere, swiss_roll
from geomsae.neighbors import knn
from geomsae.tangent import tangent_spaces


def circle(n: int, warp: float = 0.0) -> np.ndarray:
    s = np.linspace(0, 2 * np.pi, n, endpoint=False)
    t = s + warp * np.sin(s)  # warp > 0: non-uniform density along the circle
    return np.c_[np.cos(t), np.sin(t)]


def fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi, th = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    return np.c_[np.cos(th) * np.sin(phi), np.sin(th) * np.sin(phi), np.cos(phi)]


def graph(X: np.ndarray, eps: float, method: str = "geometric", scale: bool = True):
    K = affinity_matrix(adjacency_matrix(X, radius=3 * eps), eps)
    return K, laplacian_matrix(K, method, scaling_epps=eps if scale else None)


# ------------------------------------------------------------------------------------------
# adjacency and affinity


def test_adjacency_radius_and_knn_are_symmetric() -> None:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 3))
    A = adjacency_matrix(X, radius=1.0)
    assert (abs(A - A.T)).max() == 0 and A.diagonal().sum() == 0
    assert A.data.max() <= 1.0
    G = adjacency_matrix(X, n_neighbors=4)
    assert (abs(G - G.T)).max() == 0
    nb = knn(X, 4)
    D = np.linalg.norm(X[:, None] - X[None], axis=-1)
    for i in range(60):  # every k-NN edge is present, in both directions, with its length
        np.testing.assert_allclose(G[i, nb.indices[i]].toarray().ravel(), nb.distances[i])
        np.testing.assert_allclose(G[nb.indices[i], i].toarray().ravel(), nb.distances[i])
    r, c = G.nonzero()
    np.testing.assert_allclose(G[r, c].A1, D[r, c])
    with pytest.raises(ValueError, match="exactly one"):
        adjacency_matrix(X, radius=1.0, n_neighbors=3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        adjacency_matrix(np.where(X > 2, np.nan, X), radius=1.0)


def test_affinity_values_diagonal_and_duplicates() -> None:
    X = np.array([[0.0, 0.0], [0.3, 0.0], [0.3, 0.0], [5.0, 5.0]])
    A = adjacency_matrix(X, radius=1.0)
    K = affinity_matrix(A, 0.5)
    np.testing.assert_allclose(K.diagonal(), 1.0)
    assert K[0, 1] == pytest.approx(np.exp(-(0.3**2) / 0.25))
    assert K[1, 2] == 1.0  # the duplicate pair: distance 0, an edge of affinity 1
    assert K[0, 3] == 0 and K[3].nnz == 1
    # a one-directional edge gets half its weight (megaman's (K + K^T) / 2)
    one_way = sp.csr_matrix(([0.5], ([0], [1])), shape=(2, 2))
    K1 = affinity_matrix(one_way, 1.0)
    assert K1[0, 1] == K1[1, 0] == pytest.approx(0.5 * np.exp(-0.25))
    with pytest.raises(ValueError, match="bandwidth"):
        affinity_matrix(A, 0.0)
    with pytest.raises(ValueError, match="sparse"):
        affinity_matrix(np.eye(3), 1.0)
    with pytest.raises(ValueError, match="finite distances"):
        affinity_matrix(sp.csr_matrix(np.array([[0, np.nan], [1.0, 0]])), 1.0)


# ------------------------------------------------------------------------------------------
# Laplacians


@pytest.mark.parametrize("method", sorted(LAPLACIANS))
def test_laplacian_properties(method: str) -> None:
    rng = np.random.default_rng(1)
    K, L = graph(rng.standard_normal((80, 3)), 0.5, method, scale=False)
    L = L.toarray()
    if method in ROW_SUMS_ZERO:
        np.testing.assert_allclose(L.sum(1), 0.0, atol=1e-12)
    if method in SYMMETRIC:
        np.testing.assert_allclose(L, L.T, atol=1e-14)
    ev = np.linalg.eigvals(L)
    assert np.abs(ev.imag).max() < 1e-8 and ev.real.min() > -1e-10  # PSD sign convention
    assert np.sort(ev.real)[0] == pytest.approx(0.0, abs=1e-10)
    Ls = laplacian_matrix(K, method, scaling_epps=0.5).toarray()
    np.testing.assert_allclose(Ls, L * 4 / 0.25)
    spec = laplacian_spectrum(K, 4, method)
    np.testing.assert_allclose(spec.eigenvalues, np.sort(ev.real)[:4], atol=1e-10)
    for lam, v in zip(spec.eigenvalues, spec.eigenvectors.T):  # right eigenvectors of L
        np.testing.assert_allclose(L @ v, lam * v, atol=1e-9)


def test_geometric_laplacian_formula_on_a_tiny_graph() -> None:
    """Coifman-Lafon alpha = 1, then random walk, by hand (megaman's is the negative)."""
    W = np.array([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]])
    d = W.sum(1)
    Wt = W / np.outer(d, d)
    P = Wt / Wt.sum(1, keepdims=True)
    np.testing.assert_allclose(laplacian_matrix(W).toarray(), np.eye(3) - P)
    megaman_sign = -laplacian_matrix(sp.csr_matrix(W), "geometric").toarray()
    np.testing.assert_allclose(megaman_sign, P - np.eye(3))
    a = 0.5
    Wa = W / np.outer(d**a, d**a)
    np.testing.assert_allclose(
        laplacian_matrix(W, "renormalized", renormalization_exponent=a).toarray(),
        np.eye(3) - Wa / Wa.sum(1, keepdims=True),
    )
    with pytest.raises(ValueError, match="method must be one of"):
        laplacian_matrix(W, "nope")
    with pytest.raises(ValueError, match="square"):
        laplacian_matrix(np.ones((2, 3)))
    for bad in (-1.0, 0.0, float("nan"), float("inf"), "0.1"):
        with pytest.raises(ValueError, match="scaling_epps"):
            laplacian_matrix(W, scaling_epps=bad)
        with pytest.raises(ValueError, match="scaling_epps"):
            laplacian_spectrum(W, 1, scaling_epps=bad)


def test_circle_spectrum_is_k_squared() -> None:
    """Scaled geometric Laplacian on the unit circle: 0, 1, 1, 4, 4, 9, 9 (-Delta on S^1)."""
    K, _ = graph(circle(400), 0.1)
    ev = laplacian_spectrum(K, 7, scaling_epps=0.1).eigenvalues
    np.testing.assert_allclose(ev, [0, 1, 1, 4, 4, 9, 9], rtol=0.02, atol=1e-8)


def test_geometric_laplacian_is_density_free() -> None:
    """alpha = 1 removes the sampling density; the plain random walk does not."""
    X = circle(500, warp=0.6)
    eps = 0.1
    K, _ = graph(X, eps)
    target = np.array([1, 1, 4, 4])
    geo = laplacian_spectrum(K, 5, "geometric", scaling_epps=eps).eigenvalues[1:]
    rw = laplacian_spectrum(K, 5, "randomwalk", scaling_epps=eps).eigenvalues[1:]
    np.testing.assert_allclose(geo, target, rtol=0.03)
    assert np.abs(rw / target - 1).max() > 0.1


def test_sphere_spectrum_is_l_times_l_plus_one() -> None:
    """-Delta on S^2: 0, 2 (x3), 6 (x5); the sparse shift-invert path (n > 1000)."""
    K, _ = graph(fibonacci_sphere(1500), 0.2)
    ev = laplacian_spectrum(K, 9, scaling_epps=0.2).eigenvalues
    np.testing.assert_allclose(ev, [0, 2, 2, 2, 6, 6, 6, 6, 6], rtol=0.03, atol=1e-8)


# ------------------------------------------------------------------------------------------
# Riemannian metric


def test_metric_of_isometric_flat_embedding_is_identity() -> None:
    g = np.linspace(0, 1, 41)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    eps = 0.05
    _, L = graph(X, eps)
    inner = np.flatnonzero((np.abs(X - 0.5) < 0.5 - 3 * eps).all(1))
    rm = riemannian_metric(X, L, indices=inner)
    np.testing.assert_allclose(rm.dual, np.broadcast_to(np.eye(2), rm.dual.shape), atol=5e-3)
    np.testing.assert_allclose(rm.metric, np.broadcast_to(np.eye(2), rm.dual.shape), atol=5e-3)
    scaled = riemannian_metric(3 * X, L, indices=inner)  # stretch by 3: H = 9 I, G = I / 9
    np.testing.assert_allclose(scaled.eigenvalues, 9.0, rtol=5e-3)
    eye = np.broadcast_to(np.eye(2), scaled.dual.shape)
    np.testing.assert_allclose(scaled.metric @ scaled.dual, eye, atol=1e-10)


def test_metric_is_exact_under_translation_and_matches_the_expanded_formula() -> None:
    X = circle(300)
    _, L = graph(X, 0.1)
    rm = riemannian_metric(X, L, n_dim=1)
    far = riemannian_metric(X + 1e4, L, n_dim=1)  # the expanded formula lost ~4 digits here
    np.testing.assert_allclose(far.dual, rm.dual, atol=1e-9)
    # a matrix whose rows do not sum to 0: the row-sum term keeps the textbook formula
    M = (L + sp.diags(np.linspace(0.1, 1.0, 300))).tocsr()
    Y = X + np.array([0.3, -0.2])
    LY, LYY = M @ Y, M @ (Y[:, :, None] * Y[:, None, :]).reshape(300, 4)
    want = -0.5 * (LYY.reshape(300, 2, 2) - Y[:, :, None] * LY[:, None, :]
                   - LY[:, :, None] * Y[:, None, :])  # fmt: skip
    np.testing.assert_allclose(riemannian_metric(Y, M).dual, want, atol=1e-9)


def test_metric_of_circle_is_the_tangent_projector() -> None:
    """Unit circle in R^2 (arclength metric): H = t t^T, rank 1; G its pseudo-inverse."""
    n = 400
    X = circle(n)
    _, L = graph(X, 0.1)
    rm = riemannian_metric(X, L, n_dim=1)
    s = np.linspace(0, 2 * np.pi, n, endpoint=False)
    T = np.c_[-np.sin(s), np.cos(s)]
    proj = T[:, :, None] * T[:, None, :]
    np.testing.assert_allclose(rm.dual, proj, atol=1e-2)
    np.testing.assert_allclose(rm.metric, proj, atol=1e-2)
    np.testing.assert_allclose(rm.eigenvalues[:, 0], 1.0, atol=1e-2)
    assert np.abs(rm.eigenvalues[:, 1]).max() < 1e-2


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), method=st.sampled_from(sorted(LAPLACIANS)))
def test_metric_matches_the_defining_formula(seed: int, method: str) -> None:
    """H^{kl} = -1/2 [L(y_k y_l) - y_k L y_l - y_l L y_k], evaluated densely, for any L."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((40, 2))
    Y = rng.standard_normal((40, 3))
    _, L = graph(X, 0.8, method)
    Ld = L.toarray()
    H = np.empty((40, 3, 3))
    for k in range(3):
        for m in range(3):
            H[:, k, m] = -0.5 * (
                Ld @ (Y[:, k] * Y[:, m]) - Y[:, k] * (Ld @ Y[:, m]) - Y[:, m] * (Ld @ Y[:, k])
            )
    rm = riemannian_metric(Y, L, block_bytes=2000)  # tiny blocks: exercise the blocking
    np.testing.assert_allclose(rm.dual, H, atol=1e-10)
    sub = riemannian_metric(Y, L, indices=[3, 1])
    np.testing.assert_allclose(sub.dual, H[[3, 1]], atol=1e-10)


def test_metric_bad_input() -> None:
    _, L = graph(circle(50), 0.2)
    with pytest.raises(ValueError, match="finite"):
        riemannian_metric(np.full((50, 2), np.nan), L)
    with pytest.raises(ValueError, match="shape \\(50, 50\\)"):
        riemannian_metric(circle(50), L[:10])
    with pytest.raises(ValueError, match="n_dim"):
        riemannian_metric(circle(50), L, n_dim=3)


# ------------------------------------------------------------------------------------------
# radius selection


def test_distortion_has_an_interior_minimum_on_the_sphere() -> None:
    X = sphere(800, random_state=0).X
    radii = np.geomspace(0.25, 3.0, 9)
    rs = select_radius(X, 2, radii, n_samples=60)
    assert rs.criterion == "distortion" and rs.bandwidth == pytest.approx(rs.radius / 3)
    d = rs.distortion
    best = int(np.nanargmin(d))
    assert 0 < best < len(radii) - 1  # neither too small (noise) nor too large (curvature)
    assert d[best] < 0.3 and d[-1] > 1.5 * d[best] and d[0] > 1.5 * d[best]
    assert 0.4 < rs.radius < 1.6  # radius 1.6 already spans most of the unit sphere
    assert rs.eigengap.shape == rs.stability.shape == rs.mean_neighbors.shape == (9,)
    assert np.isnan(rs.stability[-1]) and rs.valid.all()


def test_eigengap_radius_grows_with_noise() -> None:
    """lambda_3 / lambda_2 ~ noise^2 / r^2 + curvature * r^2: the optimum moves out with noise."""
    base = sphere(800, random_state=1).X
    rng = np.random.default_rng(1)
    radii = np.geomspace(0.2, 1.6, 10)
    chosen = []
    for noise in (0.005, 0.04):
        X = base + noise * rng.standard_normal(base.shape)
        chosen.append(select_radius(X, 2, radii, criterion="eigengap", n_samples=60).radius)
    assert chosen[1] > 1.5 * chosen[0], chosen


def test_selected_bandwidth_gives_accurate_tangents() -> None:
    """select_radius -> tangent_spaces(bandwidth=...) end to end on a rotated Swiss roll."""
    m = swiss_roll(1200, ambient_dim=6, random_state=3)
    sel = select_radius(m.X, 2, n_samples=60, n_radii=6)
    assert sel.valid.any() and sel.radius in sel.radii
    ts = tangent_spaces(m.X, 2, bandwidth=sel.bandwidth, indices=sel.sample)
    ang = np.degrees(principal_angles(ts.bases, m.tangents[sel.sample]).max(1))
    assert np.median(ang) < 5.0, np.median(ang)


def test_default_grid_is_continued_while_the_criterion_falls(caplog) -> None:
    """On 800 points of the unit sphere the distortion falls beyond the default grid's end
    (the 200th neighbour, ~0.99): the grid is continued and the minimum (~1.28) is interior,
    not the end with a warning as before."""
    X = sphere(800, d=2, ambient_dim=3, random_state=0).X
    with caplog.at_level("WARNING"):
        sel = select_radius(X, 2)
    assert sel.radii.size > 12 and sel.radii[11] < 1.0 < sel.radius < sel.radii[-1]
    best = int(np.nanargmin(sel.distortion))
    assert sel.radius == sel.radii[best] and 0 < best < sel.radii.size - 1
    assert "largest candidate" not in caplog.text
    given = select_radius(X, 2, sel.radii[:12])  # radii given: used as they are
    assert given.radii.size == 12 and given.radius == sel.radii[11]


def test_default_radii_and_invalid_radii() -> None:
    X = sphere(400, random_state=2).X
    rs = select_radius(X, 2, n_samples=40, n_radii=5, criterion="stability")
    assert rs.valid[0] and rs.radii.size >= 5 and np.isfinite(rs.stability[:-1]).all()
    assert (np.diff(rs.radii) > 0).all()
    small = select_radius(X, 2, [1e-3, 0.5], n_samples=40)  # 1e-3: nobody has neighbours
    assert not small.valid[0] and np.isnan(small.distortion[0]) and small.radius == 0.5
    with pytest.raises(ValueError, match="no candidate radius"):
        select_radius(X, 2, [1e-3], n_samples=40)
    with pytest.raises(ValueError, match="criterion"):
        select_radius(X, 2, criterion="best")
    with pytest.raises(ValueError, match="1 <= d < D"):
        select_radius(X, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        select_radius(np.where(X > 0.99, np.inf, X), 2)


# ------------------------------------------------------------------------------------------
# megaman, when it can be imported (it cannot on Python 3.11 / NumPy 2)


@pytest.mark.skipif(importlib.util.find_spec("megaman") is None, reason="megaman not importable")
def test_against_megaman() -> None:  # pragma: no cover - needs megaman (0.2 API)
    from megaman.geometry import (
        compute_adjacency_matrix,
        compute_affinity_matrix,
        compute_laplacian_matrix,
    )
    from megaman.geometry.rmetric import RiemannMetric

    X = sphere(300, random_state=0).X
    eps = 0.3
    A = compute_adjacency_matrix(X, method="brute", radius=3 * eps)
    K = compute_affinity_matrix(A, method="gaussian", radius=eps)
    theirs = compute_laplacian_matrix(K, method="geometric", scaling_epps=eps)
    _, ours = graph(X, eps)
    np.testing.assert_allclose(-theirs.toarray(), ours.toarray(), atol=1e-8)  # their sign: -
    H_theirs = RiemannMetric(X, theirs, n_dim=3).get_dual_rmetric()
    np.testing.assert_allclose(riemannian_metric(X, ours).dual, H_theirs, atol=1e-8)


def test_isolated_vertex_in_the_unnormalized_laplacian():
    W = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    L = laplacian_matrix(W, "unnormalized").toarray()
    np.testing.assert_array_equal(L.sum(1), 0.0)
    np.testing.assert_array_equal(np.diag(L), [1.0, 1.0, 0.0])
    ev = laplacian_spectrum(W, 2, "unnormalized").eigenvalues
    np.testing.assert_allclose(ev, [0.0, 0.0], atol=1e-12)  # one zero per component


def test_select_radius_warns_when_the_minimum_is_at_the_last_candidate(caplog) -> None:
    X = sphere(800, d=2, random_state=0).X
    with caplog.at_level("WARNING", logger="geomsae.graph.radius"):
        rs = select_radius(X, 2, np.geomspace(0.25, 0.9, 8), n_samples=60)
    assert rs.radius == pytest.approx(float(np.nanmax(rs.radii[np.isfinite(rs.distortion)])))
    assert "may lie beyond" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="geomsae.graph.radius"):
        inner = select_radius(X, 2, np.geomspace(0.25, 3.0, 12), n_samples=60)
    assert inner.radius < 3.0 and "may lie beyond" not in caplog.text


def test_metric_and_radius_selection_parameter_checks() -> None:
    g = np.linspace(0, 1, 11)
    X = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    _, L = graph(X, 0.2)
    with pytest.raises(ValueError, match="n_dim"):
        riemannian_metric(X, L, n_dim=1.7)
    bad = L.copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        riemannian_metric(X, bad)
    X3 = np.c_[X, np.zeros(len(X))]
    with pytest.raises(ValueError, match="n_samples"):
        select_radius(X3, 2, n_samples=0)
    with pytest.raises(ValueError, match="cutoff"):
        select_radius(X3, 2, cutoff=0)


def test_select_radius_on_duplicates_names_the_fix() -> None:
    X = np.repeat(np.random.default_rng(0).normal(size=(100, 3)), 4, axis=0)
    with pytest.raises(ValueError, match="deduplicate"):
        select_radius(X, 1)


@pytest.mark.parametrize("n", [1000, 1001])  # dense eigh and sparse shift-invert
def test_spectra_of_an_edgeless_graph(n):
    """A radius below every distance leaves only the self-loops: all five Laplacians are 0
    (the unnormalized one's shift was 0 there, and shift-invert hit a singular factor)."""
    for method in ("geometric", "randomwalk", "symmetricnormalized", "unnormalized",
                   "renormalized"):  # fmt: skip
        ev = laplacian_spectrum(sp.identity(n, format="csr"), 3, method).eigenvalues
        np.testing.assert_array_equal(ev, 0.0)


def test_scalar_parameters_may_be_numpy_or_torch_scalars():
    import torch

    X = sphere(300, d=2, random_state=0).X
    A = adjacency_matrix(X, radius=0.4)
    K = affinity_matrix(A, bandwidth=0.2)
    for s in (torch.tensor(0.2), np.float32(0.2), np.array(0.2)):
        np.testing.assert_allclose(affinity_matrix(A, bandwidth=s).toarray(), K.toarray(),
                                   rtol=1e-6)  # fmt: skip
        L = laplacian_matrix(K, scaling_epps=s)
        np.testing.assert_allclose(L.toarray(), laplacian_matrix(K, scaling_epps=0.2).toarray(),
                                   rtol=1e-6)  # fmt: skip
        assert tangent_spaces(X, 2, bandwidth=s).bandwidth == pytest.approx(0.2)
    assert adjacency_matrix(X, radius=torch.tensor(0.4)).nnz == A.nnz
    for bad in (True, "0.2", torch.tensor([0.2, 0.3]), complex(0.2, 0), float("nan"), 0.0):
        with pytest.raises(ValueError, match="finite number"):
            affinity_matrix(A, bandwidth=bad)
        with pytest.raises(ValueError, match="finite number"):
            laplacian_matrix(K, scaling_epps=bad)


def test_isometric_metric_shrinks_by_the_self_loop_share_on_random_samples():
    """megaman's convention counts K_ii = 1 in the degrees: on a random sample the dual metric
    of an isometric embedding is about N / (N + 1) I, N = sum_{j != i} K_ij (docs/graph.md)."""
    X = np.random.default_rng(0).random((3000, 2)) * 3
    inner = np.nonzero((np.abs(X - 1.5) < 0.5).all(1))[0]
    for eps, expected in ((0.1, 0.93), (0.3, 0.98)):
        K = affinity_matrix(adjacency_matrix(X, radius=3 * eps), bandwidth=eps)
        L = laplacian_matrix(K, "geometric", scaling_epps=eps)
        H = riemannian_metric(X, L, n_dim=2, indices=inner).dual
        half_trace = np.trace(H, axis1=1, axis2=2).mean() / 2
        N = np.asarray(K[inner].sum(1)).ravel() - 1
        assert half_trace == pytest.approx(expected, abs=0.01)
        assert half_trace == pytest.approx(np.mean(N / (N + 1)), abs=0.025)
