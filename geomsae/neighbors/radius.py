"""Radius neighbourhoods: all pairs closer than a radius, as a sparse distance matrix."""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import scipy.sparse
import torch

from geomsae.neighbors.brute import (
    FLOAT32_SAFE_SQ,
    REMEASURE_BELOW,
    Queries,
    Reference,
    auto_screen_dtype,
    block_rows,
    matmul,
    measure_directly,
    pair_error,
    power_of_two_scale,
    refine_pairs,
)
from geomsae.neighbors.checks import (
    as_tensor,
    check_block_size,
    check_points,
    check_positive_int,
    check_real,
)
from geomsae.neighbors.plan import plan_radius
from geomsae.neighbors.precision import ieee_float32
from geomsae.neighbors.projected import projected_radius
from geomsae.neighbors.search import METHODS

logger = logging.getLogger(__name__)

__all__ = ["radius_neighbors"]


@ieee_float32()
def radius_neighbors(
    X: Any,
    radius: float,
    *,
    max_neighbors: int | None = None,
    block_size: int | None = None,
    method: str = "auto",
    device: str | torch.device | None = None,
) -> scipy.sparse.csr_matrix:
    """All pairs closer than ``radius``, as a sparse matrix of distances.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
    radius : float
        Pairs with ``|x_i - x_j| <= radius`` are kept (``i != j``).
    max_neighbors : int, optional
        Keep at most this many (the closest) per row; the result is then not necessarily
        symmetric. A warning is logged when the cap truncates any row.
    block_size : int, optional
        Rows per block (default: about 256 MiB of work space).
    method : {"auto", "brute", "projected"}
        As in :func:`geomsae.neighbors.knn`; all give the same graph. ``"projected"`` measures
        exactly every pair whose certified lower bound (top principal directions plus the
        residual norm) is within ``radius``; ``"auto"`` plans it on a sample of rows on CPU
        (``n_samples >= 2000``, ``n_features >= 32``) and uses it when predicted at least 1.5x
        cheaper.
    device : str or torch.device, optional
        Where to compute; default the input's device.

    Returns
    -------
    scipy.sparse.csr_matrix of shape (n_samples, n_samples), float64
        ``G[i, j]`` is the distance between points ``i`` and ``j``. The diagonal is not stored.
        Duplicate points are stored as **explicit zeros** (``G.nnz`` counts them; do not call
        ``eliminate_zeros``), so "no edge" and "distance 0" stay distinct. Column indices are
        sorted within each row.
    """
    X = check_points(X, min_samples=1)
    radius = check_real("radius", radius, inclusive=True)
    raw = as_tensor(X, device).detach()  # the search is not differentiable
    ref = Reference.of(raw)  # centred: translation-invariant, small expansion errors
    check_block_size(block_size)
    scale = power_of_two_scale(ref.X, sq=[ref.sq])  # exact; keeps float32/64 in exponent range
    if scale != 1.0:  # the centred copy only: direct measurements scale their differences
        ref = ref.scaled(scale)
        radius = radius * scale  # may be inf: clamped next
    Xt, x_sq = ref.X, ref.sq
    # no pair is farther apart than twice the largest centred norm: a larger radius keeps all
    radius = min(radius, 2.5 * math.sqrt(float(x_sq.max())) if len(x_sq) else 0.0)
    n = Xt.shape[0]
    if max_neighbors is not None:
        check_positive_int(max_neighbors=max_neighbors)
    cap = n - 1 if max_neighbors is None else min(int(max_neighbors), n - 1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    chosen = None
    # norms beyond ~1e15 could overflow the reduced-precision keys: float64 brute force only
    safe = n == 0 or float(x_sq.max()) <= FLOAT32_SAFE_SQ
    if safe and (
        method == "projected"
        or (method == "auto" and not Xt.is_cuda and n >= 2000 and Xt.shape[1] >= 32)
    ):
        everyone = torch.arange(n, device=Xt.device)
        chosen = plan_radius(raw, everyone, ref, radius, force=method == "projected")
    if chosen is not None:
        r, c, v = projected_radius(raw, everyone, ref, radius, chosen, block_size=block_size)
        if max_neighbors is not None:
            over = int((torch.bincount(r, minlength=n) > cap).sum())
            if over:
                logger.warning(
                    "radius_neighbors: max_neighbors=%d truncated %d of %d rows", cap, over, n
                )
            q_all = Queries(ref.raw, ref.X, ref.sq)
            r, c, v = _cap_rows(r, c, _settle_cap(q_all, ref, r, c, v, cap), n, cap)
        return _csr(r, c, v / scale, n)
    bs = block_size or min(512, block_rows(n, 2 * Xt.shape[1], None))  # cache-sized blocks
    dtype = auto_screen_dtype(n, 1, n - 1, Xt.is_cuda, Xt.shape[1]) if safe else torch.float64
    # screening slack: the expansion's rounding error is ~1e-12 of the squared norms
    slack = 1e-9 * (float(x_sq.max()) + radius**2) + 1e-300
    rows_all, cols_all, vals_all = [], [], []
    truncated = 0
    for start in range(0, n, bs):
        q = Queries(raw[start : start + bs], Xt[start : start + bs], x_sq[start : start + bs])
        b = len(q)
        found = None if dtype == torch.float64 else _screened_block(q, start, ref, radius, dtype)
        if found is None:
            found = _expansion_block(q, start, ref, radius, slack)
        r, c, dist = found
        if max_neighbors is not None:
            before = torch.bincount(r, minlength=b)
            r, c, dist = _cap_rows(r, c, _settle_cap(q, ref, r, c, dist, cap), b, cap)
            truncated += int((before > cap).sum())
        rows_all.append(start + r)
        cols_all.append(c)
        vals_all.append(dist)
    if truncated:
        logger.warning(
            "radius_neighbors: max_neighbors=%d truncated %d of %d rows", cap, truncated, n
        )
    return _csr(torch.cat(rows_all), torch.cat(cols_all), torch.cat(vals_all) / scale, n)


_MAX_CANDIDATES_PER_ROW = 512  # beyond, measuring candidates costs more than the float64 product


def _screened_block(
    q: Queries, start: int, ref: Reference, radius: float, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """Pairs of the block within ``radius`` by a low-precision screen (:class:`Screen`), or
    None when its certified lower bound leaves too many candidates to measure.

    Every pair whose lower bound (the product's rounding bound subtracted pair by pair, less
    the error of forming it) is within ``radius`` is measured exactly, so none is missed.
    """
    b, q_sq = len(q), q.sq
    screen = ref.screen(dtype)
    self_b = start + torch.arange(b, device=q_sq.device)
    keys = screen.shifted(q.c, self_b, q_sq)  # lower bounds of d^2 - |q|^2
    eps32 = torch.finfo(torch.float32).eps
    lim = radius**2 * (1 + 1e-9) - q_sq + screen.error_bound(q_sq) + 2 * eps32 * (radius**2 + q_sq)
    within = keys <= lim.to(keys.dtype)[:, None]
    counts = within.sum(1)
    if int(counts.sum()) > _MAX_CANDIDATES_PER_ROW * b:
        return None
    r, c = torch.nonzero(within, as_tuple=True)
    crow = torch.zeros(b + 1, dtype=torch.long, device=q_sq.device)
    crow[1:] = torch.cumsum(counts, 0)
    dist = refine_pairs(q, ref, crow, c, radius=radius)
    keep = dist <= radius
    return r[keep], c[keep], dist[keep]


def _expansion_block(
    q: Queries, start: int, ref: Reference, radius: float, slack: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs of the block within ``radius`` from the float64 expansion ``|q|^2 + |r|^2 - 2 q.r``
    on centred data (accurate to ~1e-16 of the squared norms); near-duplicate pairs, where that
    is not enough, and pairs within the expansion's error of the radius are re-measured
    directly (as in :func:`geomsae.neighbors.brute.refine_pairs`)."""
    b, Xt, x_sq = len(q), ref.X, ref.sq
    d2 = matmul(q.c, Xt.T).mul_(-2.0).add_(x_sq).add_(q.sq[:, None])
    rows = torch.arange(b, device=d2.device)
    d2[rows, start + rows] = math.inf
    r, c = torch.nonzero(d2 <= radius**2 + slack, as_tuple=True)
    d2_rc = d2[r, c].clamp_min(0)
    del d2
    scale = x_sq[start + r] + x_sq[c]
    redo = d2_rc <= REMEASURE_BELOW * scale
    redo |= (d2_rc - radius**2).abs() <= pair_error(Xt.shape[1], scale)  # on the boundary
    dist = torch.sqrt(d2_rc)
    if bool(redo.any()):
        p = torch.nonzero(redo).flatten()
        dist[p] = measure_directly(q, ref, r[p], c[p])
    keep = dist <= radius
    return r[keep], c[keep], dist[keep]


def _settle_cap(
    q: Queries, ref: Reference, r: torch.Tensor, c: torch.Tensor, v: torch.Tensor, cap: int
) -> torch.Tensor:
    """``v`` with the pairs that could change sides of a row's cap measured directly.

    In rows of more than ``cap`` pairs, a pair whose expansion distance is within the
    expansion's error (``brute.expansion_error``'s bound, both sides) of the row's
    ``cap``-th smallest may be on either side of it whatever the exact distances are: on
    lattices, equal distances came out a few ulps apart and the cap kept columns by rounding
    noise, not by column. Those are re-measured as ``|q - r|`` (equal exact distances then
    compare equal); no other pair can cross the cap. ``r`` indexes the rows of ``q``.
    """
    counts = torch.bincount(r, minlength=len(q))
    over = counts > cap
    if not bool(over.any()):
        return v
    order = torch.from_numpy(np.lexsort((v.cpu().numpy(), r.cpu().numpy()))).to(r.device)
    starts = torch.cumsum(counts, 0) - counts
    kth = torch.full((len(q),), math.inf, dtype=v.dtype, device=v.device)
    rows = torch.nonzero(over).flatten()
    kth[rows] = v[order[starts[rows] + cap - 1]]
    d2, k2 = v * v, kth[r] * kth[r]
    q_sq, D = q.sq[r], q.c.shape[1]  # expansion_error's bound, pair by pair
    err = pair_error(D, 3 * q_sq + 2 * d2) + pair_error(D, 3 * q_sq + 2 * k2)
    near = torch.nonzero(over[r] & ((d2 - k2).abs() <= err)).flatten()
    if not near.numel():
        return v
    v = v.clone()
    v[near] = measure_directly(q, ref, r[near], c[near])
    return v


def _cap_rows(
    r: torch.Tensor, c: torch.Tensor, v: torch.Tensor, n: int, cap: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keep the ``cap`` closest pairs of each row (ties by column), in (row, column) order."""
    counts = torch.bincount(r, minlength=n)
    if not bool((counts > cap).any()):
        return r, c, v
    order = torch.from_numpy(np.lexsort((c.cpu().numpy(), v.cpu().numpy(), r.cpu().numpy())))
    order = order.to(r.device)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(r), device=r.device) - starts[r[order]]
    kept = order[rank < cap].sort().values  # back to (row, column) order
    return r[kept], c[kept], v[kept]


def _csr(r: torch.Tensor, c: torch.Tensor, v: torch.Tensor, n: int) -> scipy.sparse.csr_matrix:
    """The (n, n) CSR matrix of pairs given in (row, column) order, exactly symmetric values.

    Distances from the expansion can differ in the last bit between (i, j) and (j, i) (their
    dot products come from different blocks); each pair below the diagonal takes the value of
    its mirror, so ``G - G.T`` is exactly zero wherever both are stored.
    """
    r, c, v = r.cpu().numpy(), c.cpu().numpy(), v.cpu().numpy().copy()
    key = r.astype(np.int64) * n + c
    lower = np.flatnonzero(r > c)
    mirror = c[lower].astype(np.int64) * n + r[lower]
    pos = np.minimum(np.searchsorted(key, mirror), max(len(key) - 1, 0))
    found = key[pos] == mirror if len(key) else np.zeros(0, dtype=bool)
    v[lower[found]] = v[pos[found]]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    G = scipy.sparse.csr_matrix((v, c.astype(np.int64), indptr), shape=(n, n))
    G.has_sorted_indices = True  # nonzero() yields row-major order, columns ascending
    return G
