"""Comparing and averaging subspaces: principal angles, Grassmann distances, Karcher means.

A ``d``-dimensional subspace of ``R^D`` is represented by a matrix of shape ``(D, d)`` with
orthonormal columns (a point of the Stiefel manifold); any other orthonormal basis of the same
span is the same point of the Grassmann manifold ``Gr(D, d)``, and every function here gives the
same answer for both. Leading dimensions broadcast, so ``(n, D, d)`` stacks of tangent bases (the
``bases`` of :class:`geomsae.tangent.TangentSpaces`) are compared point by point.

* :func:`principal_angles` -- the angles ``0 <= theta_1 <= ... <= theta_d <= pi/2`` between two
  subspaces, accurate for small angles too (cosines from ``A^T B``, sines from ``B - A A^T B``;
  Bjorck & Golub 1973, Knyazev & Argentati 2002).
* :func:`grassmann_distance` -- geodesic ``||theta||_2`` (the distance of pymanopt's
  ``Grassmann.dist``), chordal ``||sin theta||_2`` or projection ``max sin theta``.
* :func:`karcher_mean` -- the Frechet/Karcher mean ``argmin_M sum_j w_j dist(M, X_j)^2``, by
  Riemannian gradient descent with unit step, ``M <- Exp_M(sum_j w_j Log_M(X_j))``, using the
  exponential and logarithm maps of :class:`pymanopt.manifolds.Grassmann`; started from the
  chordal (projector-average) mean.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch
from pymanopt.manifolds import Grassmann

from geomsae.neighbors.checks import check_positive_int, check_real

logger = logging.getLogger(__name__)

__all__ = [
    "KarcherMean",
    "check_orthonormal",
    "fix_signs",
    "grassmann_distance",
    "karcher_mean",
    "principal_angles",
]


def _tensor(A: Any) -> torch.Tensor:
    t = (
        A
        if isinstance(A, torch.Tensor)
        else torch.from_numpy(np.ascontiguousarray(A, dtype=np.float64))
    )
    return t.to(torch.float64)


def check_orthonormal(A: Any, *, name: str = "A", atol: float = 1e-6) -> None:
    """Raise ``ValueError`` unless ``A`` (shape ``(..., D, d)``) has orthonormal columns."""
    t = _tensor(A)
    if t.ndim < 2:
        raise ValueError(f"{name} must have shape (..., D, d); got shape {tuple(t.shape)}")
    D, d = t.shape[-2:]
    if d > D or d < 1:
        raise ValueError(f"{name} must have 1 <= d <= D columns; got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or Inf")
    gram = t.transpose(-1, -2) @ t
    err = (
        float((gram - torch.eye(d, dtype=t.dtype, device=t.device)).abs().max()) if t.numel() else 0
    )
    if err > atol:
        raise ValueError(
            f"{name} must have orthonormal columns (max |A^T A - I| = {err:.2e}); "
            f"orthonormalise it first, e.g. Q, _ = np.linalg.qr({name})"
        )


def fix_signs(bases: torch.Tensor) -> torch.Tensor:
    """Flip columns so that each column's entry of largest magnitude is positive (deterministic).

    ``bases`` has shape ``(..., D, d)``; ties in magnitude go to the lowest row index.
    """
    idx = bases.abs().argmax(dim=-2, keepdim=True)  # (..., 1, d)
    signs = torch.sign(bases.gather(-2, idx))
    return bases * torch.where(signs == 0, torch.ones_like(signs), signs)


def principal_angles(A: Any, B: Any, *, check: bool = True) -> Any:
    """Principal angles between the column spans of ``A`` and ``B``.

    Parameters
    ----------
    A : array or tensor of shape (..., D, p)
        Orthonormal columns.
    B : array or tensor of shape (..., D, q)
        Orthonormal columns; leading dimensions broadcast against ``A``'s.
    check : bool
        Verify orthonormality (raises ``ValueError`` otherwise).

    Returns
    -------
    array or tensor of shape (..., min(p, q))
        Angles in radians, ascending, in ``[0, pi/2]``. numpy in -> numpy out.

    Examples
    --------
    >>> import numpy as np
    >>> A = np.eye(3)[:, :1]
    >>> B = np.array([[np.cos(0.3)], [np.sin(0.3)], [0.0]])
    >>> principal_angles(A, B).round(6)
    array([0.3])
    """
    like_torch = isinstance(A, torch.Tensor)
    if check:
        check_orthonormal(A, name="A")
        check_orthonormal(B, name="B")
    a, b = _tensor(A), _tensor(B)
    if b.device != a.device:
        b = b.to(a.device)
    if a.shape[-2] != b.shape[-2]:
        raise ValueError(f"A and B live in different spaces: D = {a.shape[-2]} vs {b.shape[-2]}")
    if b.shape[-1] > a.shape[-1]:  # angles are symmetric; keep q <= p below
        a, b = b, a
    m = a.transpose(-1, -2) @ b  # (..., p, q)
    cos = torch.linalg.svdvals(m).clamp(0.0, 1.0)  # descending
    r = b - a @ m  # component of B orthogonal to span(A)
    sin = torch.linalg.svdvals(r).clamp(0.0, 1.0).flip(-1)  # ascending, pairs with cos
    # arccos is ill-conditioned near 0 and arcsin near pi/2: use each where it is accurate
    theta = torch.where(cos * cos > 0.5, torch.arcsin(sin), torch.arccos(cos))
    return theta if like_torch else theta.cpu().numpy()


def grassmann_distance(A: Any, B: Any, *, metric: str = "geodesic", check: bool = True) -> Any:
    """Distance between subspaces on the Grassmann manifold, from the principal angles.

    Parameters
    ----------
    A, B : arrays or tensors of shape (..., D, d)
        Orthonormal bases; leading dimensions broadcast.
    metric : {"geodesic", "chordal", "projection"}
        ``||theta||_2`` (arc length; equals pymanopt's ``Grassmann.dist``), ``||sin theta||_2``
        (Frobenius distance of the projectors divided by sqrt 2) or ``max_k sin theta_k``
        (spectral norm of the projector difference).
    check : bool
        Verify orthonormality.

    Returns
    -------
    array or tensor of shape (...)
    """
    theta = principal_angles(A, B, check=check)
    t = _tensor(theta)
    if metric == "geodesic":
        out = torch.linalg.vector_norm(t, dim=-1)
    elif metric == "chordal":
        out = torch.linalg.vector_norm(torch.sin(t), dim=-1)
    elif metric == "projection":
        out = torch.sin(t).amax(dim=-1)
    else:
        raise ValueError(f"metric must be 'geodesic', 'chordal' or 'projection'; got {metric!r}")
    return out if isinstance(theta, torch.Tensor) else out.numpy()


class KarcherMean(NamedTuple):
    """Result of :func:`karcher_mean`.

    Attributes
    ----------
    mean : ndarray of shape (..., D, d)
        Orthonormal basis of the mean subspace (deterministic column signs).
    n_iter : int
        Gradients evaluated (the steps taken, plus one).
    gradient_norm : ndarray of shape (...)
        Norm of the Riemannian gradient ``sum_j w_j Log_M(X_j)`` of each group at ``mean``.
    converged : bool
        Whether every group reached ``gradient_norm <= tol``.
    """

    mean: np.ndarray
    n_iter: int
    gradient_norm: np.ndarray
    converged: bool


def karcher_mean(
    bases: Any,
    weights: Any | None = None,
    *,
    max_iter: int = 50,
    tol: float = 1e-10,
    check: bool = True,
) -> KarcherMean:
    """Weighted Karcher (Frechet) mean of subspaces, group by group.

    Parameters
    ----------
    bases : array of shape (..., m, D, d)
        ``m`` orthonormal bases per group; the mean is taken over axis ``-3``.
    weights : array of shape (..., m), optional
        Non-negative weights per group (normalised to sum 1); uniform by default. Zero weights
        drop a member (how padded neighbourhoods are averaged).
    max_iter : int
        Maximum number of gradient steps.
    tol : float
        Stop when the Riemannian gradient norm of every group is below ``tol``.
    check : bool
        Verify orthonormality of ``bases``.

    Returns
    -------
    KarcherMean

    Notes
    -----
    The step ``M <- Exp_M(sum_j w_j Log_M(X_j))`` is Riemannian gradient descent with unit step
    on ``f(M) = 1/2 sum_j w_j dist(M, X_j)^2``; it converges when the members lie in a geodesic
    ball of radius below ``pi/4`` (Afsari 2011), which neighbouring tangent spaces do. The maps are
    pymanopt's (``Grassmann.exp``, ``Grassmann.log``), evaluated on the flattened stack.
    """
    check_positive_int(max_iter=max_iter)
    tol = check_real("tol", tol, inclusive=True)
    X = np.asarray(bases.detach().cpu() if isinstance(bases, torch.Tensor) else bases, float)
    if X.ndim < 3:
        raise ValueError(f"bases must have shape (..., m, D, d); got shape {X.shape}")
    if check:
        check_orthonormal(X, name="bases")
    *lead, m, D, d = X.shape
    X = X.reshape(-1, m, D, d)
    g = X.shape[0]
    if weights is None:
        w = np.full((g, m), 1.0 / m)
    else:
        w = np.asarray(weights, dtype=float)
        w = w.reshape(-1, m) if w.size == g * m else w
        if w.shape != (g, m) or not np.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"weights must be finite, >= 0 and of shape {(*lead, m)}")
        tot = w.sum(1, keepdims=True)
        if (tot <= 0).any():
            raise ValueError("every group needs a positive total weight")
        w = w / tot
    # chordal mean: top-d eigenvectors of the weighted average projector
    P = np.einsum("gm,gmij,gmkj->gik", w, X, X)
    lam, vec = np.linalg.eigh(P)
    M = vec[..., ::-1][..., :d].copy()
    if d < D:
        gap = lam[..., D - d] - lam[..., D - d - 1]  # between the d-th and (d+1)-th largest
        if (gap <= 1e-8 * lam[..., -1]).any():
            logger.warning(
                "karcher_mean: %d group(s) have no unique mean (the average projector's d-th "
                "and (d+1)-th eigenvalues tie, e.g. equally weighted orthogonal subspaces); "
                "an arbitrary one of the means is returned",
                int((gap <= 1e-8 * lam[..., -1]).sum()),
            )
    man = Grassmann(D, d, k=max(g * m, 2))
    Xf = X.reshape(g * m, D, d)
    dropped = (w.reshape(g * m) == 0)[:, None, None]  # their logarithm is never needed
    n_iter, gnorm = 0, np.full(g, np.inf)
    for n_iter in range(1, max_iter + 1):  # noqa: B007 - n_iter is reported
        Mf = np.repeat(M, m, axis=0)
        Xf = np.where(dropped, Mf, Xf)  # a dropped member sits at the mean: Log = 0
        try:
            logs = man.log(Mf, Xf).reshape(g, m, D, d)
        except np.linalg.LinAlgError as exc:
            raise ValueError(
                "karcher_mean: a member is orthogonal to the current mean (a principal angle of "
                "pi/2), where the logarithm is undefined; average subspaces that are closer"
            ) from exc
        grad = np.einsum("gm,gmij->gij", w, logs)
        gnorm = np.linalg.norm(grad, axis=(1, 2))
        if (gnorm <= tol).all() or n_iter == max_iter:
            break  # (at max_iter: no step, so gradient_norm is that of the returned mean)
        M = man.exp(M, grad)
    converged = bool((gnorm <= tol).all())
    if not converged:
        logger.warning(
            "karcher_mean: not converged after %d steps (max grad %.2e)", n_iter, gnorm.max()
        )
    M = fix_signs(torch.from_numpy(np.ascontiguousarray(M))).numpy()
    return KarcherMean(M.reshape(*lead, D, d), n_iter, gnorm.reshape(lead), converged)
