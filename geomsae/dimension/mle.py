"""Maximum-likelihood intrinsic dimension (Levina & Bickel 2004), MacKay-Ghahramani aggregation.

At a point x with neighbour distances ``T_1 <= ... <= T_k``, the Poisson-process likelihood of the
distances gives

    m_k(x) = [ (1 / (k - 1)) sum_{j < k} log(T_k / T_j) ]^(-1)

(``unbiased=True`` uses ``k - 2`` in place of ``k - 1``: the sum is Gamma(k - 1, m) distributed,
so its inverse has mean m / (k - 2)). The global estimate averages the *inverses* over points
and inverts the mean (MacKay & Ghahramani 2005), which removes the bias that averaging the
``m_k(x)`` themselves adds. Pointwise estimates are ``m_k(x)`` for every point.

References
----------
Levina, E. & Bickel, P. J. (2004). Maximum likelihood estimation of intrinsic dimension. NeurIPS.
MacKay, D. J. C. & Ghahramani, Z. (2005). Comments on 'Maximum likelihood estimation of
intrinsic dimension' by E. Levina and P. Bickel.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from geomsae.dimension.base import IDEstimator, check_n_neighbors, median
from geomsae.neighbors import knn

logger = logging.getLogger(__name__)

__all__ = ["MLE", "mle", "mle_pointwise_from_distances"]

_AGGREGATES = ("mackay_ghahramani", "mean", "median")


def mle_pointwise_from_distances(
    distances: torch.Tensor, *, unbiased: bool = False
) -> torch.Tensor:
    """Levina-Bickel estimate at every point from its sorted neighbour distances.

    Parameters
    ----------
    distances : tensor of shape (n_samples, k), sorted ascending
    unbiased : bool
        Use ``k - 2`` instead of ``k - 1`` in the numerator.

    Returns
    -------
    tensor of shape (n_samples,)
        NaN where the estimate is undefined: a distance of 0 (a duplicate point, when the
        duplicate check was skipped) or ``T_1 = ... = T_k`` to within ``1e-9`` relative
        (tied distances, whose log-ratios are rounding noise: 0 or a huge estimate).
    """
    k = distances.shape[1]
    log_ratio = torch.log(distances[:, -1:] / distances[:, :-1])  # (n, k - 1)
    est = (k - 2 if unbiased else k - 1) / log_ratio.sum(1)
    undefined = (distances[:, 0] <= 0) | (log_ratio[:, 0] <= _TIED_LOG_RATIO)
    return est.masked_fill(undefined, float("nan"))


_TIED_LOG_RATIO = 1e-9  # log(T_k / T_1) below this: the k distances are tied


def aggregate(pointwise: torch.Tensor, how: str) -> float:
    """Combine pointwise estimates into one number."""
    if how == "mackay_ghahramani":
        return float(1.0 / torch.mean(1.0 / pointwise))
    if how == "mean":
        return float(pointwise.mean())
    if how == "median":
        return float(median(pointwise))
    raise ValueError(f"aggregate must be one of {_AGGREGATES}; got {how!r}")


class MLE(IDEstimator):
    """Levina-Bickel maximum-likelihood estimator of intrinsic dimension.

    Parameters
    ----------
    n_neighbors : int, default 20
        Neighbours ``k`` per point for the global estimate (``fit``).
    unbiased : bool, default False
        Use ``k - 2`` (unbiased for the inverse) instead of ``k - 1`` (the original estimator,
        and scikit-dimension's default).
    aggregate : {"mackay_ghahramani", "mean", "median"}
        How ``fit`` combines the pointwise estimates (default: mean of inverses, inverted).
    on_duplicates : {"raise", "drop", "ignore"}
        Duplicate points give ``log(T_k / 0)``; see :func:`geomsae.dimension.base.prepare_points`.
        ``"ignore"`` skips the check (when the points are known to be distinct).

    Examples
    --------
    >>> from geomsae.manifolds import cube
    >>> X = cube(2000, d=3, ambient_dim=10, random_state=0).X
    >>> round(MLE().fit(X).dimension_)
    3
    """

    def __init__(
        self,
        n_neighbors: int = 20,
        *,
        unbiased: bool = False,
        aggregate: str = "mackay_ghahramani",
        on_duplicates: str = "raise",
    ) -> None:
        self.n_neighbors = n_neighbors
        self.unbiased = unbiased
        self.aggregate = aggregate
        self.on_duplicates = on_duplicates

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        if self.unbiased and n_neighbors < 3:
            raise ValueError(
                f"unbiased=True uses k - 2 and needs n_neighbors >= 3; got {n_neighbors}"
            )
        return mle_pointwise_from_distances(knn(X, n_neighbors).distances, unbiased=self.unbiased)

    def _global(self, X: torch.Tensor) -> float:
        if self.aggregate not in _AGGREGATES:
            raise ValueError(f"aggregate must be one of {_AGGREGATES}; got {self.aggregate!r}")
        k = check_n_neighbors(self.n_neighbors, X.shape[0])
        pw = self._pointwise(X, k)
        tied = torch.isnan(pw)  # r_1 = ... = r_k, or r_1 = 0 (on_duplicates="ignore")
        if bool(tied.any()):
            if bool(tied.all()):
                raise ValueError(
                    f"MLE: every point has r_1 = r_{k} or r_1 = 0 (tied distances: discrete "
                    "data? duplicates?); use a larger n_neighbors, add a little noise or "
                    "drop duplicates (on_duplicates='drop')"
                )
            logger.warning(
                "MLE: %d of %d points have r_1 = r_%d or r_1 = 0 (tied distances or "
                "duplicates); they are left out of the aggregate", int(tied.sum()), len(pw), k,
            )  # fmt: skip
            pw = pw[~tied]
        return aggregate(pw, self.aggregate)


def mle(X: Any, n_neighbors: int = 20, **params: Any) -> float:
    """Global Levina-Bickel / MacKay-Ghahramani estimate; see :class:`MLE`."""
    return MLE(n_neighbors, **params).fit(X).dimension_
