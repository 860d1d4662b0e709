"""Exact nearest neighbours on point clouds, blocked so memory stays bounded.

Conventions (pinned, because they change answers downstream):

* When the queries are the data themselves (``Y is None``), a point is **never its own
  neighbour**; it is excluded by *index*, so an exact duplicate of it still appears, at distance 0.
* Distances are Euclidean and returned in **float64**, from the expansion
  ``|x|^2 + |y|^2 - 2 x.y`` on centred data, block by block; pairs closer than 1e-4 of their
  norms are re-measured directly as ``|x - y|``, so duplicates give exactly 0 and
  near-duplicates keep their digits (the expansion alone loses them to cancellation).
  ``screen_dtype=torch.float32`` screens in float32 and certifies every row (see :func:`knn`).
* Rows are sorted by distance, ties broken by neighbour index (deterministic).
* numpy in -> numpy out; torch in -> torch out, on the input's device (a CUDA tensor is computed
  on the GPU). Memory is ``O(block_size * n_samples)``: ``n = 100 000`` points in ``D = 576``
  need about 256 MiB of work space with the default budget.

Duplicate points (identical rows) are allowed here but break estimators that divide by the
nearest-neighbour distance (TwoNN's ``r2 / r1``). :func:`find_duplicates` finds them,
:func:`deduplicate` removes them, and :func:`check_no_duplicates` raises a ``ValueError`` that
names the fix.

Examples
--------
>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [3.0], [7.0]])
>>> nb = knn(X, 2)
>>> nb.indices
array([[1, 2],
       [0, 2],
       [1, 0],
       [2, 1]])
>>> nb.distances[0]
array([1., 3.])
"""

from __future__ import annotations

import logging
import math
from typing import Any, NamedTuple

import numpy as np
import scipy.sparse
import torch

logger = logging.getLogger(__name__)

__all__ = [
    "Neighbors",
    "as_tensor",
    "check_no_duplicates",
    "check_points",
    "deduplicate",
    "find_duplicates",
    "knn",
    "radius_neighbors",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
"""Work-space budget of one block (distance block plus refinement gather), in bytes."""


class Neighbors(NamedTuple):
    """k nearest neighbours of each query point.

    Attributes
    ----------
    distances : array of shape (n_queries, n_neighbors), float64
        Euclidean distances, ascending along each row.
    indices : array of shape (n_queries, n_neighbors), int64
        Row indices of the neighbours in the reference set, same order as ``distances``.
    """

    distances: Any
    indices: Any


# --------------------------------------------------------------------------------------------
# input checks


def check_points(X: Any, *, name: str = "X", min_samples: int = 2) -> np.ndarray | torch.Tensor:
    """Check that ``X`` is a finite 2-D point cloud and return it (numpy or torch, unchanged type).

    Raises
    ------
    ValueError
        If ``X`` is not 2-D, has fewer than ``min_samples`` rows or no columns, or holds NaN/Inf.
    TypeError
        If ``X`` is neither array-like nor a torch tensor.
    """
    if not isinstance(X, torch.Tensor):
        try:
            X = np.asarray(X)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be a numpy array or a torch tensor") from exc
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            raise TypeError(f"{name} must hold numbers; got dtype {X.dtype}")
    shape = tuple(X.shape)
    if len(shape) != 2:
        hint = " (for one feature use X.reshape(-1, 1))" if len(shape) == 1 else ""
        raise ValueError(
            f"{name} must be 2-D of shape (n_samples, n_features); got shape {shape}{hint}"
        )
    if shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {shape})")
    if shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} points; got {shape[0]}")
    finite = torch.isfinite(X).all().item() if isinstance(X, torch.Tensor) else np.isfinite(X).all()
    if not finite:
        raise ValueError(
            f"{name} contains NaN or Inf; drop those rows first "
            f"(e.g. X[np.isfinite(X).all(axis=1)])"
        )
    return X


