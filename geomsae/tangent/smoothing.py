"""Smoothing tangent spaces on the Grassmann manifold (Karcher means over neighbourhoods)."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from geomsae.grassmann import karcher_mean
from geomsae.tangent.pca import DEFAULT_MEMORY_BYTES, TangentSpaces

__all__ = ["smooth_tangent_spaces"]


def smooth_tangent_spaces(
    ts: TangentSpaces,
    *,
    max_iter: int = 30,
    tol: float = 1e-9,
    memory_bytes: int = DEFAULT_MEMORY_BYTES,
) -> TangentSpaces:
    """Replace each tangent space by the weighted Karcher mean of its neighbours' ones.

    The mean at query ``i`` is taken over the tangent spaces of the points of its neighbourhood
    (``ts.neighbor_indices``) that are themselves queries of ``ts``, with the weights
    ``ts.weights``; neighbours without a tangent space are skipped. Averaging on ``Gr(D, d)``
    reduces the noise of the estimates at the cost of a bias of order the curvature times the
    neighbourhood radius (see :func:`geomsae.grassmann.karcher_mean`).

    Parameters
    ----------
    ts : TangentSpaces
        From :func:`tangent_spaces` (numpy or torch; the averaging runs in numpy on CPU).
    max_iter, tol
        Stopping rule of :func:`geomsae.grassmann.karcher_mean`.
    memory_bytes : int
        Work-space budget per block of query points (about 8 copies of the members are live).

    Returns
    -------
    TangentSpaces
        A copy with ``bases`` replaced (all other fields unchanged).
    """
    like_torch = isinstance(ts.bases, torch.Tensor)
    B = np.asarray(ts.bases.detach().cpu() if like_torch else ts.bases, dtype=float)
    q = np.asarray(ts.indices.cpu() if like_torch else ts.indices).astype(np.int64)
    nbr = np.asarray(ts.neighbor_indices.cpu() if like_torch else ts.neighbor_indices)
    w = np.asarray(ts.weights.cpu() if like_torch else ts.weights, dtype=float)
    m = q.size
    if m == 0:
        return ts
    row = np.full(max(int(q.max()), int(nbr.max())) + 1, -1, dtype=np.int64)
    row[q] = np.arange(m)
    member = np.where(nbr >= 0, row[np.clip(nbr, 0, None)], -1)  # (m, k) rows of B, or -1
    w = np.where(member >= 0, w, 0.0)
    member = np.where(member >= 0, member, np.arange(m)[:, None])  # placeholder, weight 0
    out = np.empty_like(B)
    block_size = max(1, memory_bytes // (8 * 8 * member.shape[1] * B.shape[1] * B.shape[2]))
    for s in range(0, m, block_size):
        res = karcher_mean(
            B[member[s : s + block_size]], w[s : s + block_size], max_iter=max_iter, tol=tol,
            check=False,
        )  # fmt: skip
        out[s : s + block_size] = res.mean
    bases = torch.from_numpy(out).to(ts.bases.device) if like_torch else out
    return dataclasses.replace(ts, bases=bases)
