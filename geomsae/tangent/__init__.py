"""Local tangent spaces by weighted local PCA (megaman / TSLasso conventions).

For a query point ``x_i`` with neighbours ``x_j`` (itself included, with weight ``K_ii = 1``):

    K_ij  = exp(-|x_i - x_j|^2 / eps^2)     Gaussian kernel, no factor 2 (megaman's convention)
    w_ij  = K_ij / sum_l K_il               normalised weights
    mu_i  = sum_j w_ij x_j                  weighted local mean (``centers``)
    C_i   = sum_j w_ij (x_j - mu_i)(x_j - mu_i)^T

and the tangent basis ``T_i`` (shape ``(D, d)``, orthonormal columns) holds the top ``d``
eigenvectors of ``C_i``. Neighbourhoods are either all points within the radius ``cutoff * eps``
(megaman/TSLasso: ``cutoff = 3``) or the ``n_neighbors`` nearest points (uniform weights, or
Gaussian ones when a bandwidth is also given). ``square_weights=True`` uses ``w^2`` in ``C_i``
like montlake; the default follows the later rewrite (``w``).

Conventions: the eigenvectors come from a batched eigensolver on ``Z = sqrt(w) * (X_nbr - mu)``
(``Z^T Z`` or ``Z Z^T``, whichever is smaller) in float64,
blocked over query points so memory stays near ``DEFAULT_MEMORY_BYTES``; each basis column has
its largest-magnitude entry positive (deterministic signs). numpy in -> numpy out, torch in ->
torch out on the input's device (the work runs there, so CUDA inputs use the GPU).

The call Tangent Space Lasso makes is simply::

    ts = tangent_spaces(X, d, bandwidth=eps)     # or n_neighbors=k
    ts.bases                                     # (n_samples, D, d), orthonormal columns

Choose ``eps`` with :func:`geomsae.graph.select_radius` (``bandwidth = radius / 3``).
"""

from geomsae.tangent.pca import (
    DEFAULT_MEMORY_BYTES,
    TangentSpaces,
    estimate_local_dimension,
    weighted_local_pca,
)
from geomsae.tangent.smoothing import smooth_tangent_spaces
from geomsae.tangent.spaces import LocalTangentSpaces, tangent_spaces

__all__ = [
    "DEFAULT_MEMORY_BYTES",
    "LocalTangentSpaces",
    "TangentSpaces",
    "estimate_local_dimension",
    "smooth_tangent_spaces",
    "tangent_spaces",
    "weighted_local_pca",
]
