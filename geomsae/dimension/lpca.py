"""Local PCA: count the significant eigenvalues of a (local) covariance matrix.

Rules applied to the eigenvalues ``l_1 >= l_2 >= ...``:

* ``"fo"`` (Fukunaga & Olsen 1971): the number of ``l_j > alpha * l_1`` (default alpha 0.05);
* ``"variance"``: the fewest leading components explaining ``variance`` of the total (0.95);
* ``"gap"``: the position of the largest ratio ``l_j / l_(j+1)``;
* ``"participation_ratio"``: ``(sum l)^2 / sum l^2`` (continuous; a *linear* dimension).

``fit`` uses the covariance of the whole data set (global PCA, a linear dimension);
``fit_pointwise`` the covariance of each point together with its ``n_neighbors`` nearest
neighbours, computed in blocks through the (k+1) x (k+1) Gram matrix when that is smaller than
the feature dimension, and batched ``eigvalsh`` -- no Python loop over points.
Local PCA overshoots on curved sets (curvature adds variance off the tangent plane) and
undershoots at high dimension when neighbourhoods are small.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geomsae.dimension.base import IDEstimator, check_n_neighbors
from geomsae.neighbors import DEFAULT_MEMORY_BYTES, knn

__all__ = ["LocalPCA", "dimension_from_eigenvalues", "local_eigenvalues", "local_pca"]

_RULES = ("fo", "variance", "gap", "participation_ratio")


def dimension_from_eigenvalues(
    eigenvalues: torch.Tensor, rule: str = "fo", *, alpha: float = 0.05, variance: float = 0.95
) -> torch.Tensor:
    """Apply a counting rule to each row of descending, non-negative eigenvalues.

    Parameters
    ----------
    eigenvalues : tensor of shape (n_batches, r), each row sorted descending
    rule : {"fo", "variance", "gap", "participation_ratio"}
    alpha : float
        Fukunaga-Olsen threshold (fraction of the largest eigenvalue).
    variance : float
        Fraction of the variance to explain for ``"variance"``.

    Returns
    -------
    tensor of shape (n_batches,), float64 (integer-valued except for ``participation_ratio``)
    """
    lam = eigenvalues.clamp_min(0)
    if rule == "fo":
        return (lam > alpha * lam[:, :1]).sum(1).to(torch.float64)
    if rule == "variance":
        frac = torch.cumsum(lam, 1) / lam.sum(1, keepdim=True)
        return 1.0 + (frac < variance - 1e-12).sum(1).to(torch.float64)
    if rule == "gap":
        if lam.shape[1] < 2:
            return torch.ones(lam.shape[0], dtype=torch.float64, device=lam.device)
        # a floor keeps exactly-flat data finite: the gap to a numerical zero is then the largest
        floor = lam[:, :1] * 1e-12 + torch.finfo(torch.float64).tiny
        lam = torch.maximum(lam, floor)
        return 1.0 + torch.argmax(lam[:, :-1] / lam[:, 1:], dim=1).to(torch.float64)
    if rule == "participation_ratio":
        return lam.sum(1) ** 2 / (lam**2).sum(1)
    raise ValueError(f"rule must be one of {_RULES}; got {rule!r}")


def local_eigenvalues(
    X: torch.Tensor,
    indices: torch.Tensor,
    *,
    block_size: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Covariance eigenvalues of each neighbourhood ``X[indices[i]]``, descending.

    Each neighbourhood is expressed relative to its first point (translation does not change a
    covariance, and it keeps the numbers small), its Gram matrix (m x m, when m <= D) or scatter
    matrix (D x D) is formed by one batched product and centred algebraically, and
    ``eigvalsh`` runs on the whole batch.

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features)
    indices : int tensor of shape (n_queries, m)
        Rows of each neighbourhood (m points each; the first is the reference point).
    block_size : int, optional
        Neighbourhoods per batch (default: about 256 MiB of work space).
    dtype : torch.dtype
        Precision of the products and eigenvalues (float32 halves the memory traffic; the
        eigenvalues keep ~6 significant digits, plenty for counting rules).

    Returns
    -------
    tensor of shape (n_queries, min(m, n_features)), float64
    """
    n_q, m = indices.shape
    D = X.shape[1]
    r = min(m, D)
    item = torch.finfo(dtype).bits // 8
    if block_size is None:
        # ~256 neighbourhoods: the gathered block stays in cache for its product (~25% faster)
        block_size = max(1, min(256, DEFAULT_MEMORY_BYTES // (item * (2 * m * D + 2 * r * r))))
    Xd = X.to(dtype)
    centre = torch.eye(m, dtype=dtype, device=X.device) - 1.0 / m  # I - 11^T / m
    out = []
    for start in range(0, n_q, block_size):
        idx = indices[start : start + block_size]
        b = idx.shape[0]
        Y = Xd.index_select(0, idx.reshape(-1)).view(b, m, D)  # (b, m, D)
        Y.sub_(Y[:, :1].clone())  # relative to the reference point: keeps the numbers small
        if m <= D:  # nonzero spectra of Y^T C Y and C Y Y^T C coincide: use the smaller
            G = centre @ (Y @ Y.transpose(1, 2)) @ centre
        else:
            Yc = Y - Y.mean(1, keepdim=True)
            G = Yc.transpose(1, 2) @ Yc
        out.append(torch.linalg.eigvalsh(G / (m - 1)).flip(-1).to(torch.float64))
    return torch.cat(out)


class LocalPCA(IDEstimator):
    """Intrinsic dimension by (local) principal component analysis.

    Parameters
    ----------
    rule : {"fo", "variance", "gap", "participation_ratio"}, default "fo"
        How eigenvalues are turned into a dimension (see the module docstring).
    alpha : float, default 0.05
        Fukunaga-Olsen threshold.
    variance : float, default 0.95
        Variance fraction for ``rule="variance"``.
    n_neighbors : int, optional
        If given, ``fit`` returns the mean of the pointwise estimates with this neighbourhood
        size (a nonlinear estimate); by default ``fit`` is PCA of the whole data set.
    dtype : torch.dtype, default torch.float32
        Precision of the pointwise local covariances (float32 is ~2x faster; the counting rules
        need far fewer digits than it keeps). The global PCA is always float64.

    Notes
    -----
    ``fit`` with ``n_neighbors=None`` is global PCA (a linear dimension). Pointwise
    neighbourhoods contain the point itself and its ``n_neighbors`` nearest neighbours.
    Duplicate points are harmless here.

    Examples
    --------
    >>> from geomsae.manifolds import cube
    >>> X = cube(500, d=4, ambient_dim=30, random_state=0).X
    >>> LocalPCA().fit(X).dimension_
    4.0
    """

    _needs_distinct = False

    def __init__(
        self,
        rule: str = "fo",
        *,
        alpha: float = 0.05,
        variance: float = 0.95,
        n_neighbors: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.rule = rule
        self.alpha = alpha
        self.variance = variance
        self.n_neighbors = n_neighbors
        self.dtype = dtype

    def _check(self) -> None:
        if self.rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}; got {self.rule!r}")
        if not 0 < self.alpha < 1 or not 0 < self.variance <= 1:
            raise ValueError("need 0 < alpha < 1 and 0 < variance <= 1")

    def _count(self, lam: torch.Tensor) -> torch.Tensor:
        return dimension_from_eigenvalues(lam, self.rule, alpha=self.alpha, variance=self.variance)

    def _global(self, X: torch.Tensor) -> float:
        self._check()
        if self.n_neighbors is not None:
            k = check_n_neighbors(self.n_neighbors, X.shape[0])
            return float(self._pointwise(X, k).mean())
        n, D = X.shape
        if X.is_cuda:
            Y = X - X.mean(0)
            G = Y @ Y.T if n <= D else Y.T @ Y
            lam = torch.linalg.eigvalsh(G / (n - 1)).flip(-1)
        else:  # numpy's BLAS forms A^T A as a symmetric rank-k update: ~2x torch's product
            Y = X.numpy() - X.numpy().mean(0)
            G = Y @ Y.T if n <= D else Y.T @ Y
            lam = torch.from_numpy(np.linalg.eigvalsh(G / (n - 1))[::-1].copy())
        self.eigenvalues_ = lam.cpu().numpy()
        return float(self._count(lam[None])[0])

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        self._check()
        idx = knn(X, n_neighbors).indices
        own = torch.arange(X.shape[0], device=idx.device)[:, None]
        hood = torch.cat([own, idx], dim=1)
        return self._count(local_eigenvalues(X, hood, dtype=self.dtype))


def local_pca(X: Any, rule: str = "fo", **params: Any) -> float:
    """Global PCA dimension by ``rule``; see :class:`LocalPCA`."""
    return LocalPCA(rule, **params).fit(X).dimension_
