"""The Tangent Space Lasso estimator (Koelle, Zhang, Murad & Meila, AISTATS 2024).

Which ``d`` functions of a dictionary are coordinates of the data manifold? For random subsets of
``n_points`` points: gradients of the functions (given, or the closed-form Jacobians of a geomsae
:class:`~geomsae.sae.dictionary.Dictionary`, or autograd Jacobians of a callable), gamma
normalisation in the ambient space, projection on the tangent spaces (given, or by weighted local
PCA with :func:`geomsae.tangent.tangent_spaces`), then a group lasso whose ``lam`` is bisected until
exactly ``d`` functions are selected. Repeating over replicates gives selection frequencies.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import Counter
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from geomsae.models import resolve_device
from geomsae.tslasso.inputs import (
    check_points,
    count_functions,
    problem_builder,
    resolve_dimension,
    resolve_dtype,
    tangent_bases,
)
from geomsae.tslasso.path import bisect_lambda, regularization_path, two_stage_support
from geomsae.tslasso.problem import TSLassoProblem
from geomsae.tslasso.result import RegularizationPath, ReplicateResult, TSLassoResult
from geomsae.tslasso.solver import SolverConfig

logger = logging.getLogger(__name__)


class TSLasso(BaseEstimator):
    """Tangent Space Lasso: select ``d`` dictionary functions that are manifold coordinates.

    Parameters
    ----------
    d : int, optional
        Intrinsic dimension (number of functions to select). None: from the given tangent bases,
        else estimated with ``geomsae.dimension`` (``dimension_estimator``) and rounded.
    n_points : int
        Points per replicate (the authors use 100 or 500).
    n_replicates : int
        Random point subsets (the authors use 25).
    max_probes : int
        Most bisection probes per replicate (authors: 12 synthetic, 30 molecules).
    n_lambdas : int
        Size of the full regularisation path computed on the first replicate (``path_``);
        0 skips it (``path_`` then holds that replicate's bisection probes).
    path_min_ratio : float
        The path runs from ``lambda_max`` down to ``path_min_ratio * lambda_max``.
    path_max_selected : int, optional
        Stop the path once more functions than this are selected (default ``max(50, 10 d)``),
        so a large dictionary does not turn the path's small-``lam`` end into a dense problem.
    two_stage : bool
        Also run the two-stage variant (brute force over the active set at the smallest probe).
    max_subsets : int
        Skip the two-stage variant of a replicate whose active set has more ``d``-subsets.
    normalize : bool
        Gamma normalisation of the gradients (the paper's default).
    tangent_neighbors, tangent_bandwidth : optional
        Neighbourhoods of the weighted local PCA when tangent bases are not given (passed to
        :func:`geomsae.tangent.tangent_spaces` as ``n_neighbors`` / ``bandwidth``; default
        ``n_neighbors = max(10, 3 d)``).
    dimension_estimator : str
        Name in ``geomsae.dimension.ESTIMATORS`` used when ``d`` is None and no bases are given.
    tol, max_iter, screening, kkt_tol
        Solver settings, see :class:`~geomsae.tslasso.solver.SolverConfig`.
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ...
    dtype : str
        ``"float64"``, ``"float32"`` or ``"auto"`` (float64 when ``n_points * p * d <= 1e7``).
    random_state : int, optional
        Seed of the point subsets.
    n_threads : int, optional
        CPU threads of the solver. None: one thread when ``n_points * p * d <= 2e6``, where
        the solver's many tiny kernels are dominated by threading overhead, else torch's
        current setting. The previous setting is restored after ``fit``.
    progress : bool
        Show a progress bar over replicates.

    Attributes
    ----------
    support_ : ndarray of int, shape (d,)
        The most frequent selection over replicates.
    selection_frequency_ : ndarray of shape (n_functions,)
        Fraction of replicates selecting each function.
    lambda_ : float
        Median selecting ``lam`` (per-group convention: ``lam_paper = lam * sqrt(d n_points)``).
    path_ : RegularizationPath
        Full path of the first replicate (or its bisection probes when ``n_lambdas == 0``).
    replicates_ : tuple of ReplicateResult
    two_stage_support_ : ndarray of int or None
    d_ : int
    result_ : TSLassoResult
        Everything above, JSON-serialisable (``result_.to_json(path)``).

    Examples
    --------
    >>> from geomsae.tslasso.synthetic import swiss_roll_dictionary
    >>> sr = swiss_roll_dictionary(n_samples=1000, random_state=0)   # t, y, x_0..x_48
    >>> est = TSLasso(d=2, n_points=100, n_replicates=5, n_lambdas=0, random_state=0)
    >>> est.fit(sr.X, sr.gradients, bases=sr.bases).support_.tolist()
    [0, 1]
    >>> round(est.replicates_[0].lambda_max, 6), round(est.lambda_, 6)  # sqrt(n), its half
    (10.0, 5.0)
    """

    def __init__(
        self,
        d: int | None = None,
        n_points: int = 100,
        n_replicates: int = 25,
        max_probes: int = 12,
        n_lambdas: int = 30,
        path_min_ratio: float = 0.05,
        path_max_selected: int | None = None,
        two_stage: bool = True,
        max_subsets: int = 100_000,
        normalize: bool = True,
        tangent_neighbors: int | None = None,
        tangent_bandwidth: float | None = None,
        dimension_estimator: str = "twonn",
        tol: float = 1e-7,
        max_iter: int = 5000,
        screening: bool = True,
        kkt_tol: float = 1e-3,
        device: str = "auto",
        dtype: str = "auto",
        random_state: int | None = None,
        progress: bool = False,
        n_threads: int | None = None,
    ) -> None:
        self.d = d
        self.n_points = n_points
        self.n_replicates = n_replicates
        self.max_probes = max_probes
        self.n_lambdas = n_lambdas
        self.path_min_ratio = path_min_ratio
        self.path_max_selected = path_max_selected
        self.two_stage = two_stage
        self.max_subsets = max_subsets
        self.normalize = normalize
        self.tangent_neighbors = tangent_neighbors
        self.tangent_bandwidth = tangent_bandwidth
        self.dimension_estimator = dimension_estimator
        self.tol = tol
        self.max_iter = max_iter
        self.screening = screening
        self.kkt_tol = kkt_tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.progress = progress
        self.n_threads = n_threads

    # ---- fit ---------------------------------------------------------------------------------
    def fit(
        self,
        X: Any,
        gradients: Any = None,
        *,
        bases: Any = None,
        dictionary: Any = None,
        function: Any = None,
    ) -> TSLasso:
        """Run TSLasso on replicates of ``n_points`` points of ``X``.

        Parameters
        ----------
        X : array or tensor of shape (n_samples, d_model)
            The points.
        gradients : array or tensor of shape (n_samples, n_functions, d_model), optional
            Ambient gradients of the dictionary functions at every point.
        bases : array or tensor of shape (n_samples, d_model, d), optional
            Orthonormal tangent bases (estimated by weighted local PCA when omitted).
        dictionary : geomsae.sae.Dictionary, optional
            Use its features' closed-form Jacobians instead of ``gradients``.
        function : callable, optional
            Row-wise differentiable map (m, d_model) -> (m, n_functions); autograd Jacobians.

        Exactly one of ``gradients``, ``dictionary`` and ``function`` must be given.
        """
        t_start = time.perf_counter()
        timings: dict[str, float] = {}
        self._check_params()
        device = resolve_device(self.device)
        points = check_points(X)
        N = points.shape[0]
        if self.n_points > N:
            raise ValueError(f"n_points={self.n_points} exceeds the {N} points given; lower it")
        p = count_functions(points, gradients, dictionary, function)
        d = resolve_dimension(points, bases, self.d, self.dimension_estimator, timings)
        dtype = resolve_dtype(self.dtype, self.n_points, p, d)

        rng = np.random.default_rng(self.random_state)
        subsets = [
            np.sort(rng.choice(N, self.n_points, replace=False)) for _ in range(self.n_replicates)
        ]
        needed = np.unique(np.concatenate(subsets))
        row = np.full(N, -1)
        row[needed] = np.arange(needed.size)
        tangent = tangent_bases(
            points, bases, d, needed, self.tangent_neighbors, self.tangent_bandwidth, timings
        ).to(device=device, dtype=dtype)
        build = problem_builder(
            points, gradients, dictionary, function, device, dtype, self.normalize
        )

        cfg = SolverConfig(
            tol=self.tol, max_iter=self.max_iter, screening=self.screening, kkt_tol=self.kkt_tol
        )
        t0 = time.perf_counter()
        reps = []
        with _solver_threads(self.n_threads, device, self.n_points * p * d):
            for r, idx in enumerate(
                tqdm(subsets, desc="TSLasso replicates", disable=not self.progress)
            ):
                tb = tangent[torch.as_tensor(row[idx])]
                reps.append(self._replicate(build, idx, tb, d, cfg, with_path=(r == 0)))
        timings["replicates"] = time.perf_counter() - t0
        timings["total"] = time.perf_counter() - t_start
        self._aggregate(reps, d, p, timings)
        return self

    def _replicate(self, build, idx, bases, d, cfg, with_path) -> ReplicateResult:
        times: dict[str, float] = {}
        t0 = time.perf_counter()
        problem: TSLassoProblem = build(idx, bases)
        times["problem"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        bis = bisect_lambda(problem, d, self.max_probes, cfg)
        times["bisection"] = time.perf_counter() - t0
        lam_max = problem.lambda_max()
        probes = RegularizationPath.from_solutions(bis.probes, lam_max, problem.n_functions)
        two = None
        if self.two_stage:
            t0 = time.perf_counter()
            smallest = min(bis.probes, key=lambda s: s.lam)
            cand = smallest.features if smallest.features.numel() >= d else bis.support
            if math.comb(int(cand.numel()), d) <= self.max_subsets:
                two = tuple(two_stage_support(problem, cand, d, self.max_subsets).tolist())
            else:
                logger.info("two-stage skipped: %d candidates for d=%d", cand.numel(), d)
            times["two_stage"] = time.perf_counter() - t0
        path = None
        if with_path and self.n_lambdas > 0:
            t0 = time.perf_counter()
            sols = regularization_path(
                problem,
                n_lambdas=self.n_lambdas,
                min_ratio=self.path_min_ratio,
                config=cfg,
                max_selected=self.path_max_selected or max(50, 10 * d),
            )
            path = RegularizationPath.from_solutions(sols, lam_max, problem.n_functions)
            times["path"] = time.perf_counter() - t0
        return ReplicateResult(
            indices=tuple(int(i) for i in idx),
            support=tuple(int(j) for j in bis.support.tolist()),
            lam=float(bis.lam),
            lambda_max=float(lam_max),
            found=bool(bis.found),
            probes=probes,
            two_stage_support=two,
            path=path,
            timings=times,
        )

    # ---- inputs ------------------------------------------------------------------------------
    def _check_params(self) -> None:
        if self.d is not None and (not isinstance(self.d, (int, np.integer)) or self.d < 1):
            raise ValueError(f"d must be a positive integer or None, got {self.d!r}")
        if self.n_points < 2 or self.n_replicates < 1:
            raise ValueError(
                "need n_points >= 2 and n_replicates >= 1, "
                f"got {self.n_points}, {self.n_replicates}"
            )
        resolve_dtype(self.dtype, 1, 1, 1)  # validates the name

    # ---- results -----------------------------------------------------------------------------
    def _aggregate(self, reps: list[ReplicateResult], d: int, p: int, timings) -> None:
        support, freq_of_mode, selection = _consensus([r.support for r in reps], p)
        two_support, two_freq = None, None
        twos = [r.two_stage_support for r in reps if r.two_stage_support is not None]
        if twos:
            two_support, _, two_sel = _consensus(twos, p)
            two_freq = tuple(float(v) for v in two_sel)
        lam = float(np.median([r.lam for r in reps]))
        params = {k: v for k, v in self.get_params().items()}
        self.result_ = TSLassoResult(
            d=d,
            n_points=self.n_points,
            n_functions=p,
            support=support,
            support_frequency=freq_of_mode,
            selection_frequency=tuple(float(v) for v in selection),
            lam=lam,
            penalty_scale=math.sqrt(d * self.n_points),
            replicates=tuple(reps),
            two_stage_support=two_support,
            two_stage_frequency=two_freq,
            timings=timings,
            params=params,
        )
        self.d_ = d
        self.support_ = np.array(support, dtype=int)
        self.selection_frequency_ = np.asarray(selection, dtype=float)
        self.lambda_ = lam
        self.replicates_ = tuple(reps)
        self.two_stage_support_ = None if two_support is None else np.array(two_support, dtype=int)
        first = reps[0]
        self.path_ = first.path if first.path is not None else first.probes
        logger.info(
            "TSLasso: support %s in %.0f%% of %d replicates (%.1f s)",
            support,
            100 * freq_of_mode,
            len(reps),
            timings["total"],
        )

    def to_json(self, path: str | None = None) -> str:
        """The fitted :attr:`result_` as JSON (written to ``path`` when given)."""
        check_is_fitted(self, "result_")
        return self.result_.to_json(path)


SMALL_PROBLEM = 2_000_000
"""``n_points * p * d`` at or below which the CPU solver runs on one thread by default."""


@contextlib.contextmanager
def _solver_threads(n_threads: int | None, device: torch.device, size: int):
    """Run the block with ``n_threads`` torch CPU threads (see ``TSLasso.n_threads``)."""
    if n_threads is None:
        n_threads = 1 if device.type == "cpu" and size <= SMALL_PROBLEM else None
    old = torch.get_num_threads()
    if n_threads is not None:
        torch.set_num_threads(int(n_threads))
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _consensus(
    supports: list[tuple[int, ...]], p: int
) -> tuple[tuple[int, ...], float, np.ndarray]:
    """Modal support, its frequency and per-function selection frequencies."""
    selection = np.zeros(p)
    for s in supports:
        selection[list(s)] += 1
    selection /= len(supports)
    counts = Counter(tuple(sorted(s)) for s in supports)
    top = max(counts.values())
    modes = [s for s, c in counts.items() if c == top]
    best = max(modes, key=lambda s: (selection[list(s)].sum(), [-j for j in s]))
    return best, top / len(supports), selection


__all__ = ["TSLasso"]
