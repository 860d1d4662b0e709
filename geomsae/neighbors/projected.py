"""Exact k-NN through a low-dimensional lower bound: a PCA projection plus the residual norm.

For any orthonormal basis ``V`` of shape (D, m), write ``x = V p + r`` with ``p = V^T x`` and
``r`` orthogonal to ``V``. Then

    |x_i - x_j|^2 = |p_i - p_j|^2 + |r_i - r_j|^2  >=  |p_i - p_j|^2 + (|r_i| - |r_j|)^2,

so the Euclidean distance between the (m + 1)-dimensional points ``z_i = (p_i, |r_i|)`` is a
**lower bound** of the true distance, whatever ``V`` is. The search screens each query's
``c`` nearest points in z-space (a cheap product in m + 1 dimensions), measures those ``c``
exactly in float64, and **certifies** the row when the ``c``-th screened lower bound (minus its
rounding-error bound) exceeds the k-th exact distance found: every other point is then provably
farther. Rows that cannot be certified are screened again with four times the candidates
(at most all other points), and the few that still fail are searched by brute force
(:func:`geomsae.neighbors.brute.brute_knn`). The answer is therefore identical to brute force
for any data; only the speed depends on the data.

It is fast when a few principal directions hold most of the variance at the scale of the
neighbour distances (low intrinsic dimension in a high ambient dimension, such as activations
of a layer that lie near a low-dimensional manifold), because the bound is then tight and few
candidates are needed. :func:`geomsae.neighbors.plan.plan` measures this on a sample of
queries before committing: it computes the exact k-th distances of the sample, counts for each
candidate ``m`` how many points each query's bound cannot exclude, and picks ``(m, c)`` by a
cost model of this machine's kernels, or declines (returns None) when brute force is predicted
to be cheaper.
"""

from __future__ import annotations

import logging

import torch

from geomsae.neighbors import grouped
from geomsae.neighbors.brute import (
    Queries,
    Reference,
    Screen,
    auto_screen_dtype,
    block_rows,
    brute_knn,
    centre,
    exclude_self,
    expansion_error,
    no_neighbors,
    refine_pairs,
    refine_progressively,
    row_sq,
    sort_settled,
)
from geomsae.neighbors.plan import ProjectionPlan, coordinates

logger = logging.getLogger(__name__)

__all__ = ["projected_knn", "projected_radius"]


_PROJECTION_REL = 1e-9  # error of the float64 z-coordinates, relative to |q|^2 + |x|^2


def _z(P: torch.Tensor, res_sq: torch.Tensor, m: int) -> torch.Tensor:
    """z-space points for ``m`` components: ``(p_1..p_m, |r|)``, with |r| from a sum of squares.

    ``|r_m|^2 = |r_M|^2 + sum_{l >= m} p_l^2`` adds non-negative terms (no cancellation).
    """
    r = torch.sqrt(res_sq + (P[:, m:] ** 2).sum(1))
    return torch.cat([P[:, :m], r[:, None]], 1)


class _ZSpace:
    """The z-space points of the reference and of the queries, and the float32 screen."""

    def __init__(
        self, Q: torch.Tensor, self_idx: torch.Tensor | None, ref: Reference, chosen: ProjectionPlan
    ) -> None:
        m = chosen.n_components
        Zr = _z(chosen.coordinates, chosen.residual_sq, m)
        everyone = torch.arange(ref.n, device=Q.device)
        if self_idx is not None and Q.shape[0] == ref.n and torch.equal(self_idx, everyone):
            self.q, Zq = Queries(ref.raw, ref.X, ref.sq), Zr  # the queries are the reference
        else:
            self.q = ref.queries(Q)
            Zq = _z(*coordinates(self.q.c, chosen.basis), m)
        # centring z keeps the float32 screen's rounding error small; the robust centre (a
        # sample median where a few far points drag the mean: 50 rows at 1e9x among 5000 made
        # every pair a candidate, 12 s instead of 0.5)
        Zr, shift = centre(Zr)
        self.Zq = Zq - shift
        # the float64 projection, residual and basis err by at most ~1e-11 (|q|^2 + |x|^2) at
        # D = 576 (1e-9 leaves a wide margin): the |x|^2 part is taken off the keys
        self.screen = Screen(Zr.float(), (Zr * Zr).sum(1), col_slack=_PROJECTION_REL * ref.sq)

    def bound(self, Zq: torch.Tensor, q: Queries) -> torch.Tensor:
        """Bound on how far a screened squared lower bound may exceed the exact one, per query
        row: the float32 z-product's and the projection's ``|q|^2`` parts (their ``|x|^2``
        parts are in the keys, so a few far points do not loosen every row)."""
        return self.screen.error_bound((Zq * Zq).sum(1)) + _PROJECTION_REL * q.sq


