"""Tangent Space Lasso (Koelle, Zhang, Murad & Meila, AISTATS 2024): dictionary functions as
manifold coordinates.

``TSLasso(d, n_points, n_replicates).fit(X, gradients)`` (or ``dictionary=`` / ``function=``) is the
entry point; the pieces are importable for custom pipelines: the problem (projected, normalised
gradients), the FISTA group-lasso solver with screening, the lambda search and the results.
"""

from geomsae.tslasso.estimator import TSLasso
from geomsae.tslasso.gradients import dictionary_problem, function_jacobians
from geomsae.tslasso.path import (
    Bisection,
    bisect_lambda,
    lambda_grid,
    regularization_path,
    subset_scores,
    two_stage_support,
)
from geomsae.tslasso.problem import (
    TSLassoProblem,
    group_norms,
    problem_from_gradients,
    problem_from_projected,
)
from geomsae.tslasso.result import PathPoint, RegularizationPath, ReplicateResult, TSLassoResult
from geomsae.tslasso.solver import (
    GroupLassoSolution,
    SolverConfig,
    fista,
    ista,
    kkt_violation,
    solve,
)

__all__ = [
    "Bisection",
    "GroupLassoSolution",
    "PathPoint",
    "RegularizationPath",
    "ReplicateResult",
    "SolverConfig",
    "TSLasso",
    "TSLassoProblem",
    "TSLassoResult",
    "bisect_lambda",
    "dictionary_problem",
    "fista",
    "function_jacobians",
    "group_norms",
    "ista",
    "kkt_violation",
    "lambda_grid",
    "problem_from_gradients",
    "problem_from_projected",
    "regularization_path",
    "solve",
    "subset_scores",
    "two_stage_support",
]
