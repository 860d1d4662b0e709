"""Superposition measures: feature dimensionality, dictionary comparison, toy models, stability.

- :func:`feature_dimensionality` -- ``D_i`` of any feature directions (Elhage et al. 2022).
- :func:`mmcs`, :func:`hungarian_match`, :func:`chance_mmcs` -- compare dictionaries.
- :func:`effective_features` -- ``exp(H(q))`` (Bereska et al. 2025).
- :func:`train_toy_models` -- Toy Models of Superposition, many instances at once.
- :func:`make_sparse_features` -- synthetic data with known features (Sharkey et al. 2022).
- :func:`stability_of_p` -- SAEs of several sizes; how many features recur (Sharkey et al. 2022).
"""

from geomsae.superposition.compare import (
    Matching,
    chance_mmcs,
    cosine_matrix,
    hungarian_match,
    max_cosine,
    mmcs,
    mmcs_both,
)
from geomsae.superposition.data import (
    SparseFeatureData,
    expected_active,
    feature_probabilities,
    make_sparse_features,
)
from geomsae.superposition.dimensionality import (
    STICKY_FRACTIONS,
    feature_dimensionality,
    sticky_counts,
    total_dimensionality,
)
from geomsae.superposition.effective import (
    effective_features,
    effective_features_from_means,
    mean_abs_activation,
)
from geomsae.superposition.stability import (
    DEFAULT_RATIOS,
    StabilityResult,
    StabilityRun,
    alive_features,
    compare_sizes,
    stability_of_p,
)
from geomsae.superposition.toy_model import (
    ToyModel,
    ToyModelResult,
    ToyTrainConfig,
    importance_decay,
    is_regular_polygon,
    train_toy_models,
)

__all__ = [
    "DEFAULT_RATIOS",
    "StabilityResult",
    "StabilityRun",
    "alive_features",
    "compare_sizes",
    "stability_of_p",
    "Matching",
    "STICKY_FRACTIONS",
    "SparseFeatureData",
    "ToyModel",
    "ToyModelResult",
    "ToyTrainConfig",
    "chance_mmcs",
    "cosine_matrix",
    "effective_features",
    "effective_features_from_means",
    "expected_active",
    "feature_dimensionality",
    "feature_probabilities",
    "hungarian_match",
    "importance_decay",
    "is_regular_polygon",
    "make_sparse_features",
    "max_cosine",
    "mean_abs_activation",
    "mmcs",
    "mmcs_both",
    "sticky_counts",
    "total_dimensionality",
    "train_toy_models",
]
