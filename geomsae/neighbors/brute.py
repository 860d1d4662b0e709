"""Blocked brute-force k-NN: one matrix product per block of queries, exact float64 refinement.

This is the exact search every other method falls back on. The pieces it shares with the
projected screen (:mod:`geomsae.neighbors.projected`) live here too: the centred reference set
(:class:`Reference`), the exact float64 distances of candidate pairs (:func:`refine`), the
row sort with index tie-break, and the block-size rule.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from geomsae.neighbors.precision import cuda_tf32

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "FLOAT32_SAFE_SQ",
    "REMEASURE_BELOW",
    "Queries",
    "Reference",
    "block_rows",
    "brute_knn",
    "exclude_self",
    "expansion_error",
    "matmul",
    "measure_directly",
    "no_neighbors",
    "refine",
    "refine_pairs",
    "Screen",
    "auto_screen_dtype",
    "bf16_pair_bound",
    "rounding_errors",
    "n_candidates",
    "native_bf16",
    "reduced_precision_safe",
    "refine_progressively",
    "power_of_two_scale",
    "row_sq",
    "smallest",
    "sort_rows",
    "sort_settled",
    "trial_first",
]

DEFAULT_MEMORY_BYTES = 256 * 2**20
"""Work-space budget of one block (distance block plus refinement gather), in bytes."""

REMEASURE_BELOW = 1e-4
"""Pairs whose squared distance from the expansion ``|q|^2 + |r|^2 - 2 q.r`` is below this
fraction of ``|q|^2 + |r|^2`` (a distance below ~1 % of the norms) are re-measured directly as
``|q - r|``. The expansion's rounding error, ~sqrt(D) eps of the squared norms (D eps at worst),
then stays below ~1e-11 of every squared distance it is used for: measured 4e-12 relative on a
noise-free curve in R^128, where 1e-8 (the threshold before) left 4e-8. On SmolLM2 layer-6
activations 0.04 % of the k-NN pairs (k = 20) are re-measured."""


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


@functools.cache
def native_bf16() -> bool:
    """Whether this CPU multiplies bfloat16 natively (x86 ``avx512_bf16`` or ``amx_bf16``).

    There, a bfloat16 matrix product with float32 accumulation runs ~2x a float32 one (measured
    158 vs 79 GFLOP/s on one core of an AMD EPYC with AVX-512 BF16); elsewhere it is emulated.
    """
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def row_sq(X: torch.Tensor) -> torch.Tensor:
    """Squared norms of the rows; float64 on CPU through numpy's einsum (no n x D temporary,
    ~10x ``(X * X).sum(1)`` at 20000 x 576)."""
    if X.device.type == "cpu" and X.dtype == torch.float64 and not X.requires_grad:
        Xn = X.numpy()
        return torch.from_numpy(np.einsum("ij,ij->i", Xn, Xn))
    return (X * X).sum(1)


def auto_screen_dtype(
    n_ref: int, k: int, max_k: int, cuda: bool, n_features: int = 0
) -> torch.dtype:
    """The brute-force screen's dtype.

    float32 on GPUs. On CPU, float64 (exact, nothing to re-measure) while the reference set is
    small next to the candidates (``n_ref < 40 (k + max(4, k // 4))``, where the candidate
    gather outweighs the cheaper product); beyond, bfloat16 if the CPU has native bfloat16
    products, ``n_features >= 64`` and either ``k <= 32`` or the grouped candidates apply
    (``n_ref >= 32 (2 k + 8)``: :mod:`geomsae.neighbors.grouped`); else float32 (the top-c
    selection of the plain screen over ``2 k + 8`` candidates eats the cheaper product's gain).
    Measured with one thread at D = 576 on SmolLM2 activations and isotropic Gaussians,
    n = 1000-20000, k = 2-100: at n = 20 000, k = 49 / 100, bfloat16 4.6 / 4.6 s against
    float32 6.5 / 7.4 s on the activations; at n = 5000, k = 100 (no grouping) 0.80 against
    0.67 s on isotropic data.
    """
    if cuda:
        return torch.float32
    if n_ref < 40 * min(max_k, k + max(4, k // 4)):
        return torch.float64
    from geomsae.neighbors import grouped  # noqa: PLC0415 (it builds on this module)

    many = grouped.fits(n_ref, n_candidates(torch.bfloat16, k, max_k))
    if native_bf16() and n_features >= 64 and (k <= 32 or many):
        return torch.bfloat16
    return torch.float32


FLOAT32_SAFE_SQ = 1e30
"""Largest squared norm (of centred points) for which the float32 and bfloat16 screens are used:
their keys reach ``(|q| + |r|)^2``, which must stay far below float32's ~3.4e38 (an overflow
would make every bound infinite and every row look certified). Beyond, float64 throughout."""


def reduced_precision_safe(ref: Reference, Q: torch.Tensor | None = None) -> bool:
    """Whether the reference set (and the queries ``Q``, as given, if they are not the
    reference's own rows) have squared norms below :data:`FLOAT32_SAFE_SQ` after centring."""
    if ref.n and float(ref.sq.max()) > FLOAT32_SAFE_SQ:
        return False
    return Q is None or Q.shape[0] == 0 or float(ref.queries(Q).sq.max()) <= FLOAT32_SAFE_SQ


SCALE_RANGE = (2.0**-40, 2.0**40)
"""Largest centred norms outside this range are brought into [0.5, 1) by a power of two
(:func:`power_of_two_scale`) before a search."""


def power_of_two_scale(*centred: torch.Tensor, sq: list[torch.Tensor] | None = None) -> float:
    """1.0, or the power of two ``s`` that brings the largest norm of the centred rows into
    [0.5, 1) when it lies outside :data:`SCALE_RANGE`.

    A search is exact in floating point only within its exponent range: below ~1e-19 the
    float32 screens' squares underflow (their rounding bounds are relative), beyond ~1e154
    float64 squared norms overflow. Scaling by a power of two is exact (short of subnormals)
    and commutes with every rounding, so the search on ``s X`` returns exactly ``s`` times the
    distances (and the same neighbours) that it would without exponent limits. ``sq``: the
    rows' squared norms of each tensor, if known.
    """
    if sq is None:
        sq = [row_sq(t) for t in centred]
    sq = [q for q in sq if q.numel()]
    if not sq:
        return 1.0
    top = math.sqrt(max(float(q.max()) for q in sq))
    if top == 0.0 or not math.isfinite(top):  # squares underflowed or overflowed: entries
        top = max(float(t.abs().max()) for t in centred if t.numel())
        if top == 0.0:
            return 1.0  # all points identical
    if SCALE_RANGE[0] <= top <= SCALE_RANGE[1]:
        return 1.0
    # subnormal data (below ~2^-1022) is brought up as far as a float64 factor reaches
    return math.ldexp(1.0, min(-math.frexp(top)[1], 1023))


def n_candidates(dtype: torch.dtype, k: int, max_k: int) -> int:
    """Candidates a brute-force screen in ``dtype`` keeps per query: ``k + 1`` in float64,
    ``k + max(4, k // 4)`` in float32, ``2 k + 8`` in bfloat16 (its bound,
    :func:`bf16_pair_bound`, is ~3.7 * 2^-8 of ``|q| |r|``; on 20 000 SmolLM2 layer-6
    activations this certifies 98.6 % of the rows at k = 20, and was 1.1-1.3x faster than
    ``3 k + 8`` at k = 20 and 49 and on isotropic Gaussians, n = 10 000-20 000)."""
    if dtype == torch.float64:
        return min(max_k, k + 1)  # the (k+1)-th certifies that nothing outside ties the k-th
    extra = max(4, k // 4) if dtype == torch.float32 else k + 8
    return min(max_k, k + extra)


def block_rows(n_ref: int, extra_per_row: int, block_size: int | None) -> int:
    """Queries per block: ``block_size`` if given, else what fits the memory budget."""
    if block_size is not None:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1; got {block_size}")
        return int(block_size)
    per_row = 8 * (2 * n_ref + extra_per_row)  # float64 distances + topk scratch + refinement
    rows = max(1, min(8192, DEFAULT_MEMORY_BYTES // max(per_row, 1)))
    # a multiple of 32 rows: ~40 % faster bfloat16 products (AMX tiles) on a Xeon, else neutral
    return rows - rows % 32 if rows >= 64 else rows


def grid_mean(X: torch.Tensor, unit: float | None = None) -> torch.Tensor:
    """The column mean of ``X``, rounded to a multiple of ``2^8`` units in the last place of
    the largest ``|entry|`` (a change of ~1e-14 of the data's scale; ``unit``: that multiple,
    if known).

    Centring by it is exact for data on a binary grid (integers, halves, a lattice: any
    entries that are multiples of that unit): ``x - mu`` is then representable, so the
    expansion on centred points sees exactly the input's ties. For other data it is as good as
    the plain mean. (Direct measurements use the points as given: :class:`Reference`.)
    """
    if X.device.type == "cpu" and X.dtype == torch.float64 and not X.requires_grad:
        mu = torch.from_numpy(X.numpy().mean(0))  # numpy's column mean: ~3x torch's
    else:
        mu = X.mean(0)
    return _on_grid(mu, _grid_unit(X) if unit is None else unit)


def _grid_unit(X: torch.Tensor) -> float:
    """``2^8`` units in the last place of the largest ``|entry|`` of ``X`` (0.0 for empty or
    all-zero data); a ValueError for entries within a factor 2 of float64's largest."""
    if X.numel() == 0:
        return 0.0
    lo, hi = torch.aminmax(X)
    top = max(abs(float(lo)), abs(float(hi)))
    if top > 2.0**1022:
        raise ValueError(
            f"coordinates up to {top:.3g} are within a factor 2 of float64's largest number: "
            "their differences overflow; scale the data down first (e.g. X / X.abs().max())"
        )
    return 0.0 if top == 0.0 else math.ldexp(1.0, math.frexp(top)[1] - 45)


def _on_grid(v: torch.Tensor, unit: float) -> torch.Tensor:
    return v if unit == 0.0 else torch.round(v / unit) * unit


def _lower_median(S: torch.Tensor) -> torch.Tensor:
    """The lower median of each column (numpy's partition on CPU: ~3x ``torch.median``)."""
    if S.device.type == "cpu" and not S.requires_grad:
        m = (S.shape[0] - 1) // 2
        return torch.from_numpy(np.partition(S.numpy(), m, axis=0)[m].copy()).to(S.dtype)
    return S.median(0).values


def centre(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``R - mu`` and ``mu``: the :func:`grid_mean`, or the (grid-rounded) column median of a
    strided sample of 256 rows where that halves the sample's median squared norm, and on
    constant columns their value, subtracted exactly.

    The expansion's error grows with the centred norms: a few far outliers (a token at 1e10
    beside a cloud of unit scale) move the mean far from the bulk, every centred norm becomes
    large, and every pair would be measured directly (n = 2500: ~20 s instead of 0.1 s); the
    median stays with the bulk. A constant column off the grid (say 1e25 beside coordinates of
    1) would keep a remainder of ~2^-46 of its value in every centred row, with the same effect
    (measured 0.12 -> 8 s for n = 3000). Candidates are the columns a strided sample of 256
    rows holds constant with a remainder, verified on all rows.
    """
    unit = _grid_unit(R)
    mu = grid_mean(R, unit)
    if R.shape[0] >= 16:
        S = R[:: max(1, R.shape[0] // 256)]
        med = _on_grid(_lower_median(S), unit)
        if float(row_sq(S - med).median()) < 0.5 * float(row_sq(S - mu).median()):
            mu = med
    Rc = R - mu
    if R.shape[0] < 2:
        return Rc, mu
    first = R[0]
    cand = (R[:: max(1, R.shape[0] // 256)] == first).all(0) & (Rc[0] != 0)
    if bool(cand.any()):
        cols = torch.nonzero(cand).flatten()
        cols = cols[(R[:, cols] == first[cols]).all(0)]
        if cols.numel():
            mu = mu.clone()
            mu[cols] = first[cols]
            Rc[:, cols] = 0.0
    return Rc, mu


@dataclass
class Reference:
    """The reference set, centred once (the expansion's cancellation error scales with norms).

    The centred copy ``X = scale (raw - mu)`` serves the screens and the expansion
    ``|q|^2 + |r|^2 - 2 q.r``, whose error (~eps of the squared norms) already exceeds what
    centring rounds away; ``scale`` is a power of two (:func:`power_of_two_scale`) that keeps
    it in the screens' exponent range. Distances measured directly (near-duplicates,
    near-ties, pairs at the radius: :func:`measure_directly`) are taken on the points as given,
    ``raw``: centring rounds coordinates at the mean's last place, so a coordinate of 1e-17
    beside a mean of 1 would be lost (a fake duplicate), and scaling ``raw`` could overflow
    (or its small differences underflow) where the centred copy does not. Distances are in
    the units of ``X`` (``scale`` times the data's) throughout a search.

    Attributes
    ----------
    X : tensor of shape (n_reference, n_features), float64
        Centred (and scaled) reference points.
    mu : tensor of shape (n_features,)
        The mean that was subtracted, in data units (queries are centred with it too).
    sq : tensor of shape (n_reference,)
        Squared norms of the rows of ``X``.
    raw : tensor of shape (n_reference, n_features), float64
        The points as given.
    scale : float
        The power of two ``X`` is scaled by.
    """

    X: torch.Tensor
    mu: torch.Tensor
    sq: torch.Tensor
    raw: torch.Tensor
    scale: float = 1.0
    _screens: dict = field(default_factory=dict, repr=False)

    @classmethod
    def of(cls, R: torch.Tensor) -> Reference:
        Rc, mu = centre(R)
        return cls(Rc, mu, row_sq(Rc), R)

    def scaled(self, s: float) -> Reference:
        """This set with its centred copy multiplied by ``s`` (a power of two: exact)."""
        Xs = self.X * s
        return Reference(Xs, self.mu, row_sq(Xs), self.raw, self.scale * s)

    def queries(self, Q: torch.Tensor) -> Queries:
        """The rows ``Q`` (as given) as :class:`Queries` of this set: centred and scaled like it."""
        Qc = Q - self.mu
        if self.scale != 1.0:
            Qc.mul_(self.scale)
        return Queries(Q, Qc, row_sq(Qc))

    def screen(self, dtype: torch.dtype) -> Screen:
        """The brute-force :class:`Screen` of this set in ``dtype`` (made once, on first use)."""
        if dtype not in self._screens:
            self._screens[dtype] = Screen(self.X.to(dtype), self.sq, self.X)
        return self._screens[dtype]

    @property
    def n(self) -> int:
        return self.X.shape[0]


@dataclass
class Queries:
    """A block of query rows, as given (``raw``: direct measurements) and centred and scaled
    like the reference (``c``: screens and the expansion); ``sq``: squared norms of ``c``.
    Made by :meth:`Reference.queries`."""

    raw: torch.Tensor
    c: torch.Tensor
    sq: torch.Tensor

    def __getitem__(self, rows: torch.Tensor | slice) -> Queries:
        return Queries(self.raw[rows], self.c[rows], self.sq[rows])

    def __len__(self) -> int:
        return self.c.shape[0]


def _csr_dots(
    Qc: torch.Tensor,
    R: torch.Tensor,
    crow: torch.Tensor,
    cols: torch.Tensor,
    *,
    sampled: bool | None = None,
    memory_bytes: int | None = None,
) -> torch.Tensor:
    """``Qc[i] . R[cols[p]]`` for the pairs ``p`` of row ``i`` (CSR: ``crow[i] <= p < crow[i+1]``).

    On CPU (``sampled``, the default there) a sampled dense-dense product
    (``torch.sparse.sampled_addmm`` on the CSR pattern of the pairs) reads each candidate row
    once without materialising a (pairs, D) gather, ~2-5x faster than ``index_select`` + a
    batched product at D = 576; on GPUs the gathers are used, in chunks of pairs within
    ``memory_bytes`` (default :data:`DEFAULT_MEMORY_BYTES`; a radius block can hold 512 x 512
    pairs, 1.2 GB per gathered copy at D = 576).
    """
    if cols.numel() == 0:
        return torch.zeros(0, dtype=Qc.dtype, device=Qc.device)
    if Qc.device.type == "cpu" if sampled is None else sampled:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
            pattern = torch.sparse_csr_tensor(
                crow, cols, torch.zeros(cols.numel(), dtype=Qc.dtype),
                size=(Qc.shape[0], R.shape[0]), check_invariants=False,
            )  # fmt: skip
            return torch.sparse.sampled_addmm(pattern, Qc, R.T).values()
    rows = torch.repeat_interleave(torch.diff(crow))
    budget = DEFAULT_MEMORY_BYTES if memory_bytes is None else memory_bytes
    step = max(1, budget // (2 * Qc.element_size() * max(Qc.shape[1], 1)))  # two gathers
    out = torch.empty(cols.numel(), dtype=Qc.dtype, device=Qc.device)
    for s in range(0, cols.numel(), step):
        sl = slice(s, s + step)
        out[sl] = (torch.index_select(R, 0, cols[sl]) * Qc[rows[sl]]).sum(1)
    return out


def measure_directly(
    q: Queries, ref: Reference, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """Distances ``ref.scale * |q.raw[rows[p]] - ref.raw[cols[p]]|``, summed directly (no
    cancellation) on the points as given, in chunks of pairs that keep the gathered
    differences within the work-space budget.

    A difference whose sum of squares leaves [2^-960, 2^960] is first brought to [0.5, 1) in
    its largest entry by a power of two, so neither the squares nor the scaled distance under-
    or overflow short of the result itself (differences of 1e-150 beside coordinates of 1e13,
    1e-20 beside 2^1000); the result is bit for bit ``scale * sqrt(sum(diff^2))`` wherever
    that does not under- or overflow. (A distance below ~2^-1074 in the search's units -- a
    dynamic range beyond ~1e300 between the data's extent and the pair's distance -- is 0.)
    """
    out = torch.empty(rows.numel(), dtype=torch.float64, device=q.c.device)
    step = max(1, DEFAULT_MEMORY_BYTES // (16 * max(q.c.shape[1], 1)))
    s_exp = math.frexp(ref.scale)[1] - 1  # scale = 2^s_exp
    for s in range(0, rows.numel(), step):
        diff = ref.raw[cols[s : s + step]] - q.raw[rows[s : s + step]]
        d2 = (diff * diff).sum(1)
        res = torch.sqrt(d2) * ref.scale
        odd = torch.nonzero(~((d2 >= 2.0**-960) & (d2 <= 2.0**960))).flatten()
        if odd.numel():  # under- or overflowing squares (or duplicates): normalise first
            dd = diff[odd]
            top = dd.abs().amax(1) if dd.shape[1] else dd.new_zeros(dd.shape[0])
            e = torch.frexp(top).exponent.long()  # top = m 2^e, m in [0.5, 1); 0 for top = 0
            dd = _ldexp(dd, -e[:, None])
            res[odd] = _ldexp(torch.sqrt((dd * dd).sum(1)), e + s_exp)
        out[s : s + step] = res
    return out


def _ldexp(x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """``x * 2^e`` exactly (short of the result's own under- or overflow), for integer
    exponents beyond float64's range too (subnormal differences need up to 2^1073), in steps
    of at most 2^1000."""
    while True:
        step = e.clamp(-1000, 1000)
        x = x * torch.pow(2.0, step.to(x.dtype))
        e = e - step
        if not bool((e != 0).any()):
            return x


def pair_error(n_features: int, scale_sq: torch.Tensor) -> torch.Tensor:
    """Bound on the float64 expansion's error for pairs with ``|q|^2 + |r|^2 = scale_sq``:
    ``4 (D + 2) eps scale_sq``."""
    return 4 * (n_features + 2) * torch.finfo(torch.float64).eps * scale_sq + 1e-300


def refine_pairs(
    q: Queries,
    ref: Reference,
    crow: torch.Tensor,
    cols: torch.Tensor,
    radius: float | None = None,
) -> torch.Tensor:
    """Float64 distances of CSR pairs (query row ``i`` of ``q``; reference row ``cols[p]``).

    The expansion ``|q|^2 + |r|^2 - 2 q.r`` in float64 is accurate to ~1e-16 of the squared
    norms; pairs where that is not enough (squared distance below :data:`REMEASURE_BELOW` of
    the squared norms: near-duplicates) are recomputed directly as ``|q - r|`` on the points
    as given (:class:`Reference`), so duplicates come out as exactly 0. With ``radius``, so
    are the pairs whose expansion is within its rounding error (:func:`pair_error`) of
    ``radius^2``: whether a pair is within the radius is then decided on its directly
    measured distance.
    """
    rows = torch.repeat_interleave(torch.arange(len(q), device=q.c.device), torch.diff(crow))
    scale = q.sq[rows] + ref.sq[cols]
    d2 = (scale - 2.0 * _csr_dots(q.c, ref.X, crow, cols)).clamp_min(0)
    redo = d2 <= REMEASURE_BELOW * scale  # <=: squares that underflowed to 0
    if radius is not None:
        redo |= (d2 - radius**2).abs() <= pair_error(q.c.shape[1], scale)
    dist = torch.sqrt(d2)
    if bool(redo.any()):
        p = torch.nonzero(redo).flatten()
        dist[p] = measure_directly(q, ref, rows[p], cols[p])
    return dist


def refine(q: Queries, ref: Reference, idx: torch.Tensor) -> torch.Tensor:
    """Float64 distances between each query row and its candidate reference rows ``idx``.

    ``idx`` has shape (b, c); see :func:`refine_pairs` for the accuracy.
    """
    b, c = idx.shape
    crow = torch.arange(0, b * c + 1, c, device=idx.device, dtype=torch.int64)
    return refine_pairs(q, ref, crow, idx.reshape(-1)).view(b, c)


def fix_close(q: Queries, ref: Reference, idx: torch.Tensor, d2: torch.Tensor) -> torch.Tensor:
    """Distances from float64 squared distances; close pairs (:data:`REMEASURE_BELOW`) are
    re-measured."""
    scale = q.sq[:, None] + ref.sq[idx]
    close = d2 <= REMEASURE_BELOW * scale
    dist = torch.sqrt(d2)
    if bool(close.any()):
        rows, cols = torch.nonzero(close, as_tuple=True)
        dist[rows, cols] = measure_directly(q, ref, rows, idx[rows, cols])
    return dist


def sort_rows(dist: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by distance, ties by index (two stable sorts)."""
    order = torch.argsort(idx, dim=1)
    dist, idx = dist.gather(1, order), idx.gather(1, order)
    order = torch.argsort(dist, dim=1, stable=True)
    return dist.gather(1, order), idx.gather(1, order)


def sort_settled(
    q: Queries,
    ref: Reference,
    dist: torch.Tensor,
    idx: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`sort_rows`, with near-ties settled on directly measured distances.

    Two distances from the expansion that are within their rounding errors
    (:func:`expansion_error`) of each other may be in either order whatever the exact ones
    are: equal distances to distinct points would go by rounding noise instead of by index.
    The members of such runs (in each sorted row, neighbours closer than the two errors) are
    measured directly and the rows sorted again; nothing outside a run can change places with
    it. Entries that are +inf (excluded or padding) are left alone.
    """
    dist, idx = sort_rows(dist, idx)
    if dist.shape[1] < 2 or dist.shape[0] == 0:
        return dist, idx
    d2 = dist * dist
    gap = d2[:, 1:] - d2[:, :-1]
    e = expansion_error(q, d2)
    run = (gap <= e[:, 1:] + e[:, :-1]) & (dist[:, 1:] > 0) & torch.isfinite(d2[:, 1:])
    if not bool(run.any()):
        return dist, idx
    mark = torch.zeros_like(dist, dtype=torch.bool)
    mark[:, 1:] |= run
    mark[:, :-1] |= run
    rows, cols = torch.nonzero(mark, as_tuple=True)
    dist = dist.clone()
    dist[rows, cols] = measure_directly(q, ref, rows, idx[rows, cols])
    touched = torch.unique(rows)
    dist[touched], idx[touched] = sort_rows(dist[touched], idx[touched])
    return dist, idx


def exclude_self(
    dist: torch.Tensor, cand: torch.Tensor, self_b: torch.Tensor | None
) -> torch.Tensor:
    """Distance +inf where a candidate is the query itself (refinement measures it as 0)."""
    if self_b is None:
        return dist
    return dist.masked_fill(cand == self_b[:, None], math.inf)


_BF16_UNIT_ROUNDOFF = 2.0**-8  # 8 significant bits


def pair_coef(dtype: torch.dtype, n_features: int, cuda: bool = False) -> float:
    """``coef`` with ``|screened - exact| <= coef |q| |r|`` for the squared distance's ``-2 q.r``.

    Inputs rounded to ``dtype`` (unit roundoff ``u``; TF32 on GPUs keeps 10 mantissa bits),
    exact products, float32 accumulation over ``K = n_features`` terms, and for bfloat16 the
    output rounded to bfloat16: ``|dot error| <= (3 u + K u32) |q| |r|`` to first order, taken
    here as ``2 (4 u + (K + 2) eps32)`` for the doubled product (a margin of a third on the
    rounding of the inputs and the output). 0 for float64, taken as exact. bfloat16 keys use
    the tighter :func:`bf16_pair_bound` (the inputs' actual rounding errors); this worst case
    still scales :meth:`Screen.error_bound`.
    """
    if dtype == torch.float64:
        return 0.0
    eps32 = torch.finfo(torch.float32).eps
    acc = 2.0 * (n_features + 2) * eps32
    if dtype == torch.float32:
        tf32 = cuda and cuda_tf32()
        return acc + (8.0 * 2.0**-11 if tf32 else 0.0)
    return acc + 8.0 * _BF16_UNIT_ROUNDOFF


def rounding_errors(exact: torch.Tensor, rounded: torch.Tensor) -> torch.Tensor:
    """Upper bounds (float64) on the row norms ``|exact - rounded|`` of a float64 tensor's
    rounding to a narrower dtype: the differences are exact in float64 (the rounded value is
    within a unit of the input's own last place), their norms within ``~D eps64``."""
    out = torch.empty(exact.shape[0], dtype=torch.float64, device=exact.device)
    step = max(1, 2**18 // max(exact.shape[1], 1))  # ~2 MiB of differences: cache-resident
    for s in range(0, exact.shape[0], step):
        diff = exact[s : s + step] - rounded[s : s + step].double()
        out[s : s + step] = torch.sqrt(row_sq(diff))
    return out * (1 + 1e-9)


def bf16_pair_bound(q_norm: torch.Tensor, q_err: torch.Tensor, n_features: int) -> torch.Tensor:
    """Row factors ``U`` (shape (b, 2)) with ``U @ [|r|; |e_r|]`` bounding the error of the
    bfloat16 screen's ``-2 q.r`` pair by pair, from the actual rounding errors ``e``.

    With ``q~ = q + e_q`` and ``r~ = r + e_r`` the bfloat16 inputs (``|e| <= u |x|``,
    ``u = 2^-8``), float32 accumulation over ``K`` terms (``g = (K + 2) eps32``, any order)
    and the output rounded to bfloat16: ``|p~ - p| <= 2 c0 |q~| |r~| + 2 |q~.r~ - q.r|`` with
    ``c0 = u (1 + g) + g``, and ``|q~.r~ - q.r| <= |q| |e_r| + |e_q| |r| + |e_q| |e_r|``
    (Cauchy-Schwarz). Expanding ``|q~| <= |q| + |e_q|`` (likewise ``r``):
    ``|p~ - p| <= |r| (2 c0 |q| + 2 (1 + c0) |e_q|) + 2 (1 + c0) (|q| + |e_q|) |e_r|``
    (no assumption ``|e| <= u |x|``), enlarged by ``2^-12`` for the float32 evaluation of the
    bound itself. Subnormal bfloat16 entries (below ~1e-38), which AVX-512 BF16 / AMX flush to
    zero in the product, are outside it; the searches scale their data to unit norms first,
    and :meth:`Screen.error_bound`'s absolute 1e-30 covers what such entries can contribute.
    Rounding errors are ~0.42 u of the norm on activations (at most u), so this is
    ~3.7 u |q| |r| against the worst case ``pair_coef`` of ~8 u: tighter keys, fewer
    candidates to re-measure.
    """
    u = _BF16_UNIT_ROUNDOFF
    g = (n_features + 2) * torch.finfo(torch.float32).eps
    c0 = u * (1 + g) + g
    slack = 1 + 2.0**-12
    a = 2 * c0 * q_norm + 2 * (1 + c0) * q_err
    return torch.stack([a, 2 * (1 + c0) * (q_norm + q_err)], 1) * slack


class Screen:
    """Screened lower bounds of squared distances to a fixed reference set, with a row-wise top-c.

    Per block of queries, ``key = |r|^2 - 2 q.r - coef |q| |r|``, where ``coef`` bounds the
    rounding error of the product in the screen's dtype pair by pair (:func:`pair_coef`; in
    bfloat16 the bound :func:`bf16_pair_bound` of the inputs' actual rounding errors, which
    needs the float64 reference, ``exact``, they were rounded from), so
    ``key + |q|^2`` (the constant ``|q|^2`` is added after the selection) is a lower bound of
    the exact squared distance up to the small per-row :meth:`error_bound` of forming it. A
    per-pair bound, unlike one through the largest ``|r|``, stays tight when a few points have
    large norms (as the outlier tokens of residual streams do).

    The error of assembling the key (float32 roundings of terms of size ``|q|^2 + |r|^2``) is
    split the same way: its ``|r|^2`` part, ``rel |r|^2`` (:meth:`error_bound`'s coefficient),
    and any ``col_slack`` (float64, per reference point: a caller's own error terms, e.g. the
    projection's) are subtracted from ``|r|^2`` once, so only ``rel |q|^2`` is left per row.
    Through the largest ``|r|^2`` instead, a few tokens of 30x the typical norm made nearly
    every row of SmolLM2 activations fail its certificate.

    Narrow references (``n_features <= 64``, the projected screen) fold the bias into the
    product (``[q, 1] . [-2 r, |r|^2]``, cheaper than a broadcast add at small inner
    dimensions) and keep the product's rounding bound in the same two parts (``coef = 0``).
    """

    def __init__(
        self,
        Rs: torch.Tensor,
        r_sq: torch.Tensor,
        exact: torch.Tensor | None = None,
        col_slack: torch.Tensor | None = None,
    ) -> None:
        self.Rs = Rs
        acc = torch.float64 if Rs.dtype == torch.float64 else torch.float32
        self.folded = Rs.shape[1] <= 64 and Rs.dtype != torch.bfloat16
        self.coef = 0.0 if self.folded else pair_coef(Rs.dtype, Rs.shape[1], Rs.is_cuda)
        self.rel = self._assembly_coef()
        low = r_sq.double() * (1.0 - self.rel)  # the |r|^2 part of the assembly error
        if col_slack is not None:
            low = low - col_slack.double()
        self.r_sq = low.to(acc)  # what the keys add: |r|^2 less the column's error terms
        if self.coef:
            r_norm = torch.sqrt(r_sq.double())
            if Rs.dtype == torch.bfloat16:  # |r| and the rounding errors |e_r|: bf16_pair_bound
                r_err = (
                    _BF16_UNIT_ROUNDOFF * r_norm if exact is None else rounding_errors(exact, Rs)
                )
                self.bound_cols = torch.stack([r_norm, r_err]).to(acc)
            else:  # float32: the bias |r|^2 and |r|, added to -2 q.r in one rank-2 update
                self.bound_cols = torch.stack([self.r_sq, r_norm.to(acc)])
        if self.folded:
            self.R_aug = torch.cat([-2.0 * Rs, self.r_sq[:, None].to(Rs.dtype)], 1).T.contiguous()
        elif Rs.dtype == torch.bfloat16:
            self.R_neg2 = (-2.0 * Rs).T.contiguous()  # exact: a power of two
        self._work: dict[torch.dtype, torch.Tensor] = {}

    def _buffer(self, rows: int, dtype: torch.dtype) -> torch.Tensor:
        """A (rows, n_ref) work block, reused across calls: fresh multi-megabyte allocations
        are paged in on first touch, which costs several times the product's own writes."""
        buf = self._work.get(dtype)
        if buf is None or buf.shape[0] < rows:
            buf = torch.empty(rows, self.Rs.shape[0], dtype=dtype, device=self.Rs.device)
            self._work[dtype] = buf
        return buf[:rows]

    def query_errors(self, Q: torch.Tensor, q_norm: torch.Tensor | None = None) -> torch.Tensor:
        """Bounds on the norms of the rows' rounding errors to this screen's dtype (bfloat16
        screens; float64 ``Q``: measured, else ``u |q|``), for :meth:`shifted`."""
        if Q.dtype == torch.float64:
            return rounding_errors(Q, Q.to(self.Rs.dtype))
        if q_norm is None:
            q_norm = torch.sqrt(row_sq(Q.double()))
        return _BF16_UNIT_ROUNDOFF * q_norm

    @property
    def needs_query_errors(self) -> bool:
        """Whether :meth:`shifted` uses the queries' rounding errors (bfloat16 screens)."""
        return bool(self.coef) and self.Rs.dtype == torch.bfloat16

    def _assembly_coef(self) -> float:
        """``rel`` with ``rel (|q|^2 + |r|^2)`` bounding the error of forming ``key + |q|^2``
        beyond the pair terms, pair by pair (0 for float64 screens, taken as exact).

        Folded: the forward-error bound of the dot product and norms, ``4 (K + 2) eps`` (TF32
        on GPUs: 10 mantissa bits). Otherwise the pair terms are in the keys and what is left
        is the float32 assembly (a few roundings of terms of size ``|q|^2 + |r|^2``):
        ``8 eps32 (1 + coef)``.
        """
        if self.Rs.dtype == torch.float64:
            return 0.0
        if self.folded:
            eps = torch.finfo(self.Rs.dtype).eps
            if self.Rs.is_cuda and cuda_tf32():
                eps = 2.0**-10  # TF32 keeps 10 mantissa bits
            return 4 * (self.Rs.shape[1] + 2) * eps
        return 8 * torch.finfo(torch.float32).eps * (1 + self.coef)

    def error_bound(self, q_sq: torch.Tensor) -> torch.Tensor:
        """Per-row bound on how far ``key + |q|^2`` may exceed the exact squared distance.

        ``rel |q|^2`` (:meth:`_assembly_coef`; the ``|r|^2`` part is in the keys), plus, for
        underflow, ``4 (K + 2)`` times float32's smallest normal number (folded) or 1e-30
        (which covers up to ~4e7 features). The searches scale their data by a power of two
        first (:func:`power_of_two_scale`), so these absolute terms are negligible there.
        float64 screens are taken as exact.
        """
        if self.Rs.dtype == torch.float64:
            return torch.zeros_like(q_sq)
        if self.folded:  # + the products' underflow: each term may lose float32's smallest normal
            tiny = (self.Rs.shape[1] + 2) * torch.finfo(torch.float32).tiny
            return self.rel * q_sq + 4 * tiny
        return self.rel * q_sq + 1e-30

    def nearest(
        self,
        Q: torch.Tensor,
        self_b: torch.Tensor | None,
        c: int,
        q_sq: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``c`` smallest lower bounds ``key + |q|^2`` (float64, unsorted) of each row of
        ``Q`` (any float dtype; converted to the screen's), and their indices.

        ``self_b[i]`` (if given) is excluded from row ``i``; ``q_sq``: the float64 squared
        norms of ``Q``, if known.
        """
        if q_sq is None:
            q_sq = row_sq(Q.double())
        vals, cand = smallest(self.shifted(Q, self_b, q_sq), c)
        return vals.double() + q_sq[:, None], cand

    def product(self, Q: torch.Tensor) -> torch.Tensor | None:
        """The matrix product of a block for :meth:`shifted`, to pass to it in row slices.

        bfloat16 screens: ``-2 q.r`` (bfloat16); float32: ``q.r``; folded: the keys; all in a
        work buffer. None for (unfolded) float64 screens.
        """
        Qs = Q.to(self.Rs.dtype)
        if self.folded:
            ones = torch.ones(Qs.shape[0], 1, dtype=Qs.dtype, device=Qs.device)
            out = self._buffer(Qs.shape[0], Qs.dtype)
            return torch.mm(torch.cat([Qs, ones], 1), self.R_aug, out=out)
        if Qs.dtype == torch.float64:
            return None
        if Qs.dtype == torch.float32:
            # q.r alone; the bias |r|^2 comes after, in the bound's rank-2 update (addmm with
            # the bias as C rounds it again at every block of the inner dimension: ~D / 64
            # roundings of |r|^2 at D = 16 384, beyond the bound, and a wrong neighbour)
            return torch.mm(Qs, self.Rs.T, out=self._buffer(Qs.shape[0], torch.float32))
        out = self._buffer(Qs.shape[0], torch.bfloat16)
        if not Qs.is_cuda:
            return torch.mm(Qs, self.R_neg2, out=out)
        # cuBLAS may otherwise reduce split-K partial sums in bfloat16, outside the bound's
        # float32 accumulation; the flag is global, so it is restored at once.
        flags = torch.backends.cuda.matmul
        allowed = flags.allow_bf16_reduced_precision_reduction
        flags.allow_bf16_reduced_precision_reduction = False
        try:
            return torch.mm(Qs, self.R_neg2, out=out)
        finally:
            flags.allow_bf16_reduced_precision_reduction = allowed

    def shifted(
        self,
        Q: torch.Tensor,
        self_b: torch.Tensor | None = None,
        q_sq: torch.Tensor | None = None,
        raw: torch.Tensor | None = None,
        q_err: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keys ``|r|^2 - 2 q.r - bound(q, r)`` for every pair, shape (b, n_ref).

        ``bound`` is ``coef |q| |r|`` (:func:`pair_coef`), for bfloat16 :func:`bf16_pair_bound`.
        ``self_b[i]`` (if given) is set to +inf in row ``i``; ``q_sq`` (float64 squared norms
        of ``Q``) and ``q_err`` (:meth:`query_errors`) are computed when not given; ``raw``
        (all but float64 screens) is these rows' slice of the :meth:`product` of a larger
        block (float32: finished in place, the bias and bound in one rank-2 update).
        Except in float64, the result lives in a work buffer of this screen and is
        overwritten by the next call.
        """
        b, dtype = Q.shape[0], self.Rs.dtype
        if self.folded or dtype == torch.float32:
            d2 = self.product(Q) if raw is None else raw  # finished in place on a slice
        elif dtype == torch.float64:
            d2 = matmul(Q.double(), self.Rs.T).mul_(-2.0).add_(self.r_sq)  # (b, n_ref)
        else:  # bfloat16 product of -2 q.r, float32 keys (one pass: the sum is float32)
            raw = self.product(Q) if raw is None else raw
            d2 = torch.add(raw, self.r_sq, out=self._buffer(b, torch.float32))
        if self.coef:  # the per-pair rounding bound, as a rank-1 or rank-2 product
            if q_sq is None:
                q_sq = row_sq(Q.double())
            q_norm = torch.sqrt(q_sq)
            if dtype == torch.bfloat16:
                if q_err is None:
                    q_err = self.query_errors(Q, q_norm)
                U = bf16_pair_bound(q_norm, q_err, self.Rs.shape[1])
                _add_outer(d2, U.to(d2.dtype), self.bound_cols, beta=1.0, alpha=-1.0)
            else:  # float32: -2 q.r + |r|^2 - coef |q| |r|, a few roundings in all
                U = torch.stack([torch.ones_like(q_norm), -self.coef * q_norm], 1)
                _add_outer(d2, U.to(d2.dtype), self.bound_cols, beta=-2.0, alpha=1.0)
        if self_b is not None:
            d2[torch.arange(b, device=d2.device), self_b] = math.inf
        return d2


def _add_outer(
    d2: torch.Tensor,
    U: torch.Tensor,
    V: torch.Tensor,
    *,
    beta: float,
    alpha: float,
    elementwise: bool | None = None,
) -> None:
    """``d2 <- beta d2 + alpha U V`` in place for a low-rank ``U`` (b, r) and ``V`` (r, n).

    On CPU one ``addmm_`` (IEEE float32 under :func:`ieee_float32`). On CUDA, elementwise
    broadcasting instead: cuBLAS may round a float32 product's inputs to TF32, which would
    round ``|r|^2`` in ``V`` by up to 2^-11 of itself, beyond the screens' bounds (keys above
    the exact distance, wrong neighbours certified for queries near the data's centre).
    ``elementwise`` forces either way (default: on CUDA).
    """
    if not (d2.is_cuda if elementwise is None else elementwise):
        d2.addmm_(U, V, beta=beta, alpha=alpha)
        return
    if beta != 1.0:
        d2.mul_(beta)
    for j in range(U.shape[1]):  # r is 2: two fused passes over the block
        d2.addcmul_(U[:, j : j + 1], V[j : j + 1], value=alpha)


_TOPK_ROW = 512  # selection per entry is slower on rows longer than ~600 than amin slabs
_NUMPY_SELECT = (torch.float32, torch.float64, torch.float16)


def _select(d2: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``c`` smallest entries of each row (unsorted) and their columns, in one selection.

    On CPU, numpy's ``argpartition`` (introselect): 3-5x faster per entry than ``torch.topk``
    (13-16 ns per entry on a Xeon with 1250-entry rows, 4-5 ns for ``argpartition``); elsewhere,
    and for dtypes numpy lacks (bfloat16) or tensors that need gradients, ``torch.topk``.
    """
    cpu = d2.device.type == "cpu" and not d2.requires_grad
    if not cpu or d2.dtype not in _NUMPY_SELECT or not 0 < c < d2.shape[1]:
        return torch.topk(d2, c, dim=1, largest=False, sorted=False)
    part = np.argpartition(d2.numpy(), c - 1, axis=1)[:, :c]
    cols = torch.from_numpy(part.astype(np.int64))  # a copy; int64 where intp is narrower
    return d2.gather(1, cols), cols


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
        return _select(d2, c)
    G = n // g  # the last n - g G columns stay apart
    slabs = d2.as_strided((b, g, G), (n, G, 1))
    _, gi = smallest(slabs.amin(1), c)  # (b, c) group indices
    cols = (gi[:, :, None] + G * torch.arange(g, device=d2.device)).reshape(b, c * g)
    if n > g * G:
        tail = torch.arange(g * G, n, device=d2.device).expand(b, n - g * G)
        cols = torch.cat([cols, tail], 1)
    vals, pos = smallest(d2.gather(1, cols), c)
    return vals, cols.gather(1, pos)


def refine_progressively(
    q: Queries,
    ref: Reference,
    vals: torch.Tensor,
    cand: torch.Tensor,
    bound: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Exact distances of the candidates that can matter; +inf for those that provably cannot.

    ``vals`` are the candidates' screened lower bounds (float64) and ``bound`` the per-row
    error of those. The ``k`` candidates of smallest bound are measured first; their largest
    distance ``u`` (plus the float64 expansion's error, :func:`expansion_error`) bounds the
    k-th neighbour's from above, so a candidate whose lower bound (less its rounding bound)
    exceeds ``u`` cannot be among the k nearest, nor tie with the k-th, and is not measured.
    """
    b, c = cand.shape
    if c <= k:
        return refine(q, ref, cand)
    lb = vals - bound[:, None]
    head = _select(lb, k)[1]
    exact = torch.full((b, c), math.inf, dtype=torch.float64, device=q.c.device)
    exact.scatter_(1, head, refine(q, ref, cand.gather(1, head)))
    u2 = exact.masked_fill(exact.isinf(), -math.inf).amax(1) ** 2
    u2 = u2 + expansion_error(q, u2)
    todo = exact.isinf() & (lb <= u2[:, None])  # u2: the measured k-th plus its error
    if bool(todo.any()):
        crow = torch.zeros(b + 1, dtype=torch.long, device=q.c.device)
        crow[1:] = torch.cumsum(todo.sum(1), 0)
        exact[todo] = refine_pairs(q, ref, crow, cand[todo])
    return exact


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
    whose k nearest neighbours are guaranteed to be among the candidates: every
    non-candidate's screened lower bound (:class:`Screen`: the product's rounding bound is
    subtracted pair by pair) is >= the largest candidate's, so a row is certified when that,
    less the per-row :meth:`Screen.error_bound`, still exceeds its k-th exact squared
    distance. float64 screening is accepted as exact up to ties: a row whose k-th distance
    may tie with a point outside its ``k + 1`` candidates has every point that could tie
    measured, so ties always go by index.
    """
    q = ref.queries(Qb)
    screen = ref.screen(dtype)
    from geomsae.neighbors import grouped  # noqa: PLC0415 (it builds on this module)

    if dtype != torch.float64 and n_cand >= k and grouped.fits(ref.n, n_cand):
        keys, cols, T = grouped.screen_groups(screen, q.c, self_b, q.sq, n_cand)
        bound = screen.error_bound(q.sq)
        return grouped.grouped_knn(q, ref, keys, cols, T, q.sq, bound, k, n_cand, self_b)
    vals, cand = screen.nearest(q.c, self_b, n_cand, q.sq)
    if dtype == torch.float64:
        # the float64 expansion is the distance (to ~1e-16 of the squared norms); only
        # near-duplicates, where that is not enough, are re-measured directly
        exact = exclude_self(fix_close(q, ref, cand, vals.clamp_min(0)), cand, self_b)
        exact, cand = sort_settled(q, ref, exact, cand)
        if n_cand >= ref.n - (self_b is not None):
            return exact, cand, torch.ones(Qb.shape[0], dtype=torch.bool, device=Qb.device)
        # the (k+1)-th expansion value, less its rounding bound, must exceed the k-th distance:
        # else a point outside may tie with it, and ties go by index (rows with ties at the
        # k-th distance: every point within the bound of it is measured)
        # (the error at the (k+1)-th value bounds both its own and the k-th distance's)
        vmax = vals.max(1).values
        err = expansion_error(q, torch.maximum(vmax, exact[:, k - 1] ** 2).clamp_min(0))
        tied = torch.nonzero(exact[:, k - 1] ** 2 >= vmax - 2 * err).flatten()
        if tied.numel():
            sb = None if self_b is None else self_b[tied]
            t = exact[tied, k - 1] ** 2 + 2 * err[tied]
            e, c = _within(q[tied], sb, ref, t, k)
            exact, cand = exact[:, :k].clone(), cand[:, :k].clone()
            exact[tied], cand[tied] = e, c
        return exact, cand, torch.ones(Qb.shape[0], dtype=torch.bool, device=Qb.device)
    bound = screen.error_bound(q.sq)
    exact = refine_progressively(q, ref, vals, cand, bound, k)
    exact, cand = sort_settled(q, ref, exclude_self(exact, cand, self_b), cand)
    if n_cand >= ref.n - (self_b is not None):
        return exact, cand, torch.ones(Qb.shape[0], dtype=torch.bool, device=Qb.device)
    # the k-th distance may be measured up to the expansion's error below the exact one
    kth = exact[:, k - 1] ** 2
    ok = kth + expansion_error(q, kth) < vals.max(1).values - bound
    return exact, cand, ok


def expansion_error(q: Queries, d2: torch.Tensor) -> torch.Tensor:
    """Bound on the float64 expansion's error for pairs of the query rows ``q`` at squared
    distance ``d2`` (shape (b,) or (b, c)): :func:`pair_error` at ``3 |q|^2 + 2 d2``.

    The error of a pair is at most ``pair_error(|q|^2 + |r|^2)`` (centred norms), and
    ``|r|^2 <= (|q| + d)^2 <= 2 |q|^2 + 2 d^2``: a bound through the distance, not through the
    largest ``|r|`` of the set, so a far outlier does not inflate every row's error (which made
    every row look tied and every pair measured). For the ``d2`` of a computed value the
    exact one differs from it by at most this (to first order in eps), whether the pair's
    computed or exact distance is meant. It covers the centring's rounding too (at most
    ``eps (|q| + |r|)^2`` of a squared distance)."""
    sq = q.sq if d2.ndim == 1 else q.sq[:, None]
    return pair_error(q.c.shape[1], 3 * sq + 2 * d2)


def _within(
    q: Queries, self_b: torch.Tensor | None, ref: Reference, t: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The k nearest of each row (ties by index) among all points whose float64 expansion is
    at most ``t`` (which covers every point that can tie with the k-th)."""
    screen = ref.screen(torch.float64)
    d2 = screen.shifted(q.c, self_b, q.sq) + q.sq[:, None]
    c = max(k, int((d2 <= t[:, None]).sum(1).max()))
    vals, cand = smallest(d2, c)
    exact = exclude_self(fix_close(q, ref, cand, vals.clamp_min(0)), cand, self_b)
    exact, cand = sort_settled(q, ref, exact, cand)
    return exact[:, :k], cand[:, :k]


def no_neighbors(k: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The (0, k) distances and indices of an empty query set."""
    return (
        torch.empty(0, k, dtype=torch.float64, device=device),
        torch.empty(0, k, dtype=torch.long, device=device),
    )


_MIN_ROWS_FOR_A_SCREEN = 128


def _worth_making(ref: Reference, dtype: torch.dtype, n_rows: int) -> torch.dtype:
    """``dtype``, or float64 when a new CPU screen would not pay for itself on ``n_rows``.

    Making a float32/bfloat16 copy of the reference set costs about what ~100 queries save
    against the float64 product (which needs no copy: the set is float64 already).
    """
    if (
        dtype == torch.float64
        or ref.X.is_cuda
        or n_rows >= _MIN_ROWS_FOR_A_SCREEN
        or dtype in ref._screens
    ):
        return dtype
    return torch.float64


def trial_first(n: int, bs: int, device: torch.device) -> list[torch.Tensor]:
    """Row blocks of at most ``bs`` for a pass over ``n`` rows: first ``bs`` evenly spaced
    rows (a trial that stands for the whole set), then the others in order.

    Judging a screen on the first rows in the input's order would misjudge sorted input (a
    cluster of outlier tokens first left 99 % of 20 000 activations to the next precision:
    9.1 s instead of 5.4 s).
    """
    if n <= bs:
        return [torch.arange(n, device=device)]
    trial = torch.linspace(0, n - 1, bs, device=device).round().long()
    rest = torch.ones(n, dtype=torch.bool, device=device)
    rest[trial] = False
    return [trial, *torch.nonzero(rest).flatten().split(bs)]


def _screen_pass(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    k: int,
    dtype: torch.dtype,
    bs: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One precision's blocked pass over the rows of ``Q``: k nearest found and certified mask.

    Unless ``dtype`` is float64 (always certified), the first block is a trial of evenly
    spaced rows (:func:`trial_first`), and the pass stops there (the rest uncertified) when
    under 75 % of the trial is certified: this data defeats the screen. Once the trial
    passes, the pass goes on to the end: sorted input may hold a run of hard rows (outlier
    tokens) that a block-by-block rule would take for the whole set.
    """
    max_k = ref.n - (self_idx is not None)
    n_q = Q.shape[0]
    dist = torch.full((n_q, k), math.inf, dtype=torch.float64, device=Q.device)
    idx = torch.zeros((n_q, k), dtype=torch.long, device=Q.device)
    ok = torch.zeros(n_q, dtype=torch.bool, device=Q.device)
    blocks = (
        [slice(s, s + bs) for s in range(0, n_q, bs)]
        if dtype == torch.float64
        else trial_first(n_q, bs, Q.device)
    )
    for i, rows in enumerate(blocks):
        self_b = None if self_idx is None else self_idx[rows]
        e, c, good = _knn_block(Q[rows], self_b, ref, dtype, n_candidates(dtype, k, max_k), k)
        dist[rows], idx[rows], ok[rows] = e[:, :k], c[:, :k], good
        if i == 0 and dtype != torch.float64 and float(good.double().mean()) < 0.75:
            break
    return dist, idx, ok


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
    neighbours. A float32 or bfloat16 ``screen_dtype`` screens :func:`n_candidates`
    candidates and certifies each row; the rows it cannot certify are collected and screened
    again, all together, in the next precision (bfloat16, then float32, then float64, which
    is accepted as exact): each pass reads the whole reference set, so a few rows per block
    would cost a pass each. A pass that meets a block with under 75 % certified rows leaves
    the rest to the next precision (this data defeats its screen).

    Returns
    -------
    distances, indices : tensors of shape (n_queries, k), float64 and int64, rows sorted.
    """
    if Q.shape[0] == 0:
        return no_neighbors(k, ref.X.device)
    max_k = ref.n - (self_idx is not None)
    cascade = [torch.bfloat16, torch.float32, torch.float64]
    dtype = _worth_making(ref, screen_dtype, Q.shape[0])
    bs = block_rows(ref.n, n_candidates(screen_dtype, k, max_k) * ref.X.shape[1], block_size)
    dist, idx, ok = _screen_pass(Q, self_idx, ref, k, dtype, bs)
    for nxt in cascade[cascade.index(dtype) + 1 :]:
        bad = torch.nonzero(~ok).flatten()
        if bad.numel() == 0:
            break
        nxt = _worth_making(ref, nxt, bad.numel())
        sb = None if self_idx is None else self_idx[bad]
        dist[bad], idx[bad], ok_b = _screen_pass(Q[bad], sb, ref, k, nxt, bs)
        ok[bad] = ok_b
    return dist, idx