def _search(
    z: _ZSpace,
    self_idx: torch.Tensor | None,
    ref: Reference,
    k: int,
    c: int,
    rows: torch.Tensor | None,
    block_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Screen ``c`` candidates for the query ``rows`` (None: all), refine, and certify.

    Returns the k nearest found (float64 distances, indices; rows sorted) and a mask of the
    rows that are certified.
    """
    q_all = z.q if rows is None else z.q[rows]
    Zq_all = z.Zq if rows is None else z.Zq[rows]
    self_all = self_idx if rows is None or self_idx is None else self_idx[rows]
    # blocks of 512 rows (fewer, larger sparse products and selections; the grouped screen
    # measured ~10 % faster whole than in 64-row sub-blocks at n = 20000 on a Xeon)
    bs = block_size or min(512, block_rows(ref.n, c * (ref.X.shape[1] + 4), None))
    sub = min(64, bs)
    dists, inds, oks = [], [], []
    for start in range(0, len(q_all), bs):
        q = q_all[start : start + bs]
        Zq = Zq_all[start : start + bs]
        self_b = None if self_all is None else self_all[start : start + bs]
        bound = z.bound(Zq, q)
        if grouped.fits(ref.n, c) and c >= k:
            q_sq = row_sq(Zq.double())
            keys, cols, T = grouped.screen_groups(z.screen, Zq, self_b, q_sq, c, None)
            exact, cand, ok = grouped.grouped_knn(q, ref, keys, cols, T, q_sq, bound, k, c, self_b)
            oks.append(ok)
        else:
            parts = [
                z.screen.nearest(
                    Zq[i : i + sub].float(), None if self_b is None else self_b[i : i + sub], c
                )
                for i in range(0, Zq.shape[0], sub)
            ]
            vals, cand = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            exact = refine_progressively(q, ref, vals, cand, bound, k)
            exact, cand = sort_settled(q, ref, exclude_self(exact, cand, self_b), cand)
            if c >= ref.n - (self_b is not None):  # every other point is a candidate: exact
                oks.append(torch.ones(len(q), dtype=torch.bool, device=Zq.device))
            else:  # the k-th distance is measured up to the float64 expansion's error
                kth = exact[:, k - 1] ** 2
                kth = kth + expansion_error(q, kth)
                oks.append(kth < vals.max(1).values.double() - bound)
        dists.append(exact[:, :k])
        inds.append(cand[:, :k])
    if not dists:
        D, I = no_neighbors(k, ref.X.device)
        return D, I, torch.ones(0, dtype=torch.bool, device=ref.X.device)
    return torch.cat(dists), torch.cat(inds), torch.cat(oks)


_SECOND_CHANCE = 4  # uncertified rows are screened again with this many times the candidates


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

    Rows that ``c`` candidates cannot certify (their bound is loose: e.g. points far from the
    principal subspace) are screened again with ``min(4 c, n_other)`` candidates (``n_other``:
    the points each query may have as neighbours), another z-space pass plus the re-measured
    candidates, far less than brute force when ``c`` is small next to ``n``; only rows that
    still fail are searched by brute force, whose every row reads the whole set (and whose
    reduced-precision screen must first copy it). A pass whose candidates are all the other
    points is exact and needs no certificate.

    Returns
    -------
    distances, indices : tensors of shape (n_queries, k), float64 and int64, rows sorted.
    """
    c = chosen.n_candidates
    max_k = ref.n - (self_idx is not None)
    z = _ZSpace(Q, self_idx, ref, chosen)
    D, I, ok = _search(z, self_idx, ref, k, c, None, block_size)
    bad = torch.nonzero(~ok).flatten()
    c2 = min(_SECOND_CHANCE * c, max_k)
    if bad.numel() and c2 > c:
        D[bad], I[bad], ok2 = _search(z, self_idx, ref, k, c2, bad, block_size)
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "projected k-NN: %d of %d rows screened again with %d candidates, %d certified",
                bad.numel(), len(D), c2, int(ok2.sum()),
            )  # fmt: skip
        bad = bad[~ok2]
    if bad.numel():  # uncertified rows, all at once (each brute pass reads the whole set)
        logger.debug("projected k-NN: %d of %d rows searched by brute force", bad.numel(), len(D))
        sb = None if self_idx is None else self_idx[bad]
        dtype = auto_screen_dtype(ref.n, k, max_k, Q.is_cuda, ref.X.shape[1])
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
        q = z.q[start : start + bs]
        limit = radius**2 + z.bound(z.Zq[start : start + bs], q)
        rs, cs = [], []
        for i in range(0, len(q), sub):
            Zq32 = z.Zq[start + i : start + i + sub].float()
            self_b = None if self_idx is None else self_idx[start + i : start + i + sub]
            d2 = z.screen.shifted(Zq32, self_b)  # z-space squared distances minus |z_q|^2
            lim = (limit[i : i + sub] - (Zq32 * Zq32).sum(1).double()).float()
            r, c = torch.nonzero(d2 <= lim[:, None], as_tuple=True)
            rs.append(i + r)
            cs.append(c)
        r, c = torch.cat(rs), torch.cat(cs)
        crow = torch.zeros(len(q) + 1, dtype=torch.long, device=Q.device)
        crow[1:] = torch.cumsum(torch.bincount(r, minlength=len(q)), 0)
        dist = refine_pairs(q, ref, crow, c, radius=radius)
        keep = dist <= radius
        rows_all.append(start + r[keep])
        cols_all.append(c[keep])
        dist_all.append(dist[keep])
    if not rows_all:
        e = torch.empty(0, dtype=torch.long, device=Q.device)
        return e, e, torch.empty(0, dtype=torch.float64, device=Q.device)
    return torch.cat(rows_all), torch.cat(cols_all), torch.cat(dist_all)
