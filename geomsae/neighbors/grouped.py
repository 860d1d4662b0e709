"""Candidates by groups: select column groups by their minima, measure only what can matter.

A screen gives, for each query row, lower bounds ``l_1 .. l_n`` of its squared distances. The
columns are split into ``G = n // 16`` groups of 16 strided columns (group ``j`` holds columns
``j, j + G, ..., j + 15 G``; the last ``n - 16 G`` columns are always kept). :func:`group_screen`
keeps the ``c`` groups with the smallest minima (15 vectorised element-wise minima of
contiguous slabs, then a top-``c`` over the ``G`` minima) and returns all their columns, with
``T``, the largest kept minimum: every column not returned lies in a group whose minimum is
``>= T``, so its bound is ``>= T``.

:func:`refine_grouped` then measures exactly the ``k`` kept columns of smallest bound among the
group minima (and the always-kept tail); the largest of those distances, ``u``, bounds the
``k``-th neighbour's distance from above, so only the other kept columns whose bound (less its
rounding bound) is ``<= u^2`` are measured too. The ``k`` nearest measured are the ``k`` nearest
overall when ``d_k^2 < T - bound`` (the row's certificate). This avoids the top-``c`` selection
over the ``16 c`` kept columns that :func:`geomsae.neighbors.brute.smallest` needs -- a
``torch.topk`` at ~9 ns per entry on CPU -- and certifies at least as often (``T`` is at least the
``c``-th smallest bound). Both the projected screen (:mod:`geomsae.neighbors.projected`) and
the reduced-precision brute-force screen (:func:`geomsae.neighbors.brute.brute_knn`) use it
wherever ``n >= 32 c``.
"""

from __future__ import annotations

import math

import torch

from geomsae.neighbors.brute import (
    Queries,
    Reference,
    Screen,
    exclude_self,
    expansion_error,
    refine,
    refine_pairs,
    smallest,
    sort_settled,
)

__all__ = ["GROUP", "fits", "group_screen", "grouped_knn", "refine_grouped", "screen_groups"]

GROUP = 16
"""Columns per group."""


def fits(n: int, c: int) -> bool:
    """Whether ``n`` columns make at least ``2 c`` groups (else a plain top-``c`` is as cheap)."""
    return 2 * GROUP * c <= n


