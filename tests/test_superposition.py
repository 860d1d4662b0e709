"""geomsae.superposition: D_i on exact polytopes, MMCS and matching, effective features, data."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from geomsae.superposition import (
    chance_mmcs,
    effective_features,
    effective_features_from_means,
    expected_active,
    feature_dimensionality,
    hungarian_match,
    make_sparse_features,
    max_cosine,
    mmcs,
    mmcs_both,
    sticky_counts,
    total_dimensionality,
)


def polygon(k: int) -> np.ndarray:
    a = 2 * np.pi * np.arange(k) / k
    return np.stack([np.cos(a), np.sin(a)], axis=1)


def tetrahedron() -> np.ndarray:
    return np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]], float) / np.sqrt(3)


def tight_square_antiprism() -> np.ndarray:
    h = 1 / np.sqrt(3)  # vertex height that makes the frame tight
    r = np.sqrt(1 - h**2)
    a = np.pi / 2 * np.arange(4)
    top = np.stack([r * np.cos(a), r * np.sin(a), np.full(4, h)], axis=1)
    bottom = np.stack([r * np.cos(a + np.pi / 4), r * np.sin(a + np.pi / 4), np.full(4, -h)], 1)
    return np.concatenate([top, bottom])


@pytest.mark.parametrize(
    ("W", "expected"),
    [
        (np.eye(4), 1.0),
        (polygon(2), 1 / 2),  # antipodal pair
        (polygon(3), 2 / 3),
        (polygon(4), 1 / 2),
        (polygon(5), 2 / 5),
        (polygon(6), 1 / 3),
        (tetrahedron(), 3 / 4),
        (tight_square_antiprism(), 3 / 8),
        (7.5 * polygon(5), 2 / 5),  # equal rescaling leaves D unchanged
    ],
    ids=[
        "orthogonal",
        "antipodal",
        "triangle",
        "square",
        "pentagon",
        "hexagon",
        "tetrahedron",
        "antiprism",
        "pentagon-rescaled",
    ],
)
def test_dimensionality_of_tight_frames(W: np.ndarray, expected: float) -> None:
    D = feature_dimensionality(W)
    assert D.shape == (W.shape[0],)
    np.testing.assert_allclose(D, expected, atol=1e-12)


def test_dimensionality_of_a_polytope_embedded_in_a_larger_space() -> None:
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(10, 3)))
    np.testing.assert_allclose(feature_dimensionality(tetrahedron() @ Q.T), 3 / 4, atol=1e-12)


def test_unequal_norms_change_dimensionality() -> None:
    # antipodal pair with norms a and b: D_1 = a^2 / (a^2 + b^2), not 1/2
    W = np.array([[2.0, 0.0], [-1.0, 0.0]])
    np.testing.assert_allclose(feature_dimensionality(W), [4 / 5, 1 / 5], atol=1e-12)


def test_zero_vectors_get_zero_and_do_not_disturb_others() -> None:
    W = np.concatenate([polygon(5), np.zeros((3, 2))])
    D = feature_dimensionality(W)
    np.testing.assert_allclose(D, [0.4] * 5 + [0.0] * 3, atol=1e-12)
    np.testing.assert_array_equal(feature_dimensionality(np.zeros((4, 3))), np.zeros(4))


def test_blocking_and_torch_input_agree() -> None:
    W = torch.randn(1000, 16, generator=torch.Generator().manual_seed(0))
    a = feature_dimensionality(W, block_size=37)
    b = feature_dimensionality(W.numpy().astype(np.float64), block_size=4096)
    np.testing.assert_allclose(a, b, rtol=1e-5)
    # against the direct O(n^2) definition
    Wd = W.double().numpy()
    unit = Wd / np.linalg.norm(Wd, axis=1, keepdims=True)
    direct = (Wd**2).sum(1) / ((unit @ Wd.T) ** 2).sum(1)
    np.testing.assert_allclose(a, direct, rtol=1e-6)


@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 40), m=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_dimensionality_bounds(n: int, m: int, seed: int) -> None:
    W = np.random.default_rng(seed).normal(size=(n, m)) * np.random.default_rng(seed + 1).uniform(
        0.1, 3, size=(n, 1)
    )
    D = feature_dimensionality(W)
    assert np.all(D >= 0) and np.all(D <= 1 + 1e-12)
    assert D.sum() <= m + 1e-9


def test_total_and_sticky_counts() -> None:
    W = np.concatenate([np.pad(polygon(5), ((0, 0), (0, 2))), np.pad(np.eye(2), ((0, 0), (2, 0)))])
    assert total_dimensionality(W) == pytest.approx(4.0)
    counts = sticky_counts(feature_dimensionality(W))
    assert counts["2/5"] == 5 and counts["1"] == 2 and counts["0"] == 0


@pytest.mark.parametrize("bad", [np.zeros(3), np.zeros((0, 3)), np.full((2, 2), np.nan), [[1, 2]]])
def test_dimensionality_rejects_bad_input(bad) -> None:
    with pytest.raises(ValueError, match="W"):
        feature_dimensionality(bad)


# ---------------------------------------------------------------------- MMCS and matching
def test_mmcs_of_a_dictionary_with_itself_is_one() -> None:
    A = torch.randn(300, 32, generator=torch.Generator().manual_seed(1))
    assert mmcs(A, A) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(A, -A) == pytest.approx(1.0, abs=1e-6)
    assert mmcs(A, -A, absolute=False) < 0.9
    # a permuted, rescaled copy matches one-to-one, every pair above 0.99
    perm = torch.randperm(300, generator=torch.Generator().manual_seed(2))
    match = hungarian_match(A, 3.0 * A[perm])
    assert match.fraction_matched == 1.0
    np.testing.assert_array_equal(perm[match.cols].numpy(), match.rows)


@pytest.mark.parametrize(("d", "n", "published"), [(256, 512, 0.19), (32, 64, 0.42)])
def test_random_dictionaries_sit_at_chance(d: int, n: int, published: float) -> None:
    g = torch.Generator().manual_seed(d)
    values = [
        mmcs(torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)) for _ in range(4)
    ]
    analytic = chance_mmcs(d, n)
    # Monte Carlo over 4 pairs of random dictionaries (4n atoms): std of the mean << 0.01
    assert np.mean(values) == pytest.approx(analytic, abs=0.01)
    # REFERENCE quotes ~0.19 and ~0.42; the exact |cos| values are 0.201 and 0.443 and the
    # signed-cosine values 0.189 and 0.404: both within 0.03 of the quoted numbers.
    assert analytic == pytest.approx(published, abs=0.03)
    assert chance_mmcs(d, n, absolute=False) == pytest.approx(published, abs=0.03)
    assert chance_mmcs(d, n, absolute=False) < analytic


def test_signed_chance_matches_monte_carlo() -> None:
    g = torch.Generator().manual_seed(5)
    A, B = torch.randn(2000, 32, generator=g), torch.randn(64, 32, generator=g)
    assert max_cosine(A, B, absolute=False).mean() == pytest.approx(
        chance_mmcs(32, 64, absolute=False), abs=0.01
    )


def test_mmcs_is_directional_and_matching_is_one_to_one() -> None:
    g = torch.Generator().manual_seed(3)
    small = torch.randn(20, 64, generator=g)
    big = torch.cat([small, torch.randn(80, 64, generator=g)])
    ab, ba = mmcs_both(small, big)
    assert ab == pytest.approx(1.0) and ba < 0.5
    # duplicates: B holds 10 copies of one atom; only one copy can be matched to it
    dup = small[:1].repeat(10, 1)
    m = hungarian_match(dup, small)
    assert m.n_matched == 1 and m.fraction_matched == pytest.approx(0.1)


def test_compare_rejects_mismatched_spaces() -> None:
    with pytest.raises(ValueError, match="same space"):
        mmcs(np.ones((3, 4)), np.ones((3, 5)))
    with pytest.raises(ValueError, match="threshold"):
        hungarian_match(np.eye(3), np.eye(3), threshold=1.5)


# ---------------------------------------------------------------------- effective features
def test_effective_features_closed_forms() -> None:
    assert effective_features(np.ones((7, 5))) == pytest.approx(5.0)
    one_hot = np.zeros((7, 5))
    one_hot[:, 2] = 3.0
    assert effective_features(one_hot) == pytest.approx(1.0)
    # q = (1/2, 1/4, 1/4, 0): H = 1.5 log 2, dead feature ignored
    assert effective_features_from_means([2.0, 1.0, 1.0, 0.0]) == pytest.approx(2**1.5)
    # signs do not matter (|activation|)
    assert effective_features(-np.ones((3, 4))) == pytest.approx(4.0)
    with pytest.raises(ValueError, match="zero"):
        effective_features(np.zeros((3, 4)))


# ---------------------------------------------------------------------- synthetic data
@pytest.mark.parametrize("correlated", [False, True])
def test_sparse_feature_data(correlated: bool) -> None:
    data = make_sparse_features(
        20000, n_features=64, d_model=16, n_active=5, correlated=correlated, random_state=0
    )
    assert data.X.shape == (20000, 16) and data.features.shape == (64, 16)
    torch.testing.assert_close(data.features.norm(dim=1), torch.ones(64))
    torch.testing.assert_close(data.X, data.coefficients @ data.features, atol=1e-5, rtol=1e-5)
    assert data.probabilities.sum().item() == pytest.approx(5.0, rel=1e-5)
    assert torch.all(data.probabilities[1:] < data.probabilities[:-1])  # p_i ~ 0.99^i
    assert expected_active(data) == pytest.approx(5.0, rel=0.03)
    freq = (data.coefficients > 0).float().mean(dim=0)
    torch.testing.assert_close(freq, data.probabilities, atol=0.015, rtol=0)  # marginals kept
    active = data.coefficients[data.coefficients > 0]
    assert 0.45 < active.mean().item() < 0.55 and active.max().item() <= 1.0  # U[0, 1]
    on = (data.coefficients > 0).float()
    corr = torch.corrcoef(on.T)
    off_diag = corr[~torch.eye(64, dtype=torch.bool)].abs().mean().item()
    if correlated:
        assert off_diag > 0.04
    else:
        assert off_diag < 0.02


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    W = torch.randn(3000, 48, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(
        feature_dimensionality(W.cuda(), block_size=500), feature_dimensionality(W), rtol=1e-6
    )
    B = torch.randn(700, 48, generator=torch.Generator().manual_seed(1))
    np.testing.assert_allclose(max_cosine(W.cuda(), B.cuda()), max_cosine(W, B), atol=1e-5)
    assert hungarian_match(W[:50].cuda(), W[:50].cuda()).fraction_matched == 1.0


def test_random_directions_have_the_isotropic_dimensionality() -> None:
    # for p isotropic random directions in d dims, sum_j (u . W_j)^2 ~ 1 + (p - 1) / d
    W = torch.randn(4000, 50, generator=torch.Generator().manual_seed(4))
    D = feature_dimensionality(W)
    assert D.mean() == pytest.approx(50 / (50 + 3999), rel=0.03)


def test_histogram_marks_the_sticky_fractions() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from geomsae.superposition.plots import plot_dimensionality_histogram

    fig = plot_dimensionality_histogram(feature_dimensionality(polygon(5)))
    ax = fig.axes[0]
    xs = sorted(float(line.get_xdata()[0]) for line in ax.get_lines())
    np.testing.assert_allclose(xs, sorted([1, 3 / 4, 2 / 3, 1 / 2, 2 / 5, 3 / 8]))
    assert {t.get_text() for t in ax.texts} == {"1", "3/4", "2/3", "1/2", "2/5", "3/8"}
    plt.close(fig)
