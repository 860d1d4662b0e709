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

from typing import Any

import torch

from geomsae.dimension.base import IDEstimator, check_n_neighbors
from geomsae.neighbors import knn

__all__ = ["MiNDML", "mind_ml", "mind_ml_from_log_rho"]

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
    """
    if ver not in _VERSIONS:
        raise ValueError(f"ver must be one of {_VERSIONS}; got {ver!r}")
    N = log_rho.shape[1]
    sum_l = log_rho.sum(1)
    if ver == "MLi":
        # one candidate dimension at a time keeps memory at O(n_batches * m)
        ll = torch.stack(
            [
                N * torch.log(torch.tensor(float(k * d)))
                + (d - 1) * sum_l
                + (k - 1) * torch.log(-torch.expm1(d * log_rho)).sum(1)
                for d in range(1, max_dim + 1)
            ],
            dim=1,
        )  # (n_batches, max_dim)
        return 1.0 + torch.argmax(ll, dim=1).to(log_rho.dtype)

    def grad(d: torch.Tensor) -> torch.Tensor:
        e = torch.exp(d[:, None] * log_rho)  # rho^d
        return N / d + sum_l - (k - 1) * (e * log_rho / -torch.expm1(d[:, None] * log_rho)).sum(1)

    lo = torch.full_like(sum_l, 1e-6)
    hi = torch.full_like(sum_l, float(max_dim))
    at_cap = grad(hi) > 0
    for _ in range(80):  # bisection in log d on the (decreasing) derivative
        mid = torch.sqrt(lo * hi)
        pos = grad(mid) > 0
        lo, hi = torch.where(pos, mid, lo), torch.where(pos, hi, mid)
    return torch.where(at_cap, torch.full_like(lo, float(max_dim)), torch.sqrt(lo * hi))


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
    on_duplicates : {"raise", "drop"}
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
        k = check_n_neighbors(self.k + 1, X.shape[0]) - 1
        nb = knn(X, max(k + 1, n_neighbors))
        return torch.log(nb.distances[:, 0] / nb.distances[:, k]), nb.indices, k

    def _max_dim(self, X: torch.Tensor) -> int:
        return int(X.shape[1] if self.max_dim is None else self.max_dim)

    def _global(self, X: torch.Tensor) -> float:
        log_rho, _, k = self._log_rho(X)
        return float(mind_ml_from_log_rho(log_rho[None], k, self._max_dim(X), self.ver)[0])

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        log_rho, idx, k = self._log_rho(X, n_neighbors)
        own = torch.arange(X.shape[0], device=idx.device)[:, None]
        hood = log_rho[torch.cat([own, idx[:, :n_neighbors]], dim=1)]
        return mind_ml_from_log_rho(hood, k, self._max_dim(X), self.ver)


def mind_ml(X: Any, k: int = 20, **params: Any) -> float:
    """Global MiND-ML estimate; see :class:`MiNDML`."""
    return MiNDML(k, **params).fit(X).dimension_
