"""Graph geometry on point clouds, with megaman's conventions (positive-sign Laplacians).

* :mod:`~geomsae.graph.affinity` -- radius / k-NN distance graphs and Gaussian affinities.
* :mod:`~geomsae.graph.laplacian` -- the five Laplacians and their spectra.
* :mod:`~geomsae.graph.metric` -- Riemannian metric of an embedding (Perrault-Joncas & Meila).
* :mod:`~geomsae.graph.radius` -- radius / bandwidth selection (distortion, eigengap, stability).

See ``docs/graph.md``.
"""

from geomsae.graph.affinity import adjacency_matrix, affinity_matrix
from geomsae.graph.laplacian import LAPLACIANS, Spectrum, laplacian_matrix, laplacian_spectrum
from geomsae.graph.metric import RiemannianMetric, riemannian_metric
from geomsae.graph.radius import CRITERIA, RadiusSelection, select_radius

__all__ = [
    "CRITERIA",
    "LAPLACIANS",
    "RadiusSelection",
    "RiemannianMetric",
    "Spectrum",
    "adjacency_matrix",
    "affinity_matrix",
    "laplacian_matrix",
    "laplacian_spectrum",
    "riemannian_metric",
    "select_radius",
]
