"""Toy Models of Superposition: a pentagon when sparse, two orthogonal features when dense."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae.superposition import (
    ToyTrainConfig,
    importance_decay,
    is_regular_polygon,
    train_toy_models,
)
from geomsae.superposition.toy_model import ToyModel

# 4k steps at lr 1e-2 reach the same geometry as Elhage et al.'s 10k steps at 1e-3 here.
FAST = ToyTrainConfig(steps=4000, batch_size=1024, lr=1e-2)
N_SEEDS = 3


@pytest.fixture(scope="module")
def five_in_two():
    """3 seeds at 1 - S = 0.02 and 3 seeds at S = 0, trained as 6 instances of one model."""
    prob = [0.02] * N_SEEDS + [1.0] * N_SEEDS
    return train_toy_models(5, 2, prob, importance=importance_decay(5), config=FAST, random_state=0)


def test_pentagon_at_high_sparsity(five_in_two) -> None:
    sparse = five_in_two.W[:N_SEEDS]
    pentagons = [is_regular_polygon(W, 5) for W in sparse]
    assert sum(pentagons) >= 2, five_in_two.dimensionality[:N_SEEDS]
    for k in np.flatnonzero(pentagons):
        np.testing.assert_allclose(five_in_two.dimensionality[k], 2 / 5, atol=0.03)


def test_dense_keeps_the_two_most_important_features_orthogonal(five_in_two) -> None:
    ok = 0
    for W in five_in_two.W[N_SEEDS:]:
        norms = np.linalg.norm(W, axis=0)
        cos = W[:, 0] @ W[:, 1] / (norms[0] * norms[1])
        ok += bool(np.all(norms[:2] > 0.9) and np.all(norms[2:] < 0.2) and abs(cos) < 0.1)
    assert ok >= 2, five_in_two.norms[N_SEEDS:]
    np.testing.assert_allclose(five_in_two.dimensionality[N_SEEDS:, :2], 1.0, atol=0.1)


def test_linear_model_keeps_top_features_even_when_sparse() -> None:
    # the linear baseline never superposes: it learns the top-m principal features at any S
    res = train_toy_models(
        5,
        2,
        [0.02, 0.02],
        importance=importance_decay(5),
        activation="linear",
        config=FAST,
        random_state=1,
    )
    assert res.activation == "linear"
    for D, norms in zip(res.dimensionality, res.norms):
        assert np.all(norms[:2] > 0.8) and np.all(norms[2:] < 0.3), norms
        np.testing.assert_allclose(D[:2], 1.0, atol=0.1)


def test_instances_are_independent() -> None:
    cfg = ToyTrainConfig(steps=50, batch_size=64)
    both = train_toy_models(4, 2, [0.1, 0.1], config=cfg, random_state=3)
    assert both.W.shape == (2, 2, 4) and both.b.shape == (2, 4) and both.loss.shape == (2,)
    assert not np.allclose(both.W[0], both.W[1])  # different initialisations = different seeds
    # the loss of one instance sends no gradient to another
    model = ToyModel(3, 4, 2, generator=torch.Generator().manual_seed(0))
    x = torch.rand(8, 3, 4)
    ((x - model(x)) ** 2)[:, 1].sum().backward()
    assert torch.all(model.W.grad[[0, 2]] == 0) and torch.any(model.W.grad[1] != 0)


def test_polygon_checker_rejects_irregular_shapes() -> None:
    a = 2 * np.pi * np.arange(5) / 5
    pent = np.stack([np.cos(a), np.sin(a)])
    assert is_regular_polygon(pent, 5)
    assert not is_regular_polygon(pent, 4)
    squashed = pent * np.array([[1.0], [0.6]])
    assert not is_regular_polygon(squashed, 5)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"feature_probability": [0.0]},
        {"feature_probability": []},
        {"feature_probability": [0.1], "importance": np.ones(3)},
        {"feature_probability": [0.1], "activation": "gelu"},
    ],
)
def test_toy_model_rejects_bad_input(kwargs) -> None:
    with pytest.raises(ValueError):
        train_toy_models(5, 2, config=ToyTrainConfig(steps=1), **kwargs)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_toy_models_train_on_cuda() -> None:
    res = train_toy_models(
        5, 2, [0.02] * 3, importance=importance_decay(5), config=FAST, random_state=0, device="cuda"
    )
    assert sum(is_regular_polygon(W, 5) for W in res.W) >= 2
