"""Blocked brute-force k-NN: one matrix product per block of queries, exact float64 refinement.

This is the exact search every other method falls back on. The pieces it shares with the
projected screen (:mod:`geomsae.neighbors.projected`) live here too: the centred reference set
(:class:`Reference`), the exact float64 distances of candidate pairs (:func:`refine`), the
row sort with index tie-break, and the block-size rule.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import torch

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "Reference",
    "block_rows",
    "brute_knn",
    "exclude_self",
    "matmul",
    "no_neighbors",
    "refine",
    "refine_pairs",
    "Screen",
    "auto_screen_dtype",
    "smallest",
    "sort_rows",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
"""Work-space budget of one block (distance block plus refinement gather), in bytes."""


def matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b``; float64 on CPU goes through numpy's BLAS.

    torch's CPU wheels link MKL, whose double-precision products ran at 16 GFLOP/s on one core
    of this machine's AMD EPYC against 37 for numpy's OpenBLAS (float32: 40 in torch); the
    float64 screens and counts are such products.
    """
    if (
        a.dtype == torch.float64
        and a.device.type == "cpu"
        and b.device.type == "cpu"
        and not (a.requires_grad or b.requires_grad)
    ):
        return torch.from_numpy(a.numpy() @ b.numpy())
    return a @ b


