"""Graph Laplacians of an affinity matrix (megaman's five, with a positive sign).

Sign convention: **geomsae's Laplacians are positive semi-definite** (``L = I - P`` and
``L = D - W``), the convention of scipy and scikit-learn, so eigenvalues are ``>= 0`` and the
scaled geometric Laplacian approximates ``-Delta`` (the positive Laplace-Beltrami operator:
eigenvalues ``k^2`` on the unit circle). megaman returns the **negative** of each of these
matrices (``P - I``); multiply by -1 to compare.

With ``W`` the (symmetrised) affinity and ``D = diag(W 1)`` its degrees:

=====================  ==========================================================  ==========
method                 matrix                                                      row sums 0
=====================  ==========================================================  ==========
``unnormalized``       ``D - W``                                                   yes (sym.)
``randomwalk``         ``I - D^-1 W``                                              yes
``symmetricnormalized````I - D^-1/2 W D^-1/2``                                     no (sym.)
``renormalized``       ``W~ = D^-a W D^-a``, then ``I - D~^-1 W~`` (a = exponent)  yes
``geometric``          ``renormalized`` with ``a = 1`` (Coifman & Lafon 2006)      yes
=====================  ==========================================================  ==========

``scaling_epps=eps`` multiplies the result by ``4 / eps^2``: with the kernel
``exp(-d^2 / eps^2)`` the scaled geometric Laplacian converges to ``-Delta`` whatever the sampling
density. Zero degrees are replaced by 1 (isolated points), as in megaman.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from geomsae.neighbors.checks import check_positive_int, check_real

__all__ = ["LAPLACIANS", "Spectrum", "laplacian_matrix", "laplacian_spectrum"]


def _degrees(W: sp.csr_matrix) -> np.ndarray:
    deg = np.asarray(W.sum(axis=1)).ravel()
    deg[deg == 0] = 1.0
    return deg


def _renormalize(W: sp.csr_matrix, exponent: float) -> sp.csr_matrix:
    s = sp.diags(_degrees(W) ** -exponent)
    return (s @ W @ s).tocsr()


def _random_walk_parts(W: sp.csr_matrix, exponent: float | None):
    """Symmetric kernel ``W~`` and its degrees for the random-walk family."""
    Wt = W if exponent is None else _renormalize(W, exponent)
    return Wt, _degrees(Wt)


def _unnormalized(W, exponent):
    # raw degrees: an isolated vertex has a zero row (its own component, eigenvalue 0)
    return (sp.diags(np.asarray(W.sum(axis=1)).ravel()) - W).tocsr()


def _randomwalk(W, exponent):
    Wt, deg = _random_walk_parts(W, None)
    return (sp.identity(W.shape[0]) - sp.diags(1.0 / deg) @ Wt).tocsr()


def _symmetricnormalized(W, exponent):
    s = sp.diags(_degrees(W) ** -0.5)
    return (sp.identity(W.shape[0]) - s @ W @ s).tocsr()


def _renormalized(W, exponent):
    Wt, deg = _random_walk_parts(W, exponent)
    return (sp.identity(W.shape[0]) - sp.diags(1.0 / deg) @ Wt).tocsr()


def _geometric(W, exponent):
    return _renormalized(W, 1.0)


LAPLACIANS: dict[str, Callable[[sp.csr_matrix, float], sp.csr_matrix]] = {
    "geometric": _geometric,
    "randomwalk": _randomwalk,
    "symmetricnormalized": _symmetricnormalized,
    "unnormalized": _unnormalized,
    "renormalized": _renormalized,
}
"""Laplacian constructors by megaman's names; each maps (W, exponent) to a csr matrix."""

ROW_SUMS_ZERO = {"geometric", "randomwalk", "unnormalized", "renormalized"}
SYMMETRIC = {"unnormalized", "symmetricnormalized"}


def _check_affinity(affinity: Any, symmetrize: bool) -> sp.csr_matrix:
    if not sp.issparse(affinity):
        affinity = np.asarray(affinity, dtype=float)
        if affinity.ndim != 2:
            raise ValueError(f"affinity must be a 2-D matrix; got shape {affinity.shape}")
    W = sp.csr_matrix(affinity, dtype=float)
    if W.shape[0] != W.shape[1]:
        raise ValueError(f"affinity must be square; got shape {W.shape}")
    if not np.isfinite(W.data).all() or (W.data < 0).any():
        raise ValueError("affinity must hold finite values >= 0")
    return ((W + W.T) * 0.5).tocsr() if symmetrize else W


