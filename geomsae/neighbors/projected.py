"""Exact k-NN through a low-dimensional lower bound: a PCA projection plus the residual norm.

For any orthonormal basis ``V`` of shape (D, m), write ``x = V p + r`` with ``p = V^T x`` and
``r`` orthogonal to ``V``. Then

    |x_i - x_j|^2 = |p_i - p_j|^2 + |r_i - r_j|^2  >=  |p_i - p_j|^2 + (|r_i| - |r_j|)^2,

so the Euclidean distance between the (m + 1)-dimensional points ``z_i = (p_i, |r_i|)`` is a
**lower bound** of the true distance, whatever ``V`` is. The search screens each query's
``c`` nearest points in z-space (a cheap product in m + 1 dimensions), measures those ``c``
exactly in float64, and **certifies** the row when the ``c``-th screened lower bound (minus its
rounding-error bound) exceeds the k-th exact distance found: every other point is then provably
farther. Rows that cannot be certified are searched again by brute force
(:func:`geomsae.neighbors.brute.brute_knn`). The answer is therefore identical to brute force
for any data; only the speed depends on the data.

It is fast when a few principal directions hold most of the variance at the scale of the
neighbour distances (low intrinsic dimension in a high ambient dimension, such as activations
of a layer that lie near a low-dimensional manifold), because the bound is then tight and few
candidates are needed. :func:`plan` measures this on a sample of queries before committing: it
computes the exact k-th distances of the sample, counts for each candidate ``m`` how many points
each query's bound cannot exclude, and picks ``(m, c)`` by a cost model of this machine's
kernels, or declines (returns None) when brute force is predicted to be cheaper.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from geomsae.neighbors.brute import (
    Reference,
    Screen,
    block_rows,
    brute_knn,
    exclude_self,
    matmul,
    refine,
    refine_pairs,
    sort_rows,
)

logger = logging.getLogger(__name__)

__all__ = ["ProjectionPlan", "plan", "plan_radius", "projected_knn", "projected_radius"]

# Relative costs of the kernels, in units of one float32 multiply-add inside a large matrix
# product, measured with one thread on a 2-core x86-64 CPU at D = 576: the screen's per-pair
# cost besides its product (output write, grouped top-k), and one float64 multiply-add of the
# candidate refinement (a sampled product that reads every candidate row).
_SCREEN_PER_PAIR = 30.0
_REFINE_PER_MAC = 30.0
_MAX_COMPONENTS = 64
_SAMPLE_QUERIES = 64
_BASIS_ROWS = 1024
_MIN_GAIN = 1.5  # use the projection only when predicted at least this much cheaper


@dataclass(frozen=True)
class ProjectionPlan:
    """The projection search's settings and its predicted economics.

    Attributes
    ----------
    n_components : int
        ``m``, the number of principal directions kept (z-space has ``m + 1`` coordinates).
    n_candidates : int
        ``c``, the candidates screened per query and re-measured exactly.
    certified_fraction : float
        Share of the sampled queries whose k neighbours ``c`` candidates certify.
    predicted_speedup : float
        Predicted cost of brute force over the cost of this plan.
    basis : tensor of shape (n_components_max, n_features), float64
        Orthonormal rows: principal directions of a row sample, by decreasing variance.
    coordinates : tensor of shape (n_reference, n_components_max), float64
        The reference points' projections on ``basis``.
    residual_sq : tensor of shape (n_reference,), float64
        Their squared distances to the span of ``basis``.
    """

    n_components: int
    n_candidates: int
    certified_fraction: float
    predicted_speedup: float
    basis: torch.Tensor = field(repr=False)
    coordinates: torch.Tensor = field(repr=False)
    residual_sq: torch.Tensor = field(repr=False)


def _basis(ref: Reference, n_max: int) -> torch.Tensor:
    """Orthonormal (n_max, D) basis: principal directions of an evenly spaced row sample.

    Any orthonormal basis gives a valid bound; the principal directions make it tight. A
    randomized range finder with one power iteration on at most ``_BASIS_ROWS`` rows, in
    float32, then re-orthonormalised in float64 (orthonormality matters for the bound).
    """
    X = ref.X
    rows = torch.linspace(0, X.shape[0] - 1, min(X.shape[0], _BASIS_ROWS), device=X.device)
    S = X[rows.round().long()].float()
    gen = torch.Generator(device="cpu").manual_seed(0)
    q = min(n_max + 10, S.shape[0], S.shape[1])
    Y = S @ torch.randn(S.shape[1], q, generator=gen).to(S.device)
    Y = S @ (S.T @ torch.linalg.qr(Y).Q)  # one power iteration
    Y = torch.linalg.qr(Y).Q
    _, _, Vh = torch.linalg.svd(Y.T @ S, full_matrices=False)
    return torch.linalg.qr(Vh[:n_max].T.double()).Q.T.contiguous()


def _coordinates(Xc: torch.Tensor, Vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections ``P = Xc Vt^T`` and squared residual norms ``|Xc - P Vt|^2`` (explicit)."""
    P = matmul(Xc, Vt.T)
    res = Xc - matmul(P, Vt)
    return P, (res * res).sum(1)


