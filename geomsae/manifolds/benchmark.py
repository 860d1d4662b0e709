"""The standard intrinsic-dimension benchmark: 24 manifolds of Hein & Audibert (2005) and
Campadelli et al. (2015), with the same parametrisations, parameter distributions, true
dimensions and ambient dimensions as ``skdim.datasets.BenchmarkManifolds`` (scikit-dimension
0.5, itself adapted from GeoMLE). Reimplemented here (skdim is not a library dependency);
the random streams differ, the distributions do not.

Differences on purpose: noise is isotropic Gaussian with standard deviation ``noise`` (skdim adds
uniform noise ``(U - 0.5) * noise``), and ground-truth tangents (exact Jacobians of the
parametrisation, via ``torch.func``) and coordinates are returned.

References
----------
Hein, M. & Audibert, J.-Y. (2005). Intrinsic dimensionality estimation of submanifolds in R^d. ICML.
Campadelli, P., Casiraghi, E., Ceruti, C. & Rozza, A. (2015). Intrinsic dimension estimation:
relevant techniques and a benchmark framework. Mathematical Problems in Engineering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch

from geomsae.manifolds.base import (
    RandomState,
    SampledManifold,
    as_rng,
    check_common,
    finish,
    orthonormal_columns,
)

__all__ = ["BENCHMARK_MANIFOLDS", "BenchmarkSpec", "benchmark_manifold", "benchmark_manifolds"]

TWO_PI = 2 * np.pi


class BenchmarkSpec(NamedTuple):
    """One benchmark manifold: true dimension ``d``, ambient dimension ``D``, description."""

    d: int
    D: int
    description: str
    sample: Callable[[np.random.Generator, int, int, int], dict[str, Any]]


def _pad(D: int, phi: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
    """Extend a map into R^3 (or R^k) with zeros up to R^D."""

    def padded(t: torch.Tensor) -> torch.Tensor:
        y = phi(t)
        return torch.cat([y, y.new_zeros(D - y.shape[0])])

    return padded


def _param(theta: np.ndarray, phi: Callable) -> dict[str, Any]:
    return {"theta": theta, "phi": phi, "coordinates": theta}


def _flat(X: np.ndarray, basis: np.ndarray, coordinates: np.ndarray | None) -> dict[str, Any]:
    """Points on an affine subspace spanned by the columns of ``basis`` (D, d)."""
    Q = orthonormal_columns(basis[None])[0]
    return {"X": X, "tangents": np.broadcast_to(Q, (len(X), *Q.shape)), "coordinates": coordinates}


# ---------------------------------------------------------------------------------------------
# samplers: (rng, n, d, D) -> keyword arguments of finish(); "tangents" may be a function
# that builds them (called only when they are asked for)


def _sphere(rng, n, d, D):
    V = rng.standard_normal((n, d + 1))
    U = V / np.linalg.norm(V, axis=1, keepdims=True)

    def tangents() -> np.ndarray:
        # tangent at u: Jacobian of v -> v/|v| restricted to a chart (see classic.sphere)
        P = np.eye(d + 1)[None] - U[:, :, None] * U[:, None, :]
        drop = np.argmax(np.abs(U), axis=1)
        keep = np.arange(d + 1)[None, :] != drop[:, None]
        P = P.transpose(0, 2, 1)[keep].reshape(n, d, d + 1).transpose(0, 2, 1)
        return np.concatenate([orthonormal_columns(P), np.zeros((n, D - d - 1, d))], axis=1)

    return {"X": np.hstack([U, np.zeros((n, D - d - 1))]), "tangents": tangents}


_A35 = np.array([[1.2, -0.5, 0], [0.5, 0.9, 0], [-0.5, -0.2, 1], [0.4, -0.9, -0.1], [1.1, -0.3, 0]])
_B35 = np.array([3.0, -1.0, 0.0, 0.0, 8.0])


def _affine_3to5(rng, n, d, D):
    p = 4 * rng.random((n, 3))
    return _flat(p @ _A35.T + _B35, _A35, p)


def _nonlinear_4to6(rng, n, d, D):
    def phi(p):
        p0, p1, p2, p3 = p[0], p[1], p[2], p[3]
        return torch.stack(
            [
                p1**2 * torch.cos(TWO_PI * p0),
                p2**2 * torch.sin(TWO_PI * p0),
                p1 + p2 + (p1 - p3) ** 2,
                p1 - 2 * p2 + (p0 - p3) ** 2,
                -p1 - 2 * p2 + (p2 - p3) ** 2,
                p0**2 - p1**2 + p2**2 - p3**2,
            ]
        )

    return _param(rng.random((n, 4)), phi)


def _nonlinear(rng, n, d, D):
    m = D // (2 * d)

    def phi(p):
        nxt = torch.roll(p, -1)  # p_{i+1}, cyclically
        pairs = torch.stack([nxt * torch.cos(TWO_PI * p), nxt * torch.sin(TWO_PI * p)], dim=1)
        return pairs.reshape(-1).repeat(m)

    return _param(rng.random((n, d)), phi)


def _helix1d(rng, n, d, D):
    t = TWO_PI / n + TWO_PI * rng.random((n, 1))

    def phi(s):
        s = s[0]
        ring = 2 + torch.cos(8 * s)
        return torch.stack([ring * torch.cos(s), ring * torch.sin(s), torch.sin(8 * s)])

    return _param(t, _pad(D, phi))


def _helix2d(rng, n, d, D):
    theta = 10 * np.pi * rng.random((n, 2))  # (r, p)

    def phi(q):
        return torch.stack([q[0] * torch.cos(q[1]), q[0] * torch.sin(q[1]), 0.5 * q[1]])

    return _param(theta, _pad(D, phi))


def _roll(rng, n, d, D):
    t = 1.5 * np.pi * (1 + 2 * rng.random(n))
    theta = np.stack([t, 21 * rng.random(n)], axis=1)

    def phi(q):
        return torch.stack([q[0] * torch.cos(q[0]), q[1], q[0] * torch.sin(q[0])])

    return _param(theta, _pad(D, phi))


def _affine(rng, n, d, D):
    p = 5 * rng.random((n, d)) - 2.5
    return _flat(np.hstack([p, np.zeros((n, D - d))]), np.eye(D, d), p)


def _cubic(rng, n, d, D):
    # boundary of the (d+1)-cube, its 2(d+1) faces filled in turn with n_face points each
    n_face = n // (2 * (d + 1)) + 1
    face = np.arange(n) // n_face
    axis, side = face // 2, (face % 2).astype(float)
    C = rng.random((n, d + 1))
    C[np.arange(n), axis] = side

    def tangents() -> np.ndarray:
        T = np.zeros((n, D, d))
        free = np.arange(d + 1)[None, :] != axis[:, None]  # (n, d+1): each face's d free axes
        rows, cols = np.nonzero(free)
        T[rows, cols, np.tile(np.arange(d), n)] = 1.0
        return T

    return {"X": np.hstack([C, np.zeros((n, D - d - 1))]), "tangents": tangents}


def _moebius(rng, n, d, D):
    theta = np.stack([TWO_PI * rng.random(n), 2 * rng.random(n) - 1], axis=1)  # (phi, rad)

    def phi(q):
        w = 1 + 0.5 * q[1] * torch.cos(5.0 * q[0])
        return torch.stack(
            [w * torch.cos(q[0]), w * torch.sin(q[0]), 0.5 * q[1] * torch.sin(5.0 * q[0])]
        )

    return _param(theta, phi)


def _norm(rng, n, d, D):
    Z = rng.standard_normal((n, d))
    return _flat(np.hstack([Z, np.zeros((n, D - d))]), np.eye(D, d), Z)


def _scurve(rng, n, d, D):
    theta = np.stack([3 * np.pi * (rng.random(n) - 0.5), 2.0 * rng.random(n)], axis=1)

    def phi(q):
        return torch.stack([torch.sin(q[0]), q[1], torch.sign(q[0]) * (torch.cos(q[0]) - 1)])

    return _param(theta, _pad(D, phi))


def _spiral(rng, n, d, D):
    t = 10 * np.pi * rng.random((n, 1))

    def phi(s):
        return torch.stack([100 * torch.cos(s[0]), 100 * torch.sin(s[0]), s[0]])

    return _param(t, _pad(D, phi))


def _campadelli_beta(rng, n, d, D):
    def phi(x):
        a = x * torch.sin(torch.cos(TWO_PI * x))
        b = x * torch.cos(torch.sin(TWO_PI * x))
        return torch.cat([a, b, a, b])

    return _param(rng.beta(10, 0.5, size=(n, d)), phi)


def _campadelli_n(rng, n, d, D):
    def phi(x):
        xr = torch.flip(x, [0])  # x_{d-1-i}
        a = torch.tan(x * torch.cos(xr))
        b = torch.arctan(xr * torch.sin(x))
        return torch.cat([a, b, a, b])

    return _param(rng.random((n, d)), phi)


def _paraboloid(rng, n, d, D):
    E = rng.exponential(1.0, (n, d + 1))
    x = 1.0 / (1.0 + E[:, 1:] / E[:, :1])  # multivariate Burr, alpha = 1

    def phi(p):
        y = torch.cat([p, (p**2).sum()[None]])
        return torch.cat([y, torch.sin(y), y**2])

    return _param(x, phi)


BENCHMARK_MANIFOLDS: dict[str, BenchmarkSpec] = {
    "M1_Sphere": BenchmarkSpec(10, 11, "10-sphere linearly embedded", _sphere),
    "M2_Affine_3to5": BenchmarkSpec(3, 5, "affine 3-space in R^5", _affine_3to5),
    "M3_Nonlinear_4to6": BenchmarkSpec(4, 6, "concentrated, mistakable for 3-D", _nonlinear_4to6),
    "M4_Nonlinear": BenchmarkSpec(4, 8, "nonlinear manifold", _nonlinear),
    "M5a_Helix1d": BenchmarkSpec(1, 3, "1-D helix", _helix1d),
    "M5b_Helix2d": BenchmarkSpec(2, 3, "2-D helicoid", _helix2d),
    "M6_Nonlinear": BenchmarkSpec(6, 36, "nonlinear manifold", _nonlinear),
    "M7_Roll": BenchmarkSpec(2, 3, "Swiss roll", _roll),
    "M8_Nonlinear": BenchmarkSpec(12, 72, "nonlinear, highly curved", _nonlinear),
    "M9_Affine": BenchmarkSpec(20, 20, "affine space", _affine),
    "M10a_Cubic": BenchmarkSpec(10, 11, "boundary of the 11-cube", _cubic),
    "M10b_Cubic": BenchmarkSpec(17, 18, "boundary of the 18-cube", _cubic),
    "M10c_Cubic": BenchmarkSpec(24, 25, "boundary of the 25-cube", _cubic),
    "M10d_Cubic": BenchmarkSpec(70, 71, "boundary of the 71-cube", _cubic),
    "M11_Moebius": BenchmarkSpec(2, 3, "Moebius band, 10 times twisted", _moebius),
    "M12_Norm": BenchmarkSpec(20, 20, "isotropic Gaussian", _norm),
    "M13a_Scurve": BenchmarkSpec(2, 3, "S-curve", _scurve),
    "M13b_Spiral": BenchmarkSpec(1, 13, "1-D spiral curve", _spiral),
    "Mbeta": BenchmarkSpec(10, 40, "smooth non-uniform (beta) density", _campadelli_beta),
    "Mn1_Nonlinear": BenchmarkSpec(18, 72, "nonlinearly embedded, high ID", _campadelli_n),
    "Mn2_Nonlinear": BenchmarkSpec(24, 96, "nonlinearly embedded, high ID", _campadelli_n),
    "Mp1_Paraboloid": BenchmarkSpec(3, 12, "3-D paraboloid, Burr density", _paraboloid),
    "Mp2_Paraboloid": BenchmarkSpec(6, 21, "6-D paraboloid, Burr density", _paraboloid),
    "Mp3_Paraboloid": BenchmarkSpec(9, 30, "9-D paraboloid, Burr density", _paraboloid),
}
"""Name -> (true dimension d, ambient dimension D, description, sampler), in skdim's order."""


