"""Local tangent spaces by weighted local PCA (megaman / TSLasso conventions).

For a query point ``x_i`` with neighbours ``x_j`` (itself included, with weight ``K_ii = 1``):

    K_ij  = exp(-|x_i - x_j|^2 / eps^2)     Gaussian kernel, no factor 2 (megaman's convention)
    w_ij  = K_ij / sum_l K_il               normalised weights
    mu_i  = sum_j w_ij x_j                  weighted local mean (``centers``)
    C_i   = sum_j w_ij (x_j - mu_i)(x_j - mu_i)^T

and the tangent basis ``T_i`` (shape ``(D, d)``, orthonormal columns) holds the top ``d``
eigenvectors of ``C_i``. Neighbourhoods are either all points within the radius ``cutoff * eps``
(megaman/TSLasso: ``cutoff = 3``) or the ``n_neighbors`` nearest points (uniform weights, or
Gaussian ones when a bandwidth is also given). ``square_weights=True`` uses ``w^2`` in ``C_i``
like montlake; the default follows the later rewrite (``w``).

Conventions: the eigenvectors come from a batched eigensolver on ``Z = sqrt(w) * (X_nbr - mu)``
(``Z^T Z`` or ``Z Z^T``, whichever is smaller) in float64,
blocked over query points so memory stays near ``DEFAULT_MEMORY_BYTES``; each basis column has
its largest-magnitude entry positive (deterministic signs). numpy in -> numpy out, torch in ->
torch out on the input's device (the work runs there, so CUDA inputs use the GPU).

The call Tangent Space Lasso makes is simply::

    ts = tangent_spaces(X, d, bandwidth=eps)     # or n_neighbors=k
    ts.bases                                     # (n_samples, D, d), orthonormal columns

Choose ``eps`` with :func:`geomsae.graph.select_radius` (``bandwidth = radius / 3``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator

from geomsae.grassmann import fix_signs, karcher_mean
from geomsae.neighbors import as_tensor, check_points, knn

logger = logging.getLogger(__name__)

__all__ = [
    "LocalTangentSpaces",
    "TangentSpaces",
    "estimate_local_dimension",
    "weighted_local_pca",
    "smooth_tangent_spaces",
    "tangent_spaces",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
"""Work-space budget of one block of neighbourhoods (gathered points and their SVD), in bytes."""


@dataclasses.dataclass(frozen=True)
class TangentSpaces:
    """Weighted local PCA at a set of query points.

    Attributes
    ----------
    bases : array of shape (n_queries, D, d)
        Orthonormal tangent bases ``T_i`` (top ``d`` eigenvectors, deterministic signs).
    eigenvalues : array of shape (n_queries, n_eig)
        Eigenvalues of the weighted local covariances, descending; ``n_eig = min(k, D)`` with
        ``k`` the (padded) neighbourhood size. Zero where a neighbourhood has fewer points.
    centers : array of shape (n_queries, D)
        Weighted local means ``mu_i``.
    indices : array of shape (n_queries,)
        Row of ``X`` of each query point.
    neighbor_indices : array of shape (n_queries, k)
        Rows of ``X`` in each neighbourhood (the point itself first), ``-1`` for padding.
    weights : array of shape (n_queries, k)
        Normalised weights ``w_ij`` (rows sum to 1), 0 on padding.
    d : int
        Dimension of the tangent spaces.
    bandwidth : float or None
        Kernel bandwidth ``eps`` (None for uniform k-NN weights).
    """

    bases: Any
    eigenvalues: Any
    centers: Any
    indices: Any
    neighbor_indices: Any
    weights: Any
    d: int
    bandwidth: float | None

    @property
    def n_neighbors(self) -> Any:
        """Number of points with positive weight in each neighbourhood (itself included)."""
        w = self.weights
        return (w > 0).sum(1)


# --------------------------------------------------------------------------------------------
# the math: batched weighted PCA over padded neighbourhoods


def _block_rows(k: int, D: int, memory: int) -> int:
    per_row = 8 * k * D * 3 + 8 * k * k  # gather, centred copy, SVD work
    return max(1, memory // max(per_row, 1))


def _top_eigvecs(Z: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-d eigenvectors (b, D, d) and all eigenvalues (b, min(k, D)), descending, of Z^T Z.

    A batched symmetric eigensolver on the smaller of ``Z^T Z`` (D x D) and ``Z Z^T`` (k x k) is
    several times faster than a batched SVD of ``Z`` on CPU; in the second case the eigenvectors
    are mapped back as ``Z^T u / sqrt(lambda)`` and re-orthonormalised by a QR (which keeps the
    nested spans, so column j still spans the j-th direction).
    """
    k, D = Z.shape[1], Z.shape[2]
    if D <= k:
        lam, U = torch.linalg.eigh(Z.transpose(1, 2) @ Z)
        lam, V = lam.flip(-1), U.flip(-1)[:, :, :d]
    else:
        lam, U = torch.linalg.eigh(Z @ Z.transpose(1, 2))
        lam, U = lam.flip(-1), U.flip(-1)[:, :, :d]
        V = Z.transpose(1, 2) @ (U / lam[:, None, :d].clamp(min=1e-300).sqrt())
        V = torch.linalg.qr(V).Q
    return V, lam.clamp(min=0.0)


