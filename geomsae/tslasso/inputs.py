"""Input handling of :class:`~geomsae.tslasso.estimator.TSLasso`: validation, the dimension, the
tangent bases and a per-replicate problem builder for each gradient source."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from geomsae.tslasso.gradients import dictionary_problem, function_jacobians
from geomsae.tslasso.problem import TSLassoProblem, problem_from_gradients

logger = logging.getLogger(__name__)

ProblemBuilder = Callable[[np.ndarray, torch.Tensor], TSLassoProblem]
"""(point indices, tangent bases at them) -> the replicate's problem."""


def resolve_dtype(dtype: str, n_points: int, p: int, d: int) -> torch.dtype:
    """``"auto"``: float64 when ``n_points * p * d <= 1e7`` (a small problem), else float32."""
    if dtype == "auto":
        return torch.float64 if n_points * p * d <= 10_000_000 else torch.float32
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'auto', 'float32' or 'float64', got {dtype!r}")
    return getattr(torch, dtype)


def check_points(X: Any) -> torch.Tensor:
    """X as a tensor of shape (n_samples, d_model) with finite values (one clear error if not)."""
    points = torch.as_tensor(np.asarray(X) if not torch.is_tensor(X) else X)
    if points.ndim != 2 or not torch.isfinite(points).all():
        raise ValueError(
            f"X must be a finite array of shape (n_samples, d_model), got {tuple(points.shape)}"
        )
    return points


def count_functions(points: torch.Tensor, gradients: Any, dictionary: Any, function: Any) -> int:
    """Number of dictionary functions, checking that exactly one source fits the points."""
    given = sum(s is not None for s in (gradients, dictionary, function))
    if given != 1:
        raise ValueError(
            "give exactly one of gradients=(n_samples, n_functions, d_model) array, "
            f"dictionary=Dictionary or function=callable; got {given}"
        )
    N, ambient = points.shape
    if gradients is not None:
        shape = tuple(gradients.shape)
        if len(shape) != 3 or shape[0] != N or shape[2] != ambient:
            raise ValueError(
                f"gradients must have shape (n_samples={N}, n_functions, d_model={ambient}), "
                f"got {shape}"
            )
        return shape[1]
    if dictionary is not None:
        if getattr(dictionary, "d_in", None) != ambient:
            raise ValueError(
                f"dictionary.d_in={getattr(dictionary, 'd_in', None)} does not match the "
                f"points' d_model={ambient}"
            )
        return int(dictionary.n_features)
    if not callable(function):
        raise ValueError("function must be callable: (m, d_model) -> (m, n_functions)")
    with torch.no_grad():
        out = function(like_function(points[:2], function))
    if out.ndim != 2 or out.shape[0] != 2:
        raise ValueError(
            f"function must map (m, d_model) to (m, n_functions); got {tuple(out.shape)} for m=2"
        )
    return int(out.shape[1])


def resolve_dimension(
    points: torch.Tensor, bases: Any, d: int | None, estimator: str, timings: dict[str, float]
) -> int:
    """``d`` as given, else the bases' column count, else estimated with geomsae.dimension."""
    if bases is not None:
        k = int(bases.shape[-1])
        if d is not None and d != k:
            raise ValueError(f"d={d} but the tangent bases have {k} columns; make them agree")
        return k
    if d is not None:
        return int(d)
    t0 = time.perf_counter()
    from geomsae.dimension import ESTIMATORS

    if estimator not in ESTIMATORS:
        raise ValueError(
            f"unknown dimension_estimator {estimator!r}; choose from {sorted(ESTIMATORS)}"
        )
    est = ESTIMATORS[estimator]().fit(points.double().cpu().numpy())
    d_est = max(1, int(round(float(est.dimension_))))
    timings["dimension"] = time.perf_counter() - t0
    logger.info("estimated intrinsic dimension %.2f -> d=%d", float(est.dimension_), d_est)
    return d_est


def tangent_bases(
    points: torch.Tensor,
    bases: Any,
    d: int,
    needed: np.ndarray,
    n_neighbors: int | None,
    bandwidth: float | None,
    timings: dict[str, float],
) -> torch.Tensor:
    """Tangent bases at the rows ``needed``: the given ones, or weighted local PCA.

    Returns a tensor of shape (len(needed), d_model, d).
    """
    N, ambient = points.shape
    if bases is not None:
        tb = torch.as_tensor(np.asarray(bases) if not torch.is_tensor(bases) else bases)
        if tb.shape != (N, ambient, d):
            raise ValueError(
                f"bases must have shape (n_samples={N}, d_model={ambient}, d={d}), "
                f"got {tuple(tb.shape)}"
            )
        return tb[torch.as_tensor(needed)]
    from geomsae.tangent import tangent_spaces

    t0 = time.perf_counter()
    kw: dict[str, Any] = {}
    if bandwidth is not None:
        kw["bandwidth"] = bandwidth
    if n_neighbors is not None or bandwidth is None:
        kw["n_neighbors"] = n_neighbors or max(10, 3 * d)
    ts = tangent_spaces(points, d, indices=torch.as_tensor(needed), **kw)
    timings["tangent"] = time.perf_counter() - t0
    return torch.as_tensor(ts.bases)


def problem_builder(
    points: torch.Tensor,
    gradients: Any,
    dictionary: Any,
    function: Any,
    device: torch.device,
    dtype: torch.dtype,
    normalize: bool,
) -> ProblemBuilder:
    """A function (indices, bases) -> TSLassoProblem for the chosen gradient source."""

    def place(problem: TSLassoProblem) -> TSLassoProblem:
        return TSLassoProblem(problem.X.to(device, dtype), problem.gamma.to(device, dtype))

    if gradients is not None:

        def build(idx, bases):
            g = gradients[idx] if torch.is_tensor(gradients) else np.asarray(gradients[idx])
            return problem_from_gradients(torch.as_tensor(g).to(device, dtype), bases, normalize)

    elif dictionary is not None:

        def build(idx, bases):
            x = points[torch.as_tensor(idx)]
            return place(dictionary_problem(dictionary, x, bases, normalize, dtype))

    else:

        def build(idx, bases):
            x = like_function(points[torch.as_tensor(idx)], function)
            jac = function_jacobians(function, x).detach()
            return place(problem_from_gradients(jac, bases.to(jac), normalize))

    return build


def like_function(x: torch.Tensor, function: Any) -> torch.Tensor:
    """Points cast to a module's parameter dtype/device (a plain callable gets float64 CPU)."""
    params = list(function.parameters()) if isinstance(function, torch.nn.Module) else []
    if params:
        return x.to(device=params[0].device, dtype=params[0].dtype)
    return x.to(torch.float64) if not x.is_floating_point() else x
