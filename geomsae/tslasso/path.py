"""Lambda search of Tangent Space Lasso: bisection to exactly d functions, full path, two-stage.

* :func:`bisect_lambda` -- the paper's search: start at ``lambda_max`` (all coefficients 0), bisect
  on ``[0, lambda_max]`` until exactly ``d`` functions have a non-zero group (norm > ``zero_tol``);
  every probe is warm-started and screened from the nearest probe solved so far.
* :func:`regularization_path` -- solutions on a geometric grid from ``lambda_max`` down, with
  sequential warm starts and strong rules.
* :func:`two_stage_support` -- the paper's two-stage variant: among the functions active at the
  smallest ``lam`` probed, pick the ``d``-subset whose least-squares coefficients
  ``beta_i = X_i[:, S]^+ I_d`` have the smallest group-norm sum ``sum_j ||beta_.j.||_F``.
"""

from __future__ import annotations

import itertools
import logging
import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from geomsae.tslasso.problem import TSLassoProblem
from geomsae.tslasso.solver import GroupLassoSolution, SolverConfig, solve

logger = logging.getLogger(__name__)


class Bisection(NamedTuple):
    """Result of :func:`bisect_lambda`.

    Attributes
    ----------
    lam : float
        The probe whose solution has exactly ``d`` functions (or the fallback probe).
    support : Tensor of int, shape (d,)
        Selected functions, sorted. When no probe hit ``d``, the ``d`` largest groups at the
        smallest ``lam`` probed with more than ``d`` functions (or all found, if none had).
    found : bool
        Whether some probe selected exactly ``d`` functions.
    probes : list of GroupLassoSolution
        All solutions, in the order probed (``lambda_max`` first).
    """

    lam: float
    support: Tensor
    found: bool
    probes: list[GroupLassoSolution]


def _nearest(probes: list[GroupLassoSolution], lam: float) -> GroupLassoSolution | None:
    return min(probes, key=lambda s: abs(s.lam - lam)) if probes else None


def bisect_lambda(
    problem: TSLassoProblem,
    d: int,
    max_probes: int = 12,
    config: SolverConfig | None = None,
) -> Bisection:
    """Bisect ``lam`` until exactly ``d`` functions are selected.

    Parameters
    ----------
    problem : TSLassoProblem
    d : int
        Number of functions wanted (the intrinsic dimension).
    max_probes : int
        Most solves after ``lambda_max`` (the authors use 12 for synthetic data, 30 for molecules).
    config : SolverConfig, optional
    """
    if not 1 <= d <= problem.n_functions:
        raise ValueError(f"d must be in [1, n_functions={problem.n_functions}], got {d}")
    if max_probes < 1:
        raise ValueError(f"max_probes must be >= 1, got {max_probes}")
    cfg = config or SolverConfig()
    lam_max = problem.lambda_max()
    probes = [solve(problem, lam_max, config=cfg)]
    lo, hi = 0.0, lam_max
    for _ in range(max_probes):
        lam = 0.5 * (lo + hi)
        if lam <= 0 or hi - lo <= 1e-12 * lam_max:
            break
        sol = solve(problem, lam, warm=_nearest(probes, lam), config=cfg)
        probes.append(sol)
        k = sol.features.numel()
        logger.debug("probe lam=%.6g: %d selected (%d iterations)", lam, k, sol.n_iter)
        if k == d:
            return Bisection(lam, sol.features.sort().values, True, probes)
        if k < d:
            hi = lam
        else:
            lo = lam
    over = [s for s in probes if s.features.numel() > d]
    if over:
        best = min(over, key=lambda s: s.lam)
        top = torch.topk(best.norms, d).indices
        support = best.features[top].sort().values
    else:
        best = max(probes, key=lambda s: s.features.numel())
        support = best.features.sort().values
    logger.info("no probe selected exactly d=%d functions after %d probes", d, max_probes)
    return Bisection(best.lam, support, False, probes)


def lambda_grid(lambda_max: float, n_lambdas: int = 30, min_ratio: float = 0.05) -> np.ndarray:
    """Geometric grid of ``n_lambdas`` values from ``lambda_max`` down to ``min_ratio`` of it."""
    if n_lambdas < 1:
        raise ValueError(f"n_lambdas must be >= 1, got {n_lambdas}")
    if not 0 < min_ratio < 1:
        raise ValueError(f"min_ratio must be in (0, 1), got {min_ratio}")
    return lambda_max * np.geomspace(1.0, min_ratio, n_lambdas)