def _weighted_pca(
    Xt: torch.Tensor,
    nbr: torch.Tensor,
    w: torch.Tensor,
    d: int,
    square_weights: bool,
    memory: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bases (m, D, d), eigenvalues (m, min(k, D)), centers (m, D) for padded neighbourhoods.

    ``nbr`` (m, k) holds row indices (anything valid on padding), ``w`` (m, k) normalised weights
    with 0 on padding.
    """
    m, k = nbr.shape
    D = Xt.shape[1]
    n_eig = min(k, D)
    bs = _block_rows(k, D, memory)
    bases, eigs, centers = [], [], []
    for s in range(0, m, bs):
        Z = Xt[nbr[s : s + bs]]  # (b, k, D), a fresh copy: centred and scaled in place
        wb = w[s : s + bs]
        mu = torch.einsum("bk,bkd->bd", wb, Z)
        scale = wb if square_weights else wb.sqrt()
        Z.sub_(mu[:, None, :]).mul_(scale[:, :, None])  # C = Z^T Z
        V, lam = _top_eigvecs(Z, d)
        bases.append(fix_signs(V))
        eigs.append(lam)
        centers.append(mu)
    if not bases:
        z = Xt.new_zeros
        return z(0, D, d), z(0, n_eig), z(0, D)
    return torch.cat(bases), torch.cat(eigs), torch.cat(centers)


def _check_rank(eig: torch.Tensor, count: torch.Tensor, idx: torch.Tensor, d: int, how: str):
    """One clear error when some neighbourhood cannot span d dimensions."""
    few = count < d + 1
    if bool(few.any()):
        i = int(idx[few.nonzero()[0, 0]])
        raise ValueError(
            f"{int(few.sum())} query points have fewer than d + 1 = {d + 1} points in their "
            f"neighbourhood (first: point {i}, with {int(count[few][0])}); {how}"
        )
    lam1 = eig[:, 0]
    lamd = eig[:, d - 1] if eig.shape[1] >= d else torch.zeros_like(lam1)
    bad = (lam1 <= 0) | (lamd <= 1e-12 * lam1)
    if bool(bad.any()):
        i = int(idx[bad.nonzero()[0, 0]])
        raise ValueError(
            f"{int(bad.sum())} neighbourhoods span fewer than d = {d} dimensions (first: point "
            f"{i}); duplicate points are the usual cause: remove them with "
            f"geomsae.neighbors.deduplicate(X), or {how}"
        )


def _to_out(t: torch.Tensor, like_torch: bool) -> Any:
    return t if like_torch else t.cpu().numpy()


def weighted_local_pca(
    X: Any,
    neighbor_indices: Any,
    weights: Any,
    d: int,
    *,
    indices: Any | None = None,
    bandwidth: float | None = None,
    square_weights: bool = False,
    check_rank: bool = True,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> TangentSpaces:
    """Weighted local PCA on given neighbourhoods (the engine of :func:`tangent_spaces`).

    Parameters
    ----------
    X : array or tensor of shape (n_samples, D)
    neighbor_indices : int array of shape (n_queries, k)
        Rows of ``X`` in each neighbourhood; ``-1`` marks padding.
    weights : array of shape (n_queries, k)
        Non-negative weights (normalised here); ignored where ``neighbor_indices == -1``.
    d : int
        Tangent dimension, ``1 <= d < D``.
    indices : int array of shape (n_queries,), optional
        Recorded as ``TangentSpaces.indices`` (default: the first neighbour of each row).
    bandwidth : float, optional
        Recorded as ``TangentSpaces.bandwidth``.
    square_weights : bool
        Use ``w^2`` in the covariance (montlake) instead of ``w``.
    check_rank : bool
        Raise ``ValueError`` when a neighbourhood spans fewer than ``d`` dimensions.
    memory_bytes : int
        Work-space budget per block.

    Returns
    -------
    TangentSpaces
    """
    like_torch = isinstance(X, torch.Tensor)
    Xt = as_tensor(check_points(X))
    n, D = Xt.shape
    if not isinstance(d, (int, np.integer)) or not 1 <= d < D:
        raise ValueError(f"d must be an integer with 1 <= d < D = {D}; got {d!r}")
    nbr = torch.as_tensor(neighbor_indices, device=Xt.device).long()
    w = as_tensor(weights, Xt.device)
    if nbr.ndim != 2 or w.shape != nbr.shape:
        raise ValueError("neighbor_indices and weights must both have shape (n_queries, k)")
    if bool((nbr >= n).any()) or bool((nbr < -1).any()):
        raise ValueError(f"neighbor_indices must lie in [0, {n}) or be -1 (padding)")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ValueError("weights must be finite and >= 0")
    pad = nbr < 0
    w = w.masked_fill(pad, 0.0)
    tot = w.sum(1, keepdim=True)
    if bool((tot <= 0).any()):
        raise ValueError("every neighbourhood needs a positive total weight")
    w = w / tot
    nbr_safe = torch.where(pad, nbr.new_zeros(()), nbr)
    idx = nbr_safe[:, 0] if indices is None else torch.as_tensor(indices, device=Xt.device).long()
    bases, eig, centers = _weighted_pca(Xt, nbr_safe, w, d, square_weights, memory_bytes)
    if check_rank:
        how = "use a larger bandwidth / n_neighbors"
        _check_rank(eig, (w > 0).sum(1), idx, d, how)
    nbr_out = torch.where(pad, nbr.new_full((), -1), nbr)
    out = [_to_out(t, like_torch) for t in (bases, eig, centers, idx, nbr_out, w)]
    return TangentSpaces(*out, d=int(d), bandwidth=bandwidth)


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
        nb = knn(X, k, query_indices=idx[pending].cpu().numpy())
        dq = torch.as_tensor(nb.distances, device=idx.device)
        iq = torch.as_tensor(nb.indices, device=idx.device)
        if k > dist.shape[1]:  # widen the output
            extra = k - dist.shape[1]
            dist = torch.cat([dist, dist.new_full((dist.shape[0], extra), math.inf)], 1)
            ind = torch.cat([ind, ind.new_zeros((ind.shape[0], extra))], 1)
        dist[pending, :k], ind[pending, :k] = dq, iq
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
    if d is not None and (not isinstance(d, (int, np.integer)) or not 1 <= d < D):
        raise ValueError(
            f"d must be an integer with 1 <= d < D = {D} (a tangent space is a proper subspace);"
            f" got {d!r}"
        )
    if bandwidth is None and n_neighbors is None:
        raise ValueError(
            "give bandwidth= (radius neighbourhoods) or n_neighbors= (k-NN); "
            "geomsae.graph.select_radius(X, d) chooses a bandwidth"
        )
    if bandwidth is not None and not (np.isfinite(bandwidth) and bandwidth > 0):
        raise ValueError(f"bandwidth must be a finite number > 0; got {bandwidth!r}")
    if indices is None:
        idx = torch.arange(n)
    elif isinstance(indices, torch.Tensor):
        idx = indices.long()
    else:
        idx = torch.as_tensor(np.asarray(indices)).long()
    idx = idx.reshape(-1).to(Xt.device)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= n):
        raise ValueError(f"indices must lie in [0, {n})")
    if n_neighbors is not None:
        if not isinstance(n_neighbors, (int, np.integer)) or not 1 <= n_neighbors < n:
            raise ValueError(f"n_neighbors must be an integer in [1, {n - 1}]; got {n_neighbors!r}")
        nb = knn(Xt, int(n_neighbors), query_indices=idx.cpu().numpy())
        dist, ind = nb.distances, nb.indices
    else:
        if not (np.isfinite(cutoff) and cutoff > 0):
            raise ValueError(f"cutoff must be a finite number > 0; got {cutoff!r}")
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
        check_rank=False, memory_bytes=memory_bytes,
    )  # fmt: skip
    _check_rank(ts.eigenvalues, (ts.weights > 0).sum(1), idx, d, how)
    if like_torch:
        dev = X.device
        return dataclasses.replace(
            ts, **{f.name: getattr(ts, f.name).to(dev) for f in _ARRAY_FIELDS}
        )
    return dataclasses.replace(
        ts, **{f.name: getattr(ts, f.name).cpu().numpy() for f in _ARRAY_FIELDS}
    )


_ARRAY_FIELDS = [f for f in dataclasses.fields(TangentSpaces) if f.name not in ("d", "bandwidth")]


def estimate_local_dimension(
    X: Any,
    neighbor_indices: Any,
    weights: Any,
    *,
    alpha: float = 0.05,
    square_weights: bool = False,
) -> int:
    """Local PCA dimension (Fukunaga & Olsen 1971): eigenvalues above ``alpha`` times the largest.

    Each neighbourhood votes ``d_i = #{j : lambda_j > alpha * lambda_1}`` on its weighted
    covariance spectrum, and the estimate is the median vote (rounded down). A quick default for
    :func:`tangent_spaces`; ``geomsae.dimension`` has the proper estimators. Padding is ``-1`` in
    ``neighbor_indices``.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1); got {alpha!r}")
    Xt = as_tensor(X)
    nbr = torch.as_tensor(neighbor_indices, device=Xt.device).long()
    w = as_tensor(weights, Xt.device).masked_fill(nbr < 0, 0.0)
    w = w / w.sum(1, keepdim=True)
    _, eig, _ = _weighted_pca(Xt, nbr.clamp(min=0), w, 1, square_weights, DEFAULT_MEMORY_BYTES)
    votes = (eig > alpha * eig[:, :1]).sum(1)
    d = int(votes.double().median().floor())
    D = Xt.shape[1]
    if d >= D:
        raise ValueError(f"the neighbourhoods look full-dimensional (d = {d} = D); pass d")
    return max(d, 1)


