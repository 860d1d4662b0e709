"""The result type of every generator, and the shared finishing steps.

A generator samples intrinsic parameters ``theta`` of shape (n_samples, d), maps them through a
smooth parametrisation ``phi`` into ``R^D0``, and hands both to :func:`finish`, which

1. evaluates ``phi`` and, if asked, its Jacobian (``torch.func``: exact, not finite differences)
   and orthonormalises it into tangent bases with deterministic signs;
2. optionally pads to ``ambient_dim`` and applies a random rotation (same map for the tangents;
   by default a rotation is applied exactly when ``ambient_dim`` is given);
3. optionally adds isotropic Gaussian noise of standard deviation ``noise`` in the ambient space
   (the tangents stay those of the clean manifold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from geomsae.neighbors.checks import check_positive_int

__all__ = ["SampledManifold", "as_rng", "finish", "orthonormal_columns", "random_embedding"]

RandomState = int | np.random.Generator | None


@dataclass(frozen=True, repr=False)
class SampledManifold:
    """Points sampled on a manifold of known dimension, with its ground truth.

    Attributes
    ----------
    X : array of shape (n_samples, ambient_dim)
        The points (noise included).
    d : int
        True intrinsic dimension.
    name : str
        Generator name (``"sphere"``, ``"M7_Roll"``, ...).
    tangents : array of shape (n_samples, ambient_dim, d) or None
        Orthonormal basis of the tangent space of the clean manifold at each point (columns),
        signs fixed so the basis is the QR factor of the parametrisation's Jacobian with a
        positive diagonal. May be a read-only broadcast view when all points share one tangent
        space (flat data). None where not computed.
    coordinates : array of shape (n_samples, d) or None
        Intrinsic parameters the points were generated from (angles, roll parameter, ...),
        i.e. ground-truth coordinate functions. None where the manifold has no global chart.
    embedding : array of shape (D0, ambient_dim) or None
        Orthonormal-row matrix applied to the original ``R^D0`` points (a random rotation, or
        ``eye(D0, ambient_dim)`` when only padded; None when neither).
    noise : float
        Standard deviation of the isotropic Gaussian noise added in the ambient space.
    description : str
        One line about the manifold.
    """

    X: np.ndarray
    d: int
    name: str
    tangents: np.ndarray | None = None
    coordinates: np.ndarray | None = None
    embedding: np.ndarray | None = None
    noise: float = 0.0
    description: str = ""

    @property
    def n_samples(self) -> int:
        return int(self.X.shape[0])

    @property
    def ambient_dim(self) -> int:
        return int(self.X.shape[1])

    def __repr__(self) -> str:
        return (
            f"SampledManifold(name={self.name!r}, n_samples={self.n_samples}, "
            f"ambient_dim={self.ambient_dim}, d={self.d}, noise={self.noise}, "
            f"tangents={'yes' if self.tangents is not None else 'no'}, "
            f"coordinates={'yes' if self.coordinates is not None else 'no'})"
        )


def as_rng(random_state: RandomState) -> np.random.Generator:
    """A numpy ``Generator`` from an int seed, a Generator (used as is) or None (fresh entropy)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if random_state is None or isinstance(random_state, (int, np.integer)):
        return np.random.default_rng(random_state)
    raise ValueError(
        f"random_state must be an int, a numpy Generator or None; got {type(random_state)}"
    )


def orthonormal_columns(J: np.ndarray | torch.Tensor) -> np.ndarray:
    """Orthonormalise a batch of (D, d) matrices column-wise, with positive diagonal of R.

    Parameters
    ----------
    J : array of shape (n, D, d) with d <= D

    Returns
    -------
    array of shape (n, D, d), float64
        ``Q`` of the thin QR factorisation, columns flipped so ``diag(R) >= 0`` (deterministic).
    """
    Jt = torch.as_tensor(np.asarray(J), dtype=torch.float64)
    Q, R = torch.linalg.qr(Jt, mode="reduced")
    signs = torch.sign(torch.diagonal(R, dim1=-2, dim2=-1))
    signs = torch.where(signs == 0, torch.ones_like(signs), signs)
    return (Q * signs[..., None, :]).numpy()


