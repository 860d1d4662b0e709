"""Neighbourhood graphs and Gaussian affinities (megaman conventions).

* :func:`adjacency_matrix` -- sparse matrix of Euclidean distances of the radius graph
  (``|x_i - x_j| <= radius``) or of the symmetrised k-NN graph (an edge when either point is
  among the other's ``n_neighbors`` nearest). The diagonal is not stored; duplicate points are
  explicit zeros, as in :func:`geomsae.neighbors.radius_neighbors`.
* :func:`affinity_matrix` -- ``K_ij = exp(-|x_i - x_j|^2 / eps^2)`` on the stored edges (no factor
  2 in the exponent), symmetrised as ``(K + K^T) / 2``, with ``K_ii = 1`` on the diagonal.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from geomsae.neighbors import check_points, knn, radius_neighbors
from geomsae.neighbors.checks import check_real

__all__ = ["adjacency_matrix", "affinity_matrix"]


def adjacency_matrix(
    X: Any,
    *,
    radius: float | None = None,
    n_neighbors: int | None = None,
    max_neighbors: int | None = None,
) -> sp.csr_matrix:
    """Symmetric distance graph of ``X`` (radius or k-NN).

    Parameters
    ----------
    X : array or tensor of shape (n_samples, D)
    radius : float, optional
        Keep the pairs with ``|x_i - x_j| <= radius``.
    n_neighbors : int, optional
        Keep the pairs where one point is among the ``n_neighbors`` nearest of the other.
    max_neighbors : int, optional
        With ``radius``: keep at most this many per row before symmetrising (see
        :func:`geomsae.neighbors.radius_neighbors`).

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_samples)
        Distances on the edges (explicit zeros for duplicates), no diagonal, symmetric.
    """
    if (radius is None) == (n_neighbors is None):
        raise ValueError("give exactly one of radius= or n_neighbors=")
    X = check_points(X)
    n = X.shape[0]
    if radius is not None:
        # always symmetrised: blocked distances i->j and j->i can differ in the last bit
        G = radius_neighbors(X, radius, max_neighbors=max_neighbors).tocoo()
        r, c, v = G.row, G.col, G.data
    else:
        nb = knn(X, n_neighbors)
        dist = np.asarray(nb.distances.cpu() if hasattr(nb.distances, "cpu") else nb.distances)
        ind = np.asarray(nb.indices.cpu() if hasattr(nb.indices, "cpu") else nb.indices)
        r = np.repeat(np.arange(n), ind.shape[1])
        c, v = ind.ravel(), dist.ravel()
    return _union(r, c, v, n)


def _union(r: np.ndarray, c: np.ndarray, v: np.ndarray, n: int) -> sp.csr_matrix:
    """Symmetric csr with the edges (r, c) and (c, r), each once, explicit zeros kept.

    An edge found in both directions gets the smaller of its two lengths, so the matrix is
    exactly symmetric even when the two were computed in different blocks.
    """
    rows, cols, vals = np.r_[r, c], np.r_[c, r], np.r_[v, v]
    key = rows.astype(np.int64) * n + cols
    key, first = np.unique(key, return_index=True)  # sorted by (row, col)
    rows, cols, vals = key // n, key % n, vals[first]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=n), out=indptr[1:])
    G = sp.csr_matrix((vals, cols, indptr), shape=(n, n))
    G.has_sorted_indices = True
    Gt = G.T.tocsr()  # same sparsity pattern as G, explicit zeros included
    Gt.sort_indices()
    G.data = np.minimum(G.data, Gt.data)
    return G


def affinity_matrix(adjacency: Any, bandwidth: float, *, symmetrize: bool = True) -> sp.csr_matrix:
    """Gaussian affinities on the edges of a distance graph.

    Parameters
    ----------
    adjacency : scipy.sparse matrix of shape (n_samples, n_samples)
        Distances on the edges (as returned by :func:`adjacency_matrix`); stored zeros are edges
        of length 0 (duplicates), stored diagonal entries are ignored.
    bandwidth : float
        ``eps`` in ``K = exp(-d^2 / eps^2)``.
    symmetrize : bool
        Return ``(K + K^T) / 2`` (megaman's symmetrisation; a no-op on symmetric graphs).

    Returns
    -------
    scipy.sparse.csr_matrix
        Affinities in ``(0, 1]`` on the edges and 1 on the diagonal.
    """
    if not sp.issparse(adjacency):
        raise ValueError("adjacency must be a scipy.sparse matrix of distances")
    bandwidth = check_real("bandwidth", bandwidth)
    A = sp.coo_matrix(adjacency)
    n = A.shape[0]
    if A.shape != (n, n):
        raise ValueError(f"adjacency must be square; got shape {A.shape}")
    if not np.isfinite(A.data).all() or (A.data < 0).any():
        raise ValueError("adjacency must hold finite distances >= 0")
    off = A.row != A.col
    k = np.exp(-((A.data[off] / bandwidth) ** 2))
    K = sp.csr_matrix((k, (A.row[off], A.col[off])), shape=(n, n))
    if symmetrize:
        K = (K + K.T) * 0.5
    K = K + sp.identity(n, format="csr")
    K.sort_indices()
    return K.tocsr()
