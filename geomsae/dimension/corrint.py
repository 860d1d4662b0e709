"""Correlation dimension (Grassberger & Procaccia 1983).

The correlation integral ``C(r)`` -- the fraction of pairs of distinct points closer than
``r`` -- scales as ``r^d`` at small ``r``; the estimate is the least-squares slope of
``log C(r)`` against ``log r`` over ``n_radii`` log-spaced radii between the median
``k1``-th and median ``k2``-th neighbour distances (``n_radii=2`` is the two-point slope that
scikit-dimension's ``CorrInt`` uses). Pairs are counted exactly. The points whose k2-th
neighbour lies beyond the largest radius are counted from the k-NN search that set the radii;
the pairs among the rest come from the radius graph at the largest radius when a sample says
it is small (the projected screen of :mod:`geomsae.neighbors` then finds it in far less than
``O(n^2 D)``), else block by block in ``O(n^2 D)`` time and ``O(block * n)`` memory.

Pointwise, the local correlation dimension at x is the slope of ``log j`` against
``log T_j(x)`` over the neighbour ranks ``j`` from ``ceil(k/2)`` to ``k``.

Reference
---------
Grassberger, P. & Procaccia, I. (1983). Measuring the strangeness of strange attractors.
Physica D 9, 189-208.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import torch

from geomsae.dimension.base import IDEstimator, check_n_neighbors, median
from geomsae.neighbors import DEFAULT_MEMORY_BYTES, Neighbors, knn, radius_neighbors
from geomsae.neighbors.brute import matmul, row_sq

__all__ = ["CorrelationDimension", "correlation_dimension", "correlation_integral"]


def correlation_integral(
    X: torch.Tensor, radii: torch.Tensor, neighbors: Neighbors | None = None
) -> torch.Tensor:
    """Fraction of ordered pairs ``i != j`` with ``|x_i - x_j| < r``, for each radius.

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features), float64
    radii : tensor of shape (n_radii,), ascending
    neighbors : Neighbors, optional
        ``knn(X, k)`` of the same points (any k). A point whose k-th neighbour lies at or
        beyond the largest radius has all its pairs within reach in its k-NN row, so only the
        pairs among the other points are counted again (usually about half the points, a
        quarter of the pairs); the counts are the same.

    Returns
    -------
    tensor of shape (n_radii,)
    """
    n = X.shape[0]
    radii = radii.to(X)
    if neighbors is None:
        return _ordered_pairs(X, radii) / (n * (n - 1))
    dist = torch.as_tensor(neighbors.distances).to(X)
    idx = torch.as_tensor(neighbors.indices).to(X.device)
    if dist.shape[0] != n:
        raise ValueError(f"neighbors has {dist.shape[0]} rows for {n} points")
    covered = dist[:, -1] >= radii.max()  # every pair of these rows within reach is listed
    rows = dist[covered]  # (n_covered, k)
    uncovered = ~covered[idx[covered]]  # which listed neighbours are not covered themselves
    within = rows[None, :, :] < radii[:, None, None]  # (n_radii, n_covered, k)
    # ordered pairs (i covered, any j) and their mirrors (j not covered, i covered)
    counts = within.sum((1, 2)).double() + (within & uncovered[None]).sum((1, 2)).double()
    rest = torch.nonzero(~covered).flatten()
    if rest.numel() > 1:
        counts = counts + _ordered_pairs(X[rest], radii)
    return counts / (n * (n - 1))


def _ordered_pairs(X: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """Number of ordered pairs ``i != j`` with ``|x_i - x_j| < r`` for each radius (float64)."""
    n = X.shape[0]
    Xc = X - X.mean(0)
    sq = row_sq(Xc)
    r2 = radii**2
    if _few_pairs(Xc, sq, float(r2.max())):
        # the radius graph at the largest radius (exact; projected screen where it pays)
        d = torch.from_numpy(radius_neighbors(Xc, float(radii.max())).data).to(X)
        return torch.stack([(d < r).sum() for r in radii]).to(torch.float64)
    counts = torch.zeros(len(radii), dtype=torch.float64, device=X.device)
    bs = max(1, DEFAULT_MEMORY_BYTES // (16 * n))
    for start in range(0, n, bs):
        Q = Xc[start : start + bs]
        # |x_j|^2 - 2 x_i.x_j: compare with r^2 - |x_i|^2 instead of forming the distance
        S = matmul(Q, Xc.T).mul_(-2.0).add_(sq)  # (b, n)
        rows = torch.arange(Q.shape[0], device=X.device)
        S[rows, start + rows] = math.inf
        thresh = r2[None, :] - sq[start : start + bs, None]  # (b, n_radii)
        for j in range(len(radii)):
            counts[j] += (S < thresh[:, j : j + 1]).sum()
    return counts


def _few_pairs(Xc: torch.Tensor, sq: torch.Tensor, r2_max: float, per_row: int = 256) -> bool:
    """Whether an evenly spaced sample of 64 rows has at most ``per_row`` pairs within reach.

    Then the pairs fit in memory as a radius graph (``n * per_row`` entries at most, about),
    which the projected screen of :mod:`geomsae.neighbors` finds far faster than the
    ``O(n^2 D)`` count.
    """
    n = Xc.shape[0]
    if n < 2000 or Xc.is_cuda:
        return False
    rows = torch.linspace(0, n - 1, 64, device=Xc.device).round().long()
    d2 = sq[rows, None] + sq[None, :] - 2.0 * matmul(Xc[rows], Xc.T)
    return float((d2 < r2_max).sum(1).double().mean()) <= per_row


def _slope(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Least-squares slope of y on x along the last axis."""
    xc = x - x.mean(-1, keepdim=True)
    yc = y - y.mean(-1, keepdim=True)
    return (xc * yc).sum(-1) / (xc * xc).sum(-1)


