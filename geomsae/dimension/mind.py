"""MiND-ML (Rozza, Lombardi, Ceruti, Casiraghi & Campadelli 2012).

For each point, ``rho = r_1 / r_(k+1)`` (nearest over (k+1)-th neighbour distance) has density
``k d rho^(d-1) (1 - rho^d)^(k-1)`` on (0, 1) for locally uniform data of dimension d. The
log-likelihood over points

    ll(d) = N log(k d) + (d - 1) sum log rho + (k - 1) sum log(1 - rho^d)

is concave in d. ``ver="MLi"`` maximises it over the integers ``1..max_dim``; ``ver="MLk"``
(default) over the interval ``(0, max_dim]`` (vectorised bisection on the derivative).
``max_dim`` defaults to the ambient dimension -- scikit-dimension caps it at 10 by default,
which silently truncates every estimate above 10.

Pointwise estimates maximise the same likelihood over the point and its ``n_neighbors``
nearest neighbours.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import torch

from geomsae.dimension.base import TIED_LOG_RATIO, IDEstimator, check_max_dim
from geomsae.neighbors import knn

__all__ = ["MiNDML", "mind_ml", "mind_ml_from_log_rho"]

logger = logging.getLogger(__name__)

_VERSIONS = ("MLk", "MLi")


def mind_ml_from_log_rho(
    log_rho: torch.Tensor, k: int, max_dim: int, ver: str = "MLk"
) -> torch.Tensor:
    """MiND-ML estimate for each row of a batch of ``log(r_1 / r_(k+1))`` (all < 0).

    Parameters
    ----------
    log_rho : tensor of shape (n_batches, m)
    k : int
        The neighbour rank used for ``rho`` (the ``(k+1)``-th neighbour).
    max_dim : int
        Upper bound of the search.
    ver : {"MLk", "MLi"}

    Returns
    -------
    tensor of shape (n_batches,)
        Ratios that the likelihood cannot use (:func:`unusable`: ties ``r_1 = r_(k+1)`` for
        k > 1, and ``r_1 = 0``) are left out; NaN for rows with none left.
    """
    if ver not in _VERSIONS:
        raise ValueError(f"ver must be one of {_VERSIONS}; got {ver!r}")
    w = unusable(log_rho, k).logical_not_().to(log_rho.dtype)
    log_rho = log_rho.masked_fill(w == 0, -1.0)  # any negative value: weight 0
    N = w.sum(1)
    sum_l = (w * log_rho).sum(1)
    if ver == "MLi":
        # one candidate dimension at a time keeps memory at O(n_batches * m)
        def ll_at(d: int) -> torch.Tensor:
            ll = N * math.log(k * d) + (d - 1) * sum_l
            if k > 1:
                ll = ll + (k - 1) * (w * torch.log(-torch.expm1(d * log_rho))).sum(1)
            return ll

        ll = torch.stack([ll_at(d) for d in range(1, max_dim + 1)], dim=1)
        est = 1.0 + torch.argmax(ll, dim=1).to(log_rho.dtype)
        return est.masked_fill(N == 0, math.nan)

    def grad(d: torch.Tensor) -> torch.Tensor:
        if k == 1:
            return N / d + sum_l
        e = torch.exp(d[:, None] * log_rho)  # rho^d
        tail = (w * e * log_rho / -torch.expm1(d[:, None] * log_rho)).sum(1)
        return N / d + sum_l - (k - 1) * tail

    lo = torch.full_like(sum_l, 1e-6)
    hi = torch.full_like(sum_l, float(max_dim))
    at_cap = grad(hi) > 0
    for _ in range(80):  # bisection in log d on the (decreasing) derivative
        mid = torch.sqrt(lo * hi)
        pos = grad(mid) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
    est = torch.where(at_cap, torch.full_like(lo, float(max_dim)), torch.sqrt(lo * hi))
    return est.masked_fill(N == 0, math.nan)


def unusable(log_rho: torch.Tensor, k: int) -> torch.Tensor:
    """Mask of the ratios the likelihood cannot use: ``r_1 = r_(k+1)`` (``rho = 1``, within
    :data:`TIED_LOG_RATIO`; its density is 0 for k > 1, so one such point would make the
    likelihood -inf everywhere) and ``r_1 = 0`` (duplicates: ``log rho = -inf``)."""
    bad = ~torch.isfinite(log_rho)
    if k > 1:
        bad |= log_rho >= -TIED_LOG_RATIO
    return bad


class MiNDML(IDEstimator):
    """MiND-ML intrinsic-dimension estimator (Rozza et al. 2012).

    Parameters
    ----------
    k : int, default 20
        ``rho = r_1 / r_(k+1)``.
    ver : {"MLk", "MLi"}, default "MLk"
        Continuous or integer maximisation of the likelihood.
    max_dim : int, optional
        Upper bound of the estimate (default: the ambient dimension).
    on_duplicates : {"raise", "drop", "ignore"}
        Duplicate-point policy: raise (default) or drop the repeats; ``"ignore"`` skips the
        check (when the points are known to be distinct).
    """

    def __init__(
        self,
        k: int = 20,
        *,
        ver: str = "MLk",
        max_dim: int | None = None,
        on_duplicates: str = "raise",
    ) -> None:
        self.k = k
        self.ver = ver
        self.max_dim = max_dim
        self.on_duplicates = on_duplicates

    def _log_rho(self, X: torch.Tensor, n_neighbors: int = 0):
        k = self.k
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be an integer >= 1; got {k!r}")
        if k + 1 > X.shape[0] - 1:
            raise ValueError(
                f"k={k} uses the (k+1)-th neighbour and needs more than {k + 1} points; got "
                f"{X.shape[0]} (use k <= {X.shape[0] - 2} or more data)"
            )
        k = int(k)
        nb = knn(X, max(k + 1, n_neighbors))
        return torch.log(nb.distances[:, 0] / nb.distances[:, k]), nb.indices, k

    def _max_dim(self, X: torch.Tensor) -> int:
        return check_max_dim(self.max_dim, X.shape[1])

    def _global(self, X: torch.Tensor) -> float:
        log_rho, _, k = self._log_rho(X)
        bad = int(unusable(log_rho, k).sum())
        if bad:
            if len(log_rho) - bad < 2:
                raise ValueError(
                    f"MiND-ML: {bad} of {len(log_rho)} points have r_1 = r_{k + 1} or r_1 = 0 "
                    "(tied or duplicate distances: discrete data?); fewer than 2 are left. "
                    "Use a larger k, deduplicate, or add a little noise."
                )
            logger.warning(
                "MiND-ML: %d of %d points have r_1 = r_%d or r_1 = 0 (tied or duplicate "
                "distances: discrete data?); they are left out of the likelihood",
                bad, len(log_rho), k + 1,
            )  # fmt: skip
        return float(mind_ml_from_log_rho(log_rho[None], k, self._max_dim(X), self.ver)[0])

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        log_rho, idx, k = self._log_rho(X, n_neighbors)
        own = torch.arange(X.shape[0], device=idx.device)[:, None]
        hood = log_rho[torch.cat([own, idx[:, :n_neighbors]], dim=1)]
        return mind_ml_from_log_rho(hood, k, self._max_dim(X), self.ver)


def mind_ml(X: Any, k: int = 20, **params: Any) -> float:
    """Global MiND-ML estimate; see :class:`MiNDML`."""
    return MiNDML(k, **params).fit(X).dimension_
