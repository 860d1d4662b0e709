"""Exact nearest neighbours on point clouds, blocked so memory stays bounded.

Conventions (pinned, because they change answers downstream):

* When the queries are the data themselves (``Y is None``), a point is **never its own
  neighbour**; it is excluded by *index*, so an exact duplicate of it still appears, at distance 0.
* Distances are Euclidean and returned in **float64**, from the expansion
  ``|x|^2 + |y|^2 - 2 x.y`` on centred data; pairs closer than 1e-4 of their squared norms
  (~1 % of the norms) are re-measured directly as ``|x - y|``, so duplicates give exactly 0
  and near-duplicates keep their digits (the expansion alone loses them to cancellation).
* Every search is exact: screens (float32 products, the projected lower bound of
  :mod:`geomsae.neighbors.projected`) only propose candidates, and each row is certified with a
  rounding-error bound or searched again by brute force.
* Rows are sorted by distance, ties broken by neighbour index (deterministic).
* numpy in -> numpy out; torch in -> torch out, on the input's device (a CUDA tensor is computed
  on the GPU). Memory is ``O(block_size * n_samples)``: ``n = 100 000`` points in ``D = 576``
  need about 256 MiB of work space with the default budget.

Duplicate points (identical rows) are allowed here but break estimators that divide by the
nearest-neighbour distance (TwoNN's ``r2 / r1``). :func:`find_duplicates` finds them,
:func:`deduplicate` removes them, and :func:`check_no_duplicates` raises a ``ValueError`` that
names the fix.

Examples
--------
>>> import numpy as np
>>> X = np.array([[0.0], [1.0], [3.0], [7.0]])
>>> nb = knn(X, 2)
>>> nb.indices
array([[1, 2],
       [0, 2],
       [1, 0],
       [2, 1]])
>>> nb.distances[0]
array([1., 3.])
"""

from geomsae.neighbors.brute import DEFAULT_MEMORY_BYTES
from geomsae.neighbors.checks import (
    as_indices,
    as_tensor,
    check_no_duplicates,
    check_points,
    deduplicate,
    find_duplicates,
    unit_scale,
)
from geomsae.neighbors.plan import ProjectionPlan
from geomsae.neighbors.radius import radius_neighbors
from geomsae.neighbors.search import METHODS, Neighbors, knn

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "METHODS",
    "Neighbors",
    "ProjectionPlan",
    "as_indices",
    "as_tensor",
    "check_no_duplicates",
    "check_points",
    "deduplicate",
    "find_duplicates",
    "knn",
    "radius_neighbors",
    "unit_scale",
]