def _z(P: torch.Tensor, res_sq: torch.Tensor, m: int) -> torch.Tensor:
    """z-space points for ``m`` components: ``(p_1..p_m, |r|)``, with |r| from a sum of squares.

    ``|r_m|^2 = |r_M|^2 + sum_{l >= m} p_l^2`` adds non-negative terms (no cancellation).
    """
    r = torch.sqrt(res_sq + (P[:, m:] ** 2).sum(1))
    return torch.cat([P[:, :m], r[:, None]], 1)


def _grid(n_max: int) -> list[int]:
    return [m for m in (4, 8, 12, 16, 24, 32, 48, 64) if m < n_max] + [n_max]


class _BoundCounter:
    """For a sample of queries, counts the points that the m-component bound cannot exclude.

    The principal coordinates are computed in chunks of 16 columns, only as far as the calls
    to :meth:`counts` (with non-decreasing ``m``) reach.
    """

    def __init__(
        self, Qs: torch.Tensor, self_s: torch.Tensor | None, ref: Reference, Vt: torch.Tensor
    ) -> None:
        self.Qs, self.self_s, self.ref, self.Vt = Qs, self_s, ref, Vt
        s, n, dev = Qs.shape[0], ref.n, Qs.device
        self.part = torch.zeros(s, n, device=dev)  # sum_{l<m} (dp_l)^2 (float32: only counted)
        self.P = torch.empty(n, 0, dtype=torch.float64, device=dev)
        self.Pq = torch.empty(s, 0, dtype=torch.float64, device=dev)
        self.p_sq = torch.zeros(n, dtype=torch.float64, device=dev)
        self.pq_sq = torch.zeros(s, dtype=torch.float64, device=dev)
        self.q_sq = (Qs * Qs).sum(1)
        self.done = 0

    def counts(self, m: int, u2: torch.Tensor) -> torch.Tensor:
        """Sorted counts of points with bound <= ``u2[i]`` for each sampled query ``i``."""
        ref = self.ref
        if m > self.P.shape[1]:
            hi = min(self.Vt.shape[0], max(m, self.P.shape[1] + 16))
            W = self.Vt[self.P.shape[1] : hi].T.contiguous()
            self.P = torch.cat([self.P, matmul(ref.X, W)], 1)
            self.Pq = torch.cat([self.Pq, matmul(self.Qs, W)], 1)
        b, a = self.P[:, self.done : m], self.Pq[:, self.done : m]
        self.p_sq += (b * b).sum(1)
        self.pq_sq += (a * a).sum(1)
        self.part += ((a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)).float()
        self.done = m
        # residual norms by subtraction: fine for counting (the search uses exact ones)
        rq = torch.sqrt((self.q_sq - self.pq_sq).clamp_min(0)).float()
        rr = torch.sqrt((ref.sq - self.p_sq).clamp_min(0)).float()
        lb2 = torch.sub(rq[:, None], rr[None, :]).square_().add_(self.part)
        if self.self_s is not None:
            lb2[torch.arange(len(lb2), device=lb2.device), self.self_s] = math.inf
        return (lb2 <= u2.float()[:, None]).sum(1).sort().values

    def coordinates(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's first ``m`` coordinates and exact squared residual norms."""
        P = self.P[:, :m].contiguous()
        res = self.ref.X - matmul(P, self.Vt[:m])  # explicit residuals: exact norms
        return P, (res * res).sum(1)


def _sample(
    Q: torch.Tensor, self_idx: torch.Tensor | None, ref: Reference
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Evenly spaced sample of the queries: (uncentred rows, their self indices, positions)."""
    s = min(_SAMPLE_QUERIES, Q.shape[0])
    pick = torch.linspace(0, Q.shape[0] - 1, s, device=Q.device).round().long()
    return Q[pick], None if self_idx is None else self_idx[pick], pick


def plan(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    k: int,
    *,
    force: bool = False,
) -> ProjectionPlan | None:
    """Choose ``(m, c)`` for :func:`projected_knn` on a sample of the queries, or None.

    None means brute force is predicted to be at least ``_MIN_GAIN`` times as fast (flat
    spectra, tiny problems), unless ``force``; also None when ``n_features == 1``.
    """
    n, D = ref.X.shape
    n_max = min(_MAX_COMPONENTS, D - 1, n - 1)
    if n_max < 1:
        return None
    Qs, self_s, _ = _sample(Q, self_idx, ref)
    u, _ = brute_knn(Qs, self_s, ref, k, screen_dtype=torch.float32)
    u2 = u[:, -1] ** 2 * (1 + 1e-9)  # (s,) exact k-th squared distances
    counter = _BoundCounter(Qs - ref.mu, self_s, ref, _basis(ref, n_max))
    s = Qs.shape[0]
    brute_cost = n * (D + _SCREEN_PER_PAIR)
    fail = 1.0 - torch.arange(1, s + 1, device=Q.device, dtype=torch.float64) / s
    best: tuple[float, int, int, float] | None = None
    last_median = math.inf
    for m in _grid(n_max):
        counts = counter.counts(m, u2)
        # c = counts[j] certifies the sample's j + 1 best-bounded queries; the rest fall back
        c_j = counts.clamp_min(k).double()
        screen_cost = n * (max(m + 1, 8) + _SCREEN_PER_PAIR)
        costs = screen_cost + c_j * D * _REFINE_PER_MAC + fail * brute_cost
        j = int(torch.argmin(costs))
        if best is None or float(costs[j]) < best[0]:
            best = (float(costs[j]), m, int(c_j[j]), 1.0 - float(fail[j]))
        median = float(counts[s // 2])
        if m >= 8 and median >= 0.97 * last_median:  # the bound stopped tightening
            break
        last_median = median
    assert best is not None
    cost, m, c, certified = best
    c = min(c + max(2, c // 8), n - (self_idx is not None))  # margin for the unsampled rows
    speedup = brute_cost / cost
    logger.debug("projection plan: m=%d c=%d certified=%.2f speedup=%.1f", m, c, certified, speedup)
    if speedup < _MIN_GAIN and not force:
        return None
    P, res = counter.coordinates(m)
    return ProjectionPlan(m, c, certified, speedup, counter.Vt[:m].contiguous(), P, res)


def plan_radius(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    radius: float,
    *,
    force: bool = False,
) -> ProjectionPlan | None:
    """Choose ``m`` for :func:`projected_radius` on a sample of the queries, or None.

    ``n_candidates`` of the plan is the predicted mean number of pairs per query that the bound
    cannot exclude (all of them are measured exactly).
    """
    n, D = ref.X.shape
    n_max = min(_MAX_COMPONENTS, D - 1, n - 1)
    if n_max < 1:
        return None
    Qs, self_s, _ = _sample(Q, self_idx, ref)
    u2 = torch.full((Qs.shape[0],), radius**2 * (1 + 1e-9), dtype=torch.float64, device=Q.device)
    counter = _BoundCounter(Qs - ref.mu, self_s, ref, _basis(ref, n_max))
    brute_cost = n * (D + _SCREEN_PER_PAIR)
    best: tuple[float, int, float] | None = None
    last = math.inf
    for m in _grid(n_max):
        mean = float(counter.counts(m, u2).double().mean())
        cost = n * (max(m + 1, 8) + _SCREEN_PER_PAIR) + mean * D * _REFINE_PER_MAC
        if best is None or cost < best[0]:
            best = (cost, m, mean)
        if m >= 8 and mean >= 0.97 * last:
            break
        last = mean
    assert best is not None
    cost, m, mean = best
    speedup = brute_cost / cost
    logger.debug("radius projection plan: m=%d pairs/query=%.1f speedup=%.1f", m, mean, speedup)
    if speedup < _MIN_GAIN and not force:
        return None
    P, res = counter.coordinates(m)
    return ProjectionPlan(m, math.ceil(mean), 1.0, speedup, counter.Vt[:m].contiguous(), P, res)


class _ZSpace:
    """The z-space points of the reference and of the queries, and the float32 screen."""

    def __init__(
        self, Q: torch.Tensor, self_idx: torch.Tensor | None, ref: Reference, chosen: ProjectionPlan
    ) -> None:
        m = chosen.n_components
        Zr = _z(chosen.coordinates, chosen.residual_sq, m)
        self.Qc = Q - ref.mu
        everyone = torch.arange(ref.n, device=Q.device)
        if self_idx is not None and Q.shape[0] == ref.n and torch.equal(self_idx, everyone):
            Zq = Zr
        else:
            Zq = _z(*_coordinates(self.Qc, chosen.basis), m)
        shift = Zr.mean(0)  # centring z keeps the float32 screen's rounding error small
        Zr = Zr - shift
        self.Zq = Zq - shift
        self.screen = Screen(Zr.float(), (Zr * Zr).sum(1).float())
        self.x_max = float(ref.sq.max())

    def bound(self, Zq: torch.Tensor, Qc: torch.Tensor) -> torch.Tensor:
        """Bound on |screened - exact| squared lower bound, per query row.

        The float32 z-product, and the float64 projection, residual and basis (worst case
        ~1e-11 of the squared norms at D = 576; 1e-9 leaves a wide margin).
        """
        return self.screen.error_bound((Zq * Zq).sum(1)) + 1e-9 * ((Qc * Qc).sum(1) + self.x_max)


def _refine_progressively(
    Qc: torch.Tensor,
    ref: Reference,
    vals: torch.Tensor,
    cand: torch.Tensor,
    bound: torch.Tensor,
    k: int,
) -> torch.Tensor:
    """Exact distances of the candidates that can matter; +inf for those that provably cannot.

    The ``k`` candidates of smallest bound are measured first; their largest distance ``u``
    bounds the k-th neighbour's from above, so a candidate whose lower bound (less its rounding
    bound) exceeds ``u`` cannot be among the k nearest and is not measured (~20% of the
    candidates at D = 576).
    """
    b, c = cand.shape
    if c <= k:
        return refine(Qc, ref, cand)
    lb = vals.double() - bound[:, None]
    head = torch.topk(lb, k, dim=1, largest=False, sorted=False).indices
    exact = torch.full((b, c), math.inf, dtype=torch.float64, device=Qc.device)
    exact.scatter_(1, head, refine(Qc, ref, cand.gather(1, head)))
    u2 = exact.masked_fill(exact.isinf(), -math.inf).amax(1) ** 2
    todo = exact.isinf() & (lb <= u2[:, None])
    if bool(todo.any()):
        crow = torch.zeros(b + 1, dtype=torch.long, device=Qc.device)
        crow[1:] = torch.cumsum(todo.sum(1), 0)
        exact[todo] = refine_pairs(Qc, ref, crow, cand[todo])
    return exact


def projected_knn(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    k: int,
    chosen: ProjectionPlan,
    *,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k-NN of the rows of ``Q`` (uncentred) among ``ref`` by the z-space screen.

    Returns
    -------
    distances, indices : tensors of shape (n_queries, k), float64 and int64, rows sorted.
    """
    c = chosen.n_candidates
    z = _ZSpace(Q, self_idx, ref, chosen)
    # the screen runs on sub-blocks of 64 rows (its (64, n) block stays in cache: fastest at
    # n = 5000-20000), the refinement on blocks of 512 (fewer, larger sparse products)
    bs = block_size or min(512, block_rows(ref.n, c * (ref.X.shape[1] + 4), None))
    sub = min(64, bs)
    dists, inds, failed = [], [], []
    for start in range(0, Q.shape[0], bs):
        Qc = z.Qc[start : start + bs]
        Zq = z.Zq[start : start + bs]
        self_b = None if self_idx is None else self_idx[start : start + bs]
        parts = [
            z.screen.nearest(
                Zq[i : i + sub].float(), None if self_b is None else self_b[i : i + sub], c
            )
            for i in range(0, Zq.shape[0], sub)
        ]
        vals, cand = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        bound = z.bound(Zq, Qc)
        exact = _refine_progressively(Qc, ref, vals, cand, bound, k)
        exact, cand = sort_rows(exclude_self(exact, cand, self_b), cand)
        ok = exact[:, k - 1] ** 2 < vals.max(1).values.double() - bound
        failed.append(start + torch.nonzero(~ok).flatten())
        dists.append(exact[:, :k])
        inds.append(cand[:, :k])
    if not dists:
        return (
            torch.empty(0, k, dtype=torch.float64, device=ref.X.device),
            torch.empty(0, k, dtype=torch.long, device=ref.X.device),
        )
    D, I = torch.cat(dists), torch.cat(inds)
    bad = torch.cat(failed)
    if bad.numel():  # uncertified rows, all at once (each brute pass reads the whole set)
        logger.debug("projected k-NN: %d of %d rows searched by brute force", bad.numel(), len(D))
        sb = None if self_idx is None else self_idx[bad]
        wide = ref.n >= 400 * (k + max(4, k // 4))
        dtype = torch.float32 if (wide or Q.is_cuda) else torch.float64
        D[bad], I[bad] = brute_knn(Q[bad], sb, ref, k, screen_dtype=dtype)
    return D, I


def projected_radius(
    Q: torch.Tensor,
    self_idx: torch.Tensor | None,
    ref: Reference,
    radius: float,
    chosen: ProjectionPlan,
    *,
    block_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs within ``radius`` (``|q_i - r_j| <= radius``) by the z-space screen.

    Every pair whose screened lower bound, less its rounding bound, is at most ``radius`` is
    measured exactly, so no pair within ``radius`` is missed.

    Returns
    -------
    rows, cols, distances : flat tensors (int64, int64, float64), ordered by row and then by
        column; ``self_idx[i]`` (if given) is never a neighbour of query ``i``.
    """
    z = _ZSpace(Q, self_idx, ref, chosen)
    bs = block_size or 512  # refinement blocks; the screen runs on 64-row sub-blocks
    sub = min(64, bs)
    rows_all, cols_all, dist_all = [], [], []
    for start in range(0, Q.shape[0], bs):
        Qc = z.Qc[start : start + bs]
        limit = radius**2 + z.bound(z.Zq[start : start + bs], Qc)
        rs, cs = [], []
        for i in range(0, Qc.shape[0], sub):
            Zq32 = z.Zq[start + i : start + i + sub].float()
            self_b = None if self_idx is None else self_idx[start + i : start + i + sub]
            d2 = z.screen.shifted(Zq32, self_b)  # z-space squared distances minus |z_q|^2
            lim = (limit[i : i + sub] - (Zq32 * Zq32).sum(1).double()).float()
            r, c = torch.nonzero(d2 <= lim[:, None], as_tuple=True)
            rs.append(i + r)
            cs.append(c)
        r, c = torch.cat(rs), torch.cat(cs)
        crow = torch.zeros(Qc.shape[0] + 1, dtype=torch.long, device=Q.device)
        crow[1:] = torch.cumsum(torch.bincount(r, minlength=Qc.shape[0]), 0)
        dist = refine_pairs(Qc, ref, crow, c)
        keep = dist <= radius
        rows_all.append(start + r[keep])
        cols_all.append(c[keep])
        dist_all.append(dist[keep])
    if not rows_all:
        e = torch.empty(0, dtype=torch.long, device=Q.device)
        return e, e, torch.empty(0, dtype=torch.float64, device=Q.device)
    return torch.cat(rows_all), torch.cat(cols_all), torch.cat(dist_all)