# --------------------------------------------------------------------------------------------
# smoothing on the Grassmann manifold


def smooth_tangent_spaces(
    ts: TangentSpaces,
    *,
    max_iter: int = 30,
    tol: float = 1e-9,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> TangentSpaces:
    """Replace each tangent space by the weighted Karcher mean of its neighbours' ones.

    The mean at query ``i`` is taken over the tangent spaces of the points of its neighbourhood
    (``ts.neighbor_indices``) that are themselves queries of ``ts``, with the weights
    ``ts.weights``; neighbours without a tangent space are skipped. Averaging on ``Gr(D, d)``
    reduces the noise of the estimates at the cost of a bias of order the curvature times the
    neighbourhood radius (see :func:`geomsae.grassmann.karcher_mean`).

    Parameters
    ----------
    ts : TangentSpaces
        From :func:`tangent_spaces` (numpy or torch; the averaging runs in numpy on CPU).
    max_iter, tol
        Stopping rule of :func:`geomsae.grassmann.karcher_mean`.
    memory_bytes : int
        Work-space budget per block of query points (about 8 copies of the members are live).

    Returns
    -------
    TangentSpaces
        A copy with ``bases`` replaced (all other fields unchanged).
    """
    like_torch = isinstance(ts.bases, torch.Tensor)
    B = np.asarray(ts.bases.detach().cpu() if like_torch else ts.bases, dtype=float)
    q = np.asarray(ts.indices.cpu() if like_torch else ts.indices).astype(np.int64)
    nbr = np.asarray(ts.neighbor_indices.cpu() if like_torch else ts.neighbor_indices)
    w = np.asarray(ts.weights.cpu() if like_torch else ts.weights, dtype=float)
    m = q.size
    if m == 0:
        return ts
    row = np.full(max(int(q.max()), int(nbr.max())) + 1, -1, dtype=np.int64)
    row[q] = np.arange(m)
    member = np.where(nbr >= 0, row[np.clip(nbr, 0, None)], -1)  # (m, k) rows of B, or -1
    w = np.where(member >= 0, w, 0.0)
    member = np.where(member >= 0, member, np.arange(m)[:, None])  # placeholder, weight 0
    out = np.empty_like(B)
    block_size = max(1, memory_bytes // (8 * 8 * member.shape[1] * B.shape[1] * B.shape[2]))
    for s in range(0, m, block_size):
        res = karcher_mean(
            B[member[s : s + block_size]], w[s : s + block_size], max_iter=max_iter, tol=tol,
            check=False,
        )  # fmt: skip
        out[s : s + block_size] = res.mean
    bases = torch.from_numpy(out).to(ts.bases.device) if like_torch else out
    return dataclasses.replace(ts, bases=bases)


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