class CorrelationDimension(IDEstimator):
    """Grassberger-Procaccia correlation dimension.

    Parameters
    ----------
    k1, k2 : int, default 10 and 20
        The scale range runs from the median distance to the ``k1``-th neighbour to the median
        distance to the ``k2``-th neighbour.
    n_radii : int, default 8
        Radii (log-spaced) in the regression; 2 reproduces the classic two-point slope. The radii
        are widened by 1e-9 relative, so a pair at exactly a median radius (for an odd count the
        median is itself a neighbour distance) is counted whatever the rounding.
    on_duplicates : {"raise", "drop", "ignore"}
        Duplicate-point policy: raise (default) or drop the repeats; ``"ignore"`` skips the
        check (when the points are known to be distinct).

    Attributes
    ----------
    dimension_ : float
    radii_, correlation_integral_ : ndarray of shape (n_radii,)
        The curve the slope was fitted to (set by ``fit``).
    """

    _min_neighbors = 3

    def __init__(
        self, k1: int = 10, k2: int = 20, *, n_radii: int = 8, on_duplicates: str = "raise"
    ) -> None:
        self.k1 = k1
        self.k2 = k2
        self.n_radii = n_radii
        self.on_duplicates = on_duplicates

    def _global(self, X: torch.Tensor) -> float:
        def is_int(v: Any) -> bool:
            return isinstance(v, numbers.Integral) and not isinstance(v, bool)

        if not (is_int(self.k1) and is_int(self.k2) and 1 <= self.k1 < self.k2):
            raise ValueError(f"need integers 1 <= k1 < k2; got k1={self.k1!r}, k2={self.k2!r}")
        if not is_int(self.n_radii) or self.n_radii < 2:
            raise ValueError(f"n_radii must be an integer >= 2; got {self.n_radii!r}")
        k2 = check_n_neighbors(self.k2, X.shape[0])
        nb = knn(X, k2)
        dist = nb.distances
        r_lo, r_hi = median(dist[:, self.k1 - 1]), median(dist[:, k2 - 1])
        if not float(r_hi) > float(r_lo) * (1 + 1e-9):
            raise ValueError(
                f"the median distances to the k1-th and k2-th neighbours are equal "
                f"({float(r_lo) / getattr(self, '_unit', 1.0):.6g}: tied distances, discrete "
                "data?), so there is no range of scales; increase k2 or add a little noise"
            )
        log_r = torch.linspace(
            float(torch.log(r_lo)), float(torch.log(r_hi)), self.n_radii, dtype=torch.float64
        )
        radii = torch.exp(log_r.to(X))
        # a median radius can itself be a pair distance (always for an odd count): widen by
        # 1e-9 so that pair counts (and the estimate) do not depend on the last bit of rounding
        radii = radii * (1 + 1e-9)
        C = correlation_integral(X, radii, nb)
        self.radii_ = radii.cpu().numpy() / getattr(self, "_unit", 1.0)  # in data units
        self.correlation_integral_ = C.cpu().numpy()
        if not bool((C > 0).all()):
            raise ValueError("no pairs at the smallest radius; increase k1 or use more points")
        return float(_slope(torch.log(radii), torch.log(C)))

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        k = n_neighbors
        lo = int(np.ceil(k / 2))
        dist = knn(X, k).distances[:, lo - 1 :]
        ranks = torch.arange(lo, k + 1, dtype=X.dtype, device=X.device)
        log_d = torch.log(dist)
        slope = _slope(log_d, torch.log(ranks).expand_as(dist))
        # distances tied to 1e-9 relative (or 0: duplicates left in): the slope is 0 / 0,
        # rounding noise (1.33 on the vertices of a simplex), not an estimate
        tied = (log_d[:, -1] - log_d[:, 0] <= 1e-9) | (dist[:, 0] <= 0)
        return slope.masked_fill(tied, float("nan"))


def correlation_dimension(X: Any, k1: int = 10, k2: int = 20, **params: Any) -> float:
    """Global correlation dimension; see :class:`CorrelationDimension`."""
    return CorrelationDimension(k1, k2, **params).fit(X).dimension_