def benchmark_manifold(
    name: str,
    n: int = 2500,
    *,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    tangents: bool = False,
    random_state: RandomState = None,
) -> SampledManifold:
    """Sample one benchmark manifold by name (see :data:`BENCHMARK_MANIFOLDS`).

    Parameters
    ----------
    name : str
        E.g. ``"M1_Sphere"``, ``"M10d_Cubic"``.
    n : int
        Number of points (the usual benchmark size is 2500).
    ambient_dim, rotate, noise, random_state
        As for every generator (pad + random rotation, Gaussian noise, seed).
    tangents : bool
        Also compute the ground-truth tangent bases (off by default: (n, D, d) floats).
    """
    if name not in BENCHMARK_MANIFOLDS:
        raise ValueError(
            f"unknown benchmark manifold {name!r}; choose from {sorted(BENCHMARK_MANIFOLDS)}"
        )
    spec = BENCHMARK_MANIFOLDS[name]
    check_common(n, ambient_dim, noise)
    rng = as_rng(random_state)
    parts = spec.sample(rng, n, spec.d, spec.D)
    if callable(parts.get("tangents")):  # (n, D, d) floats: built only when asked for
        parts["tangents"] = parts["tangents"]() if tangents else None
    return finish(
        name,
        spec.d,
        rng,
        with_tangents=tangents,
        ambient_dim=ambient_dim,
        rotate=rotate,
        noise=noise,
        description=spec.description,
        **parts,
    )


def benchmark_manifolds(
    n: int = 2500,
    *,
    noise: float = 0.0,
    tangents: bool = False,
    random_state: RandomState = None,
    names: list[str] | None = None,
) -> dict[str, SampledManifold]:
    """Sample all 24 benchmark manifolds (or ``names``), one seeded stream for the whole set."""
    rng = as_rng(random_state)
    chosen = list(BENCHMARK_MANIFOLDS) if names is None else list(names)
    return {
        k: benchmark_manifold(k, n, noise=noise, tangents=tangents, random_state=rng)
        for k in chosen
    }
