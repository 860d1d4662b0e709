"""The estimator contract shared by every intrinsic-dimension estimator.

Subclasses implement two hooks on validated float64 torch tensors:

* ``_global(X) -> float``: the estimate for the whole point cloud;
* ``_pointwise(X, n_neighbors) -> tensor (n_samples,)``: one estimate per point, from the
  point's ``n_neighbors`` nearest neighbours (vectorised over points).

and the base class turns them into ``fit(X)`` (sets ``dimension_``) and
``fit_pointwise(X, n_neighbors=k)`` (sets ``dimension_pw_``), with one input check and one
duplicate-point policy.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from geomsae.neighbors import as_tensor, check_points, find_duplicates, unit_scale
from geomsae.neighbors.precision import ieee_float32

logger = logging.getLogger(__name__)

__all__ = ["TIED_LOG_RATIO", "IDEstimator", "median", "prepare_points"]

TIED_LOG_RATIO = 1e-10
"""A log-ratio of two neighbour distances at or below this is a tie. The k-NN distances are
accurate to about 1e-16 of the squared norms, so two equal distances (grids, other discrete
data) can come out ~1e-14 apart; a true ratio this close to 1 has probability ~1e-10 a point."""

_DUPLICATE_POLICIES = ("raise", "drop", "ignore")


def prepare_points(
    X: Any, *, on_duplicates: str = "raise", min_samples: int = 3, name: str = "X"
) -> tuple[torch.Tensor, np.ndarray | None]:
    """Validate ``X`` and return it as a float64 tensor (on its own device), plus kept rows.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
    on_duplicates : {"raise", "drop", "ignore"}
        ``"raise"``: a ``ValueError`` naming the fix if any row repeats (nearest-neighbour
        distances of 0 make ratio and log-distance estimators undefined); ``"drop"``: keep the
        first occurrence of each point; ``"ignore"``: no check (for estimators that do not divide
        by distances, or when the caller knows the points are distinct).
    min_samples : int
        Fewest points accepted (after dropping duplicates).

    Returns
    -------
    X : torch.Tensor of shape (n_kept, n_features), float64
    kept : int array of shape (n_kept,) or None
        Rows of the input that were kept (None when nothing was dropped).
    """
    if on_duplicates not in _DUPLICATE_POLICIES:
        raise ValueError(
            f"on_duplicates must be one of {_DUPLICATE_POLICIES}; got {on_duplicates!r}"
        )
    X = check_points(X, name=name, min_samples=1)
    kept = None
    if on_duplicates != "ignore":
        dup = find_duplicates(X)
        if dup.any():
            if on_duplicates == "raise":
                raise ValueError(
                    f"{name} has {int(dup.sum())} duplicate point(s) (e.g. row "
                    f"{int(np.flatnonzero(dup)[0])} repeats an earlier row); nearest-neighbour "
                    f"distances of 0 make this estimator undefined. Remove them with "
                    f"`X, kept = geomsae.neighbors.deduplicate(X)` or pass on_duplicates='drop'."
                )
            kept = np.flatnonzero(~dup)
            logger.info("dropping %d duplicate points of %d", int(dup.sum()), len(dup))
    Xt = as_tensor(X).detach()  # the estimates are not differentiable
    if kept is not None:
        Xt = Xt[torch.as_tensor(kept, device=Xt.device)]
    if Xt.shape[0] < min_samples:
        raise ValueError(f"{name} needs at least {min_samples} distinct points; got {Xt.shape[0]}")
    return Xt, kept


def median(x: torch.Tensor) -> torch.Tensor:
    """The median as numpy (and scikit-dimension) define it: for an even count, the mean of the
    two middle values (``torch.median`` returns the lower one)."""
    s = torch.sort(x.flatten()).values
    n = s.numel()
    if n == 0:
        raise ValueError("median of an empty tensor")
    return (s[(n - 1) // 2] + s[n // 2]) / 2


def check_n_neighbors(n_neighbors: Any, n_samples: int, *, minimum: int = 2) -> int:
    """``n_neighbors`` as an int in ``[minimum, n_samples - 1]``, or a ValueError naming the fix."""
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)):
        raise ValueError(f"n_neighbors must be an integer; got {n_neighbors!r}")
    if n_neighbors < minimum:
        raise ValueError(f"n_neighbors must be >= {minimum}; got {n_neighbors}")
    if n_neighbors > n_samples - 1:
        raise ValueError(
            f"n_neighbors={n_neighbors} needs more than {n_neighbors} points; got {n_samples} "
            f"(use n_neighbors <= {n_samples - 1} or more data)"
        )
    return int(n_neighbors)


def check_max_dim(max_dim: Any, n_features: int) -> int:
    """``max_dim`` as an int >= 1, or ``n_features`` when it is None; a ValueError otherwise."""
    if max_dim is None:
        return int(n_features)
    if isinstance(max_dim, bool) or not isinstance(max_dim, (int, np.integer)) or max_dim < 1:
        raise ValueError(f"max_dim must be an integer >= 1 (or None); got {max_dim!r}")
    return int(max_dim)


#: ``fit_pointwise``'s neighbourhood size for estimators without an ``n_neighbors`` parameter
DEFAULT_POINTWISE_NEIGHBORS = 20


class IDEstimator(BaseEstimator):
    """Base class: ``fit`` -> ``dimension_``, ``fit_pointwise`` -> ``dimension_pw_``.

    Attributes set by fitting
    -------------------------
    dimension_ : float
        Global intrinsic-dimension estimate (``fit``).
    dimension_pw_ : ndarray of shape (n_kept,)
        Pointwise estimates (``fit_pointwise``), one per kept point.
    n_neighbors_ : int
        Neighbourhood size used by ``fit_pointwise``.
    kept_ : ndarray or None
        Row indices kept after dropping duplicates (``on_duplicates="drop"``), else None.
    """

    #: neighbour-distance estimators need distinct points; PCA-like ones do not
    _needs_distinct = True
    #: smallest neighbourhood the pointwise estimate makes sense for
    _min_neighbors = 2

    def _prepare(self, X: Any, min_samples: int = 3) -> torch.Tensor:
        """Checked float64 points, scaled by :func:`unit_scale` (kept in ``self._unit``: the
        estimators divide their attributes in data units by it)."""
        policy = getattr(self, "on_duplicates", "raise") if self._needs_distinct else "ignore"
        Xt, self.kept_ = prepare_points(X, on_duplicates=policy, min_samples=min_samples)
        self._unit = unit_scale(Xt)
        if self._unit != 1.0:
            logger.debug("%s: data scaled by 2^%d (exact)", type(self).__name__,
                         round(math.log2(self._unit)))  # fmt: skip
            Xt = Xt * self._unit
        return Xt

    @ieee_float32()  # float32 covariances and screens assume IEEE products
    def fit(self, X: Any, y: Any = None) -> IDEstimator:
        """Estimate the global intrinsic dimension of ``X``, of shape (n_samples, n_features).

        Returns ``self``; the estimate is ``self.dimension_`` (a float).
        """
        Xt = self._prepare(X)
        self.dimension_ = float(self._global(Xt))
        return self

    @ieee_float32()
    def fit_pointwise(
        self, X: Any, y: Any = None, *, n_neighbors: int | None = None
    ) -> IDEstimator:
        """Estimate the dimension around every point from its ``n_neighbors`` nearest neighbours.

        ``n_neighbors=None``: the estimator's own ``n_neighbors`` parameter where it has one set
        (``MLE(n_neighbors=10)``, ``LocalPCA(n_neighbors=50)``, a calibrated estimator's), else
        20. Returns ``self``; the estimates are ``self.dimension_pw_``, an array of shape (n_kept,).
        Points where the estimate is undefined (NaN: e.g. every ratio in the neighbourhood
        tied, on discrete data, or a distance of 0 when duplicates were not dropped) are
        counted in a logged warning; a ValueError if all are.
        """
        Xt = self._prepare(X)
        if n_neighbors is None:
            n_neighbors = self._default_neighbors()
        k = check_n_neighbors(n_neighbors, Xt.shape[0], minimum=self._min_neighbors)
        self.n_neighbors_ = k
        pw = self._pointwise(Xt, k).detach().cpu().numpy().astype(np.float64)
        undefined = int(np.isnan(pw).sum())
        if undefined and undefined == len(pw):
            raise ValueError(
                f"{type(self).__name__}: the pointwise estimate is undefined (NaN) at every "
                "point: tied neighbour distances (discrete data?); use a larger n_neighbors "
                "or add a little noise (duplicates: on_duplicates='drop')"
            )
        if undefined:
            logger.warning(
                "%s: the pointwise estimate is undefined (NaN) at %d of %d points (tied "
                "neighbour distances or duplicates)", type(self).__name__, undefined, len(pw),
            )  # fmt: skip
        self.dimension_pw_ = pw
        return self

    def _default_neighbors(self) -> int:
        """``fit_pointwise``'s neighbourhood size when none is given."""
        k = getattr(self, "n_neighbors", None)
        return DEFAULT_POINTWISE_NEIGHBORS if k is None else k

    def fit_predict(self, X: Any, y: Any = None) -> float:
        """``fit(X).dimension_``."""
        return self.fit(X).dimension_

    def _global(self, X: torch.Tensor) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def check_fitted(self, pointwise: bool = False) -> None:
        """Raise sklearn's ``NotFittedError`` unless ``fit`` (or ``fit_pointwise``) has run."""
        check_is_fitted(self, "dimension_pw_" if pointwise else "dimension_")
