"""GRIDE: TwoNN generalised to neighbour ranks ``n1 < n2`` (Denti, Doimo, Laio & Mira 2022).

For each point, ``mu = r_{n2} / r_{n1}`` has density, under local uniformity in dimension d,

    f(mu) = d (mu^d - 1)^(n2 - n1 - 1) / (B(n2 - n1, n1) mu^((n2 - 1) d + 1)),   mu > 1.

The estimate maximises the likelihood over points (a concave problem in d, solved here by a
safeguarded Newton iteration vectorised over many samples at once). Larger ranks probe larger scales
without decimating the data; ``n1 = 1, n2 = 2`` is the unbiased TwoNN MLE ``(N-1) / sum log mu``.
Conventions follow DADApy: ``(N - 1)`` in place of N in the likelihood, and ratios above
``q50 + 20 (q95 - q50)`` are discarded as overlapping points (global estimate only). Tied
distances (``mu = 1``, discrete data) are left out, as scikit-dimension does.

Reference
---------
Denti, F., Doimo, D., Laio, A. & Mira, A. (2022). The generalized ratios intrinsic dimension
estimator. Scientific Reports 12, 20005.
"""

from __future__ import annotations

import logging
import math
import numbers
from typing import Any

import torch

from geomsae.dimension.base import TIED_LOG_RATIO, IDEstimator
from geomsae.neighbors import knn

logger = logging.getLogger(__name__)

__all__ = ["GRIDE", "gride", "gride_mle", "usable"]


def _check_ranks(n1: int, n2: int | None) -> tuple[int, int]:
    n2 = 2 * n1 if n2 is None else n2
    ints = all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in (n1, n2))
    if not (ints and 1 <= n1 < n2):
        raise ValueError(f"need integers 1 <= n1 < n2; got n1={n1!r}, n2={n2!r}")
    return int(n1), int(n2)


