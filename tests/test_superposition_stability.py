"""Stability of p: comparing neighbouring sizes and estimating the number of features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomsae.superposition import make_sparse_features
from geomsae.superposition.stability import compare_sizes, stability_of_p


def _fake_dictionary(truth: torch.Tensor, p: int, gen: torch.Generator) -> torch.Tensor:
    """What an ideal SAE of size p learns: min(p, G) true features (noisy), the rest random."""
    G, d = truth.shape
    kept = truth[: min(p, G)] + 0.05 * torch.randn(min(p, G), d, generator=gen) / d**0.5
    extra = torch.randn(max(p - G, 0), d, generator=gen)
    D = torch.cat([kept, extra])
    return D[torch.randperm(p, generator=gen)]


@pytest.mark.parametrize(
    ("G", "sizes"), [(40, [16, 32, 64, 128, 256]), (100, [32, 64, 128, 256, 512])]
)
def test_compare_sizes_finds_the_plateau(G: int, sizes: list[int]) -> None:
    d = 64
    truth = torch.nn.functional.normalize(
        torch.randn(G, d, generator=torch.Generator().manual_seed(G))
    )
    seeds = [0, 1, 2]
    dirs = [
        [_fake_dictionary(truth, p, torch.Generator().manual_seed(100 * s + p)) for p in sizes]
        for s in seeds
    ]
    res = compare_sizes(dirs, sizes, seeds)
    expected = [min(p, G) for p in sizes[:-1]]
    np.testing.assert_array_equal(res.n_matched, np.tile(expected, (3, 1)))
    assert res.estimate == G and res.interval == (G, G) and res.saturated
    np.testing.assert_allclose(res.fraction_matched[0], np.minimum(1, G / np.array(sizes[:-1])))
    # same-size seeds agree on the true features only
    np.testing.assert_allclose(
        res.cross_seed_fraction, np.minimum(1, G / np.array(sizes)), atol=0.02
    )
    rows = res.curves()
    assert len(rows) == 4 and rows[0]["p"] == sizes[0] and rows[-1]["next p"] == sizes[-1]


def test_growth_at_the_largest_size_is_flagged_as_a_lower_bound() -> None:
    truth = torch.nn.functional.normalize(
        torch.randn(500, 64, generator=torch.Generator().manual_seed(0))
    )
    sizes = [32, 64, 128]
    dirs = [[_fake_dictionary(truth, p, torch.Generator().manual_seed(p)) for p in sizes]]
    res = compare_sizes(dirs, sizes, [0])
    assert not res.saturated and res.estimate == 64
    assert np.isnan(res.cross_seed_fraction).all()


def test_dead_features_are_left_out() -> None:
    # two sizes that share their first atoms exactly (same random init), which are dead
    g = torch.Generator().manual_seed(0)
    init = torch.randn(64, 16, generator=g)
    small, big = init[:32].clone(), init.clone()
    alive = [[np.arange(32) >= 28, np.arange(64) >= 60]]  # only 4 trained atoms each
    small[28:] = torch.randn(4, 16, generator=g)
    big[60:] = torch.randn(4, 16, generator=g)
    res_all = compare_sizes([[small, big]], [32, 64], [0])
    res_alive = compare_sizes([[small, big]], [32, 64], [0], alive=alive)
    assert res_all.n_matched[0, 0] >= 28  # the untrained copies would look "stable"
    assert res_alive.n_matched[0, 0] == 0 and res_alive.n_alive.tolist() == [[4, 4]]


def test_compare_sizes_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="increasing"):
        compare_sizes([[np.eye(3), np.eye(3)]], [3, 3], [0])
    with pytest.raises(ValueError, match=r"\[seed\]\[size\]"):
        compare_sizes([[np.eye(3)]], [3, 6], [0])
    with pytest.raises(ValueError, match="alive"):
        compare_sizes([[np.eye(3), np.eye(3)[:2]]], [3, 4], [0], alive=[[np.ones(3, bool)]])


def test_nothing_matched_is_not_saturated() -> None:
    g = torch.Generator().manual_seed(0)
    dirs = [[torch.randn(p, 64, generator=g) for p in (16, 32, 64)]]
    res = compare_sizes(dirs, [16, 32, 64], [0])
    assert res.estimate == 0 and not res.saturated


@pytest.mark.slow
def test_stability_of_p_recovers_the_number_of_synthetic_features(one_thread) -> None:
    from geomsae.sae import SAEConfig

    G = 48
    data = make_sparse_features(20_000, n_features=G, d_model=32, n_active=3, random_state=0)
    base = SAEConfig(
        d_in=32,
        arch="batchtopk",
        k=3,
        batch_size=512,
        train_tokens=400_000,
        lr=5e-3,
        init_samples=10_000,
    )
    run = stability_of_p(data.X, base, sizes=[24, 48, 96, 192], seeds=(0, 1), progress=False)
    res = run.result
    assert 0.75 * G <= res.estimate <= 1.25 * G, res.n_matched
    assert 0.75 * G <= res.interval[0] and res.interval[1] <= 1.25 * G
    assert res.saturated
    # below G the neighbours agree on most atoms; past G only ~G of the 2G atoms recur
    assert res.fraction_matched[:, 2].max() < 0.85
    assert len(run.dictionaries) == 2 and [d.n_features for d in run.dictionaries[0]] == [
        24,
        48,
        96,
        192,
    ]
    assert run.configs[1][2].seed == 1002
