"""Weighted local PCA on given neighbourhoods: the result type and the batched engine.

See :mod:`geomsae.tangent` for the formulas and conventions.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import torch

from geomsae.grassmann import fix_signs
from geomsae.neighbors import as_indices, as_tensor, check_points

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "TangentSpaces",
    "estimate_local_dimension",
    "weighted_local_pca",
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


_SAFE_TRACE = (2.0**-900, 2.0**900)


def _top_eigvecs(Z: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-d eigenvectors (b, D, d) and all eigenvalues (b, min(k, D)), descending, of Z^T Z,
    and per row the power of two ``unit`` (b,) that ``Z`` was multiplied by (in place).

    A batched symmetric eigensolver on the smaller of ``Z^T Z`` (D x D) and ``Z Z^T`` (k x k) is
    several times faster than a batched SVD of ``Z`` on CPU; in the second case the eigenvectors
    are mapped back as ``Z^T u / sqrt(lambda)`` and re-orthonormalised by a QR (which keeps the
    nested spans, so column j still spans the j-th direction). Rows whose Gram trace lies
    outside [2^-900, 2^900] (squares near float64's under- or overflow: data at 1e-200 or 1e155)
    are scaled to a largest entry in [0.5, 1) by a power of two (exact) and their Gram formed
    again; the eigenvalues are those of ``unit * Z``.
    """
    k, D = Z.shape[1], Z.shape[2]
    small = D <= k
    G = Z.transpose(1, 2) @ Z if small else Z @ Z.transpose(1, 2)
    unit = Z.new_ones(Z.shape[0])
    tr = G.diagonal(dim1=1, dim2=2).sum(1)
    odd = torch.nonzero(~((tr >= _SAFE_TRACE[0]) & (tr <= _SAFE_TRACE[1]))).flatten()
    if odd.numel():
        Zo = Z[odd]
        top = Zo.abs().amax((1, 2)) if Zo.numel() else Zo.new_zeros(odd.numel())
        e = torch.frexp(top).exponent.clamp(-1000, 1000)  # top = m 2^e; 0 for top = 0
        unit[odd] = torch.pow(2.0, -e.to(Z.dtype))  # exact
        Z[odd] = Zo * unit[odd, None, None]
        Zo = Z[odd]
        G[odd] = Zo.transpose(1, 2) @ Zo if small else Zo @ Zo.transpose(1, 2)
    if small:
        lam, U = torch.linalg.eigh(G)
        lam, V = lam.flip(-1), U.flip(-1)[:, :, :d]
    else:
        lam, U = torch.linalg.eigh(G)
        lam, U = lam.flip(-1), U.flip(-1)[:, :, :d]
        V = Z.transpose(1, 2) @ (U / lam[:, None, :d].clamp(min=1e-300).sqrt())
        V = torch.linalg.qr(V).Q
    return V, lam.clamp(min=0.0), unit


