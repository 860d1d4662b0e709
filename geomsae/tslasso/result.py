"""Named, JSON-serialisable results of Tangent Space Lasso: path points, replicates, the fit."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from geomsae.tslasso.solver import GroupLassoSolution


@dataclass(frozen=True)
class PathPoint:
    """One solved ``lam``: the selected functions and their coefficient group norms.

    ``lam`` is the per-group weight (``lam_paper = lam * sqrt(d n)``).
    """

    lam: float
    features: tuple[int, ...]
    norms: tuple[float, ...]
    n_iter: int = 0
    n_kkt_checks: int = 0
    converged: bool = True

    @classmethod
    def from_solution(cls, sol: GroupLassoSolution) -> PathPoint:
        return cls(
            lam=float(sol.lam),
            features=tuple(int(j) for j in sol.features.tolist()),
            norms=tuple(float(v) for v in sol.norms.tolist()),
            n_iter=int(sol.n_iter),
            n_kkt_checks=int(sol.n_kkt_checks),
            converged=bool(sol.converged),
        )

    @property
    def n_selected(self) -> int:
        return len(self.features)


@dataclass(frozen=True)
class RegularizationPath:
    """Solutions at several ``lam`` (a grid, or the bisection probes in the order solved)."""

    lambda_max: float
    n_functions: int
    points: tuple[PathPoint, ...]

    @property
    def lambdas(self) -> np.ndarray:
        """Shape (n_points,)."""
        return np.array([pt.lam for pt in self.points])

    @property
    def n_selected(self) -> np.ndarray:
        """Number of selected functions per point, shape (n_points,)."""
        return np.array([pt.n_selected for pt in self.points])

    def norm_matrix(self) -> np.ndarray:
        """Dense group norms, shape (n_points, n_functions)."""
        out = np.zeros((len(self.points), self.n_functions))
        for k, pt in enumerate(self.points):
            out[k, list(pt.features)] = pt.norms
        return out

    def ever_selected(self) -> list[int]:
        """Functions non-zero at some point, in order of first entry."""
        seen: dict[int, None] = {}
        for pt in sorted(self.points, key=lambda q: -q.lam):
            for j in pt.features:
                seen.setdefault(j, None)
        return list(seen)

    @classmethod
    def from_solutions(
        cls, sols: list[GroupLassoSolution], lambda_max: float, n_functions: int
    ) -> RegularizationPath:
        return cls(float(lambda_max), int(n_functions), tuple(map(PathPoint.from_solution, sols)))


@dataclass(frozen=True)
class ReplicateResult:
    """TSLasso on one random subset of points.

    Attributes
    ----------
    indices : tuple of int
        The points used (rows of the ``X`` given to ``fit``).
    support : tuple of int
        The ``d`` functions selected by the bisection.
    lam : float
        The ``lam`` that selected them.
    lambda_max : float
    found : bool
        Whether some probe selected exactly ``d`` functions.
    probes : RegularizationPath
        The bisection's solutions, in the order probed.
    two_stage_support : tuple of int or None
        The two-stage variant's support (None when not run or too many candidates).
    path : RegularizationPath or None
        The full regularisation path, when requested for this replicate.
    timings : dict
        Seconds on ``problem`` (gradients + projection), ``bisection``, ``two_stage``, ``path``.
    """

    indices: tuple[int, ...]
    support: tuple[int, ...]
    lam: float
    lambda_max: float
    found: bool
    probes: RegularizationPath
    two_stage_support: tuple[int, ...] | None = None
    path: RegularizationPath | None = None
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TSLassoResult:
    """Everything a :class:`~geomsae.tslasso.estimator.TSLasso` fit found.

    Attributes
    ----------
    d : int
        Intrinsic dimension used (given or estimated).
    n_points : int
        Points per replicate.
    n_functions : int
    support : tuple of int
        The most frequent support over replicates (ties: larger summed selection frequency).
    support_frequency : float
        Fraction of replicates that selected exactly :attr:`support`.
    selection_frequency : tuple of float
        Per function, the fraction of replicates selecting it; length ``n_functions``.
    lam : float
        Median selecting ``lam`` over replicates (per-group convention).
    penalty_scale : float
        ``sqrt(d n_points)``: multiply a ``lam`` by it for the paper's convention.
    two_stage_support, two_stage_frequency
        The same for the two-stage variant (None when not run).
    replicates : tuple of ReplicateResult
    timings : dict
        Seconds: ``dimension``, ``tangent``, ``replicates`` and ``total``.
    params : dict
        The estimator's parameters.
    """

    d: int
    n_points: int
    n_functions: int
    support: tuple[int, ...]
    support_frequency: float
    selection_frequency: tuple[float, ...]
    lam: float
    penalty_scale: float
    replicates: tuple[ReplicateResult, ...]
    two_stage_support: tuple[int, ...] | None = None
    two_stage_frequency: tuple[float, ...] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dicts and lists (what :meth:`to_json` writes)."""
        return dataclasses.asdict(self)

    def to_json(self, path: str | Path | None = None) -> str:
        """The result as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=False, default=_jsonable)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TSLassoResult:
        data = dict(data)
        data["replicates"] = tuple(_replicate(r) for r in data["replicates"])
        for key in ("support", "selection_frequency", "two_stage_support", "two_stage_frequency"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> TSLassoResult:
        """Read what :meth:`to_json` wrote (JSON text or a file path)."""
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


def _path(data: dict[str, Any] | None) -> RegularizationPath | None:
    if data is None:
        return None
    points = tuple(
        PathPoint(**{**p, "features": tuple(p["features"]), "norms": tuple(p["norms"])})
        for p in data["points"]
    )
    return RegularizationPath(data["lambda_max"], data["n_functions"], points)


def _replicate(data: dict[str, Any]) -> ReplicateResult:
    data = dict(data)
    data["probes"] = _path(data["probes"])
    data["path"] = _path(data.get("path"))
    for key in ("indices", "support", "two_stage_support"):
        if data.get(key) is not None:
            data[key] = tuple(data[key])
    return ReplicateResult(**data)