def as_tensor(X: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """``X`` as a float64 torch tensor (zero-copy for float64 numpy arrays on CPU)."""
    t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


def _out(t: torch.Tensor, like_torch: bool) -> Any:
    return t if like_torch else t.cpu().numpy()


# --------------------------------------------------------------------------------------------
# duplicates


def find_duplicates(X: Any) -> np.ndarray:
    """Mask of the rows that exactly repeat an earlier row.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)

    Returns
    -------
    mask : bool array of shape (n_samples,)
        ``True`` for every row equal to some earlier row, so ``X[~mask]`` keeps the first
        occurrence of each distinct point (see :func:`deduplicate`).
    """
    X = check_points(X, min_samples=1)
    A = X.detach().cpu().numpy() if isinstance(X, torch.Tensor) else X
    A = np.ascontiguousarray(A, dtype=np.float64) + 0.0  # + 0.0 maps -0.0 to 0.0
    rows = A.view(np.dtype((np.void, A.dtype.itemsize * A.shape[1]))).ravel()
    _, first = np.unique(rows, return_index=True)
    mask = np.ones(A.shape[0], dtype=bool)
    mask[first] = False
    return mask


def deduplicate(X: Any) -> tuple[Any, np.ndarray]:
    """Remove repeated rows, keeping first occurrences in their original order.

    Returns
    -------
    X_unique : same type as ``X``, shape (n_unique, n_features)
    kept : int array of shape (n_unique,)
        Row indices of ``X`` that were kept.
    """
    kept = np.flatnonzero(~find_duplicates(X))
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(kept, device=X.device)], kept
    return np.asarray(X)[kept], kept


def check_no_duplicates(X: Any, *, name: str = "X") -> None:
    """Raise a ``ValueError`` naming the fix if ``X`` has repeated rows.

    Estimators that divide by the nearest-neighbour distance call this (policy: fail loudly
    rather than silently drop points). The fix is ``X, kept = geomsae.neighbors.deduplicate(X)``
    or the estimator's ``on_duplicates="drop"`` option.
    """
    mask = find_duplicates(X)
    n_dup = int(mask.sum())
    if n_dup:
        example = int(np.flatnonzero(mask)[0])
        raise ValueError(
            f"{name} has {n_dup} duplicate point(s) (e.g. row {example} repeats an earlier row); "
            f"nearest-neighbour distances of 0 break this estimator. Remove them with "
            f"`X, kept = geomsae.neighbors.deduplicate(X)` or pass on_duplicates='drop'."
        )


# --------------------------------------------------------------------------------------------
# k nearest neighbours