def laplacian_matrix(
    affinity: Any,
    method: str = "geometric",
    *,
    scaling_epps: float | None = None,
    renormalization_exponent: float = 1.0,
    symmetrize: bool = True,
) -> sp.csr_matrix:
    """Graph Laplacian of an affinity matrix (positive semi-definite sign; see module notes).

    Parameters
    ----------
    affinity : scipy.sparse matrix or array of shape (n_samples, n_samples)
        Non-negative affinities, e.g. from :func:`geomsae.graph.affinity_matrix`.
    method : str
        One of ``LAPLACIANS``: "geometric" (default), "randomwalk", "symmetricnormalized",
        "unnormalized", "renormalized".
    scaling_epps : float, optional
        Multiply by ``4 / scaling_epps^2`` (pass the kernel bandwidth ``eps``).
    renormalization_exponent : float
        The ``a`` of "renormalized" (``a = 1`` is "geometric"; ``a = 0`` is "randomwalk").
    symmetrize : bool
        Replace the affinity by ``(W + W^T) / 2`` first (megaman does).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_samples)
    """
    if method not in LAPLACIANS:
        raise ValueError(f"method must be one of {sorted(LAPLACIANS)}; got {method!r}")
    W = _check_affinity(affinity, symmetrize)
    L = LAPLACIANS[method](W, renormalization_exponent)
    if scaling_epps is not None:
        L = L * _epps_factor(scaling_epps)
    L.sort_indices()
    return L


class Spectrum(NamedTuple):
    """Smallest eigenpairs of a Laplacian.

    Attributes
    ----------
    eigenvalues : ndarray of shape (n_eigenvalues,)
        Ascending (>= 0 up to rounding).
    eigenvectors : ndarray of shape (n_samples, n_eigenvalues)
        Right eigenvectors ``L v = lambda v`` (for the random-walk family, ``D~^-1/2 u`` of the
        symmetric form, normalised to unit Euclidean norm).
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray


def laplacian_spectrum(
    affinity: Any,
    n_eigenvalues: int,
    method: str = "geometric",
    *,
    scaling_epps: float | None = None,
    renormalization_exponent: float = 1.0,
    random_state: int | None = 0,
) -> Spectrum:
    """The ``n_eigenvalues`` smallest eigenpairs of :func:`laplacian_matrix`.

    The random-walk Laplacians ``I - D~^-1 W~`` are similar to the symmetric
    ``I - D~^-1/2 W~ D~^-1/2``, so all five spectra are real and computed with a symmetric
    solver (``scipy.sparse.linalg.eigsh`` on the normalised kernel, dense ``eigh`` for small
    graphs). Diffusion maps and Laplacian eigenmaps are the eigenvectors.
    """
    if method not in LAPLACIANS:
        raise ValueError(f"method must be one of {sorted(LAPLACIANS)}; got {method!r}")
    factor = 1.0 if scaling_epps is None else _epps_factor(scaling_epps)
    W = _check_affinity(affinity, True)
    n = W.shape[0]
    check_positive_int(n_eigenvalues=n_eigenvalues)
    if not 1 <= n_eigenvalues < n:
        raise ValueError(f"n_eigenvalues must be in [1, {n - 1}]; got {n_eigenvalues}")
    if method == "unnormalized":
        S, back, flip = laplacian_matrix(W, "unnormalized", symmetrize=False), None, False
    else:
        exponent = {"geometric": 1.0, "renormalized": renormalization_exponent}.get(method)
        Wt, deg = _random_walk_parts(W, exponent)
        s = sp.diags(deg**-0.5)
        S, flip = (s @ Wt @ s).tocsr(), True  # eigenvalues of L are 1 - those of S
        back = deg**-0.5 if method != "symmetricnormalized" else None
    if n <= 1000:
        vals, vecs = np.linalg.eigh(S.toarray())
        vals, vecs = (vals[::-1], vecs[:, ::-1]) if flip else (vals, vecs)
        vals, vecs = vals[:n_eigenvalues], vecs[:, :n_eigenvalues]
    else:  # shift-invert just outside the end of the spectrum we want (fast and robust)
        v0 = np.random.default_rng(random_state).standard_normal(n)
        diag = float(abs(S.diagonal()).mean())  # 0 only for an edgeless graph's L = 0
        sigma = 1.0 + 1e-6 if flip else -1e-6 * diag if diag > 0 else -1.0
        vals, vecs = spla.eigsh(S.tocsc(), k=n_eigenvalues, sigma=sigma, which="LM", v0=v0)
        order = np.argsort(-vals if flip else vals)
        vals, vecs = vals[order], vecs[:, order]
    if flip:
        vals = 1.0 - vals
    if back is not None:
        vecs = vecs * back[:, None]
        vecs /= np.linalg.norm(vecs, axis=0, keepdims=True)
    return Spectrum(vals * factor, vecs)


def _epps_factor(scaling_epps: float) -> float:
    """``4 / scaling_epps^2``, after checking that ``scaling_epps`` is a finite number > 0."""
    scaling_epps = check_real("scaling_epps", scaling_epps)
    factor = 4.0 / scaling_epps / scaling_epps
    if not 0.0 < factor < math.inf:
        raise ValueError(
            f"scaling_epps={scaling_epps!r} puts 4 / scaling_epps^2 outside float64's range; "
            "rescale the data (e.g. X / X.std()) and the bandwidth with it"
        )
    return factor
