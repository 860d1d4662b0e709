"""The public exact k-NN search: validation, then brute force or the projected screen."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import numpy as np
import torch

from geomsae.neighbors.brute import (
    FLOAT32_SAFE_SQ,
    Reference,
    auto_screen_dtype,
    brute_knn,
    power_of_two_scale,
    reduced_precision_safe,
    row_sq,
)
from geomsae.neighbors.checks import (
    as_indices,
    as_tensor,
    check_block_size,
    check_points,
    check_positive_int,
)
from geomsae.neighbors.plan import plan
from geomsae.neighbors.precision import ieee_float32
from geomsae.neighbors.projected import projected_knn

logger = logging.getLogger(__name__)

__all__ = ["METHODS", "Neighbors", "knn"]

METHODS = ("auto", "brute", "projected")
"""Search methods of :func:`knn`; all return the same neighbours."""


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


@ieee_float32()
def knn(
    X: Any,
    n_neighbors: int,
    *,
    Y: Any | None = None,
    block_size: int | None = None,
    query_indices: Any | None = None,
    screen_dtype: torch.dtype | None = None,
    method: str = "auto",
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
        Brute force only; every choice gives the same neighbours and float64 distances (to a few
        ulp).
        None (default) picks float32 on GPUs; on CPU, when the reference set is large next to the
        number of candidates (``n_reference >= 40 * (k + max(4, k // 4))``), bfloat16 if the CPU
        multiplies it natively (AVX-512 BF16 or AMX), ``n_features >= 64`` and ``k <= 32`` or
        ``n_reference >= 32 (2 k + 8)``, else float32; otherwise float64. ``torch.float64``: one
        float64 matrix product per block, distances from the (centred) expansion with near-duplicate
        pairs re-measured directly. ``torch.float32`` / ``torch.bfloat16``: a cheaper product whose
        rounding bound is subtracted pair by pair, keeping ``max(4, k // 4)`` / ``k + 8`` extra
        candidates, re-measured in float64; each row is *certified* (no point outside the candidates
        can be nearer) and rows that cannot be are screened again in the next precision (bfloat16,
        float32, float64).
    method : {"auto", "brute", "projected"}
        All three return the same neighbours (distances agree to a few ulp). ``"brute"``: compare
        each query with every point in ``n_features`` dimensions. ``"projected"``: screen candidates
        with a certified lower bound in ``m + 1`` dimensions (the top ``m`` principal directions
        plus the residual norm; see :mod:`geomsae.neighbors.projected`), re-measure them exactly,
        screen uncertified rows again with 4x the candidates (at most all other points), then brute
        force. ``"auto"`` (default) plans the projection on a sample of queries on CPU when
        ``n_reference >= 2000`` and ``n_features >= 32``, and uses it when it predicts it at least
        1.5x cheaper; otherwise brute force (always on GPUs, where the full product is cheap).
    device : str or torch.device, optional
        Where to compute; default the input's device. Outputs follow the input's type and device.

    Returns
    -------
    Neighbors
        ``distances`` (float64) and ``indices`` (int64), each of shape (n_queries, n_neighbors),
        rows sorted ascending. The neighbours are exact (ties by index). A distance comes from the
        float64 expansion ``|q|^2 + |r|^2 - 2 q.r`` on centred data (its square within ~``D eps
        (|q|^2 + |r|^2)`` of the exact one, ``D = n_features``; measured 3e-15 relative at D = 5)
        or, for near-duplicates and near-ties, is measured directly. A radius taken from these
        distances for :func:`radius_neighbors` (which decides its boundary on direct measurements)
        should be widened by that much, e.g. ``r * (1 + 1e-12)``, to be sure the neighbour lies
        within it.
    """
    like_torch = isinstance(X, torch.Tensor)
    out_device = X.device if like_torch else None
    X = check_points(X, min_samples=1)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}")
    Xt = as_tensor(X, device).detach()  # the search is not differentiable
    if Y is None:
        R = Xt
        n_ref = R.shape[0]
        if query_indices is None:
            qi = torch.arange(n_ref, device=R.device)
            Q = Xt
        else:
            qi = as_indices(query_indices, n_ref, name="query_indices", device=R.device)
            Q = Xt[qi]
        max_k = n_ref - 1
    else:
        if query_indices is not None:
            raise ValueError("query_indices is only meaningful with Y=None")
        R = as_tensor(check_points(Y, name="Y", min_samples=1), Xt.device).detach()
        if R.shape[1] != Xt.shape[1]:
            raise ValueError(f"X has {Xt.shape[1]} features but Y has {R.shape[1]}")
        Q, qi, n_ref = Xt, None, R.shape[0]
        max_k = n_ref
    check_block_size(block_size)
    check_positive_int(n_neighbors=n_neighbors)
    if n_neighbors > max_k:
        raise ValueError(
            f"n_neighbors={n_neighbors} but only {max_k} other points are available; "
            f"use n_neighbors <= {max_k} or more points"
        )
    k = int(n_neighbors)
    if screen_dtype is None:
        screen_dtype = auto_screen_dtype(n_ref, k, max_k, Xt.is_cuda, Xt.shape[1])
    if screen_dtype not in (torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(
            "screen_dtype must be torch.bfloat16, torch.float32 or torch.float64; "
            f"got {screen_dtype}"
        )
    ref = Reference.of(R)
    centred = [ref.X] if Y is None else [ref.X, Q - ref.mu]
    scale = power_of_two_scale(*centred, sq=[ref.sq, *(row_sq(t) for t in centred[1:])])
    del centred
    if scale != 1.0:  # far from 1: out of float32's (or float64's) exponent range
        logger.debug("knn: data scaled by 2^%d (exact)", round(np.log2(scale)))
        ref = ref.scaled(scale)  # the queries stay as given: Reference.queries scales them
    if not reduced_precision_safe(ref, None if Y is None else Q):
        # norms beyond ~1e15: reduced-precision keys could overflow; float64 brute force only
        if method == "projected" or screen_dtype != torch.float64:
            logger.info("knn: squared norms above %.0e; float64 brute force", FLOAT32_SAFE_SQ)
        screen_dtype, method = torch.float64, "brute"
    chosen = None
    if (method == "projected" and Q.shape[0] > 0) or (
        method == "auto"
        and not Xt.is_cuda
        and n_ref >= 2000
        and Xt.shape[1] >= 32
        and Q.shape[0] >= 256
    ):
        chosen = plan(Q, qi, ref, k, force=method == "projected")
    if chosen is not None:
        D, I = projected_knn(Q, qi, ref, k, chosen, block_size=block_size)
    else:
        D, I = brute_knn(Q, qi, ref, k, screen_dtype=screen_dtype, block_size=block_size)
    if scale != 1.0:
        D = D / scale  # a power of two: exact
    if like_torch:
        D, I = D.to(out_device), I.to(out_device)
        return Neighbors(D, I)
    return Neighbors(D.cpu().numpy(), I.cpu().numpy())
