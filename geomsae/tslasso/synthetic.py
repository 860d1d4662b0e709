"""Synthetic TSLasso problems with known answers (Koelle et al. 2024, section 5 experiments).

A manifold ``x = phi(theta)`` in ``R^{D0}`` is padded to ``ambient_dim`` dimensions and randomly
rotated. The gradient of an intrinsic coordinate ``theta_k`` seen as a function on the manifold is
the tangent vector ``J (J^T J)^{-1} e_k`` with ``J = d x / d theta``; an ambient coordinate ``x_k``
has gradient ``e_k``. So the true support (the intrinsic coordinates) is known.

* :func:`swiss_roll_dictionary` -- ``(t cos t, y, t sin t)``; dictionary ``t, y, x_1..x_B``.
* :func:`torus_dictionary` -- ring torus; dictionary: the two angles plus distractors
  ``x_k + alpha sin(pi theta_j)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CoordinateDictionary:
    """Points, a dictionary's ambient gradients, exact tangent bases and the true support.

    Attributes
    ----------
    X : ndarray of shape (n_samples, ambient_dim)
        Points (noise included).
    gradients : ndarray of shape (n_samples, n_functions, ambient_dim)
        Ambient gradients of the dictionary functions at the clean points.
    bases : ndarray of shape (n_samples, ambient_dim, d)
        Orthonormal bases of the clean manifold's tangent spaces.
    coordinates : ndarray of shape (n_samples, d)
        Intrinsic coordinates ``theta``.
    true_support : tuple of int
        Dictionary indices of the intrinsic coordinates.
    names : tuple of str
        A name per function.
    """

    X: np.ndarray
    gradients: np.ndarray
    bases: np.ndarray
    coordinates: np.ndarray
    true_support: tuple[int, ...]
    names: tuple[str, ...]

    @property
    def d(self) -> int:
        return self.bases.shape[2]


def _rotation(d0: int, ambient_dim: int, rng: np.random.Generator) -> np.ndarray:
    """(d0, ambient_dim) with orthonormal rows: pad with zeros, then a Haar-random rotation."""
    if ambient_dim < d0:
        raise ValueError(f"ambient_dim must be >= {d0}, got {ambient_dim}")
    Q, R = np.linalg.qr(rng.standard_normal((ambient_dim, ambient_dim)))
    Q = Q * np.sign(np.diag(R))
    return Q[:, :d0].T


def _embed(x0: np.ndarray, jac0: np.ndarray, ambient_dim: int, rng: np.random.Generator):
    """Rotate points (n, D0) and Jacobians (n, D0, d); coordinate gradients and tangent bases."""
    E = _rotation(x0.shape[1], ambient_dim, rng)
    X = x0 @ E
    J = np.einsum("nkd,kb->nbd", jac0, E)  # (n, B, d)
    metric = np.einsum("nbd,nbe->nde", J, J)
    coord_grads = np.einsum("nbd,nde->neb", J, np.linalg.inv(metric))  # (n, d, B)
    bases, _ = np.linalg.qr(J)
    return X, coord_grads, bases


def _noisy(X: np.ndarray, noise: float, rng: np.random.Generator) -> np.ndarray:
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    return X + noise * rng.standard_normal(X.shape) if noise > 0 else X


def swiss_roll_dictionary(
    n_samples: int = 10_000,
    ambient_dim: int = 49,
    noise: float = 0.0,
    random_state: int | None = 0,
) -> CoordinateDictionary:
    """The paper's Swiss roll check: ``p = 2 + ambient_dim`` functions ``t, y, x_1..x_B``.

    ``t ~ U[1.5 pi, 4.5 pi]``, ``y ~ U[0, 21]``; true support ``(0, 1)``.
    """
    rng = np.random.default_rng(random_state)
    t = 1.5 * np.pi * (1 + 2 * rng.random(n_samples))
    y = 21.0 * rng.random(n_samples)
    x0 = np.stack([t * np.cos(t), y, t * np.sin(t)], axis=1)
    jac0 = np.zeros((n_samples, 3, 2))
    jac0[:, 0, 0] = np.cos(t) - t * np.sin(t)
    jac0[:, 2, 0] = np.sin(t) + t * np.cos(t)
    jac0[:, 1, 1] = 1.0
    X, coord_grads, bases = _embed(x0, jac0, ambient_dim, rng)
    eye = np.broadcast_to(np.eye(ambient_dim), (n_samples, ambient_dim, ambient_dim))
    gradients = np.concatenate([coord_grads, eye], axis=1)
    names = ("t", "y", *(f"x{k}" for k in range(ambient_dim)))
    return CoordinateDictionary(
        _noisy(X, noise, rng), gradients, bases, np.stack([t, y], 1), (0, 1), names
    )


def torus_dictionary(
    n_samples: int = 10_000,
    ambient_dim: int = 48,
    n_distractors: int = 36,
    alpha: float = 1.0,
    r1: float = 1.0,
    r2: float = 0.5,
    noise: float = 0.0,
    random_state: int | None = 0,
) -> CoordinateDictionary:
    """Ring torus with the two angles and distractors ``x_k + alpha sin(pi theta_j)``.

    Distractor ``m`` uses ambient coordinate ``k = m mod ambient_dim`` and angle
    ``j = m mod 2``. True support ``(0, 1)``. Angles are uniform (not area-uniform).
    """
    rng = np.random.default_rng(random_state)
    u, v = 2 * np.pi * rng.random((2, n_samples))
    ring = r1 + r2 * np.cos(u)
    x0 = np.stack([ring * np.cos(v), ring * np.sin(v), r2 * np.sin(u)], axis=1)
    jac0 = np.zeros((n_samples, 3, 2))
    jac0[:, 0, 0] = -r2 * np.sin(u) * np.cos(v)
    jac0[:, 1, 0] = -r2 * np.sin(u) * np.sin(v)
    jac0[:, 2, 0] = r2 * np.cos(u)
    jac0[:, 0, 1] = -ring * np.sin(v)
    jac0[:, 1, 1] = ring * np.cos(v)
    X, coord_grads, bases = _embed(x0, jac0, ambient_dim, rng)
    theta = np.stack([u, v], axis=1)
    m = np.arange(n_distractors)
    k, j = m % ambient_dim, m % 2
    # grad(x_k + alpha sin(pi theta_j)) = e_k + alpha pi cos(pi theta_j) grad theta_j
    distract = alpha * np.pi * np.cos(np.pi * theta[:, j])[:, :, None] * coord_grads[:, j]
    distract[:, m, k] += 1.0
    gradients = np.concatenate([coord_grads, distract], axis=1)
    names = ("u", "v", *(f"x{a}+sin(pi {'uv'[b]})" for a, b in zip(k, j)))
    return CoordinateDictionary(_noisy(X, noise, rng), gradients, bases, theta, (0, 1), names)