def gride_mle(
    log_mu: torch.Tensor,
    n1: int,
    n2: int,
    weights: torch.Tensor | None = None,
    init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum-likelihood GRIDE estimate for each row of a batch of log-ratios.

    Parameters
    ----------
    log_mu : tensor of shape (n_batches, m)
        ``log(r_{n2} / r_{n1})`` of ``m`` points per row (>= 0). Ties (``<= 1e-10``: tied distances,
        ``r_{n2} = r_{n1}``: discrete data such as grids) carry no weight: for ``n2 > n1 + 1``
        their likelihood is 0 at every d, and scikit-dimension drops them too.
    n1, n2 : int
        Neighbour ranks, ``1 <= n1 < n2``.
    weights : tensor of shape (n_batches, m), optional
        Non-negative multiplicities (bootstrap counts); default all ones.
    init : tensor of shape (n_batches,), optional
        Starting point of the Newton iteration (e.g. the full-sample estimate for bootstrap
        resamples); default 1.

    Returns
    -------
    dimension, standard_error : tensors of shape (n_batches,)
        The standard error is ``1 / sqrt(observed Fisher information)``. NaN for rows with
        fewer than 2 untied ratios (of positive weight).
    """
    w = torch.ones_like(log_mu) if weights is None else weights.to(log_mu)
    tied = log_mu <= TIED_LOG_RATIO
    w = w.masked_fill(tied, 0.0)
    log_mu = log_mu.masked_fill(tied, 1.0)  # any positive value: weight 0 (no 0 * inf)
    N = w.sum(1)
    sum_l = (w * log_mu).sum(1)
    wl, wl2 = w * log_mu, w * log_mu**2
    a = n2 - n1 - 1

    def score_info(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Score (decreasing in d) and observed information (minus its derivative)."""
        s = (N - 1) / d - (n2 - 1) * sum_l
        info = (N - 1) / d**2
        if a:
            r = torch.expm1(-d[:, None] * log_mu).reciprocal_()  # 1 / (e^{-d l} - 1) < -1
            s = s - a * (wl * r).sum(1)
            info = info + a * (wl2 * r * (1 + r)).sum(1)
        return s, info

    # the score is +inf at 0+ and -n1 * sum(l) < 0 as d -> inf: keep a bracket [lo, hi]
    lo = torch.zeros_like(N)
    hi = torch.full_like(N, math.inf)
    d = torch.ones_like(N) if init is None else init.to(N).clone()
    for _ in range(200):  # safeguarded Newton; a step leaving the bracket is a bisection
        s, info = score_info(d)
        lo = torch.where(s > 0, d, lo)
        hi = torch.where(s > 0, hi, d)
        step = d + s / info
        fallback = torch.where(torch.isinf(hi), 2 * d, 0.5 * (lo + hi))
        new = torch.where((step > lo) & (step < hi), step, fallback)
        done = bool(((new - d).abs() <= 1e-12 * d).all())
        d = new
        if done:
            break
    info = score_info(d)[1] + N / d**2 - (N - 1) / d**2  # DADApy's error uses N / d^2
    few = N < 2
    return d.masked_fill(few, math.nan), (1 / torch.sqrt(info)).masked_fill(few, math.nan)


def _warn_ties(log_mu: torch.Tensor, n1: int, n2: int) -> None:
    tied = int((log_mu <= TIED_LOG_RATIO).sum())
    if tied:
        logger.warning(
            "GRIDE: %d of %d points have r_%d = r_%d (tied distances: discrete data?); "
            "they are left out of the likelihood",
            tied, log_mu.numel(), n2, n1,
        )  # fmt: skip


def usable(log_mu: torch.Tensor) -> torch.Tensor:
    """Mask of the ratios the global estimate uses: untied (``log mu > 1e-10``) and, among
    those, below ``q50 + 20 (q95 - q50)`` (DADApy's guard against overlapping points; the
    quantiles are taken after dropping ties, as scikit-dimension does)."""
    untied = log_mu > TIED_LOG_RATIO
    mu = torch.exp(log_mu[untied])
    if mu.numel() == 0:
        return untied
    q = torch.quantile(mu, torch.tensor([0.5, 0.95], dtype=mu.dtype, device=mu.device))
    return untied & (torch.exp(log_mu) < q[0] + 20 * (q[1] - q[0]))


class GRIDE(IDEstimator):
    """Generalised ratios ID estimator at neighbour ranks ``(n1, n2)`` (Denti et al. 2022).

    Parameters
    ----------
    n1 : int, default 1
        Rank of the nearer neighbour.
    n2 : int, optional
        Rank of the farther neighbour (default ``2 * n1``).
    on_duplicates : {"raise", "drop", "ignore"}
        Duplicate points make ``r_{n1}`` zero; raise (default) or drop the repeats.
        ``"ignore"`` skips the check (when the points are known to be distinct).

    Attributes
    ----------
    dimension_ : float
    error_ : float
        Standard error of ``dimension_`` (inverse square root of the observed information).

    Notes
    -----
    For the ID as a function of scale (ranks ``n1 = 1, 2, 4, ...``) with bootstrap intervals,
    use :func:`geomsae.dimension.id_scale_curve`.
    """

    def __init__(self, n1: int = 1, n2: int | None = None, *, on_duplicates: str = "raise") -> None:
        self.n1 = n1
        self.n2 = n2
        self.on_duplicates = on_duplicates

    def _global(self, X: torch.Tensor) -> float:
        n1, n2 = _check_ranks(self.n1, self.n2)
        if n2 > X.shape[0] - 1:
            raise ValueError(f"n2={n2} needs at least {n2 + 1} points; got {X.shape[0]}")
        r = knn(X, n2).distances
        log_mu = torch.log(r[:, n2 - 1] / r[:, n1 - 1])
        _warn_ties(log_mu, n1, n2)
        d, se = gride_mle(log_mu[usable(log_mu)][None], n1, n2)
        if not bool(torch.isfinite(d).all()):
            raise ValueError(
                f"GRIDE({n1}, {n2}) has fewer than 2 points with r_{n2} > r_{n1} after "
                f"dropping overlaps and ties; use more points or larger ranks"
            )
        self.error_ = float(se[0])
        return float(d[0])

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        n1, n2 = _check_ranks(self.n1, self.n2)
        if n2 > X.shape[0] - 1:
            raise ValueError(f"n2={n2} needs at least {n2 + 1} points; got {X.shape[0]}")
        nb = knn(X, max(n2, n_neighbors))
        log_mu = torch.log(nb.distances[:, n2 - 1] / nb.distances[:, n1 - 1])
        _warn_ties(log_mu, n1, n2)
        own = torch.arange(X.shape[0], device=nb.indices.device)[:, None]
        hood = log_mu[torch.cat([own, nb.indices[:, :n_neighbors]], dim=1)]
        return gride_mle(hood, n1, n2)[0]


def gride(X: Any, n1: int = 1, n2: int | None = None, **params: Any) -> float:
    """Global GRIDE estimate at ranks ``(n1, n2)``; see :class:`GRIDE`."""
    return GRIDE(n1, n2, **params).fit(X).dimension_
