"""Group-lasso solvers for :class:`~geomsae.tslasso.problem.TSLassoProblem`.

* :func:`fista` -- accelerated proximal gradient (Beck & Teboulle 2009) with backtracking and
  gradient-based adaptive restart (O'Donoghue & Candes 2015) on a block of functions.
* :func:`solve` -- the working-set driver: screen functions with the sequential strong rule
  (Tibshirani et al. 2012) from a warm start, solve on the working set with :func:`fista`, check
  the KKT conditions on *all* functions and add violators until none is left. Each check costs one
  pass over ``X``; the solver itself only ever touches the working set, so thousands of functions
  are cheap. ``SolverConfig(screening=False)`` runs FISTA on all functions (the montlake-style
  baseline).
* :func:`ista` -- plain proximal gradient with a fixed step, the slow reference used by the tests.

``lam`` is the per-group weight (see :mod:`geomsae.tslasso.problem` for the convention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from geomsae.tslasso.problem import TSLassoProblem, group_norms


@dataclass(frozen=True)
class SolverConfig:
    """Stopping rules and screening of the group-lasso solver (one place for all of them)."""

    tol: float = 1e-7
    """FISTA stops when ``||beta_k+1 - beta_k||_F <= tol * max(||beta_k+1||_F, 1)``."""
    max_iter: int = 5000
    """Most FISTA iterations per working set."""
    screening: bool = True
    """Strong-rule screening + working sets with KKT checks; False solves on all functions."""
    kkt_tol: float = 1e-3
    """A function outside the working set violates KKT when its correlation > lam (1 + kkt_tol)."""
    max_working_set: int = 0
    """Cap on the initial working set (0: ``max(64, 8 d)``); grows as KKT checks require."""
    zero_tol: float = 1e-8
    """A function is selected when its coefficient group norm exceeds this."""

    def __post_init__(self) -> None:
        if not self.tol > 0:
            raise ValueError(f"tol must be > 0, got {self.tol}")
        if self.max_iter < 1:
            raise ValueError(f"max_iter must be >= 1, got {self.max_iter}")
        if self.kkt_tol < 0:
            raise ValueError(f"kkt_tol must be >= 0, got {self.kkt_tol}")
        if self.max_working_set < 0:
            raise ValueError(f"max_working_set must be >= 0, got {self.max_working_set}")


class FistaResult(NamedTuple):
    """Output of :func:`fista`: coefficients (n_samples, n_selected, d), iterations, ..."""

    coef: Tensor
    n_iter: int
    converged: bool
    lipschitz: float


class GroupLassoSolution(NamedTuple):
    """A solution at one ``lam``, stored sparsely.

    Attributes
    ----------
    lam : float
        Per-group penalty weight.
    features : Tensor of int, shape (k,)
        Functions with a non-zero coefficient group (sorted).
    coef : Tensor of shape (n_samples, k, d_intrinsic)
        Their coefficients ``beta_{i j .}``.
    correlations : Tensor of shape (n_functions,)
        ``||(X_i[:, j]^T R_i)_i||_F`` at the solution (``<= lam`` off the support at optimum).
    n_iter : int
        FISTA iterations, summed over working sets.
    n_kkt_checks : int
        Passes over all functions (KKT checks) made.
    converged : bool
        Every FISTA run met ``tol`` and the final KKT check passed.
    """

    lam: float
    features: Tensor
    coef: Tensor
    correlations: Tensor
    n_iter: int
    n_kkt_checks: int
    converged: bool

    @property
    def norms(self) -> Tensor:
        """Group norms of :attr:`features`, shape (k,)."""
        return group_norms(self.coef)

    def dense_norms(self, n_functions: int) -> Tensor:
        """Group norms of all functions (zeros off the support), shape (n_functions,)."""
        out = torch.zeros(n_functions, dtype=self.coef.dtype, device=self.coef.device)
        out[self.features] = self.norms
        return out


def prox_group(coef: Tensor, threshold: float) -> Tensor:
    """Group soft-thresholding: shrink each function's block by ``threshold`` (exact zeros)."""
    norms = group_norms(coef)
    scale = torch.clamp(1.0 - threshold / torch.clamp(norms, min=1e-300), min=0.0)
    return coef * scale[None, :, None]


def lipschitz_constant(X: Tensor) -> float:
    """``max_i ||X_i||_2^2``, the Lipschitz constant of the loss gradient; X (n, d, k)."""
    if X.shape[2] == 0:
        return 1.0
    gram = torch.bmm(X, X.transpose(1, 2))  # (n, d, d): cheaper than (n, k, k) when k > d
    return float(torch.linalg.eigvalsh(gram)[:, -1].max().clamp(min=1e-12))


