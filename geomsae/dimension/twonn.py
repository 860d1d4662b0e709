"""TwoNN (Facco, d'Errico, Rodriguez & Laio 2017): the ratio of the two nearest distances.

For locally uniform data of dimension d, ``mu = r_2 / r_1`` is Pareto distributed with shape d,
so ``-log(1 - F(mu)) = d log(mu)``. ``method="linear"`` fits that line through the origin on the
empirical CDF after discarding the largest ``discard_fraction`` of the ratios (the paper's
estimator, and scikit-dimension's); ``method="mle"`` is the closed-form maximum likelihood with
the discarded ratios treated as censored (Denti et al. 2022 with ``discard_fraction=0``).

Pointwise estimates apply the same estimator to the ratios of the point and its
``n_neighbors`` nearest neighbours (ratios computed on the whole data set), vectorised over points.

Duplicate points make ``r_1 = 0``: the default policy raises a ``ValueError`` naming the fix.

Reference
---------
Facco, E., d'Errico, M., Rodriguez, A. & Laio, A. (2017). Estimating the intrinsic dimension of
datasets by a minimal neighborhood information. Scientific Reports 7, 12140.
"""

from __future__ import annotations

from typing import Any

import torch

from geomsae.dimension.base import TIED_LOG_RATIO, IDEstimator
from geomsae.neighbors import knn

__all__ = ["TwoNN", "twonn", "twonn_from_log_ratios"]

_METHODS = ("linear", "mle")


def twonn_from_log_ratios(
    log_mu: torch.Tensor, *, discard_fraction: float = 0.1, method: str = "linear"
) -> torch.Tensor:
    """TwoNN estimate for each row of a batch of log-ratios ``log(r2 / r1)``.

    Parameters
    ----------
    log_mu : tensor of shape (n_batches, m)
        Each row is one sample of ``m`` log-ratios (all > 0).
    discard_fraction : float in [0, 1)
        Fraction of the largest ratios left out of the fit.
    method : {"linear", "mle"}

    Returns
    -------
    tensor of shape (n_batches,)
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}; got {method!r}")
    if not 0 <= discard_fraction < 1:
        raise ValueError(f"discard_fraction must be in [0, 1); got {discard_fraction!r}")
    m = log_mu.shape[1]
    x = torch.sort(log_mu, dim=1).values
    keep = int(m * (1 - discard_fraction))
    if method == "linear":
        keep = min(keep, m - 1)  # F = 1 at the last ratio would put log(0) in the fit
        if keep < 1:
            raise ValueError(
                f"TwoNN keeps {keep} of {m} ratios per sample (discard_fraction="
                f"{discard_fraction}); it needs at least 1 below the largest: lower "
                "discard_fraction or use more points"
            )
        F = torch.arange(1, keep + 1, dtype=x.dtype, device=x.device) / m
        y = -torch.log1p(-F)  # (keep,)
        xk = x[:, :keep]
        return (xk * y).sum(1) / (xk * xk).sum(1)
    if keep < 2:
        raise ValueError(
            f"TwoNN keeps {keep} of {m} ratios per sample (discard_fraction={discard_fraction});"
            " the likelihood needs at least 2: lower discard_fraction or use more points"
        )
    xk = x[:, :keep]
    return (keep - 1) / (xk.sum(1) + (m - keep) * xk[:, -1])


class TwoNN(IDEstimator):
    """TwoNN intrinsic-dimension estimator (Facco et al. 2017).

    Parameters
    ----------
    discard_fraction : float, default 0.1
        Fraction of the largest ratios ``r2/r1`` left out (the paper's heuristic).
    method : {"linear", "mle"}, default "linear"
        Regression through the origin on the empirical CDF, or censored maximum likelihood.
    on_duplicates : {"raise", "drop", "ignore"}
        Points at distance 0 give ``r1 = 0``; raise (default) or drop the repeats.
        ``"ignore"`` skips the check (when the points are known to be distinct).

    Attributes
    ----------
    dimension_ : float
    log_ratios_ : ndarray of shape (n_kept,)
        ``log(r2 / r1)`` per point (set by ``fit``).

    Examples
    --------
    >>> from geomsae.manifolds import sphere
    >>> X = sphere(3000, d=2, random_state=0).X
    >>> round(TwoNN().fit(X).dimension_)
    2
    """

    def __init__(
        self, discard_fraction: float = 0.1, *, method: str = "linear", on_duplicates: str = "raise"
    ) -> None:
        self.discard_fraction = discard_fraction
        self.method = method
        self.on_duplicates = on_duplicates

    def _global(self, X: torch.Tensor) -> float:
        r = knn(X, 2).distances
        log_mu = torch.log(r[:, 1] / r[:, 0])
        self.log_ratios_ = log_mu.cpu().numpy()
        est = twonn_from_log_ratios(
            log_mu[None], discard_fraction=self.discard_fraction, method=self.method
        )
        if bool((r[:, 0] <= 0).any()) and not bool(torch.isfinite(est).all()):
            raise ValueError(
                f"TwoNN is undefined here: {int((r[:, 0] <= 0).sum())} points have r1 = 0 "
                "(duplicate points, kept by on_duplicates='ignore'); use "
                "on_duplicates='drop' (or geomsae.neighbors.deduplicate)"
            )
        if bool((log_mu <= TIED_LOG_RATIO).all()) or not bool(torch.isfinite(est).all()):
            raise ValueError(
                "TwoNN is undefined here: every kept ratio r2/r1 is 1 (each point's two nearest "
                "neighbours are equidistant, as on a grid); add small noise or use GRIDE with "
                "larger ranks"
            )
        return float(est[0])

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        nb = knn(X, max(n_neighbors, 2))
        log_mu = torch.log(nb.distances[:, 1] / nb.distances[:, 0])
        idx = nb.indices[:, :n_neighbors]
        own = torch.arange(X.shape[0], device=idx.device)[:, None]
        hood = log_mu[torch.cat([own, idx], dim=1)]  # (n, k + 1): the point and its neighbours
        return twonn_from_log_ratios(
            hood, discard_fraction=self.discard_fraction, method=self.method
        )


def twonn(X: Any, discard_fraction: float = 0.1, **params: Any) -> float:
    """Global TwoNN estimate; see :class:`TwoNN`."""
    return TwoNN(discard_fraction, **params).fit(X).dimension_