def group_screen(keys: torch.Tensor, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The columns of the ``c`` groups with the smallest minima, and the tail columns.

    Parameters
    ----------
    keys : tensor of shape (b, n), contiguous
        Screened lower bounds (up to a per-row constant); needs ``fits(n, c)``.
    c : int

    Returns
    -------
    vals : tensor of shape (b, W), ``keys`` dtype
        The kept keys, ``W = 16 c + (n - 16 G)``: group by group (16 contiguous entries each),
        then the tail.
    cols : int64 tensor of shape (b, W)
        Their columns.
    T : tensor of shape (b,)
        The largest kept group minimum: every column not kept has a key ``>= T``.
    """
    b, n = keys.shape
    G = n // GROUP
    slabs = keys.as_strided((b, GROUP, G), (n, G, 1))
    mins, gi = smallest(slabs.amin(1), c)
    cols = (gi[:, :, None] + G * torch.arange(GROUP, device=keys.device)).reshape(b, c * GROUP)
    if n > GROUP * G:
        tail = torch.arange(GROUP * G, n, device=keys.device).expand(b, n - GROUP * G)
        cols = torch.cat([cols, tail], 1)
    return keys.gather(1, cols), cols, mins.amax(1)


_SUB_BYTES = 2**20
"""Keys per sub-block of :func:`screen_groups` on CPU (~1 MiB): the passes over them (bias,
pair bounds, group minima, gather) then stay in a core's L2 cache."""


def screen_groups(
    screen: Screen,
    Q: torch.Tensor,
    self_b: torch.Tensor | None,
    q_sq: torch.Tensor,
    c: int,
    sub_bytes: int | None = _SUB_BYTES,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`group_screen` of ``screen``'s keys for the rows of ``Q``, by sub-blocks.

    On CPU the keys are formed and grouped ``sub_bytes`` of keys at a time (None: the whole
    block); the matrix product is still one product for the whole block (small products run
    the bfloat16 units far below their peak). ``q_sq``: the rows' float64 squared norms.
    The brute-force screen gains ~10 % from 1 MiB sub-blocks on 20000 activations
    (D = 576); the projected screen's narrow product is ~10 % faster whole (512 rows).
    """
    b, n = Q.shape[0], screen.Rs.shape[0]
    whole = Q.is_cuda or sub_bytes is None
    sub = b if whole else max(8, min(b, sub_bytes // (4 * max(n, 1))))
    raw = screen.product(Q) if sub < b else None
    q_err = screen.query_errors(Q) if screen.needs_query_errors else None
    parts = []
    for i in range(0, b, sub):
        rows = slice(i, i + sub)
        keys = screen.shifted(
            Q[rows],
            None if self_b is None else self_b[rows],
            q_sq[rows],
            None if raw is None else raw[rows],
            None if q_err is None else q_err[rows],
        )
        parts.append(group_screen(keys, c))
    return tuple(torch.cat([p[j] for p in parts]) for j in range(3))


def refine_grouped(
    q: Queries,
    ref: Reference,
    lb: torch.Tensor,
    cols: torch.Tensor,
    bound: torch.Tensor,
    k: int,
    c: int,
    self_b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest of the kept columns, measured exactly (rows sorted, ties by index).

    ``lb`` (float64, shape (b, W)) are the kept columns' lower bounds in :func:`group_screen`'s
    layout (``c`` groups of 16, then the tail), ``bound`` the per-row rounding bound of those.
    Measures the ``k`` smallest group minima and tail entries, then every other kept column
    whose bound could still beat the ``k``-th distance found. ``self_b[i]`` (if given) is
    never a neighbour of row ``i``.

    Returns
    -------
    distances, indices : tensors of shape (b, k), float64 and int64
    """
    b, W = lb.shape
    dev = lb.device
    low = lb - bound[:, None]
    gmin, gpos = low[:, : c * GROUP].view(b, c, GROUP).min(2)
    first = gpos + GROUP * torch.arange(c, device=dev)  # positions of the group minima
    if W > c * GROUP:
        first = torch.cat([first, torch.arange(c * GROUP, W, device=dev).expand(b, -1)], 1)
        gmin = torch.cat([gmin, low[:, c * GROUP :]], 1)
    pos = first.gather(1, smallest(gmin, k)[1])
    head_cols = cols.gather(1, pos)
    head = exclude_self(refine(q, ref, head_cols), head_cols, self_b)
    u2 = head.amax(1) ** 2
    u2 = u2 + expansion_error(q, u2)  # the measured k-th plus its error
    todo = low <= u2[:, None]
    todo.scatter_(1, pos, False)
    rows, at = torch.nonzero(todo, as_tuple=True)
    per_row = torch.bincount(rows, minlength=b)
    extra = int(per_row.max()) if b else 0
    dist = torch.full((b, k + extra), math.inf, dtype=torch.float64, device=dev)
    idx = torch.full((b, k + extra), ref.n, dtype=torch.long, device=dev)  # sorts after all
    dist[:, :k], idx[:, :k] = head, head_cols
    if rows.numel():
        crow = torch.zeros(b + 1, dtype=torch.long, device=dev)
        crow[1:] = torch.cumsum(per_row, 0)
        more = cols[rows, at]
        slot = k + torch.arange(rows.numel(), device=dev) - crow[rows]
        dist[rows, slot] = refine_pairs(q, ref, crow, more)
        idx[rows, slot] = more
        dist = exclude_self(dist, idx, self_b)
    dist, idx = sort_settled(q, ref, dist, idx)
    return dist[:, :k], idx[:, :k]


def grouped_knn(
    q: Queries,
    ref: Reference,
    keys: torch.Tensor,
    cols: torch.Tensor,
    T: torch.Tensor,
    q_sq: torch.Tensor,
    bound: torch.Tensor,
    k: int,
    c: int,
    self_b: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`refine_grouped` on :func:`group_screen`'s output, and each row's certificate.

    ``keys`` and ``T`` are shifted keys (``key + q_sq`` is the lower bound, ``q_sq`` the
    float64 squared norms of the screened queries); a row is certified when its k-th squared
    distance plus its float64 error (:func:`geomsae.neighbors.brute.expansion_error`) is below
    ``T + q_sq - bound``.

    Returns
    -------
    distances, indices : tensors of shape (b, k), float64 and int64, rows sorted
    certified : bool tensor of shape (b,)
    """
    lb = keys.double() + q_sq[:, None]
    exact, cand = refine_grouped(q, ref, lb, cols, bound, k, c, self_b)
    kth = exact[:, k - 1] ** 2
    kth = kth + expansion_error(q, kth)  # the k-th, up to its error
    return exact, cand, kth < T.double() + q_sq - bound