def auto_screen_dtype(n_ref: int, k: int, max_k: int, cuda: bool) -> torch.dtype:
    """float32 screening on GPUs, and on CPU when the reference set is large next to the
    candidates (``n_ref >= 400 (k + max(4, k // 4))``, where the cheaper product outweighs the
    candidate gather); else float64."""
    wide = n_ref >= 400 * min(max_k, k + max(4, k // 4))
    return torch.float32 if (cuda or wide) else torch.float64


def block_rows(n_ref: int, extra_per_row: int, block_size: int | None) -> int:
    """Queries per block: ``block_size`` if given, else what fits the memory budget."""
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size}")
        return int(block_size)
    per_row = 8 * (2 * n_ref + extra_per_row)  # float64 distances + topk scratch + refinement
    return max(1, min(8192, DEFAULT_MEMORY_BYTES // max(per_row, 1)))


@dataclass
class Reference:
    """The reference set, centred once (the expansion's cancellation error scales with norms).

    Attributes
    ----------
    X : tensor of shape (n_reference, n_features), float64
        Centred reference points.
    mu : tensor of shape (n_features,)
        The mean that was subtracted (queries are centred with it too).
    sq : tensor of shape (n_reference,)
        Squared norms of the rows of ``X``.
    """

    X: torch.Tensor
    mu: torch.Tensor
    sq: torch.Tensor
    _screens: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, R: torch.Tensor) -> Reference:
        mu = R.mean(0)
        Rc = R - mu
        return cls(Rc, mu, (Rc * Rc).sum(1))

    def screen(self, dtype: torch.dtype) -> Screen:
        """The brute-force :class:`Screen` of this set in ``dtype`` (made once, on first use)."""
        if dtype not in self._screens:
            self._screens[dtype] = Screen(self.X.to(dtype), self.sq.to(dtype))
        return self._screens[dtype]

    @property
    def n(self) -> int:
        return self.X.shape[0]


def _csr_dots(
    Qc: torch.Tensor, R: torch.Tensor, crow: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """``Qc[i] . R[cols[p]]`` for the pairs ``p`` of row ``i`` (CSR: ``crow[i] <= p < crow[i+1]``).

    On CPU a sampled dense-dense product (``torch.sparse.sampled_addmm`` on the CSR pattern of
    the pairs) reads each candidate row once without materialising a (pairs, D) gather,
    ~2-5x faster than ``index_select`` + a batched product at D = 576; on GPUs the gather is
    used.
    """
    if cols.numel() == 0:
        return torch.zeros(0, dtype=Qc.dtype, device=Qc.device)
    if Qc.device.type == "cpu":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, cols, torch.zeros(cols.numel(), dtype=Qc.dtype),
                size=(Qc.shape[0], R.shape[0]), check_invariants=False,
            )  # fmt: skip
            return torch.sparse.sampled_addmm(pattern, Qc, R.T).values()
    rows = torch.repeat_interleave(torch.diff(crow))
    return (torch.index_select(R, 0, cols) * Qc[rows]).sum(1)


def refine_pairs(
    Qc: torch.Tensor, ref: Reference, crow: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Float64 distances of CSR pairs (row ``i`` of ``Qc``, centred; reference row ``cols[p]``).

    The expansion ``|q|^2 + |r|^2 - 2 q.r`` in float64 is accurate to ~1e-16 of the squared
    norms; pairs where that is not enough (squared distance below 1e-8 of the squared norms:
    near-duplicates) are recomputed directly as ``|q - r|``, so duplicates come out as exactly 0.
    """
    rows = torch.repeat_interleave(torch.arange(Qc.shape[0], device=Qc.device), torch.diff(crow))
    q_sq = (Qc * Qc).sum(1)[rows]
    d2 = (q_sq + ref.sq[cols] - 2.0 * _csr_dots(Qc, ref.X, crow, cols)).clamp_min(0)
    close = d2 < 1e-8 * (q_sq + ref.sq[cols])
    if bool(close.any()):
        p = torch.nonzero(close).flatten()
        d2[p] = ((ref.X[cols[p]] - Qc[rows[p]]) ** 2).sum(1)
    return torch.sqrt(d2)


def refine(Qc: torch.Tensor, ref: Reference, idx: torch.Tensor) -> torch.Tensor:
    """Float64 distances between each centred query row and its candidate rows ``ref.X[idx]``.

    ``idx`` has shape (b, c); see :func:`refine_pairs` for the accuracy.
    """
    b, c = idx.shape
    crow = torch.arange(0, b * c + 1, c, device=idx.device, dtype=torch.int64)
    return refine_pairs(Qc, ref, crow, idx.reshape(-1)).view(b, c)


def fix_close(
    Qc: torch.Tensor, ref: Reference, idx: torch.Tensor, d2: torch.Tensor
) -> torch.Tensor:
    """Distances from float64 squared distances; pairs closer than 1e-4 of the norms re-measured."""
    scale = (Qc * Qc).sum(1)[:, None] + ref.sq[idx]
    close = d2 < 1e-8 * scale
    if bool(close.any()):
        rows, cols = torch.nonzero(close, as_tuple=True)
        d2 = d2.clone()
        d2[rows, cols] = ((ref.X[idx[rows, cols]] - Qc[rows]) ** 2).sum(1)
    return torch.sqrt(d2)


def sort_rows(dist: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by distance, ties by index (two stable sorts)."""
    order = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, order), idx.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)
    return dist.gather(1, order), idx.gather(1, order)


def exclude_self(
    dist: torch.Tensor, cand: torch.Tensor, self_b: torch.Tensor | None
) -> torch.Tensor:
    """Distance +inf where a candidate is the query itself (refinement measures it as 0)."""
    if self_b is None:
        return dist
    return dist.masked_fill(cand == self_b[:, None], math.inf)


class Screen:
    """Screened squared distances to a fixed reference set, with a row-wise top-c.

    ``d2 = |r|^2 - 2 q.r`` per block of queries (``|q|^2`` is constant along a row, added after
    the selection). For narrow references (``n_features <= 64``, the projected screen) the
    bias is folded into the product (``[q, 1] . [-2 r, |r|^2]``), which is cheaper than a
    broadcast add at small inner dimensions.
    """

    def __init__(self, Rs: torch.Tensor, r_sq: torch.Tensor) -> None:
        self.Rs, self.r_sq = Rs, r_sq
        self.r_sq_max = float(r_sq.max()) if r_sq.numel() else 0.0
        self.folded = Rs.shape[1] <= 64
        if self.folded:
            self.R_aug = torch.cat([-2.0 * Rs, r_sq[:, None]], 1).T.contiguous()  # (K + 1, n)

    def error_bound(self, q_sq: torch.Tensor) -> torch.Tensor:
        """Bound on |screened - exact| squared distance for queries of squared norms ``q_sq``.

        A forward-error bound of the dot products and norms in the screen's dtype (float64
        screens are taken as exact): ``2 (K + 2) eps (|q|^2 + max |r|^2)``, doubled when the
        bias is folded into the product (it then joins the accumulated sum).
        """
        if self.Rs.dtype == torch.float64:
            return torch.zeros_like(q_sq)
        eps = torch.finfo(self.Rs.dtype).eps
        if self.Rs.is_cuda and torch.backends.cuda.matmul.allow_tf32:
            eps = 2.0**-10  # TF32 keeps 10 mantissa bits
        coef = (4 if self.folded else 2) * (self.Rs.shape[1] + 2) * eps
        return coef * (q_sq + self.r_sq_max)

    def nearest(
        self, Qs: torch.Tensor, self_b: torch.Tensor | None, c: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``c`` smallest squared distances (unsorted) of each row of ``Qs``, and indices.

        ``self_b[i]`` (if given) is excluded from row ``i``.
        """
        d2 = self.shifted(Qs, self_b)
        vals, cand = smallest(d2, c)
        return vals + (Qs * Qs).sum(1)[:, None], cand

    def shifted(self, Qs: torch.Tensor, self_b: torch.Tensor | None = None) -> torch.Tensor:
        """``|r|^2 - 2 q.r`` for every pair, shape (b, n_ref): squared distances minus ``|q|^2``.

        ``self_b[i]`` (if given) is set to +inf in row ``i``.
        """
        if self.folded:
            ones = torch.ones(Qs.shape[0], 1, dtype=Qs.dtype, device=Qs.device)
            d2 = torch.cat([Qs, ones], 1) @ self.R_aug  # (b, n_ref)
        else:
            if Qs.dtype == torch.float64:
                d2 = matmul(Qs, self.Rs.T).mul_(-2.0).add_(self.r_sq)  # (b, n_ref)
            else:
                d2 = torch.addmm(self.r_sq[None, :], Qs, self.Rs.T, alpha=-2.0)  # (b, n_ref)
        if self_b is not None:
            d2[torch.arange(Qs.shape[0], device=d2.device), self_b] = math.inf
        return d2


_TOPK_ROW = 512  # torch.topk on CPU is ~4x slower per entry on rows longer than ~600


def smallest(d2: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``c`` smallest entries of each row (unsorted) and their column indices.

    Exact, and 2-4x faster than one ``torch.topk`` over long rows on CPU: partition each row's
    columns into ``G`` groups of 16 strided columns (group ``j`` = columns ``j, j + G, ...``,
    so the group minima are 15 vectorised element-wise minima of contiguous slabs), select the
    ``c`` groups with the smallest minima (recursively), and take the ``c`` smallest of their
    ``16 c`` entries. Every entry among a row's ``c`` smallest lies in a group whose minimum is
    at most the c-th smallest value, and at most ``c`` groups have such a minimum, so the kept
    groups contain all of them (ties may resolve to another equal entry).
    """
    b, n = d2.shape
    g = 16
    if n <= _TOPK_ROW or 2 * g * c > n or not d2.is_contiguous() or d2.is_cuda:
        return torch.topk(d2, c, dim=1, largest=False, sorted=False)
    G = n // g  # the last n - g G columns stay apart
    slabs = d2.as_strided((b, g, G), (n, G, 1))
    _, gi = smallest(slabs.amin(1), c)  # (b, c) group indices
    cols = (gi[:, :, None] + G * torch.arange(g, device=d2.device)).reshape(b, c * g)
    if n > g * G:
        tail = torch.arange(g * G, n, device=d2.device).expand(b, n - g * G)
        cols = torch.cat([cols, tail], 1)
    vals, pos = smallest(d2.gather(1, cols), c)
    return vals, cols.gather(1, pos)


def _knn_block(
    Qb: torch.Tensor,
    self_b: torch.Tensor | None,
    ref: Reference,
    dtype: torch.dtype,
    n_cand: int,
    k: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Screen one block of queries, refine the candidates exactly, and certify the result.

    Returns the refined candidate distances and indices (rows sorted) and a mask of the rows
    whose k nearest neighbours are guaranteed to be among the candidates: every non-candidate
    has a screened squared distance >= the largest candidate's, and the screening error is at
    most ``2 (D + 2) eps (|q|^2 + max |r|^2)`` (a forward-error bound of the float32 dot
    product and norms), so a row is certified when that margin still exceeds its k-th exact
    squared distance. float64 screening is accepted as exact.
    """
    Qc = Qb - ref.mu
    vals, cand = ref.screen(dtype).nearest(Qc.to(dtype), self_b, n_cand)
    if dtype == torch.float64:
        # the float64 expansion is the distance (to ~1e-16 of the squared norms); only
        # near-duplicates, where that is not enough, are re-measured directly
        exact = fix_close(Qc, ref, cand, vals.clamp_min(0))
    else:
        exact = refine(Qc, ref, cand)
    exact, cand = sort_rows(exclude_self(exact, cand, self_b), cand)
    if dtype == torch.float64 or n_cand >= ref.n - (self_b is not None):
        return exact, cand, torch.ones(Qb.shape[0], dtype=torch.bool, device=Qb.device)
    bound = ref.screen(dtype).error_bound((Qc * Qc).sum(1))
    ok = exact[:, k - 1] ** 2 < vals.max(1).values.double() - bound
    return exact, cand, ok


def no_neighbors(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (0, k) distances and indices of an empty query set."""
    return (
        torch.empty(0, k, dtype=torch.float64, device=device),
        torch.empty(0, k, dtype=torch.long, device=device),
    )


def brute_knn(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    k: int,
    *,
    screen_dtype: torch.dtype,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of the rows of ``Q`` (uncentred) among ``ref``, by blocked matrix products.

    ``self_idx[i]`` (if given) is the reference index of query ``i``, excluded from its
    neighbours. ``screen_dtype=torch.float32`` screens ``k + max(4, k // 4)`` candidates in
    float32 and certifies each row, redoing the uncertified ones in float64.

    Returns
    -------
    distances, indices : tensors of shape (n_queries, k), float64 and int64, rows sorted.
    """
    max_k = ref.n - (self_idx is not None)
    n_cand = k if screen_dtype == torch.float64 else min(max_k, k + max(4, k // 4))
    bs = block_rows(ref.n, n_cand * ref.X.shape[1], block_size)
    dists, inds = [], []
    for start in range(0, Q.shape[0], bs):
        Qb = Q[start : start + bs]
        self_b = None if self_idx is None else self_idx[start : start + bs]
        exact, cand, ok = _knn_block(Qb, self_b, ref, screen_dtype, n_cand, k)
        if not bool(ok.all()):  # rows the float32 screen cannot certify: redo in float64
            bad = torch.nonzero(~ok).flatten()
            sb = None if self_b is None else self_b[bad]
            e64, c64, _ = _knn_block(Qb[bad], sb, ref, torch.float64, k, k)
            exact[bad, :k], cand[bad, :k] = e64, c64
        dists.append(exact[:, :k])
        inds.append(cand[:, :k])
    if not dists:
        return no_neighbors(k, ref.X.device)
    return torch.cat(dists), torch.cat(inds)