def _block_rows(n_ref: int, extra_per_row: int, block_size: int | None) -> int:
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size}")
        return int(block_size)
    per_row = 8 * (2 * n_ref + extra_per_row)  # float64 distances + topk scratch + refinement
    return max(1, min(8192, DEFAULT_MEMORY_BYTES // max(per_row, 1)))


def _refine(
    Q: torch.Tensor, R: torch.Tensor, idx: torch.Tensor, r_sq: torch.Tensor
) -> torch.Tensor:
    """Float64 distances between each (centred) query row and its candidate rows ``R[idx]``.

    ``r_sq`` holds the squared norms of the rows of ``R``. The expansion
    ``|q|^2 + |r|^2 - 2 q.r`` in float64 (one batched matrix product) is accurate to ~1e-16 of
    the squared norms; pairs where that is not enough (squared distance below 1e-8 of the
    squared norms: near-duplicates) are recomputed directly as ``|q - r|``, so duplicates come
    out as exactly 0.
    """
    b, c = idx.shape
    Rc = torch.index_select(R, 0, idx.reshape(-1)).view(b, c, -1)  # (b, c, D)
    dots = torch.bmm(Rc, Q[:, :, None])[..., 0]  # (b, c)
    scale = (Q * Q).sum(1)[:, None] + r_sq[idx]
    d2 = (scale - 2.0 * dots).clamp_min(0)
    close = d2 < 1e-8 * scale
    if bool(close.any()):
        rows, cols = torch.nonzero(close, as_tuple=True)
        d2[rows, cols] = ((Rc[rows, cols] - Q[rows]) ** 2).sum(1)
    return torch.sqrt(d2)


def _fix_close(
    Q: torch.Tensor, R: torch.Tensor, idx: torch.Tensor, d2: torch.Tensor, r_sq: torch.Tensor
) -> torch.Tensor:
    """Distances from float64 squared distances; pairs closer than 1e-4 of the norms re-measured."""
    scale = (Q * Q).sum(1)[:, None] + r_sq[idx]
    close = d2 < 1e-8 * scale
    if bool(close.any()):
        rows, cols = torch.nonzero(close, as_tuple=True)
        d2 = d2.clone()
        d2[rows, cols] = ((R[idx[rows, cols]] - Q[rows]) ** 2).sum(1)
    return torch.sqrt(d2)


def _sort_rows(dist: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by distance, ties by index (two stable sorts)."""
    order = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, order), idx.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)
    return dist.gather(1, order), idx.gather(1, order)


def _knn_block(
    Qb: torch.Tensor,
    self_b: torch.Tensor | None,
    R: torch.Tensor,
    mu: torch.Tensor,
    screens: dict,
    dtype: torch.dtype,
    n_cand: int,
    k: int,
    r_sq64: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Screen one block of queries, refine the candidates exactly, and certify the result.

    Returns the refined candidate distances and indices (rows sorted) and a mask of the rows
    whose k nearest neighbours are guaranteed to be among the candidates: every non-candidate
    has a screened squared distance >= the largest candidate's, and the screening error is at
    most ``2 (D + 2) eps (|q|^2 + max |r|^2)`` (a forward-error bound of the float32 dot
    product and norms), so a row is certified when that margin still exceeds its k-th exact
    squared distance. float64 screening is accepted as exact.
    """
    Rs, r_sq = screens[dtype]
    Qc = Qb - mu
    Qs = Qc.to(dtype)
    # |r|^2 - 2 q.r in one fused product; |q|^2 is constant along a row, added after top-k
    d2 = torch.addmm(r_sq[None, :], Qs, Rs.T, alpha=-2.0)  # (b, n_ref)
    if self_b is not None:
        d2[torch.arange(Qb.shape[0], device=d2.device), self_b] = math.inf
    vals, cand = torch.topk(d2, n_cand, dim=1, largest=False, sorted=False)
    vals = vals + (Qs * Qs).sum(1)[:, None]
    del d2
    if dtype == torch.float64:
        # the float64 expansion is the distance (to ~1e-16 of the squared norms); only
        # near-duplicates, where that is not enough, are re-measured directly
        exact = _fix_close(Qc, screens[torch.float64][0], cand, vals.clamp_min(0), r_sq64)
    else:
        exact = _refine(Qc, screens[torch.float64][0], cand, r_sq64)
    if self_b is not None:  # exclude self again: the refinement gives it distance 0
        exact = exact.masked_fill(cand == self_b[:, None], math.inf)
    exact, cand = _sort_rows(exact, cand)
    if dtype == torch.float64 or n_cand >= R.shape[0] - (self_b is not None):
        return exact, cand, torch.ones(Qb.shape[0], dtype=torch.bool, device=Qb.device)
    eps = torch.finfo(torch.float32).eps
    if Qb.is_cuda and torch.backends.cuda.matmul.allow_tf32:
        eps = 2.0**-10  # TF32 keeps 10 mantissa bits
    bound = 2 * (R.shape[1] + 2) * eps * ((Qc * Qc).sum(1) + r_sq64.max())
    ok = exact[:, k - 1] ** 2 <= vals.max(1).values.double() - bound
    return exact, cand, ok


def knn(
    X: Any,
    n_neighbors: int,
    *,
    Y: Any | None = None,
    block_size: int | None = None,
    query_indices: Any | None = None,
    screen_dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
) -> Neighbors:
    """Exact k nearest neighbours, blocked over the queries.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
        Query points. When ``Y`` is None, also the reference set, and a point is never its own
        neighbour (excluded by index; exact duplicates of it are returned at distance 0).
    n_neighbors : int
        Number of neighbours ``k``; at most ``n_samples - 1`` (or ``len(Y)`` when ``Y`` is given).
    Y : array or tensor of shape (n_reference, n_features), optional
        Reference points to search. Nothing is excluded then.
    block_size : int, optional
        Queries per block; by default chosen so a block uses about 256 MiB.
    query_indices : int array of shape (n_queries,), optional
        Only with ``Y=None``: search neighbours (among all of ``X``) of the rows
        ``X[query_indices]`` only, still excluding each query itself.
    screen_dtype : torch.dtype, optional
        Both choices give the same neighbours and float64 distances; they differ in speed.
        None (default) picks float32 on GPUs, and on CPU when the reference set is large next
        to the number of candidates (``n_reference >= 400 * (k + max(4, k // 4))``, where the
        cheaper product outweighs the candidate gather; measured on a 2-core CPU at D = 576),
        else float64. ``torch.float64``: one float64 matrix product per block; distances come from
        the (centred) expansion, accurate to ~1e-16 of the squared norms, with near-duplicate
        pairs re-measured directly. ``torch.float32``: a float32 screen (twice the GEMM speed)
        keeping ``max(4, k // 4)`` extra candidates, all re-measured in float64 (a gather that
        costs about as much as the GEMM saves on CPU; worth it on GPUs), and each row
        *certified* with a rounding-error bound; rows it cannot certify are redone in float64.
    device : str or torch.device, optional
        Where to compute; default the input's device. Outputs follow the input's type and device.

    Returns
    -------
    Neighbors
        ``distances`` (float64) and ``indices`` (int64), each of shape (n_queries, n_neighbors),
        rows sorted ascending.
    """
    like_torch = isinstance(X, torch.Tensor)
    out_device = X.device if like_torch else None
    X = check_points(X, min_samples=1)
    Xt = as_tensor(X, device)
    if Y is None:
        R = Xt
        n_ref = R.shape[0]
        if query_indices is None:
            qi = torch.arange(n_ref, device=R.device)
            Q = Xt
        else:
            qi = torch.as_tensor(np.asarray(query_indices), device=R.device).long().reshape(-1)
            if qi.numel() and (qi.min() < 0 or qi.max() >= n_ref):
                raise ValueError(f"query_indices must lie in [0, {n_ref})")
            Q = Xt[qi]
        max_k = n_ref - 1
    else:
        if query_indices is not None:
            raise ValueError("query_indices is only meaningful with Y=None")
        R = as_tensor(check_points(Y, name="Y", min_samples=1), Xt.device)
        if R.shape[1] != Xt.shape[1]:
            raise ValueError(f"X has {Xt.shape[1]} features but Y has {R.shape[1]}")
        Q, qi, n_ref = Xt, None, R.shape[0]
        max_k = n_ref
    if not isinstance(n_neighbors, (int, np.integer)) or n_neighbors < 1:
        raise ValueError(f"n_neighbors must be a positive integer; got {n_neighbors!r}")
    if n_neighbors > max_k:
        raise ValueError(
            f"n_neighbors={n_neighbors} but only {max_k} other points are available; "
            f"use n_neighbors <= {max_k} or more points"
        )
    k = int(n_neighbors)
    if screen_dtype is None:
        wide = n_ref >= 400 * min(max_k, k + max(4, k // 4))
        screen_dtype = torch.float32 if (Xt.is_cuda or wide) else torch.float64
    if screen_dtype not in (torch.float32, torch.float64):
        raise ValueError(f"screen_dtype must be torch.float32 or torch.float64; got {screen_dtype}")
    n_cand = k if screen_dtype == torch.float64 else min(max_k, k + max(4, k // 4))
    bs = _block_rows(n_ref, n_cand * Xt.shape[1], block_size)

    # centre before screening: the expansion's cancellation error scales with the squared norms
    mu = R.mean(0)
    Rc = R - mu
    r_sq = (Rc * Rc).sum(1)
    screens = {torch.float64: (Rc, r_sq)}
    if screen_dtype == torch.float32:
        screens[torch.float32] = (Rc.float(), r_sq.float())
    dists, inds = [], []
    for start in range(0, Q.shape[0], bs):
        Qb = Q[start : start + bs]
        self_b = None if qi is None else qi[start : start + bs]
        exact, cand, ok = _knn_block(Qb, self_b, R, mu, screens, screen_dtype, n_cand, k, r_sq)
        if not bool(ok.all()):  # rows the float32 screen cannot certify: redo in float64
            bad = torch.nonzero(~ok).flatten()
            e64, c64, _ = _knn_block(
                Qb[bad], None if self_b is None else self_b[bad], R, mu, screens,
                torch.float64, k, k, r_sq,
            )  # fmt: skip
            exact[bad, :k], cand[bad, :k] = e64, c64
        dists.append(exact[:, :k])
        inds.append(cand[:, :k])
    D = torch.cat(dists) if dists else torch.empty(0, k, dtype=torch.float64)
    I = torch.cat(inds) if inds else torch.empty(0, k, dtype=torch.long)
    if like_torch:
        D, I = D.to(out_device), I.to(out_device)
    return Neighbors(_out(D, like_torch), _out(I, like_torch))


# --------------------------------------------------------------------------------------------
# radius neighbours


def radius_neighbors(
    X: Any,
    radius: float,
    *,
    max_neighbors: int | None = None,
    block_size: int | None = None,
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
    if not np.isfinite(radius) or radius < 0:
        raise ValueError(f"radius must be a finite number >= 0; got {radius!r}")
    Xt = as_tensor(X, device)
    Xt = Xt - Xt.mean(0)  # translation-invariant; keeps the expansion's rounding error small
    n = Xt.shape[0]
    if max_neighbors is not None and (max_neighbors < 1):
        raise ValueError(f"max_neighbors must be >= 1; got {max_neighbors!r}")
    cap = n - 1 if max_neighbors is None else min(int(max_neighbors), n - 1)
    bs = _block_rows(n, 2 * Xt.shape[1], block_size)
    x_sq = (Xt * Xt).sum(1)
    # screening slack: the expansion's rounding error is ~1e-12 of the squared norms
    slack = 1e-9 * (float(x_sq.max()) + radius**2) + 1e-300
    rows_all, cols_all, vals_all = [], [], []
    truncated = 0
    for start in range(0, n, bs):
        Qb = Xt[start : start + bs]
        b = Qb.shape[0]
        d2 = x_sq[start : start + bs, None] + x_sq[None, :] - 2.0 * (Qb @ Xt.T)
        rows = torch.arange(b, device=d2.device)
        d2[rows, start + rows] = math.inf
        within = d2 <= radius**2 + slack
        if max_neighbors is not None:
            counts = within.sum(1)
            truncated += int((counts > cap).sum())
            if bool((counts > cap).any()):
                kth = torch.topk(d2, cap, dim=1, largest=False).values[:, -1:]
                within &= d2 <= kth  # ties at the cap may keep a few extra
        r, c = torch.nonzero(within, as_tuple=True)
        del d2, within
        dist = torch.linalg.vector_norm(Xt[start + r] - Xt[c], dim=1)  # exact float64
        keep = dist <= radius
        rows_all.append(start + r[keep])
        cols_all.append(c[keep])
        vals_all.append(dist[keep])
    if truncated:
        logger.warning(
            "radius_neighbors: max_neighbors=%d truncated %d of %d rows", cap, truncated, n
        )
    r = torch.cat(rows_all).cpu().numpy()
    c = torch.cat(cols_all).cpu().numpy()
    v = torch.cat(vals_all).cpu().numpy()
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(r, minlength=n), out=indptr[1:])
    G = scipy.sparse.csr_matrix((v, c.astype(np.int64), indptr), shape=(n, n))
    G.has_sorted_indices = True  # nonzero() yields row-major order, columns ascending
    return G