def regularization_path(
    problem: TSLassoProblem,
    lambdas: np.ndarray | list[float] | None = None,
    n_lambdas: int = 30,
    min_ratio: float = 0.05,
    config: SolverConfig | None = None,
    max_selected: int | None = None,
) -> list[GroupLassoSolution]:
    """Solutions along a decreasing ``lam`` grid (warm starts + sequential strong rules).

    Parameters
    ----------
    problem : TSLassoProblem
    lambdas : sequence of float, optional
        The grid (sorted decreasingly here); default :func:`lambda_grid`.
    n_lambdas, min_ratio
        Grid used when ``lambdas`` is None.
    config : SolverConfig, optional
    max_selected : int, optional
        Stop once more than this many functions are selected.
    """
    cfg = config or SolverConfig()
    if lambdas is None:
        lambdas = lambda_grid(problem.lambda_max(), n_lambdas, min_ratio)
    grid = sorted((float(x) for x in lambdas), reverse=True)
    if not grid or grid[-1] <= 0:
        raise ValueError("lambdas must be a non-empty sequence of positive values")
    out: list[GroupLassoSolution] = []
    warm = None
    for lam in grid:
        warm = solve(problem, lam, warm=warm, config=cfg)
        out.append(warm)
        if max_selected is not None and warm.features.numel() > max_selected:
            break
    return out


def subset_scores(problem: TSLassoProblem, subsets: Tensor) -> Tensor:
    """Least-squares group-norm sum of each ``d``-subset (lower is better).

    subsets : Tensor of int, shape (m, d) -> Tensor of shape (m,). For subset ``S``:
    ``beta_i = pinv(X_i[:, S])`` (the least-squares solution of ``X_i[:, S] beta_i = I_d``) and the
    score is ``sum_j ||beta_.j.||_F``. Singular blocks get their minimum-norm solution.
    """
    Xs = problem.X[:, :, subsets]  # (n, d, m, d)
    Xs = Xs.permute(2, 0, 1, 3)  # (m, n, d, d): X_i[:, S]
    beta = torch.linalg.pinv(Xs)  # (m, n, d, d): rows are the subset's functions
    return torch.linalg.vector_norm(beta, dim=(1, 3)).sum(dim=1)


def two_stage_support(
    problem: TSLassoProblem,
    candidates: Tensor,
    d: int,
    max_subsets: int = 200_000,
    batch: int = 4096,
) -> Tensor:
    """Brute-force the best ``d``-subset of ``candidates`` by :func:`subset_scores`.

    Parameters
    ----------
    problem : TSLassoProblem
    candidates : Tensor of int
        Functions to choose from (the active set at the smallest ``lam`` probed).
    d : int
    max_subsets : int
        Refuse (ValueError) when ``C(len(candidates), d)`` exceeds this.
    batch : int
        Most subsets scored at once (fewer when ``n d^2`` is large).

    Returns
    -------
    Tensor of int, shape (d,), sorted.
    """
    cand = torch.as_tensor(candidates, dtype=torch.long, device=problem.device).unique()
    if cand.numel() < d:
        raise ValueError(f"need at least d={d} candidate functions, got {cand.numel()}")
    total = math.comb(cand.numel(), d)
    if total > max_subsets:
        raise ValueError(
            f"{total} subsets of {cand.numel()} candidates exceed max_subsets={max_subsets}; "
            "raise max_subsets or probe a larger lam so fewer functions are active"
        )
    batch = max(1, min(batch, int(2e7 // (problem.n_samples * d * d))))  # bound memory
    best_score, best = math.inf, None
    combos = itertools.combinations(range(cand.numel()), d)
    while True:
        chunk = list(itertools.islice(combos, batch))
        if not chunk:
            break
        subsets = cand[torch.tensor(chunk, device=problem.device)]
        scores = subset_scores(problem, subsets)
        k = int(torch.argmin(scores))
        if float(scores[k]) < best_score:
            best_score, best = float(scores[k]), subsets[k]
    return best.sort().values
