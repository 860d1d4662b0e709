"""Speed of the TSLasso lambda search: screened working-set FISTA vs unscreened FISTA.

    python benchmarks/bench_tslasso.py                 # p = 1k, 4k, 16k (a few minutes)
    python benchmarks/bench_tslasso.py --p 1000 4000   # a subset

Problem: n = 500 points on the flat 10-torus (10 circles, radius 1) in R^20, padded to
``--ambient`` dimensions and randomly rotated; d = 10. Dictionary of p functions: the 10 angles
(the true support), half of the rest distractors ``x_k + alpha sin(pi theta_j)`` and half random
linear functions ``w^T x``. Gradients are projected on the exact tangent spaces and
gamma-normalised (:func:`geomsae.tslasso.problem_from_projected`), float32.

Measured per p, in the same run: the bisection to exactly d functions (the lambda path TSLasso
runs, <= ``--probes`` solves after lambda_max) with

* ``screened``  -- geomsae's solver: strong rules + working sets + KKT checks (default), and
* ``baseline``  -- the montlake-style solver: the same FISTA (backtracking, warm starts) on all p
  functions at every iteration, no screening (``SolverConfig(screening=False)``).

Both must select the same support; the table prints seconds, probes and the ratio.
"""

from __future__ import annotations

import argparse
import signal
import time

import numpy as np
import torch

from geomsae.tslasso import SolverConfig, bisect_lambda, kkt_violation, problem_from_projected


def torus_problem(
    n: int,
    p: int,
    d: int = 10,
    ambient: int = 64,
    alpha: float = 1.0,
    tangent_noise: float = 0.2,
    seed: int = 0,
):
    """Projected, normalised gradients of the 10-torus dictionary; returns (problem, support).

    The tangent bases are the exact ones perturbed by Gaussian noise of size ``tangent_noise``
    and re-orthonormalised (like estimated tangents), so distractors compete with the truth.
    """
    rng = np.random.default_rng(seed)
    theta = 2 * np.pi * rng.random((n, d))
    Q, _ = np.linalg.qr(rng.standard_normal((ambient, ambient)))
    E = Q[:, : 2 * d].T  # (2d, ambient): orthonormal rows
    # circle k: unit tangent (-sin, cos) in the plane (2k, 2k+1) = grad theta_k (radius 1)
    tang0 = np.zeros((n, 2 * d, d))
    k = np.arange(d)
    tang0[:, 2 * k, k] = -np.sin(theta)
    tang0[:, 2 * k + 1, k] = np.cos(theta)
    tang = np.einsum("nkd,kb->nbd", tang0, E)  # (n, ambient, d), orthonormal columns
    bases = np.linalg.qr(tang + tangent_noise * rng.standard_normal(tang.shape))[0]
    n_mix = (p - d) // 2
    n_lin = p - d - n_mix
    # coordinate functions theta_k: gradient t_k, ambient norm 1
    proj = [np.einsum("nbd,nbk->nkd", bases, tang)]
    norms = [np.ones((n, d))]
    # x_a + alpha sin(pi theta_j): gradient e_a + c t_j with c = alpha pi cos(pi theta_j)
    a = rng.integers(0, ambient, n_mix)
    j = rng.integers(0, d, n_mix)
    c = alpha * np.pi * np.cos(np.pi * theta[:, j])  # (n, n_mix)
    mix = bases[:, a, :] + c[:, :, None] * proj[0][:, j, :]  # T^T e_a + c T^T t_j
    proj.append(mix)
    norms.append(np.sqrt(1 + 2 * c * tang[:, a, j] + c**2))
    # random linear functions w^T x: gradient w
    W = rng.standard_normal((n_lin, ambient))
    proj.append(np.einsum("nbd,pb->npd", bases, W))
    norms.append(np.broadcast_to(np.linalg.norm(W, axis=1), (n, n_lin)))
    projected = torch.as_tensor(np.concatenate(proj, axis=1), dtype=torch.float32)
    ambient_norms = torch.as_tensor(np.concatenate(norms, axis=1), dtype=torch.float32)
    return problem_from_projected(projected, ambient_norms), list(range(d))


class _OverBudget(Exception):
    pass


def _alarm(signum, frame):
    raise _OverBudget


def timed_bisection(problem, args, screening: bool, budget: float | None):
    """(seconds, Bisection or None if over budget) of the lambda search with one solver."""
    cfg = SolverConfig(tol=args.tol, screening=screening)
    if budget:
        signal.signal(signal.SIGALRM, _alarm)
        signal.setitimer(signal.ITIMER_REAL, budget)
    t0 = time.perf_counter()
    try:
        bis = bisect_lambda(problem, args.d, max_probes=args.probes, config=cfg)
    except _OverBudget:
        bis = None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return time.perf_counter() - t0, bis


def run(p: int, args) -> dict:
    problem, truth = torus_problem(
        args.n, p, args.d, args.ambient, args.alpha, args.tangent_noise, args.seed
    )
    row: dict = {"p": p, "lambda_max": problem.lambda_max()}
    sec, bis = timed_bisection(problem, args, screening=True, budget=None)
    final = next(s for s in bis.probes if s.lam == bis.lam)
    row.update(
        screened_s=sec,
        probes=len(bis.probes) - 1,
        screened_iters=sum(s.n_iter for s in bis.probes),
        kkt_all_p=kkt_violation(problem, final.features, final.coef, final.lam),
        found_d=bis.found,
        true_support=bis.support.tolist() == truth,
    )
    base_sec, base = timed_bisection(problem, args, screening=False, budget=args.budget)
    if base is None:
        row.update(baseline_s=f">{args.budget:.0f}", baseline_iters="-", same_support="-")
        row["ratio"] = f">={args.budget / sec:.1f}"
    else:
        row.update(
            baseline_s=base_sec,
            baseline_iters=sum(s.n_iter for s in base.probes),
            same_support=base.support.tolist() == bis.support.tolist(),
            ratio=base_sec / sec,
        )
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--p", type=int, nargs="+", default=[1000, 4000, 16000])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--d", type=int, default=10)
    ap.add_argument("--ambient", type=int, default=64)
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--tangent-noise", type=float, default=0.2)
    ap.add_argument("--probes", type=int, default=20)
    ap.add_argument("--tol", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--budget", type=float, default=600.0, help="seconds allowed to the baseline per p"
    )
    ap.add_argument(
        "--threads", type=int, default=0, help="torch threads (0: torch's default); same for both"
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; n={args.n}, d={args.d}, "
        f"ambient={args.ambient}, tangent noise {args.tangent_noise}, float32, tol {args.tol}"
    )
    rows = []
    for p in args.p:
        rows.append(run(p, args))
        r = rows[-1]
        print(
            f"p={p}: " + ", ".join(f"{k} {_fmt(v)}" for k, v in r.items() if k != "p"), flush=True
        )
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(_fmt(r[k]) for k in keys) + " |")


def _fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


if __name__ == "__main__":
    main()
