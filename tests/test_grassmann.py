"""Principal angles, Grassmann distances and Karcher means against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pymanopt.manifolds import Grassmann

from geomsae.grassmann import (
    check_orthonormal,
    fix_signs,
    grassmann_distance,
    karcher_mean,
    principal_angles,
)


def two_planes(a: float, b: float, D: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """span(e1, e2) and span(cos a e1 + sin a e3, cos b e2 + sin b e4): angles a and b."""
    A = np.eye(D)[:, :2]
    B = np.zeros((D, 2))
    B[[0, 2], 0] = np.cos(a), np.sin(a)
    B[[1, 3], 1] = np.cos(b), np.sin(b)
    return A, B


def random_basis(rng: np.random.Generator, D: int, d: int) -> np.ndarray:
    return np.linalg.qr(rng.standard_normal((D, d)))[0]


@pytest.mark.parametrize("a,b", [(0.3, 1.2), (1e-9, 0.5), (np.pi / 2, 1e-6), (0.0, 0.0)])
def test_principal_angles_closed_form(a: float, b: float) -> None:
    A, B = two_planes(a, b)
    theta = principal_angles(A, B)
    np.testing.assert_allclose(theta, sorted([a, b]), rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(grassmann_distance(A, B), np.hypot(a, b), rtol=1e-7, atol=1e-15)
    np.testing.assert_allclose(
        grassmann_distance(A, B, metric="chordal"), np.hypot(np.sin(a), np.sin(b)), atol=1e-15
    )
    np.testing.assert_allclose(
        grassmann_distance(A, B, metric="projection"), max(np.sin(a), np.sin(b)), atol=1e-15
    )


def test_small_angles_are_accurate() -> None:
    """arccos alone would return 0 (or ~1e-8 noise) for an angle of 1e-12."""
    A, B = two_planes(1e-12, 2e-12)
    np.testing.assert_allclose(principal_angles(A, B), [1e-12, 2e-12], rtol=1e-6)


def test_matches_pymanopt_distance_and_batches() -> None:
    rng = np.random.default_rng(0)
    A = np.stack([random_basis(rng, 7, 3) for _ in range(5)])
    B = np.stack([random_basis(rng, 7, 3) for _ in range(5)])
    ours = grassmann_distance(A, B)
    ref = [Grassmann(7, 3).dist(a, b) for a, b in zip(A, B)]
    np.testing.assert_allclose(ours, ref, rtol=1e-10)
    t = grassmann_distance(torch.from_numpy(A), torch.from_numpy(B))
    assert isinstance(t, torch.Tensor) and t.shape == (5,)
    np.testing.assert_allclose(t.numpy(), ours)


def test_line_and_plane_unequal_dimensions() -> None:
    A = np.eye(3)[:, :2]  # the xy-plane
    v = np.array([[np.cos(0.4)], [0.0], [np.sin(0.4)]])  # 0.4 rad above it
    np.testing.assert_allclose(principal_angles(A, v), [0.4])
    np.testing.assert_allclose(principal_angles(v, A), [0.4])


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), D=st.integers(3, 9), d=st.integers(1, 3))
def test_angles_are_basis_invariant_and_symmetric(seed: int, D: int, d: int) -> None:
    rng = np.random.default_rng(seed)
    A, B = random_basis(rng, D, d), random_basis(rng, D, d)
    Q = random_basis(rng, d, d)  # another orthonormal basis of the same span
    theta = principal_angles(A, B)
    assert np.all(np.diff(theta) >= -1e-12) and theta.min() >= 0 and theta.max() <= np.pi / 2
    np.testing.assert_allclose(principal_angles(A @ Q, B), theta, atol=1e-9)
    np.testing.assert_allclose(principal_angles(B, A), theta, atol=1e-9)
    assert grassmann_distance(A, A) < 1e-7


def test_orthonormality_is_checked() -> None:
    with pytest.raises(ValueError, match="orthonormal"):
        principal_angles(np.ones((3, 1)), np.eye(3)[:, :1])
    with pytest.raises(ValueError, match="NaN"):
        check_orthonormal(np.full((3, 1), np.nan))
    with pytest.raises(ValueError, match="different spaces"):
        principal_angles(np.eye(3)[:, :1], np.eye(4)[:, :1])
    with pytest.raises(ValueError, match="metric"):
        grassmann_distance(np.eye(3)[:, :1], np.eye(3)[:, :1], metric="nope")


def test_fix_signs_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    Q = torch.from_numpy(random_basis(rng, 6, 3))
    flipped = Q * torch.tensor([-1.0, 1.0, -1.0])
    a, b = fix_signs(Q), fix_signs(flipped)
    torch.testing.assert_close(a, b)
    idx = a.abs().argmax(0)
    assert bool((a[idx, torch.arange(3)] > 0).all())


def test_karcher_mean_of_symmetric_perturbations_is_the_centre() -> None:
    """Exp_C(+V) and Exp_C(-V) for several V average exactly to C."""
    rng = np.random.default_rng(2)
    D, d = 8, 3
    man = Grassmann(D, d)
    C = random_basis(rng, D, d)
    members = []
    for _ in range(4):
        V = man.projection(C, rng.standard_normal((D, d)))
        V *= 0.3 / np.linalg.norm(V)
        members += [man.exp(C, V), man.exp(C, -V)]
    res = karcher_mean(np.stack(members))
    assert res.converged and res.gradient_norm < 1e-9
    assert grassmann_distance(res.mean, C) < 1e-8
    # unequal weights on one pair move the mean along that geodesic, by the weighted amount
    w = np.array([3.0, 1.0, 0, 0, 0, 0, 0, 0])
    res = karcher_mean(np.stack(members), w)
    V = man.log(C, members[0])
    expected = man.exp(C, 0.5 * V)  # (3 V - V) / 4
    assert grassmann_distance(res.mean, expected) < 1e-8


def test_karcher_mean_minimises_frechet_function_in_batches() -> None:
    rng = np.random.default_rng(3)
    D, d, m = 6, 2, 5
    man = Grassmann(D, d)
    groups = []
    for _ in range(3):
        C = random_basis(rng, D, d)
        groups.append([man.exp(C, 0.4 * man.random_tangent_vector(C)) for _ in range(m)])
    X = np.array(groups)  # (3, m, D, d)
    res = karcher_mean(X)
    assert res.mean.shape == (3, D, d) and res.converged

    def frechet(M: np.ndarray, g: int) -> float:
        return float(np.sum(grassmann_distance(np.repeat(M[None], m, 0), X[g]) ** 2))

    for g in range(3):  # perturbing the mean never lowers the Frechet function
        f0 = frechet(res.mean[g], g)
        for _ in range(5):
            M = man.exp(res.mean[g], 0.05 * man.random_tangent_vector(res.mean[g]))
            assert frechet(M, g) >= f0 - 1e-12


def test_karcher_mean_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        karcher_mean(np.eye(3)[:, :1])
    with pytest.raises(ValueError, match="weights"):
        karcher_mean(np.stack([np.eye(3)[:, :1]] * 2), weights=[-1.0, 2.0])
    with pytest.raises(ValueError, match="positive total weight"):
        karcher_mean(np.stack([np.eye(3)[:, :1]] * 2), weights=[0.0, 0.0])
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="max_iter must be a positive integer"):
            karcher_mean(np.stack([np.eye(3)[:, :1]] * 2), max_iter=bad)
    with pytest.raises(ValueError, match="tol must be a finite number"):
        karcher_mean(np.stack([np.eye(3)[:, :1]] * 2), tol=float("nan"))


def test_karcher_mean_ignores_a_dropped_member_orthogonal_to_the_mean() -> None:
    """Zero weight drops a member (padding): its logarithm at the mean, undefined for an
    orthogonal one, is not taken."""
    e = np.eye(4)
    res = karcher_mean(np.stack([e[:, :2], e[:, :2], e[:, 2:]]), [0.5, 0.5, 0.0])
    assert res.converged
    P = res.mean @ res.mean.T
    np.testing.assert_allclose(P, e[:, :2] @ e[:, :2].T, atol=1e-12)  # span{e1, e2}


def test_karcher_mean_reports_the_gradient_at_the_returned_mean() -> None:
    rng = np.random.default_rng(4)
    members = np.stack([np.linalg.qr(rng.normal(size=(6, 2)))[0] for _ in range(5)])
    res = karcher_mean(members, max_iter=2, tol=0.0)  # stops at max_iter, not converged
    man = Grassmann(6, 2)
    grad = np.mean([man.log(res.mean, Xj) for Xj in members], axis=0)
    assert not res.converged
    assert float(res.gradient_norm) == pytest.approx(np.linalg.norm(grad), rel=1e-8)
    with pytest.raises(ValueError, match="weights must be"):
        karcher_mean(members, np.ones(4))


def test_karcher_mean_warns_when_the_mean_is_not_unique(caplog) -> None:
    e = np.eye(4)
    members = np.stack([e[:, :2], e[:, 2:]])  # orthogonal planes, equal weights
    with caplog.at_level("WARNING", logger="geomsae.grassmann"):
        try:
            karcher_mean(members)
        except ValueError:
            pass  # the logarithm may be undefined there; the warning comes first
    assert "no unique mean" in caplog.text