def random_embedding(d0: int, ambient_dim: int, rng: np.random.Generator) -> np.ndarray:
    """A random (d0, ambient_dim) matrix with orthonormal rows (Haar-distributed)."""
    if ambient_dim < d0:
        raise ValueError(f"ambient_dim={ambient_dim} is below the manifold's own {d0} dimensions")
    G = rng.standard_normal((ambient_dim, d0))
    Q, R = np.linalg.qr(G)
    Q = Q * np.sign(np.diag(R))  # Haar measure needs the sign fix
    return Q.T


def check_common(n: int, ambient_dim: int | None, noise: float) -> None:
    """The arguments every generator shares; called before sampling."""
    check_positive_int(n=n)
    if ambient_dim is not None:
        check_positive_int(ambient_dim=ambient_dim)
    if not isinstance(noise, (int, float, np.integer, np.floating)) or not (
        np.isfinite(noise) and noise >= 0
    ):
        raise ValueError(f"noise must be a finite number >= 0; got {noise!r}")


def check_positive(**values: float) -> None:
    """A ``ValueError`` for any shape parameter that is not a finite number > 0."""
    for name, v in values.items():
        if not isinstance(v, (int, float, np.integer, np.floating)) or not (
            np.isfinite(v) and v > 0
        ):
            raise ValueError(f"{name} must be a finite number > 0; got {v!r}")


def finish(
    name: str,
    d: int,
    rng: np.random.Generator,
    *,
    theta: np.ndarray | None = None,
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None,
    X: np.ndarray | None = None,
    tangents: np.ndarray | None = None,
    coordinates: np.ndarray | None = None,
    with_tangents: bool = True,
    ambient_dim: int | None = None,
    rotate: bool | None = None,
    noise: float = 0.0,
    description: str = "",
) -> SampledManifold:
    """Evaluate, embed and perturb a sample; see the module docstring.

    Either ``theta`` and ``phi`` (a per-sample torch map from shape (d,) to (D0,); ``X`` and,
    when ``with_tangents``, the tangents are computed from it), or ``X`` (and optionally
    ``tangents``) directly. ``rotate=None`` rotates exactly when ``ambient_dim`` is given;
    ``rotate=False`` with a larger ``ambient_dim`` pads with zeros only.
    """
    check_common(len(theta) if X is None else len(X), ambient_dim, noise)
    if X is None:
        th = torch.as_tensor(theta, dtype=torch.float64)
        X = torch.func.vmap(phi)(th).numpy()
        if with_tangents:
            J = torch.func.vmap(torch.func.jacfwd(phi))(th)  # (n, D0, d)
            tangents = orthonormal_columns(J)
    if not with_tangents:
        tangents = None
    X = np.asarray(X, dtype=np.float64)
    d0 = X.shape[1]
    target = d0 if ambient_dim is None else int(ambient_dim)
    if target < d0:
        raise ValueError(f"ambient_dim={target} is below the manifold's own {d0} dimensions")
    if rotate is None:
        rotate = ambient_dim is not None
    embedding = None
    if rotate:
        embedding = random_embedding(d0, target, rng)
    elif target > d0:
        embedding = np.eye(d0, target)
    if embedding is not None:
        X = X @ embedding
        if tangents is not None:
            if tangents.strides[0] == 0:  # one shared tangent space: keep it a view
                shared = np.einsum("kd,ka->ad", tangents[0], embedding)
                tangents = np.broadcast_to(shared, (len(X), *shared.shape))
            else:
                tangents = np.einsum("nkd,ka->nad", tangents, embedding)
    if noise > 0:
        X = X + noise * rng.standard_normal(X.shape)
    return SampledManifold(
        X=X,
        d=int(d),
        name=name,
        tangents=tangents,
        coordinates=None if coordinates is None else np.asarray(coordinates, dtype=np.float64),
        embedding=embedding,
        noise=float(noise),
        description=description,
    )
