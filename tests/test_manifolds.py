"""geomsae.manifolds: shapes, true dimensions, and ground-truth tangents and coordinates."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae.manifolds import (
    BENCHMARK_MANIFOLDS,
    SampledManifold,
    ball,
    benchmark_manifold,
    benchmark_manifolds,
    cube,
    gaussian_blobs,
    sphere,
    swiss_roll,
    torus,
)
from geomsae.neighbors import knn

# the true dimensions published with skdim.datasets.BenchmarkManifolds (Hein & Audibert;
# Campadelli et al. 2015), written out independently of our table
PUBLISHED = {
    "M1_Sphere": (10, 11), "M2_Affine_3to5": (3, 5), "M3_Nonlinear_4to6": (4, 6),
    "M4_Nonlinear": (4, 8), "M5a_Helix1d": (1, 3), "M5b_Helix2d": (2, 3),
    "M6_Nonlinear": (6, 36), "M7_Roll": (2, 3), "M8_Nonlinear": (12, 72), "M9_Affine": (20, 20),
    "M10a_Cubic": (10, 11), "M10b_Cubic": (17, 18), "M10c_Cubic": (24, 25),
    "M10d_Cubic": (70, 71), "M11_Moebius": (2, 3), "M12_Norm": (20, 20), "M13a_Scurve": (2, 3),
    "M13b_Spiral": (1, 13), "Mbeta": (10, 40), "Mn1_Nonlinear": (18, 72),
    "Mn2_Nonlinear": (24, 96), "Mp1_Paraboloid": (3, 12), "Mp2_Paraboloid": (6, 21),
    "Mp3_Paraboloid": (9, 30),
}  # fmt: skip


def _tangent_residual(m: SampledManifold, k: int = 6) -> float:
    """Median fraction of neighbour displacements lying outside the true tangent space."""
    nb = knn(m.X, k)
    V = m.X[nb.indices] - m.X[:, None, :]  # (n, k, D)
    inside = np.einsum("nkD,nDd->nkd", V, m.tangents)
    frac = 1 - (inside**2).sum((1, 2)) / (V**2).sum((1, 2))
    return float(np.median(frac))


def test_benchmark_table_matches_published_dimensions():
    assert {k: (s.d, s.D) for k, s in BENCHMARK_MANIFOLDS.items()} == PUBLISHED


@pytest.mark.parametrize("name", list(BENCHMARK_MANIFOLDS))
def test_benchmark_manifold_shapes_and_tangents(name):
    d, D = PUBLISHED[name]
    m = benchmark_manifold(name, 400, tangents=True, random_state=1)
    assert m.X.shape == (400, D) and m.d == d and np.isfinite(m.X).all()
    assert m.tangents.shape == (400, D, d)
    gram = np.einsum("nDa,nDb->nab", m.tangents, m.tangents)
    np.testing.assert_allclose(gram, np.broadcast_to(np.eye(d), gram.shape), atol=1e-10)
    if m.coordinates is not None:
        assert m.coordinates.shape == (400, d)
    if name in {"M2_Affine_3to5", "M5a_Helix1d", "M7_Roll", "M11_Moebius", "M13a_Scurve"}:
        assert _tangent_residual(m) < 0.05  # dense enough at n = 400 for neighbours to be local


@pytest.mark.parametrize("name", list(BENCHMARK_MANIFOLDS))
def test_benchmark_tangents_match_finite_differences(name):
    spec = BENCHMARK_MANIFOLDS[name]
    parts = spec.sample(np.random.default_rng(0), 20, spec.d, spec.D)
    m = benchmark_manifold(name, 20, tangents=True, random_state=0)
    if "phi" not in parts:  # sphere, cubes, flat sets: checked against closed forms elsewhere
        return
    theta, h = parts["theta"], 1e-6
    phi = lambda t: parts["phi"](torch.as_tensor(t)).numpy()  # noqa: E731
    for i in range(3):
        J = np.stack(
            [(phi(theta[i] + h * e) - phi(theta[i] - h * e)) / (2 * h) for e in np.eye(spec.d)], 1
        )
        np.testing.assert_allclose(m.X[i], phi(theta[i]), atol=1e-12)
        P = m.tangents[i] @ m.tangents[i].T
        np.testing.assert_allclose(P @ J, J, atol=1e-6 * max(1.0, np.abs(J).max()))
        assert np.linalg.matrix_rank(J, tol=1e-8) == spec.d


@pytest.mark.parametrize("name", ["M1_Sphere", "M10d_Cubic"])
def test_benchmark_tangents_are_built_only_when_asked_for(name):
    import tracemalloc

    tracemalloc.start()
    m = benchmark_manifold(name, 2500, random_state=0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert m.tangents is None and peak < 4 * m.X.nbytes  # was 105 MB for M10d's 1.4 MB
    same = benchmark_manifold(name, 2500, tangents=True, random_state=0)
    np.testing.assert_array_equal(same.X, m.X)  # the random stream does not depend on it
    assert same.tangents.shape == (2500, *m.X.shape[1:], BENCHMARK_MANIFOLDS[name].d)


def test_benchmark_is_seeded_and_all_sets_come_back():
    a = benchmark_manifolds(50, random_state=3)
    b = benchmark_manifolds(50, random_state=3)
    assert list(a) == list(BENCHMARK_MANIFOLDS)
    assert all(np.array_equal(a[k].X, b[k].X) for k in a)
    with pytest.raises(ValueError, match="unknown benchmark manifold"):
        benchmark_manifold("M99", 10)


def test_sphere_tangents_are_orthogonal_to_the_radius():
    m = sphere(300, d=4, radius=2.0, random_state=0)
    np.testing.assert_allclose(np.linalg.norm(m.X, axis=1), 2.0)
    np.testing.assert_allclose(np.einsum("nD,nDd->nd", m.X, m.tangents), 0.0, atol=1e-12)
    assert m.tangents.shape == (300, 5, 4)


def test_rotation_into_higher_dimension_keeps_geometry():
    flat = swiss_roll(300, random_state=0)
    rot = swiss_roll(300, ambient_dim=40, random_state=0)
    assert rot.X.shape == (300, 40) and rot.embedding.shape == (3, 40)
    np.testing.assert_allclose(rot.embedding @ rot.embedding.T, np.eye(3), atol=1e-12)
    np.testing.assert_allclose(rot.X, flat.X @ rot.embedding, atol=1e-10)
    np.testing.assert_allclose(rot.tangents, np.einsum("nkd,ka->nad", flat.tangents, rot.embedding))
    padded = swiss_roll(300, ambient_dim=5, rotate=False, random_state=0)
    np.testing.assert_allclose(padded.X[:, 3:], 0.0)


def test_swiss_roll_tangent_is_the_analytic_derivative():
    m = swiss_roll(200, random_state=4)
    t = m.coordinates[:, 0]
    dt = np.stack([np.cos(t) - t * np.sin(t), np.zeros_like(t), np.sin(t) + t * np.cos(t)], 1)
    dt /= np.linalg.norm(dt, axis=1, keepdims=True)
    np.testing.assert_allclose(np.abs((m.tangents[:, :, 0] * dt).sum(1)), 1.0, atol=1e-12)
    np.testing.assert_allclose(m.tangents[:, :, 1] @ [0, 1, 0], 1.0, atol=1e-12)


def test_torus_lies_on_the_torus_and_is_area_uniform():
    m = torus(20000, r1=1.0, r2=0.3, tangents=False, random_state=0)
    rho = np.hypot(m.X[:, 0], m.X[:, 1])
    np.testing.assert_allclose((rho - 1.0) ** 2 + m.X[:, 2] ** 2, 0.09, atol=1e-12)
    # area-uniform: the outer half (cos u > 0) holds (pi + 2 r2/r1)/(2 pi) of the area
    outer = np.mean(np.cos(m.coordinates[:, 0]) > 0)
    assert abs(outer - (np.pi + 0.6) / (2 * np.pi)) < 0.012


def test_noise_and_flat_generators():
    m = gaussian_blobs(500, d=3, ambient_dim=30, noise=0.0, random_state=0)
    P = m.tangents[0] @ m.tangents[0].T
    np.testing.assert_allclose(m.X @ P, m.X, atol=1e-10)  # all points in the subspace
    noisy = gaussian_blobs(500, d=3, ambient_dim=30, noise=0.1, random_state=0)
    resid = noisy.X - noisy.X @ P
    assert 0.08 < resid.std() * np.sqrt(30 / 27) < 0.12
    b = ball(2000, d=3, radius=2.0, random_state=0)
    r = np.linalg.norm(b.X, axis=1)
    assert r.max() <= 2.0 and abs(np.mean(r <= 1.0) - 1 / 8) < 0.03  # volume fraction
    c = cube(100, d=4, side=3.0, random_state=0)
    assert c.X.min() >= 0 and c.X.max() <= 3.0 and c.coordinates.shape == (100, 4)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: sphere(0, 2), "n must be a positive integer"),
        (lambda: sphere(10, 0), "positive integer"),
        (lambda: sphere(10, 2, ambient_dim=2), "below"),
        (lambda: sphere(10, 2, noise=-1.0), "noise"),
        (lambda: torus(10, r1=0.1, r2=0.5), "ring torus"),
        (lambda: sphere(10, 2, random_state="x"), "random_state"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match):
        call()


@pytest.mark.parametrize(
    "make",
    [
        lambda: sphere(-3),
        lambda: sphere(2.0),
        lambda: sphere(10, radius=0.0),
        lambda: ball(10, radius=-1.0),
        lambda: cube(10, side=0.0),
        lambda: swiss_roll(10, turns=0.0),
        lambda: swiss_roll(10, height=0.0),
        lambda: sphere(10, ambient_dim=10.7),
        lambda: sphere(10, noise=None),
        lambda: gaussian_blobs(10, n_blobs=2.5),
        lambda: benchmark_manifold("M10d_Cubic", n=-5),
        lambda: benchmark_manifold("M10d_Cubic", tangents=True, noise=-1.0),
    ],
)
def test_bad_generator_arguments_are_refused_before_sampling(make):
    with pytest.raises(ValueError, match="must be"):
        make()
