"""Exact k-NN and radius graphs: geomsae (brute force and projected screen) vs scikit-learn.

    .venv/bin/python benchmarks/bench_neighbors.py [--n 5000 20000] [--k 2 20 49]
        [--activations 20000] [--large-tokens 30] [--threads 1] [--seed 0]

Data sets (each searched by every method, same process, one after the other):

* ``gaussian``: the data of ``bench_dimension.py`` -- a 10-dimensional Gaussian rotated into
  R^576 plus isotropic noise 0.01 (low intrinsic dimension in a high ambient one);
* ``isotropic``: a standard Gaussian in R^576 (flat spectrum: the projection cannot help, and
  ``method="auto"`` should decline it at no extra cost);
* ``activations`` (with ``--activations N``): N deduplicated rows of SmolLM2-135M's
  ``blocks.6.hook_resid_post`` (the embedded model and corpus; harvested on first use and
  cached under ``~/.cache/geomsae``);
* with ``--large-tokens F``, each of these again with 0.2 % of its rows scaled by ``F`` about
  the mean (outlier tokens: the screens' error bounds must not loosen for every row).

For each: seconds for geomsae ``knn(X, k)`` with ``method="brute"`` and ``"auto"`` (the
projection when its planner predicts a gain), and for scikit-learn's
``NearestNeighbors(n_neighbors=k).kneighbors()`` (brute force for D = 576), the ratio
scikit-learn / geomsae auto, the plan chosen, and whether all three gave identical neighbours.
One radius-graph row per data set compares ``radius_neighbors`` (auto vs brute) with
scikit-learn's ``radius_neighbors_graph`` at the median 10th-neighbour distance.
``--threads N`` limits torch and BLAS to N threads for both libraries.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from geomsae.manifolds import gaussian_blobs
from geomsae.neighbors import knn, radius_neighbors
from geomsae.neighbors.brute import Reference
from geomsae.neighbors.plan import plan


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def datasets(args: argparse.Namespace) -> dict[str, np.ndarray]:
    out = {}
    for n in args.n:
        out[f"gaussian n={n}"] = gaussian_blobs(
            n, d=10, ambient_dim=576, n_blobs=1, spread=0.0, noise=0.01, random_state=args.seed
        ).X
        out[f"isotropic n={n}"] = np.random.default_rng(args.seed).normal(size=(n, 576))
    if args.activations:
        X = activations(args.activations, args.seed)
        out[f"activations n={len(X)}"] = X
    if args.large_tokens:
        for name, X in list(out.items()):
            out[f"{name}, 0.2 % x{args.large_tokens:g}"] = with_large_tokens(
                X, args.large_tokens, args.seed
            )
    return out


def with_large_tokens(X: np.ndarray, factor: float, seed: int = 0) -> np.ndarray:
    """A copy of ``X`` with 0.2 % of its rows (at least one) scaled by ``factor`` about the
    mean, as the outlier tokens of residual streams (10-100x the typical norm)."""
    Y = X.copy()
    rows = np.random.default_rng(seed).choice(len(X), max(1, len(X) // 500), replace=False)
    mu = X.mean(0)
    Y[rows] = mu + factor * (X[rows] - mu)
    return Y


def activations(n: int, seed: int = 0) -> np.ndarray:
    """``n`` deduplicated float64 rows of SmolLM2-135M's ``blocks.6.hook_resid_post`` on the
    embedded corpus (harvested on first use, cached under ``~/.cache/geomsae``)."""
    from geomsae.activations import harvest
    from geomsae.neighbors import deduplicate

    store = harvest(int(n * 1.2), layers=6)
    X, _ = deduplicate(store.sample(int(n * 1.2), seed=seed)[0].double())
    return X[:n].numpy()


def plan_note(X: np.ndarray, k: int) -> str:
    Xt = torch.from_numpy(X)
    p = plan(Xt, torch.arange(len(X)), Reference.of(Xt), k)
    if p is None:
        return "brute (declined)"
    return f"m={p.n_components}, c={p.n_candidates}, predicted {p.predicted_speedup:.1f}x"


def run(args: argparse.Namespace) -> None:
    from sklearn.neighbors import NearestNeighbors

    knn(np.random.default_rng(0).normal(size=(2500, 64)), 5)  # warm-up of both paths
    print("| data | k | geomsae brute s | geomsae auto s | scikit-learn s | sklearn / auto |"
          " plan | same neighbours |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for name, X in datasets(args).items():
        for k in args.k:
            t_b, b = _timed(lambda: knn(X, k, method="brute"))  # noqa: B023
            t_a, a = _timed(lambda: knn(X, k))  # noqa: B023
            t_s, (_, idx) = _timed(
                lambda: NearestNeighbors(n_neighbors=k).fit(X).kneighbors()  # noqa: B023
            )
            same = np.array_equal(a.indices, b.indices) and np.array_equal(a.indices, idx)
            print(
                f"| {name} | {k} | {t_b:.2f} | {t_a:.2f} | {t_s:.2f} | **{t_s / t_a:.1f}x** | "
                f"{plan_note(X, k)} | {'yes' if same else 'NO'} |",
                flush=True,
            )
        # a median distance is itself a pair's distance: widen it past rounding noise so that
        # every library agrees on which pairs are in
        r = float(np.median(knn(X, 10).distances[:, -1])) * (1 + 1e-9)
        t_b, gb = _timed(lambda: radius_neighbors(X, r, method="brute"))  # noqa: B023
        t_a, ga = _timed(lambda: radius_neighbors(X, r))  # noqa: B023
        t_s, gs = _timed(
            lambda: NearestNeighbors(radius=r).fit(X).radius_neighbors_graph(mode="distance")  # noqa: B023
        )
        same = (
            np.array_equal(ga.indptr, gb.indptr)
            and np.array_equal(ga.indices, gb.indices)
            # both are accurate to ~1e-16 of the squared norms: near pairs (distances far
            # below the norms) agree to an absolute, not a relative, tolerance
            and np.allclose(ga.data, gb.data, rtol=1e-10, atol=1e-11 * np.abs(X).sum(1).max())
            and ga.nnz == gs.nnz - len(X) * int(gs.diagonal().astype(bool).any())
        )
        print(
            f"| {name} | radius (median 10-NN) | {t_b:.2f} | {t_a:.2f} | {t_s:.2f} | "
            f"**{t_s / t_a:.1f}x** | {ga.nnz / len(X):.0f} pairs/row | {'yes' if same else 'NO'} |",
            flush=True,
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", nargs="+", type=int, default=[5000, 20000])
    p.add_argument("--k", nargs="+", type=int, default=[2, 20, 49])
    p.add_argument("--activations", type=int, default=0, help="also N real layer-6 activations")
    p.add_argument(
        "--large-tokens", type=float, default=0.0, help="also each set with 0.2 %% of rows x F"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        torch.set_num_threads(args.threads)
        threadpool_limits(args.threads)
        print(f"(torch and BLAS limited to {args.threads} thread(s) for both libraries)\n")
    run(args)


if __name__ == "__main__":
    main()
