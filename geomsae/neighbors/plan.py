"""Planning the projected screen: the basis, the bound counts on a sample, and the cost model.

:func:`plan` (k-NN) and :func:`plan_radius` take an evenly spaced sample of the queries, find
what each sampled query needs (its exact k-th distance, or the radius), count for
``m = 4, 8, 12, ...`` principal directions how many points its lower bound cannot exclude
(stopping when the count stops falling), and pick ``m`` (and the candidates ``c``) by a cost
model of this machine's kernels -- or return None when brute force is predicted to be as fast.
The bound itself and the search are in :mod:`geomsae.neighbors.projected`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import torch

from geomsae.neighbors.brute import (
    Reference,
    auto_screen_dtype,
    brute_knn,
    matmul,
    row_sq,
)

logger = logging.getLogger(__name__)

__all__ = ["ProjectionPlan", "coordinates", "plan", "plan_radius"]

# Relative costs of the kernels, in units of one float32 multiply-add inside a large matrix
# product (a bfloat16 one, where brute force uses it, counts half), measured with one thread
# on a 2-core x86-64 CPU at D = 576: the screen's per-pair cost besides its product (output
# write, grouped top-k), and one float64 multiply-add of the candidate refinement (a sampled
# product that reads every candidate row).
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


_EXPLICIT_BELOW = 1e-3  # residual share of |x|^2 under which it is measured explicitly


def residual_sq(
    Xc: torch.Tensor, P: torch.Tensor, Vt: torch.Tensor, x_sq: torch.Tensor
) -> torch.Tensor:
    """Squared distances ``|x - P Vt|^2`` of the rows of ``Xc`` to the span of ``Vt``.

    ``P = Xc Vt^T`` (``Vt``: orthonormal rows) and ``x_sq = |x|^2`` are given. The residual is
    ``|x|^2 - |p|^2`` (no pass over the n x D data) wherever it holds at least ``1e-3`` of
    ``|x|^2``. Its rounding error is at most ~``(D + m + 2) eps |x|^2`` (1.4e-13 of ``|x|^2``
    at D = 576, m = 64, counting the basis' departure from orthonormality), so there ``|r|`` is
    accurate to 7e-11 relative, and the z-space bound ``(|r_q| - |r_x|)^2`` to
    ``2.9e-10 (|q|^2 + |x|^2)`` pair by pair: inside the search's 1e-9 margin. Rows closer to
    the span are measured explicitly.
    """
    res = x_sq - (P * P).sum(1)
    low = torch.nonzero(res < _EXPLICIT_BELOW * x_sq).flatten()
    if low.numel():
        R = Xc[low] - matmul(P[low], Vt)
        res[low] = (R * R).sum(1)
    return res.clamp_min(0)


def coordinates(Xc: torch.Tensor, Vt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Projections ``P = Xc Vt^T`` and squared residual norms (see :func:`residual_sq`)."""
    P = matmul(Xc, Vt.T)
    return P, residual_sq(Xc, P, Vt, row_sq(Xc))


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

    def _extend(self, m: int) -> None:
        """Principal coordinates of the reference and the sample up to at least ``m``."""
        if m > self.P.shape[1]:
            hi = min(self.Vt.shape[0], max(m, self.P.shape[1] + 16))
            W = self.Vt[self.P.shape[1] : hi].T.contiguous()
            self.P = torch.cat([self.P, matmul(self.ref.X, W)], 1)
            self.Pq = torch.cat([self.Pq, matmul(self.Qs, W)], 1)

    def _sorted_counts(
        self, part: torch.Tensor, pq_sq: torch.Tensor, p_sq: torch.Tensor, u2: torch.Tensor
    ) -> torch.Tensor:
        # residual norms by subtraction: fine for counting (the search uses exact ones)
        rq = torch.sqrt((self.q_sq - pq_sq).clamp_min(0)).float()
        rr = torch.sqrt((self.ref.sq - p_sq).clamp_min(0)).float()
        lb2 = torch.sub(rq[:, None], rr[None, :]).square_().add_(part)
        if self.self_s is not None:
            lb2[torch.arange(len(lb2), device=lb2.device), self.self_s] = math.inf
        return (lb2 <= u2.float()[:, None]).sum(1).sort().values

    def counts(self, m: int, u2: torch.Tensor) -> torch.Tensor:
        """Sorted counts of points with bound <= ``u2[i]`` for each sampled query ``i``."""
        self._extend(m)
        b = self.P[:, self.done : m].contiguous()
        a = self.Pq[:, self.done : m].contiguous()
        bb, aa = row_sq(b), row_sq(a)
        self.p_sq += bb
        self.pq_sq += aa
        self.part += (aa[:, None] + bb[None, :] - 2.0 * matmul(a, b.T)).float()
        self.done = m
        return self._sorted_counts(self.part, self.pq_sq, self.p_sq, u2)

    def ceiling(self, u2: torch.Tensor) -> torch.Tensor:
        """:meth:`counts` at the most components, without advancing the incremental state:
        the fewest points the bound can leave (it only tightens as ``m`` grows)."""
        m = self.Vt.shape[0]
        self._extend(m)
        P, Pq = self.P[:, :m].contiguous(), self.Pq[:, :m].contiguous()
        p_sq, pq_sq = row_sq(P), row_sq(Pq)
        part = (pq_sq[:, None] + p_sq[None, :] - 2.0 * matmul(Pq, P.T)).float()
        return self._sorted_counts(part, pq_sq, p_sq, u2)

    def coordinates(self, m: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's first ``m`` coordinates and squared residual norms."""
        P = self.P[:, :m].contiguous()
        return P, residual_sq(self.ref.X, P, self.Vt[:m], self.ref.sq)


_ESTIMATE_ROWS = 2048  # reference rows of the early estimate of the tightest bound's counts


def _estimated_ceiling(counter: _BoundCounter, u2: torch.Tensor) -> torch.Tensor:
    """:meth:`_BoundCounter.ceiling` estimated on an evenly spaced sample of reference rows.

    Sorted counts of points that the bound with every component cannot exclude, scaled from
    at most ``_ESTIMATE_ROWS`` rows to the whole set (a query's own row, if sampled, counts:
    an overestimate of ``n / rows`` at most). Costs a small fraction of the coordinates of
    every point, which a hopeless plan then never computes.
    """
    ref, Vt = counter.ref, counter.Vt
    rows = torch.linspace(0, ref.n - 1, min(ref.n, _ESTIMATE_ROWS), device=ref.X.device)
    rows = rows.round().long()
    Pr, Pq = matmul(ref.X[rows], Vt.T), matmul(counter.Qs, Vt.T)
    rr = torch.sqrt((ref.sq[rows] - row_sq(Pr)).clamp_min(0))
    rq = torch.sqrt((counter.q_sq - row_sq(Pq)).clamp_min(0))
    part = row_sq(Pq)[:, None] + row_sq(Pr)[None, :] - 2.0 * matmul(Pq, Pr.T)
    lb2 = part.clamp_min(0) + (rq[:, None] - rr[None, :]) ** 2
    counts = (lb2 <= u2[:, None]).sum(1).double() * (ref.n / len(rows))
    return counts.sort().values


def _sample(
    Q: torch.Tensor, self_idx: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Evenly spaced sample of the queries: (uncentred rows, their self indices)."""
    s = min(_SAMPLE_QUERIES, Q.shape[0])
    pick = torch.linspace(0, Q.shape[0] - 1, s, device=Q.device).round().long()
    return Q[pick], None if self_idx is None else self_idx[pick]


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
    Qs, self_s = _sample(Q, self_idx)
    u, _ = brute_knn(Qs, self_s, ref, k, screen_dtype=torch.float32)
    u2 = u[:, -1] ** 2 * (1 + 1e-9)  # (s,) exact k-th squared distances
    counter = _BoundCounter(ref.queries(Qs).c, self_s, ref, _basis(ref, n_max))
    s = Qs.shape[0]
    brute_dtype = auto_screen_dtype(n, k, n - (self_idx is not None), Q.is_cuda, D)
    brute_cost = n * (D * (0.5 if brute_dtype == torch.bfloat16 else 1.0) + _SCREEN_PER_PAIR)
    # brute force too measures at least k candidates per query in float64
    brute_cost += k * D * _REFINE_PER_MAC * (brute_dtype != torch.float64)
    fail = 1.0 - torch.arange(1, s + 1, device=Q.device, dtype=torch.float64) / s
    if not force and n > 4 * _ESTIMATE_ROWS:
        # hopeless at once? the cheapest screen plus half the estimated fewest candidates (a
        # margin for the sampling) against brute force, before any coordinates of all points
        cheapest = n * (8 + _SCREEN_PER_PAIR)
        half = 0.5 * _estimated_ceiling(counter, u2).clamp_min(k)
        if brute_cost < _MIN_GAIN * float(
            (cheapest + half * D * _REFINE_PER_MAC + fail * brute_cost).min()
        ):
            logger.debug(
                "projection plan: declined (hopeless by a %d-row estimate)", _ESTIMATE_ROWS
            )
            return None
    best: tuple[float, int, int, float] | None = None
    last_median = math.inf
    hopeful = force
    for m in _grid(n_max):
        counts = counter.counts(m, u2)
        # c = counts[j] certifies the sample's j + 1 best-bounded queries; the rest fall back
        c_j = counts.clamp_min(k).double()
        screen_cost = n * (max(m + 1, 8) + _SCREEN_PER_PAIR)
        costs = screen_cost + c_j * D * _REFINE_PER_MAC + fail * brute_cost
        j = int(torch.argmin(costs))
        if best is None or float(costs[j]) < best[0]:
            best = (float(costs[j]), m, int(c_j[j]), 1.0 - float(fail[j]))
        if not hopeful and m >= 16 and brute_cost < _MIN_GAIN * best[0]:
            # not worth it yet: could more components ever make it? (no screen is cheaper
            # than this one, and no bound tighter than the one with all components)
            floor = screen_cost + counter.ceiling(u2).clamp_min(k).double() * D * _REFINE_PER_MAC
            if brute_cost < _MIN_GAIN * float((floor + fail * brute_cost).min()):
                logger.debug("projection plan: declined at m=%d (hopeless)", m)
                return None
            hopeful = True
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
    Qs, self_s = _sample(Q, self_idx)
    u2 = torch.full((Qs.shape[0],), radius**2 * (1 + 1e-9), dtype=torch.float64, device=Q.device)
    counter = _BoundCounter(ref.queries(Qs).c, self_s, ref, _basis(ref, n_max))
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
    # brute force screens every pair, then measures in float64 at least every pair in reach
    # (``last``, the tightest count seen, is an upper estimate of those)
    brute_dtype = auto_screen_dtype(n, 1, n - (self_idx is not None), Q.is_cuda, D)
    brute_cost = n * (D * (0.5 if brute_dtype == torch.bfloat16 else 1.0) + _SCREEN_PER_PAIR)
    brute_cost += min(last, mean) * D * _REFINE_PER_MAC
    speedup = brute_cost / cost
    logger.debug("radius projection plan: m=%d pairs/query=%.1f speedup=%.1f", m, mean, speedup)
    if speedup < _MIN_GAIN and not force:
        return None
    P, res = counter.coordinates(m)
    return ProjectionPlan(m, math.ceil(mean), 1.0, speedup, counter.Vt[:m].contiguous(), P, res)
