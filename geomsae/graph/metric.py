"""Riemannian metric of an embedding (Perrault-Joncas & Meila 2013; megaman's ``rmetric``).

For an embedding ``Y`` (shape ``(n_samples, s)``) of points sampled from a manifold and a
Laplacian ``L`` that approximates the Laplace-Beltrami operator, the **dual metric** at point i is

    H_i^{kl} = -1/2 [ L(y_k y_l) - y_k L(y_l) - y_l L(y_k) ]_i

(the minus sign because geomsae's ``L`` approximates ``-Delta``; megaman's negative Laplacian
has ``+1/2``). It is the push-forward of the inverse of the manifold's metric: ``H_i`` is
``s x s``, symmetric positive semi-definite of rank ``d``, and ``H_i = I_d`` when the embedding is
an isometry onto ``R^d``. The **metric** ``G_i`` is the pseudo-inverse of ``H_i`` restricted to
its top ``n_dim`` eigen-directions. Use the scaled geometric Laplacian
(``laplacian_matrix(K, "geometric", scaling_epps=eps)``) for consistent values.

For any ``L`` this equals ``-1/2 sum_j L_ij (y_j - y_i)(y_j - y_i)^T + 1/2 r_i y_i y_i^T`` with
``r_i`` the i-th row sum: when the rows sum to zero, a kernel-weighted covariance of the
displacements. That form is what is computed (blocked over rows): it is exact under a
translation of ``Y`` (the expanded one lost ~5 digits at ``|y| ~ 2000``), and the ``r_i`` term
keeps it equal to the formula above for Laplacians whose rows do not sum to zero.
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse as sp

from geomsae.neighbors import as_indices

logger = logging.getLogger(__name__)

__all__ = ["RiemannianMetric", "riemannian_metric"]


class RiemannianMetric(NamedTuple):
    """Result of :func:`riemannian_metric`.

    Attributes
    ----------
    dual : ndarray of shape (n_queries, s, s)
        Dual metric ``H_i`` in embedding coordinates.
    metric : ndarray of shape (n_queries, s, s)
        ``G_i``: pseudo-inverse of ``H_i`` on its top ``n_dim`` eigen-directions (rank ``n_dim``).
    eigenvalues : ndarray of shape (n_queries, s)
        Eigenvalues of ``H_i``, descending (the squared local stretch of the embedding).
    eigenvectors : ndarray of shape (n_queries, s, s)
        Matching eigenvectors as columns; the first ``n_dim`` span the embedded tangent space.
    indices : ndarray of shape (n_queries,)
        Rows the metric was computed at.
    """

    dual: np.ndarray
    metric: np.ndarray
    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    indices: np.ndarray


def riemannian_metric(
    Y: Any,
    laplacian: Any,
    *,
    n_dim: int | None = None,
    indices: Any | None = None,
    block_bytes: int = 64 * 2**20,
) -> RiemannianMetric:
    """Dual metric ``H`` and metric ``G`` of the embedding ``Y`` at every point (or ``indices``).

    Parameters
    ----------
    Y : array of shape (n_samples, s)
        Embedding coordinates.
    laplacian : scipy.sparse matrix of shape (n_samples, n_samples)
        A positive semi-definite-sign Laplacian from :func:`geomsae.graph.laplacian_matrix`
        (pass ``-L`` if you hold megaman's).
    n_dim : int, optional
        Intrinsic dimension used to invert ``H`` (default ``s``).
    indices : int array, optional
        Rows to compute at (megaman's ``riemann_metric_lazy``); default all.
    block_bytes : int
        Memory budget of the per-edge outer products.

    Returns
    -------
    RiemannianMetric
    """
    Y = np.asarray(Y.detach().cpu() if hasattr(Y, "detach") else Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    if Y.ndim != 2 or not np.isfinite(Y).all():
        raise ValueError(f"Y must be a finite array of shape (n_samples, s); got shape {Y.shape}")
    n, s = Y.shape
    if not sp.issparse(laplacian) or laplacian.shape != (n, n):
        raise ValueError(f"laplacian must be a scipy.sparse matrix of shape ({n}, {n})")
    if not np.isfinite(laplacian.data).all():
        raise ValueError("laplacian contains NaN or Inf; check the affinity's bandwidth")
    if n_dim is not None and (isinstance(n_dim, bool) or not isinstance(n_dim, (int, np.integer))):
        raise ValueError(f"n_dim must be an integer in [1, s = {s}]; got {n_dim!r}")
    n_dim = s if n_dim is None else int(n_dim)
    if not 1 <= n_dim <= s:
        raise ValueError(f"n_dim must be in [1, s = {s}]; got {n_dim}")
    idx = np.arange(n) if indices is None else as_indices(indices, n).numpy()
    Lr = sp.csr_matrix(laplacian)[idx]
    Yi = Y[idx]
    row_sums = np.asarray(Lr.sum(axis=1)).ravel()
    # rows that sum to 0 up to rounding (every Laplacian here but the symmetric normalised
    # one): their rounding would otherwise come back as r_i y_i y_i^T at large |y|
    row_sums[np.abs(row_sums) <= 1e-12 * np.asarray(abs(Lr).sum(axis=1)).ravel()] = 0.0
    # sum_j L_ij (y_j - y_i)(y_j - y_i)^T, accumulated edge by edge in row blocks
    S = np.zeros((idx.size, s, s))
    per_row = max(1, Lr.nnz // max(idx.size, 1)) * s * s * 8
    bs = max(1, block_bytes // per_row)
    for a in range(0, idx.size, bs):
        blk = Lr[a : a + bs].tocoo()
        yc = Y[blk.col] - Yi[a + blk.row]
        np.add.at(S, a + blk.row, blk.data[:, None, None] * yc[:, :, None] * yc[:, None, :])
    H = -0.5 * S + 0.5 * row_sums[:, None, None] * Yi[:, :, None] * Yi[:, None, :]
    H = 0.5 * (H + H.transpose(0, 2, 1))
    vals, vecs = np.linalg.eigh(H)
    vals, vecs = vals[:, ::-1], vecs[:, :, ::-1]
    top = vals[:, :n_dim]
    if (top <= 0).any():
        logger.warning(
            "riemannian_metric: %d points have a non-positive eigenvalue among the top %d of H; "
            "their G is set to 0 along those directions",
            int((top <= 0).any(1).sum()),
            n_dim,
        )
    inv = np.where(top > 0, 1.0 / np.where(top > 0, top, 1.0), 0.0)
    U = vecs[:, :, :n_dim]
    G = np.einsum("mik,mk,mjk->mij", U, inv, U)
    return RiemannianMetric(H, G, vals, vecs, idx)
