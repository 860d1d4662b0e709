"""Tangent-space throughput: geomsae's batched local PCA vs a per-point numpy loop.

    .venv/bin/python benchmarks/bench_tangent.py [--n 1000] [--dim 576] [--d 3]
        [--n-neighbors 40] [--repeats 3] [--seed 0] [--threads N]

Same points (a noisy ``d``-sphere rotated into ``R^dim``, the size of SmolLM2's residual stream by
default), same k-NN neighbourhoods (itself included, Gaussian weights), same run. Three ways to
get the tangent bases:

* **per-point loop** (the named baseline): for each point, ``numpy.linalg.svd`` of its weighted,
  centred neighbourhood, the cheapest form of the per-point loop of montlake / megaman's
  ``estimate_radius`` (which take ``eigh`` of the ``D x D`` covariance, slower still);
* **batched SVD**: ``torch.linalg.svd`` of the stacked weighted neighbourhoods (an ablation of the
  solver choice);
* **geomsae**: :func:`geomsae.tangent.weighted_local_pca` (batched ``eigh`` of the smaller Gram
  matrix).

Prints seconds per call (best of ``--repeats``), the ratio of each to the per-point loop, and the
largest principal angle between geomsae's bases and the baseline's (they must agree).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from geomsae.grassmann import principal_angles
from geomsae.manifolds import sphere
from geomsae.neighbors import knn
from geomsae.tangent import weighted_local_pca


def per_point_loop(X: np.ndarray, nbr: np.ndarray, w: np.ndarray, d: int) -> np.ndarray:
    """One small SVD per point (cheaper than montlake's eigh of the D x D covariance)."""
    out = np.empty((nbr.shape[0], X.shape[1], d))
    for i in range(nbr.shape[0]):
        P, wi = X[nbr[i]], w[i] / w[i].sum()
        Z = np.sqrt(wi)[:, None] * (P - wi @ P)
        out[i] = np.linalg.svd(Z, full_matrices=False)[2][:d].T
    return out


def batched_svd(X: np.ndarray, nbr: np.ndarray, w: np.ndarray, d: int) -> np.ndarray:
    Xt, W = torch.from_numpy(X), torch.from_numpy(w / w.sum(1, keepdims=True))
    P = Xt[torch.from_numpy(nbr)]
    mu = torch.einsum("bk,bkd->bd", W, P)
    Z = W.sqrt()[:, :, None] * (P - mu[:, None])
    return torch.linalg.svd(Z, full_matrices=False)[2][:, :d].transpose(1, 2).numpy()


def best_time(fn, repeats: int) -> tuple[float, np.ndarray]:
    best, out = np.inf, None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=1000)
    p.add_argument("--dim", type=int, default=576)
    p.add_argument("--d", type=int, default=3)
    p.add_argument("--n-neighbors", type=int, default=40)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = p.parse_args()
    if a.threads is not None:  # torch and numpy's BLAS alike
        torch.set_num_threads(a.threads)
        threadpool_limits(a.threads)
    m = sphere(a.n, a.d, ambient_dim=a.dim, noise=0.01, random_state=a.seed)
    nb = knn(m.X, a.n_neighbors)
    nbr = np.c_[np.arange(a.n), nb.indices]
    eps = float(np.median(nb.distances[:, -1])) / 2
    w = np.exp(-((np.c_[np.zeros(a.n), nb.distances] / eps) ** 2))
    print(
        f"n={a.n} D={a.dim} d={a.d} k={a.n_neighbors + 1} torch threads={torch.get_num_threads()}"
    )
    t_loop, ref = best_time(lambda: per_point_loop(m.X, nbr, w, a.d), a.repeats)
    t_svd, svd = best_time(lambda: batched_svd(m.X, nbr, w, a.d), a.repeats)
    t_ours, ts = best_time(lambda: weighted_local_pca(m.X, nbr, w, a.d), a.repeats)
    agree = np.degrees(principal_angles(ts.bases, ref).max())
    agree_svd = np.degrees(principal_angles(svd, ref).max())
    print(f"{'method':<22}{'seconds':>10}{'speed-up vs loop':>20}")
    for name, t in [
        ("per-point loop", t_loop),
        ("batched SVD", t_svd),
        ("geomsae weighted_local_pca", t_ours),
    ]:
        print(f"{name:<22}{t:>10.3f}{t_loop / t:>19.1f}x")
    print(f"max angle geomsae vs loop: {agree:.2e} deg; batched SVD vs loop: {agree_svd:.2e} deg")
    print(f"ratio geomsae / per-point loop (speed-up): {t_loop / t_ours:.1f}x")


if __name__ == "__main__":
    main()
