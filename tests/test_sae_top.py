"""Top activations of dictionary features and the token-purity proxy, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae.sae import SAEConfig, build_sae
from geomsae.sae.top import TopActivations, token_purity, top_activations


def _sae():
    torch.manual_seed(0)
    return build_sae(SAEConfig(arch="relu", d_in=10, n_features=30, seed=0))


@pytest.mark.parametrize("features", [None, [4, 0, 17]])
def test_top_activations_match_a_full_sort(features) -> None:
    sae = _sae()
    x = torch.randn(1000, 10)
    top = top_activations(sae, x, m=7, features=features, batch_size=128)
    codes = sae.encode(x).detach().numpy()
    feats = np.arange(30) if features is None else np.asarray(features)
    assert top.values.shape == top.rows.shape == (7, len(feats))
    for c, j in enumerate(feats):
        expected = np.sort(codes[:, j])[::-1][:7]
        np.testing.assert_allclose(top.values[:, c], expected, rtol=1e-6)
        np.testing.assert_allclose(codes[top.rows[:, c], j], top.values[:, c], rtol=1e-6)


def test_token_purity_counts_the_modal_token() -> None:
    rows = np.array([[0, 3, 5], [1, 4, -1], [2, 6, -1], [7, 8, -1]])
    ninf = -np.inf
    values = np.array([[3.0, 2.0, 1.0], [2.0, 1.0, ninf], [1.0, 0.5, ninf], [0.5, 0.0, ninf]])
    token_ids = np.array([11, 11, 12, 13, 14, 99, 13, 11, 13])
    top = TopActivations(np.arange(3), values, rows)
    # col 0: tokens 11, 11, 12, 11 -> 3/4; col 1: rows 3, 4, 6 positive -> 13, 14, 13 -> 2/3
    # (row 8 has activation 0 and does not count); col 2: one positive row -> 1
    np.testing.assert_allclose(token_purity(top, token_ids), [0.75, 2 / 3, 1.0])


def test_top_activations_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match="d_in=12"):
        top_activations(_sae(), torch.randn(5, 12), m=2)
