"""Classic test manifolds: sphere, ball, flat cube, torus, Swiss roll, Gaussian blobs.

Every generator takes ``n`` and the keyword options ``ambient_dim`` (pad + random rotation),
``rotate`` (all but ``gaussian_blobs``, whose subspace is always a random one), ``noise``
(Gaussian standard deviation in the ambient space), ``tangents`` (compute ground-truth tangent
bases) and ``random_state``, and returns a :class:`SampledManifold`. Arguments are checked
before sampling; shape parameters (radius, side, height, turns) must be > 0.
"""

from __future__ import annotations

import numpy as np
import torch

from geomsae.manifolds.base import (
    RandomState,
    SampledManifold,
    as_rng,
    check_common,
    check_positive,
    check_positive_int,
    finish,
)

__all__ = ["ball", "cube", "gaussian_blobs", "sphere", "swiss_roll", "torus"]


def _check_d(d: int) -> None:
    if not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"the intrinsic dimension d must be a positive integer; got {d!r}")


def sphere(
    n: int,
    d: int = 2,
    *,
    radius: float = 1.0,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Uniform sample of the d-sphere of the given radius in ``R^(d+1)``.

    The tangent space at x is the orthogonal complement of x; ``coordinates`` is None (no
    global chart).
    """
    _check_d(d)
    check_common(n, ambient_dim, noise)
    check_positive(radius=radius)
    rng = as_rng(random_state)
    V = rng.standard_normal((n, d + 1))
    U = V / np.linalg.norm(V, axis=1, keepdims=True)
    T = None
    if tangents:
        # the columns of I - u u^T span u-perp; drop the one where |u_j| is largest (it is a
        # combination of the others, since sum_j u_j P[:, j] = P u = 0) and orthonormalise.
        P = np.eye(d + 1)[None] - U[:, :, None] * U[:, None, :]
        drop = np.argmax(np.abs(U), axis=1)
        keep = np.arange(d + 1)[None, :] != drop[:, None]
        P = P.transpose(0, 2, 1)[keep].reshape(n, d, d + 1).transpose(0, 2, 1)
        Q, R = np.linalg.qr(P)
        T = Q * np.sign(np.diagonal(R, axis1=1, axis2=2))[:, None, :]
    return finish(
        "sphere",
        d,
        rng,
        X=radius * U,
        tangents=T,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description=f"uniform {d}-sphere of radius {radius} in R^{d + 1}",
    )


def ball(
    n: int,
    d: int = 2,
    *,
    radius: float = 1.0,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Uniform sample of the d-ball in ``R^d`` (the reference of DANCo-style calibration)."""
    _check_d(d)
    check_common(n, ambient_dim, noise)
    check_positive(radius=radius)
    rng = as_rng(random_state)
    V = rng.standard_normal((n, d))
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    X = radius * V * rng.random((n, 1)) ** (1.0 / d)
    return finish(
        "ball",
        d,
        rng,
        X=X,
        tangents=np.broadcast_to(np.eye(d), (n, d, d)) if tangents else None,
        coordinates=X,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description=f"uniform {d}-ball of radius {radius}",
    )


def cube(
    n: int,
    d: int = 2,
    *,
    side: float = 1.0,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Uniform sample of the flat cube ``[0, side]^d``."""
    _check_d(d)
    check_common(n, ambient_dim, noise)
    check_positive(side=side)
    rng = as_rng(random_state)
    X = side * rng.random((n, d))
    return finish(
        "cube",
        d,
        rng,
        X=X,
        tangents=np.broadcast_to(np.eye(d), (n, d, d)) if tangents else None,
        coordinates=X,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description=f"uniform flat cube [0, {side}]^{d}",
    )


def torus(
    n: int,
    *,
    r1: float = 1.0,
    r2: float = 0.25,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Area-uniform sample of the ring torus in ``R^3`` (major radius r1, minor radius r2).

    ``coordinates`` are the angles (minor angle u, major angle v) in ``[0, 2 pi)``.
    """
    if not 0 < r2 < r1:
        raise ValueError(f"need 0 < r2 < r1 for a ring torus; got r1={r1}, r2={r2}")
    check_common(n, ambient_dim, noise)
    rng = as_rng(random_state)
    # the area element is (r1 + r2 cos u) du dv: rejection-sample u, in rounds (not per point)
    u = np.empty(0)
    while u.size < n:
        cand = rng.uniform(0, 2 * np.pi, 2 * n)
        accept = rng.random(2 * n) < (r1 + r2 * np.cos(cand)) / (r1 + r2)
        u = np.concatenate([u, cand[accept]])
    theta = np.stack([u[:n], rng.uniform(0, 2 * np.pi, n)], axis=1)

    def phi(t: torch.Tensor) -> torch.Tensor:
        ring = r1 + r2 * torch.cos(t[0])
        return torch.stack([ring * torch.cos(t[1]), ring * torch.sin(t[1]), r2 * torch.sin(t[0])])

    return finish(
        "torus",
        2,
        rng,
        theta=theta,
        phi=phi,
        coordinates=theta,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description=f"ring torus in R^3, radii {r1} and {r2}, area-uniform",
    )


def swiss_roll(
    n: int,
    *,
    height: float = 21.0,
    turns: float = 1.5,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Swiss roll ``(t cos t, y, t sin t)``, ``t ~ U[turns pi, 3 turns pi]``, ``y ~ U[0, height]``.

    This is the scikit-learn / TSLasso parametrisation; ``coordinates`` is ``(t, y)``.
    """
    check_common(n, ambient_dim, noise)
    check_positive(height=height, turns=turns)
    rng = as_rng(random_state)
    t = turns * np.pi * (1 + 2 * rng.random(n))
    y = height * rng.random(n)
    theta = np.stack([t, y], axis=1)

    def phi(p: torch.Tensor) -> torch.Tensor:
        return torch.stack([p[0] * torch.cos(p[0]), p[1], p[0] * torch.sin(p[0])])

    return finish(
        "swiss_roll",
        2,
        rng,
        theta=theta,
        phi=phi,
        coordinates=theta,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description="Swiss roll (t cos t, y, t sin t)",
    )


def gaussian_blobs(
    n: int,
    d: int = 2,
    *,
    ambient_dim: int | None = None,
    n_blobs: int = 3,
    spread: float = 5.0,
    noise: float = 0.0,
    tangents: bool = True,
    random_state: RandomState = None,
) -> SampledManifold:
    """Gaussian blobs (unit covariance) inside one random d-dimensional linear subspace.

    Blob centres are drawn from ``N(0, spread^2 I_d)``; point ``i`` belongs to blob
    ``i % n_blobs``. All points share one tangent space (the subspace; a read-only view).
    ``coordinates`` are the points' coordinates in the subspace basis.
    """
    _check_d(d)
    if n_blobs < 1:
        raise ValueError(f"n_blobs must be >= 1; got {n_blobs}")
    check_common(n, ambient_dim, noise)
    check_positive_int(n_blobs=n_blobs)
    rng = as_rng(random_state)
    centres = spread * rng.standard_normal((n_blobs, d))
    Z = centres[np.arange(n) % n_blobs] + rng.standard_normal((n, d))
    target = d if ambient_dim is None else ambient_dim
    return finish(
        "gaussian_blobs",
        d,
        rng,
        X=Z,
        tangents=np.broadcast_to(np.eye(d), (n, d, d)) if tangents else None,
        coordinates=Z,
        with_tangents=tangents,
        ambient_dim=target,
        rotate=True,
        noise=noise,
        description=f"{n_blobs} Gaussian blobs in a random {d}-dim subspace of R^{target}",
    )