def _weighted_pca(
    Xt: torch.Tensor,
    nbr: torch.Tensor,
    w: torch.Tensor,
    d: int,
    square_weights: bool,
    memory: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Bases (m, D, d), eigenvalues (m, min(k, D)), centers (m, D) for padded neighbourhoods,
    and per neighbourhood the power of two ``unit`` (m,) its centred points were multiplied
    by: the eigenvalues are those of ``unit * (X_nbr - mu)`` (in data units: ``/ unit^2``).

    Scaling a centred neighbourhood whose covariance nears float64's over- or underflow
    (beyond ~1e154, below ~1e-154) to a largest entry in [0.5, 1) (exact; :func:`_top_eigvecs`)
    keeps its spectrum whatever the data's scale, and whatever other points' scale is.

    ``nbr`` (m, k) holds row indices (anything valid on padding), ``w`` (m, k) normalised weights
    with 0 on padding.
    """
    m, k = nbr.shape
    D = Xt.shape[1]
    n_eig = min(k, D)
    bs = _block_rows(k, D, memory)
    bases, eigs, centers, units = [], [], [], []
    for s in range(0, m, bs):
        Z = Xt[nbr[s : s + bs]]  # (b, k, D), a fresh copy: centred and scaled in place
        wb = w[s : s + bs]
        mu = torch.einsum("bk,bkd->bd", wb, Z)
        scale = wb if square_weights else wb.sqrt()
        Z.sub_(mu[:, None, :]).mul_(scale[:, :, None])  # C = Z^T Z
        V, lam, unit = _top_eigvecs(Z, d)
        bases.append(fix_signs(V))
        eigs.append(lam)
        centers.append(mu)
        units.append(unit)
    if not bases:
        z = Xt.new_zeros
        return z(0, D, d), z(0, n_eig), z(0, D), z(0)
    return torch.cat(bases), torch.cat(eigs), torch.cat(centers), torch.cat(units)


def _check_rank(
    eig: torch.Tensor,
    count: torch.Tensor,
    idx: torch.Tensor,
    d: int,
    how: str,
    centers: torch.Tensor | None = None,
):
    """One clear error when some neighbourhood cannot span d dimensions.

    A neighbourhood of ``k`` identical points ``x`` has a covariance of pure rounding: the
    weighted mean is off by at most ~``k eps |x|`` (its sum's error), and every centred point
    is that same offset, so ``lam_1 <= (k eps |x|)^2``. Eigenvalues below ``(4 k eps)^2`` times
    the squared norm of the centre count as zero (for ``k = 10``, a spread below ~1e-14 of
    it), which also catches ``d = 1``, where ``lam_d = lam_1``. Real neighbourhoods far from
    the origin (a unit sphere translated by 1e9) pass.
    """
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
    if centers is not None:
        c = torch.as_tensor(centers).to(eig)
        rounding = (4.0 * count.to(eig) * torch.finfo(torch.float64).eps) ** 2
        bad |= lam1 <= rounding * (c * c).sum(1)
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
    check_rank : bool or str
        Raise ``ValueError`` when a neighbourhood spans fewer than ``d`` dimensions; a string
        is the advice the message ends with (default: use a larger bandwidth / n_neighbors).
    memory_bytes : int
        Work-space budget per block.

    Returns
    -------
    TangentSpaces
    """
    like_torch = isinstance(X, torch.Tensor)
    Xt = as_tensor(check_points(X))
    n, D = Xt.shape
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 1 <= d < D:
        raise ValueError(f"d must be an integer with 1 <= d < D = {D}; got {d!r}")
    nbr = torch.as_tensor(neighbor_indices, device=Xt.device)
    if nbr.is_floating_point() or nbr.is_complex() or nbr.dtype == torch.bool:
        raise ValueError(f"neighbor_indices must be integers; got dtype {nbr.dtype}")
    nbr = nbr.long()
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
    idx = nbr_safe[:, 0] if indices is None else as_indices(indices, Xt.shape[0], device=Xt.device)
    if idx.shape[0] != nbr.shape[0]:
        raise ValueError(
            f"indices has {idx.shape[0]} entries for {nbr.shape[0]} neighbourhoods; "
            "give one per row of neighbor_indices"
        )
    bases, eig, centers, unit = _weighted_pca(Xt, nbr_safe, w, d, square_weights, memory_bytes)
    if check_rank:  # on the scaled values: scale-free, and nothing has under- or overflowed
        how = check_rank if isinstance(check_rank, str) else "use a larger bandwidth / n_neighbors"
        _check_rank(eig, (w > 0).sum(1), idx, d, how, centers * unit[:, None])
    eig = eig / unit[:, None] / unit[:, None]  # data units (beyond ~1e308: inf)
    nbr_out = torch.where(pad, nbr.new_full((), -1), nbr)
    out = [_to_out(t, like_torch) for t in (bases, eig, centers, idx, nbr_out, w)]
    return TangentSpaces(*out, d=int(d), bandwidth=bandwidth)


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
    nbr = torch.as_tensor(neighbor_indices, device=Xt.device)
    if nbr.is_floating_point() or nbr.is_complex() or nbr.dtype == torch.bool:
        raise ValueError(f"neighbor_indices must be integers; got dtype {nbr.dtype}")
    nbr = nbr.long()
    w = as_tensor(weights, Xt.device).masked_fill(nbr < 0, 0.0)
    w = w / w.sum(1, keepdim=True)
    _, eig, _, _ = _weighted_pca(Xt, nbr.clamp(min=0), w, 1, square_weights, DEFAULT_MEMORY_BYTES)
    votes = (eig > alpha * eig[:, :1]).sum(1)
    d = int(votes.double().median().floor())
    D = Xt.shape[1]
    if d >= D:
        raise ValueError(f"the neighbourhoods look full-dimensional (d = {d} = D); pass d")
    return max(d, 1)