def fista(
    X: Tensor,
    lam: float,
    coef0: Tensor | None = None,
    *,
    tol: float = 1e-7,
    max_iter: int = 5000,
    lipschitz: float | None = None,
) -> FistaResult:
    """Accelerated proximal gradient on ``1/2 sum_i ||I - X_i b_i||^2 + lam sum_j ||b_.j.||``.

    Parameters
    ----------
    X : Tensor of shape (n_samples, d, k)
        Projected normalised gradients of the functions in the block.
    lam : float
        Per-group penalty weight.
    coef0 : Tensor of shape (n_samples, k, d), optional
        Warm start (zeros by default).
    tol, max_iter
        Stop when the relative change of the iterates is below ``tol`` (raised to
        ``50 eps`` of the dtype, ~6e-6 in float32) or after ``max_iter``.
    lipschitz : float, optional
        Initial ``L`` (step ``1 / L``); backtracking doubles ``L`` while the quadratic upper bound
        fails, up to the certified constant ``max_i ||X_i||_2^2`` (:func:`lipschitz_constant`),
        where the bound always holds and the test is skipped. Defaults to that constant.
    """
    n, d, k = X.shape
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    x = torch.zeros(n, k, d, dtype=X.dtype, device=X.device) if coef0 is None else coef0.clone()
    if k == 0:
        return FistaResult(x, 0, True, 1.0)
    certified = lipschitz_constant(X)  # the bound below holds for every L >= this
    L = certified if lipschitz is None else float(lipschitz)
    Xt = X.transpose(1, 2)
    r_x = eye - torch.bmm(X, x)  # residual at x, (n, d, d)
    x_prev, r_prev = x, r_x
    t = 1.0
    eps = 8 * torch.finfo(X.dtype).eps  # slack of the upper-bound test in this precision
    tol = max(tol, 50 * torch.finfo(X.dtype).eps)  # float32 iterates cannot move less than this
    converged = False
    n_iter = 0
    while n_iter < max_iter:
        n_iter += 1
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * t * t))
        w = (t - 1.0) / t_next
        y = torch.lerp(x_prev, x, 1.0 + w)  # x + w (x - x_prev), one fused pass
        r_y = torch.lerp(r_prev, r_x, 1.0 + w)  # the residual is affine in the coefficients
        while True:  # backtracking on the quadratic upper bound (skipped once L is certified)
            # gradient step y - grad / L with grad = -X^T R_y, fused in one baddbmm
            z = prox_group(torch.baddbmm(y, Xt, r_y, alpha=1.0 / L), lam / L)
            r_z = eye - torch.bmm(X, z)
            diff = z - y
            if L >= certified:
                break
            f_y = 0.5 * float(r_y.square().sum())
            lin = -float(torch.bmm(Xt, r_y).flatten().dot(diff.flatten()))
            bound = f_y + lin + 0.5 * L * float(diff.square().sum())
            if 0.5 * float(r_z.square().sum()) <= bound + eps * max(f_y, 1.0):
                break
            L = min(2.0 * L, certified)
        step = z - x
        if float(diff.flatten().dot(step.flatten())) < 0:  # gradient restart: uphill momentum
            t_next = 1.0
        x_prev, r_prev, x, r_x, t = x, r_x, z, r_z, t_next
        if float(step.norm()) <= tol * max(float(z.norm()), 1.0):
            converged = True
            break
    return FistaResult(x, n_iter, converged, L)


def ista(
    problem: TSLassoProblem, lam: float, *, tol: float = 1e-12, max_iter: int = 200_000
) -> Tensor:
    """Plain proximal gradient with the fixed step ``1/L`` on all functions (reference solver).

    Returns the coefficients, shape (n_samples, n_functions, d). Slow; for tests on small problems.
    """
    X = problem.X
    L = lipschitz_constant(X)
    x = torch.zeros(problem.n_samples, problem.n_functions, problem.d, dtype=X.dtype)
    x = x.to(X.device)
    for _ in range(max_iter):
        grad = -torch.bmm(X.transpose(1, 2), problem.residual(x))
        z = prox_group(x - grad / L, lam / L)
        if float((z - x).norm()) <= tol * max(float(z.norm()), 1.0):
            return z
        x = z
    return x


def kkt_violation(
    problem: TSLassoProblem, features: Tensor, coef: Tensor, lam: float, zero_tol: float = 1e-8
) -> float:
    """Largest violation of the group-lasso optimality conditions, relative to ``lam``.

    On the support: ``X_.j^T R = lam beta_j / ||beta_j||`` (stationarity); off it:
    ``||X_.j^T R|| <= lam``. ``features``/``coef`` as in :class:`GroupLassoSolution`.
    """
    residual = problem.residual(coef, features)
    g = torch.bmm(problem.X.transpose(1, 2), residual)  # (n, p, d) = minus the loss gradient
    norms = group_norms(coef)
    on = norms > zero_tol
    viol = torch.zeros((), dtype=problem.dtype, device=problem.device)
    if bool(on.any()):
        sub = coef[:, on] / norms[on][None, :, None]
        stat = torch.linalg.vector_norm(g[:, features[on]] - lam * sub, dim=(0, 2))
        viol = torch.maximum(viol, stat.max())
    off = torch.ones(problem.n_functions, dtype=torch.bool, device=problem.device)
    off[features[on]] = False
    if bool(off.any()):
        corr = torch.linalg.vector_norm(g[:, off], dim=(0, 2))
        viol = torch.maximum(viol, (corr - lam).clamp(min=0).max())
    return float(viol) / lam


