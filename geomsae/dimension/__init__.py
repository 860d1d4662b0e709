"""Intrinsic dimension of point clouds: global, pointwise, and as a function of scale.

Every estimator follows the scikit-learn contract: ``__init__`` only stores parameters,
``fit(X)`` sets ``dimension_`` (a float) and returns ``self``, ``fit_pointwise(X, n_neighbors=k)``
sets ``dimension_pw_`` (one estimate per point, from its k nearest neighbours). A lower-case
function of the same name returns the global float, for notebooks::

    >>> from geomsae import dimension
    >>> from geomsae.manifolds import sphere
    >>> X = sphere(2000, d=3, ambient_dim=50, random_state=0).X
    >>> round(dimension.twonn(X)), round(dimension.mle(X))
    (3, 3)
    >>> est = dimension.LocalPCA(rule="fo").fit_pointwise(X, n_neighbors=40)
    >>> est.dimension_pw_.shape
    (2000,)

Estimators (``ESTIMATORS`` maps each name to its class):

========================  ==========================================================
``LocalPCA``              eigenvalue rules: Fukunaga-Olsen, variance fraction, largest gap
``MLE``                   Levina-Bickel, MacKay-Ghahramani aggregation
``TwoNN``                 Facco et al. 2017, ratio of the two nearest distances
``GRIDE``                 Denti et al. 2022, TwoNN at neighbour ranks (n1, n2)
``CorrelationDimension``  Grassberger-Procaccia slope of log C(r)
``MiNDML``                Rozza et al. 2012, likelihood of r_1 / r_(k+1)
``Calibrated``            any of the above, bias-corrected on uniform balls (as DANCo)
========================  ==========================================================

Scale analysis: ``id_scale_curve(X)`` estimates the ID at neighbour ranks 1, 2, 4, ... (GRIDE) or
neighbourhood sizes (MLE) with bootstrap intervals; ``curve.choose()`` applies the documented
plateau rule to pick d, and ``plot_id_scale_curve(curve)`` draws it.

Conventions: inputs are numpy arrays or torch tensors of shape (n_samples, n_features) (torch
tensors on a GPU are processed there); distances are exact and float64; a point is never its
own neighbour; duplicate points raise a ``ValueError`` naming the fix (``on_duplicates="drop"``
or :func:`geomsae.neighbors.deduplicate`); NaN/Inf, 1-D input and too few points are errors.
"""

from geomsae.dimension.base import IDEstimator, prepare_points
from geomsae.dimension.calibrated import Calibrated, calibrated
from geomsae.dimension.corrint import CorrelationDimension, correlation_dimension
from geomsae.dimension.gride import GRIDE, gride
from geomsae.dimension.lpca import LocalPCA, local_pca
from geomsae.dimension.mind import MiNDML, mind_ml
from geomsae.dimension.mle import MLE, mle
from geomsae.dimension.scale import IDScaleCurve, id_scale_curve, plot_id_scale_curve
from geomsae.dimension.twonn import TwoNN, twonn

ESTIMATORS: dict[str, type[IDEstimator]] = {
    "lpca": LocalPCA,
    "mle": MLE,
    "twonn": TwoNN,
    "gride": GRIDE,
    "corrint": CorrelationDimension,
    "mind_ml": MiNDML,
    "calibrated": Calibrated,
}
"""Short name -> estimator class, for loops over all estimators."""

__all__ = [
    "ESTIMATORS",
    "Calibrated",
    "GRIDE",
    "MLE",
    "CorrelationDimension",
    "IDEstimator",
    "IDScaleCurve",
    "LocalPCA",
    "MiNDML",
    "TwoNN",
    "calibrated",
    "correlation_dimension",
    "gride",
    "id_scale_curve",
    "local_pca",
    "mind_ml",
    "mle",
    "plot_id_scale_curve",
    "prepare_points",
    "twonn",
]
