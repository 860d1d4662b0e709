"""Synthetic sparse data with known features (Sharkey, Braun & Millidge 2022).

``n_features`` (``G``) ground-truth unit directions in ``R^{d_model}`` (Gaussian, normalised).
Feature ``i`` is active with probability ``p_i`` proportional to ``decay^i``, scaled so that on
average ``n_active`` features are active per sample; an active feature has a coefficient drawn
from ``U[0, 1]``. A sample is ``x = sum_i c_i g_i``.

Two variants:

- independent: features switch on independently;
- correlated: on/off is drawn through a Gaussian copula: ``z ~ N(0, C)`` with a random
  correlation matrix ``C``, feature ``i`` active when ``Phi(z_i) < p_i``. Each feature keeps its
  marginal probability ``p_i`` but co-occurs with the features it is correlated with.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor


@dataclasses.dataclass(frozen=True)
class SparseFeatureData:
    """Samples with their ground truth.

    Attributes
    ----------
    X : Tensor of shape (n_samples, d_model)
        The data, float32.
    features : Tensor of shape (n_features, d_model)
        Ground-truth unit feature directions.
    coefficients : Tensor of shape (n_samples, n_features)
        Feature coefficients (0 where inactive), so ``X = coefficients @ features``.
    probabilities : Tensor of shape (n_features,)
        ``p_i``, the probability that feature ``i`` is active.
    """

    X: Tensor
    features: Tensor
    coefficients: Tensor
    probabilities: Tensor


def feature_probabilities(n_features: int, n_active: float = 5.0, decay: float = 0.99) -> Tensor:
    """``p_i`` proportional to ``decay^i`` with ``sum_i p_i = n_active`` (clipped at 1)."""
    if n_features < 1:
        raise ValueError(f"n_features must be >= 1, got {n_features}")
    if not 0 < decay <= 1:
        raise ValueError(f"decay must be in (0, 1], got {decay}")
    if not 0 < n_active <= n_features:
        raise ValueError(f"n_active must be in (0, n_features={n_features}], got {n_active}")
    w = decay ** torch.arange(n_features, dtype=torch.float64)
    return (n_active * w / w.sum()).clamp(max=1.0)


def _random_correlation(n: int, rank: int, gen: torch.Generator) -> Tensor:
    """A random correlation matrix: low-rank Gaussian factors plus a diagonal, unit diagonal."""
    L = torch.randn(n, rank, generator=gen, dtype=torch.float64)
    C = L @ L.T + torch.eye(n, dtype=torch.float64)
    s = C.diagonal().rsqrt()
    return s[:, None] * C * s[None, :]


def make_sparse_features(
    n_samples: int,
    n_features: int = 512,
    d_model: int = 256,
    n_active: float = 5.0,
    decay: float = 0.99,
    correlated: bool = False,
    correlation_rank: int = 16,
    random_state: int = 0,
) -> SparseFeatureData:
    """Draw sparse superpositions of ground-truth features.

    Parameters
    ----------
    n_samples : int
    n_features : int
        Number of ground-truth features ``G`` (512 in Sharkey et al.).
    d_model : int
        Ambient dimension ``m`` (256 in Sharkey et al.).
    n_active : float
        Expected number of active features per sample.
    decay : float
        ``p_i`` is proportional to ``decay^i``.
    correlated : bool
        Draw activity through a Gaussian copula with a random correlation matrix.
    correlation_rank : int
        Rank of the random part of the correlation matrix (correlated variant).
    random_state : int

    Returns
    -------
    SparseFeatureData
    """
    if n_samples < 1 or d_model < 1:
        raise ValueError(f"need n_samples >= 1 and d_model >= 1, got {n_samples}, {d_model}")
    gen = torch.Generator().manual_seed(int(random_state))
    p = feature_probabilities(n_features, n_active, decay)
    features = torch.randn(n_features, d_model, generator=gen, dtype=torch.float64)
    features /= features.norm(dim=1, keepdim=True)
    if correlated:
        C = _random_correlation(n_features, correlation_rank, gen)
        chol = torch.linalg.cholesky(C)
        z = torch.randn(n_samples, n_features, generator=gen, dtype=torch.float64) @ chol.T
        u = torch.special.ndtr(z)  # uniform marginals, correlated
    else:
        u = torch.rand(n_samples, n_features, generator=gen, dtype=torch.float64)
    active = u < p[None, :]
    coef = torch.rand(n_samples, n_features, generator=gen, dtype=torch.float64) * active
    X = coef @ features
    return SparseFeatureData(X.float(), features.float(), coef.float(), p.float())


def expected_active(data: SparseFeatureData) -> float:
    """Measured mean number of active features per sample (check against ``n_active``)."""
    return float((data.coefficients > 0).sum(dim=1).double().mean())