def zero_solution(problem: TSLassoProblem, lam: float) -> GroupLassoSolution:
    """The solution for ``lam >= lambda_max``: all coefficients zero."""
    empty = torch.zeros(0, dtype=torch.long, device=problem.device)
    coef = torch.zeros(problem.n_samples, 0, problem.d, dtype=problem.dtype, device=problem.device)
    return GroupLassoSolution(lam, empty, coef, problem.column_norms(), 0, 0, True)


def _embed(warm: GroupLassoSolution | None, features: Tensor, shape: tuple[int, int, int], X):
    """Warm-start coefficients of ``warm`` placed on the working set ``features``."""
    coef = torch.zeros(shape, dtype=X.dtype, device=X.device)
    if warm is None or warm.features.numel() == 0:
        return coef
    pos = torch.full((int(features.max()) + 1,), -1, dtype=torch.long, device=X.device)
    pos[features] = torch.arange(features.numel(), device=X.device)
    keep = warm.features <= features.max()
    where = pos[warm.features[keep]]
    ok = where >= 0
    coef[:, where[ok]] = warm.coef[:, keep][:, ok].to(X.dtype)
    return coef


def solve(
    problem: TSLassoProblem,
    lam: float,
    warm: GroupLassoSolution | None = None,
    config: SolverConfig | None = None,
) -> GroupLassoSolution:
    """Solve the group lasso at ``lam``, warm-started and screened from ``warm``.

    Parameters
    ----------
    problem : TSLassoProblem
    lam : float
        Per-group penalty weight (> 0).
    warm : GroupLassoSolution, optional
        A solution at another ``lam`` (the nearest one probed is best): warm start and the
        reference of the strong rule ``corr_j(warm) >= 2 lam - warm.lam``.
    config : SolverConfig, optional
    """
    cfg = config or SolverConfig()
    if not lam > 0:
        raise ValueError(f"lam must be > 0, got {lam}")
    p, n, d = problem.n_functions, problem.n_samples, problem.d
    if lam >= problem.lambda_max():
        return zero_solution(problem, lam)
    dev = problem.device
    if not cfg.screening:
        features = torch.arange(p, device=dev)
        coef0 = _embed(warm, features, (n, p, d), problem.X)
        fit = fista(problem.X, lam, coef0, tol=cfg.tol, max_iter=cfg.max_iter)
        corr = problem.correlations(problem.residual(fit.coef))
        return _sparsify(lam, features, fit.coef, corr, fit.n_iter, 1, fit.converged, cfg)

    ref = warm if warm is not None else zero_solution(problem, problem.lambda_max())
    cap = cfg.max_working_set or max(64, 8 * d)
    strong = torch.nonzero(ref.correlations >= 2 * lam - ref.lam).flatten()
    if strong.numel() > cap:  # far from the reference: keep the most correlated functions
        strong = torch.topk(ref.correlations, cap).indices
    features = torch.unique(torch.cat([ref.features, strong]))
    n_iter, checks, converged = 0, 0, True
    while True:
        coef0 = _embed(ref, features, (n, features.numel(), d), problem.X)
        fit = fista(problem.columns(features), lam, coef0, tol=cfg.tol, max_iter=cfg.max_iter)
        n_iter += fit.n_iter
        converged &= fit.converged
        corr = problem.correlations(problem.residual(fit.coef, features))
        checks += 1
        outside = torch.ones(p, dtype=torch.bool, device=dev)
        outside[features] = False
        viol = torch.nonzero(outside & (corr > lam * (1 + cfg.kkt_tol))).flatten()
        if viol.numel() == 0:
            break
        add = viol[torch.argsort(corr[viol], descending=True)[: max(cap, features.numel())]]
        ref = _sparsify(lam, features, fit.coef, corr, 0, 0, True, cfg)  # warm start next round
        features = torch.unique(torch.cat([features, add]))
    return _sparsify(lam, features, fit.coef, corr, n_iter, checks, converged, cfg)


def _sparsify(lam, features, coef, corr, n_iter, checks, converged, cfg) -> GroupLassoSolution:
    keep = group_norms(coef) > cfg.zero_tol
    return GroupLassoSolution(
        float(lam), features[keep], coef[:, keep], corr, n_iter, checks, bool(converged)
    )
