"""Tangent spaces of a point cloud: neighbourhoods (radius or k-NN), then weighted local PCA.

See :mod:`geomsae.tangent` for the formulas and conventions.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

from geomsae.neighbors import as_indices, as_tensor, check_points, knn
from geomsae.neighbors.checks import check_real
from geomsae.tangent.pca import (
    _ARRAY_FIELDS,
    DEFAULT_MEMORY_BYTES,
    TangentSpaces,
    estimate_local_dimension,
    weighted_local_pca,
)
from geomsae.tangent.smoothing import smooth_tangent_spaces

logger = logging.getLogger(__name__)

__all__ = ["LocalTangentSpaces", "tangent_spaces"]


# --------------------------------------------------------------------------------------------
# neighbourhoods


def _radius_knn(X: Any, idx: torch.Tensor, cutoff: float, max_neighbors: int | None):
    """All points within ``cutoff`` of the queries, as padded (distances, indices) rows.

    k-NN with a k that doubles for the rows whose k-th neighbour is still inside the radius, so
    the result is exact (unless ``max_neighbors`` caps it) and no query ever sees all n points
    unless it needs them.
    """
    n = X.shape[0]
    cap = n - 1 if max_neighbors is None else min(int(max_neighbors), n - 1)
    k = min(32, cap)
    dist = torch.full((idx.numel(), 0), math.inf, dtype=torch.float64, device=idx.device)
    ind = torch.zeros((idx.numel(), 0), dtype=torch.long, device=idx.device)
    pending = torch.arange(idx.numel(), device=idx.device)
    while pending.numel():
        # at the cap, one neighbour more tells whether a row was truncated
        look = k + 1 if k >= cap and cap < n - 1 else k
        nb = knn(X, look, query_indices=idx[pending].cpu().numpy())
        dq = torch.as_tensor(nb.distances, device=idx.device)
        iq = torch.as_tensor(nb.indices, device=idx.device)
        if k > dist.shape[1]:  # widen the output
            extra = k - dist.shape[1]
            dist = torch.cat([dist, dist.new_full((dist.shape[0], extra), math.inf)], 1)
            ind = torch.cat([ind, ind.new_zeros((ind.shape[0], extra))], 1)
        dist[pending, :k], ind[pending, :k] = dq[:, :k], iq[:, :k]
        full = dq[:, -1] <= cutoff
        if k >= cap:
            if bool(full.any()) and max_neighbors is not None:
                logger.warning(
                    "tangent_spaces: max_neighbors=%d truncated %d rows", cap, int(full.sum())
                )
            break
        pending, k = pending[full], min(2 * k, cap)
    return dist, ind


def tangent_spaces(
    X: Any,
    d: int | None,
    *,
    bandwidth: float | None = None,
    n_neighbors: int | None = None,
    indices: Any | None = None,
    cutoff: float = 3.0,
    max_neighbors: int | None = None,
    square_weights: bool = False,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> TangentSpaces:
    """Tangent bases at every point (or at ``indices``) by weighted local PCA.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, D)
        The point cloud (finite values).
    d : int or None
        Tangent dimension ``1 <= d < D``; ``None`` estimates it with
        :func:`estimate_local_dimension` (Fukunaga-Olsen local PCA; logged).
    bandwidth : float, optional
        Gaussian bandwidth ``eps`` (``K = exp(-r^2 / eps^2)``). Alone: radius neighbourhoods of
        radius ``cutoff * eps``. With ``n_neighbors``: Gaussian weights on the k-NN.
    n_neighbors : int, optional
        Use the ``n_neighbors`` nearest points (plus the point itself); uniform weights unless
        ``bandwidth`` is given.
    indices : int array of shape (n_queries,), optional
        Rows of ``X`` to compute tangent spaces at (default: all).
    cutoff : float
        Radius of the neighbourhoods in units of ``eps`` (megaman/TSLasso: 3).
    max_neighbors : int, optional
        Cap on radius neighbourhoods (the closest are kept; a warning is logged).
    square_weights : bool
        Use ``w^2`` in the covariance like montlake.
    memory_bytes : int
        Work-space budget per block.

    Returns
    -------
    TangentSpaces
        ``bases`` of shape (n_queries, D, d) with orthonormal columns.

    Raises
    ------
    ValueError
        For NaN/Inf in ``X``, ``d >= D``, neither or a bad ``bandwidth``/``n_neighbors``,
        neighbourhoods with fewer than ``d + 1`` points or that span fewer than ``d``
        dimensions (e.g. duplicates).

    Examples
    --------
    >>> import numpy as np
    >>> t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    >>> X = np.c_[np.cos(t), np.sin(t), np.zeros_like(t)]
    >>> ts = tangent_spaces(X, 1, n_neighbors=4)
    >>> ts.bases.shape
    (200, 3, 1)
    >>> bool(abs(ts.bases[0, 1, 0]) > 0.999)       # tangent of the circle at (1, 0, 0) is e_2
    True
    """
    like_torch = isinstance(X, torch.Tensor)
    X = check_points(X, min_samples=2)
    Xt = as_tensor(X)
    n, D = Xt.shape
    if d is not None and (
        isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d < D
    ):
        raise ValueError(
            f"d must be an integer with 1 <= d < D = {D} (a tangent space is a proper subspace);"
            f" got {d!r}"
        )
    if bandwidth is None and n_neighbors is None:
        raise ValueError(
            "give bandwidth= (radius neighbourhoods) or n_neighbors= (k-NN); "
            "geomsae.graph.select_radius(X, d) chooses a bandwidth"
        )
    if bandwidth is not None:
        bandwidth = check_real("bandwidth", bandwidth)
    idx = (
        torch.arange(n, device=Xt.device)
        if indices is None
        else as_indices(indices, n, device=Xt.device)
    )
    if n_neighbors is not None:
        bad_type = isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer))
        if bad_type or not 1 <= n_neighbors < n:
            raise ValueError(f"n_neighbors must be an integer in [1, {n - 1}]; got {n_neighbors!r}")
        nb = knn(Xt, int(n_neighbors), query_indices=idx.cpu().numpy())
        dist, ind = nb.distances, nb.indices
    else:
        cutoff = check_real("cutoff", cutoff)
        dist, ind = _radius_knn(Xt, idx, cutoff * bandwidth, max_neighbors)
    # the point itself comes first, at distance 0 with kernel weight 1
    dist = torch.cat([dist.new_zeros((idx.numel(), 1)), dist], 1)
    ind = torch.cat([idx[:, None], ind], 1)
    if bandwidth is None:
        w = torch.ones_like(dist)
    else:
        w = torch.exp(-((dist / bandwidth) ** 2))
    if n_neighbors is None:  # radius mode: drop what lies beyond the cutoff, trim padding
        outside = dist > cutoff * bandwidth
        w = w.masked_fill(outside, 0.0)
        ind = ind.masked_fill(outside, -1)
        width = int((~outside).sum(1).max()) if idx.numel() else 1
        w, ind = w[:, :width], ind[:, :width]
    if d is None:
        d = estimate_local_dimension(Xt, ind, w, square_weights=square_weights)
        logger.info("tangent_spaces: estimated d = %d by local PCA (Fukunaga-Olsen)", d)
    how = (
        f"use more neighbours (n_neighbors={n_neighbors})"
        if n_neighbors is not None
        else f"use a larger bandwidth (eps={bandwidth:g}, radius {cutoff * bandwidth:g})"
    )
    ts = weighted_local_pca(
        Xt, ind, w, d, indices=idx, bandwidth=bandwidth, square_weights=square_weights,
        check_rank=how, memory_bytes=memory_bytes,
    )  # fmt: skip
    if like_torch:
        dev = X.device
        return dataclasses.replace(
            ts, **{f.name: getattr(ts, f.name).to(dev) for f in _ARRAY_FIELDS}
        )
    return dataclasses.replace(
        ts, **{f.name: getattr(ts, f.name).cpu().numpy() for f in _ARRAY_FIELDS}
    )


class LocalTangentSpaces(BaseEstimator):
    """Estimator wrapper of :func:`tangent_spaces` (scikit-learn contract).

    Parameters
    ----------
    d : int or None
        Tangent dimension (None: estimated by local PCA, Fukunaga-Olsen).
    bandwidth, n_neighbors, cutoff, square_weights
        As in :func:`tangent_spaces`.
    smooth : bool
        Follow with :func:`smooth_tangent_spaces` (Karcher mean over neighbourhoods).

    Attributes
    ----------
    result_ : TangentSpaces
    bases_ : array of shape (n_samples, D, d_)
    eigenvalues_ : array of shape (n_samples, n_eig)
    d_ : int
    """

    def __init__(
        self,
        d: int | None = None,
        *,
        bandwidth: float | None = None,
        n_neighbors: int | None = None,
        cutoff: float = 3.0,
        square_weights: bool = False,
        smooth: bool = False,
    ) -> None:
        self.d = d
        self.bandwidth = bandwidth
        self.n_neighbors = n_neighbors
        self.cutoff = cutoff
        self.square_weights = square_weights
        self.smooth = smooth

    def fit(self, X: Any, y: Any = None) -> LocalTangentSpaces:
        """Estimate a tangent space at every row of ``X`` (shape (n_samples, D))."""
        res = tangent_spaces(
            X, self.d, bandwidth=self.bandwidth, n_neighbors=self.n_neighbors,
            cutoff=self.cutoff, square_weights=self.square_weights,
        )  # fmt: skip
        if self.smooth:
            res = smooth_tangent_spaces(res)
        self.result_ = res
        self.bases_ = res.bases
        self.eigenvalues_ = res.eigenvalues
        self.d_ = res.d
        return self
