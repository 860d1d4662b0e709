"""geomsae.neighbors: exact k-NN and radius graphs against brute force and scikit-learn."""

from __future__ import annotations

import logging
import math
import re

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist
from sklearn.neighbors import NearestNeighbors

from geomsae.neighbors import (
    Neighbors,
    check_no_duplicates,
    check_points,
    deduplicate,
    find_duplicates,
    knn,
    radius_neighbors,
)


def _brute(X, Y=None, k=3):
    D = cdist(X, X if Y is None else Y)
    if Y is None:
        np.fill_diagonal(D, np.inf)
    idx = np.argsort(D, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, idx, 1), idx


@pytest.mark.parametrize("block_size", [None, 1, 7])
def test_knn_matches_brute_force(block_size):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 13))
    nb = knn(X, 5, block_size=block_size)
    d, i = _brute(X, k=5)
    assert isinstance(nb, Neighbors)
    assert nb.distances.dtype == np.float64 and nb.indices.dtype == np.int64
    np.testing.assert_allclose(nb.distances, d, atol=1e-12)
    np.testing.assert_array_equal(nb.indices, i)
    assert not (nb.indices == np.arange(200)[:, None]).any()  # never its own neighbour


def test_knn_matches_sklearn_and_rows_sorted():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 40)) + 100.0  # far from the origin: the expansion must stay exact
    nb = knn(X, 8)
    d, _ = NearestNeighbors(n_neighbors=9).fit(X).kneighbors(X)
    np.testing.assert_allclose(nb.distances, d[:, 1:], rtol=1e-10)
    assert (np.diff(nb.distances, axis=1) >= 0).all()


def test_knn_with_reference_set_and_query_indices():
    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(30, 4)), rng.normal(size=(50, 4))
    nb = knn(X, 4, Y=Y)
    d, i = _brute(X, Y, k=4)
    np.testing.assert_array_equal(nb.indices, i)
    np.testing.assert_allclose(nb.distances, d, atol=1e-12)
    q = knn(Y, 3, query_indices=[4, 10])
    full = knn(Y, 3)
    np.testing.assert_array_equal(q.indices, full.indices[[4, 10]])


def test_float32_screening_gives_the_same_answer():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 30))
    a, b = knn(X, 10), knn(X, 10, screen_dtype=torch.float32, block_size=64)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, atol=1e-12)


def _clusters(per_cluster):
    """Tight clusters (spread 1e-2) far from each other (~1e3): low-precision rounding (~1e-4
    of the squared norms in float32) cannot rank points inside a cluster."""
    rng = np.random.default_rng(7)
    centres = np.repeat(rng.normal(size=(5, 4)) * 1e3, per_cluster, axis=0)
    return centres + rng.normal(size=(5 * per_cluster, 4)) * 1e-2


def _spy_blocks(monkeypatch):
    """Record (screen dtype, rows, uncertified rows) of every brute-force block."""
    import geomsae.neighbors.brute as nbm

    calls, block = [], nbm._knn_block

    def spy(*args, **kwargs):
        out = block(*args, **kwargs)
        calls.append((args[3], args[0].shape[0], int((~out[2]).sum())))
        return out

    monkeypatch.setattr(nbm, "_knn_block", spy)
    return calls


def test_uncertified_rows_fall_back_to_float64(monkeypatch):
    # no row can be certified in float32, all are redone in float64: the float64 answer
    X = _clusters(60)
    calls = _spy_blocks(monkeypatch)
    a = knn(X, 2, screen_dtype=torch.float32)
    monkeypatch.undo()
    assert calls[0] == (torch.float32, 300, 300) and calls[1][0] == torch.float64
    b = knn(X, 2, screen_dtype=torch.float64)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-9)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_screen_keys_are_lower_bounds_of_every_squared_distance(dtype):
    from geomsae.neighbors.brute import Reference

    rng = np.random.default_rng(11)
    X = rng.normal(size=(300, 96)) * rng.lognormal(0, 1.5, size=(300, 1))  # norms over ~1e3
    X[:5] *= 300.0  # outlier norms, as residual streams have
    X[5:10] = X[10:15] + 1e-6  # near-duplicates
    ref = Reference.of(torch.from_numpy(X))
    screen = ref.screen(dtype)
    Qc = ref.X[::3]
    q_sq = (Qc * Qc).sum(1)
    lower = screen.shifted(Qc).double() + q_sq[:, None] - screen.error_bound(q_sq)[:, None]
    exact = torch.cdist(Qc, ref.X, compute_mode="donot_use_mm_for_euclid_dist") ** 2
    assert bool((lower <= exact * (1 + 1e-12) + 1e-12).all())
    assert float((exact - lower).max()) < 0.05 * float(exact.max())  # and not vacuous


@pytest.mark.parametrize("k", [1, 5, 20])
def test_bfloat16_screening_gives_the_same_answer(k):
    rng = np.random.default_rng(12)
    X = rng.normal(size=(1200, 80)) @ rng.normal(size=(80, 80)) + 30.0
    X[:20] *= 5.0  # a few large norms
    a = knn(X, k, screen_dtype=torch.float64)
    b = knn(X, k, screen_dtype=torch.bfloat16, block_size=100)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12, atol=1e-12)
    q = knn(X, k, screen_dtype=torch.bfloat16, query_indices=np.arange(0, 1200, 7))
    np.testing.assert_array_equal(q.indices, a.indices[::7])


def test_bfloat16_rows_it_cannot_certify_cascade_to_float32_then_float64(monkeypatch):
    X = _clusters(60)
    calls = _spy_blocks(monkeypatch)
    a = knn(X, 2, screen_dtype=torch.bfloat16)
    monkeypatch.undo()
    assert [c[0] for c in calls] == [torch.bfloat16, torch.float32, torch.float64]
    assert calls[0][1] == 300
    b = knn(X, 2, screen_dtype=torch.float64)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-9)


def test_blocks_after_one_the_screen_cannot_certify_start_a_precision_up(monkeypatch):
    X = _clusters(120)
    calls = _spy_blocks(monkeypatch)
    a = knn(X, 2, screen_dtype=torch.bfloat16, block_size=200)
    monkeypatch.undo()
    # block 1 fails in bf16: the pass stops, and its uncertified rows with the two untried
    # blocks (all 600 rows) go to fp32 together; that pass fails on its first block too, and
    # the rest (its uncertified rows, then the untried 400) to fp64, in blocks of 200
    bf, f32, f64 = torch.bfloat16, torch.float32, torch.float64
    assert [c[:2] for c in calls] == [(bf, 200), (f32, 200), (f64, 200), (f64, 200), (f64, 200)]
    assert calls[1][2] == 200  # no row certified in fp32 either
    np.testing.assert_array_equal(a.indices, knn(X, 2, screen_dtype=torch.float64).indices)


def test_automatic_screen_matches_float64_on_a_wide_reference_set():
    X = np.random.default_rng(8).normal(size=(2500, 20))  # 2500 >= 400 * 5: float32 screen
    a, b = knn(X, 1), knn(X, 1, screen_dtype=torch.float64)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12)


def test_duplicates_come_back_at_exact_zero():
    rng = np.random.default_rng(4)
    X = rng.normal(size=(50, 6)) * 1e3
    X[10] = X[3]
    nb = knn(X, 2)
    assert nb.indices[3, 0] == 10 and nb.indices[10, 0] == 3
    assert nb.distances[3, 0] == 0.0 and nb.distances[10, 0] == 0.0


def test_torch_in_torch_out():
    X = torch.randn(60, 5, dtype=torch.float32)
    nb = knn(X, 3)
    assert isinstance(nb.distances, torch.Tensor) and nb.distances.dtype == torch.float64
    assert nb.indices.dtype == torch.int64 and nb.indices.device == X.device
    ref = knn(X.double().numpy(), 3)
    np.testing.assert_array_equal(nb.indices.numpy(), ref.indices)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_knn_on_gpu_matches_cpu():
    X = torch.randn(500, 20, dtype=torch.float64)
    g = knn(X.cuda(), 6)
    assert g.indices.is_cuda
    np.testing.assert_array_equal(g.indices.cpu().numpy(), knn(X, 6).indices.numpy())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_screens_on_gpu_match_cpu(dtype):
    rng = np.random.default_rng(14)
    X = torch.from_numpy(rng.normal(size=(3000, 96)) * rng.lognormal(0, 1, size=(3000, 1)))
    cpu = knn(X, 10, screen_dtype=torch.float64)
    gpu = knn(X.cuda(), 10, screen_dtype=dtype, block_size=700)
    assert torch.equal(gpu.indices.cpu(), cpu.indices)
    torch.testing.assert_close(gpu.distances.cpu(), cpu.distances, rtol=1e-12, atol=1e-12)
    r = float(cpu.distances[:, 4].median())
    a = radius_neighbors(X, r, method="brute")
    b = radius_neighbors(X, r, method="brute", device="cuda")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-12)


def test_radius_neighbors_matches_brute_force_and_keeps_explicit_zeros():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(150, 3))
    X[20] = X[7]
    G = radius_neighbors(X, 0.8, block_size=16)
    ref = NearestNeighbors(radius=0.8).fit(X).radius_neighbors_graph(X, mode="distance")
    assert G.nnz == ref.nnz - 150  # sklearn stores the diagonal; we do not
    assert G.shape == (150, 150)
    D = cdist(X, X)
    np.fill_diagonal(D, np.inf)
    assert G.nnz == int((D <= 0.8).sum())
    assert G.has_canonical_format or G.has_sorted_indices
    np.testing.assert_allclose(G.toarray(), np.where(D <= 0.8, D, 0.0), atol=1e-12)
    assert (G[7].indices == 20).any() and G[7, 20] == 0.0  # explicit zero is stored
    assert (abs(G - G.T)).max() == 0


def test_radius_neighbors_cap():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(100, 2))
    G = radius_neighbors(X, 10.0, max_neighbors=4)
    assert np.diff(G.indptr).max() <= 4
    np.testing.assert_allclose(np.sort(G[0].data), knn(X, 4).distances[0], atol=1e-12)


@pytest.mark.parametrize("cap", [None, 3])
def test_screened_brute_radius_graph_equals_the_float64_expansion(monkeypatch, cap):
    import geomsae.neighbors.radius as rad

    rng = np.random.default_rng(13)
    X = rng.normal(size=(700, 80)) @ rng.normal(size=(80, 80)) + 20.0
    X[:10] *= 6.0  # outlier norms
    X[50] = X[40]  # a duplicate: an explicit zero
    r = float(np.median(knn(X, 5).distances[:, -1]))
    screened = radius_neighbors(X, r, max_neighbors=cap, method="brute", block_size=128)
    monkeypatch.setattr(rad, "auto_screen_dtype", lambda *a: torch.float64)
    exact = radius_neighbors(X, r, max_neighbors=cap, method="brute", block_size=128)
    monkeypatch.undo()
    monkeypatch.setattr(rad, "_MAX_CANDIDATES_PER_ROW", 0)  # every block falls back
    fallback = radius_neighbors(X, r, max_neighbors=cap, method="brute", block_size=128)
    for G in (screened, fallback):
        np.testing.assert_array_equal(G.indptr, exact.indptr)
        np.testing.assert_array_equal(G.indices, exact.indices)
        np.testing.assert_allclose(G.data, exact.data, rtol=1e-12, atol=1e-12)
    assert screened[40, 50] == 0.0 and 50 in screened[40].indices
    assert exact.nnz > 2 * len(X)  # the radius is not vacuous


def test_find_and_remove_duplicates():
    X = np.array([[0.0, 1.0], [2.0, 3.0], [0.0, 1.0], [-0.0, 1.0], [5.0, 5.0]])
    dup = [False, False, True, True, False]
    np.testing.assert_array_equal(find_duplicates(X), dup)
    Xu, kept = deduplicate(X)
    np.testing.assert_array_equal(kept, [0, 1, 4])
    assert Xu.shape == (3, 2)
    with pytest.raises(ValueError, match="deduplicate"):
        check_no_duplicates(X)
    check_no_duplicates(Xu)
    Xt, kept_t = deduplicate(torch.tensor(X))
    assert isinstance(Xt, torch.Tensor) and Xt.shape == (3, 2)
    for dtype in (torch.bfloat16, torch.float16):  # no numpy dtype of their own
        np.testing.assert_array_equal(find_duplicates(torch.tensor(X, dtype=dtype)), dup)


def test_find_duplicates_in_sparse_rows_and_past_the_column_sample():
    """Rows equal on the 64 sampled columns (sparse codes) but not elsewhere are not duplicates."""
    rng = np.random.default_rng(15)
    S = np.zeros((300, 500))
    S[np.arange(300), rng.integers(0, 500, 300)] = rng.normal(size=300)  # one-hot-ish rows
    S[20] = S[10]
    S[40] = S[30]
    # most rows are all zero on the 64 hashed columns (0, 8, 16, ...): they collide in the
    # first hash and must be told apart by the full one
    expected = np.zeros(300, dtype=bool)
    for i in range(300):  # brute force
        expected[i] = any(np.array_equal(S[i], S[j]) for j in range(i))
    np.testing.assert_array_equal(find_duplicates(S), expected)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros(5), "2-D.*reshape"),
        (np.array([[0.0, np.nan], [1.0, 2.0]]), "NaN or Inf"),
        (np.array([[0.0, np.inf], [1.0, 2.0]]), "NaN or Inf"),
        (np.zeros((3, 0)), "no features"),
    ],
)
def test_bad_input_is_named(bad, match):
    with pytest.raises(ValueError, match=match):
        check_points(bad)
    with pytest.raises(ValueError, match=match):
        knn(bad, 1)


def test_finite_check_survives_an_overflowing_sum():
    import warnings

    big = np.full((4, 3), 1e308)  # finite, but the entries sum to inf
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no RuntimeWarning about it in a notebook
        assert check_points(big) is big
    assert check_points(torch.tensor(big)).shape == (4, 3)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_points(torch.tensor([[1.0, -np.inf], [np.inf, 2.0]]))  # the sum is NaN


def test_residual_norms_by_subtraction_match_explicit_ones():
    from geomsae.neighbors.plan import residual_sq

    rng = np.random.default_rng(5)
    Vt = torch.from_numpy(np.linalg.qr(rng.normal(size=(40, 3)))[0].T.copy())
    noise = np.r_[np.zeros(50), np.full(10, 1e-6), np.full(140, 0.05)][:, None]
    X = rng.normal(size=(200, 3)) @ Vt.numpy() + noise * rng.normal(size=(200, 40))
    Xc = torch.from_numpy(X)  # rows 0-49 in the span, 50-59 almost: the explicit branch
    P = Xc @ Vt.T
    explicit = ((Xc - P @ Vt) ** 2).sum(1)
    x_sq = (Xc * Xc).sum(1)
    assert bool((explicit[60:] > 1e-3 * x_sq[60:]).all())  # these take the subtraction
    got = residual_sq(Xc, P, Vt, x_sq)
    np.testing.assert_allclose(got[50:], explicit[50:], rtol=1e-9)
    np.testing.assert_allclose(got[:50], explicit[:50], rtol=0, atol=1e-28)


def test_too_many_neighbours():
    with pytest.raises(ValueError, match="n_neighbors=5 but only 4"):
        knn(np.eye(5), 5)
    with pytest.raises(ValueError, match="positive integer"):
        knn(np.eye(5), 0)


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(3, 40),
    dim=st.integers(1, 6),
    k=st.integers(1, 5),
    seed=st.integers(0, 2**31 - 1),
    shift=st.floats(-1e3, 1e3),
)
def test_property_knn_is_brute_force(n, dim, k, seed, shift):
    k = min(k, n - 1)
    X = np.random.default_rng(seed).normal(size=(n, dim)) + shift
    nb = knn(X, k, block_size=5)
    d, _ = _brute(X, k=k)
    np.testing.assert_allclose(nb.distances, d, rtol=1e-9, atol=1e-9)
    # indices must be consistent with the distances they report
    np.testing.assert_allclose(
        np.linalg.norm(X[nb.indices] - X[:, None, :], axis=-1), nb.distances, atol=1e-9
    )


def test_distances_of_close_pairs_keep_their_digits():
    # two short, far-apart segments of a line in R^128: neighbours at ~1e-3 of the (centred)
    # norms, where the float64 expansion |q|^2 + |r|^2 - 2 q.r alone loses ~6 digits
    t = np.concatenate([np.linspace(0.0, 0.07, 100), 1.0 + np.linspace(0.0, 0.07, 100)])
    basis = np.random.default_rng(11).normal(size=(1, 128))
    X = 50.0 + t[:, None] @ basis
    want = np.sort(cdist(X, X), axis=1)[:, 1:6]
    for method in ("brute", "projected"):
        np.testing.assert_allclose(knn(X, 5, method=method).distances, want, rtol=1e-10)


# ------------------------------------------------------------------------ projected screen


def _low_rank(n, d=6, D=80, noise=0.01, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    basis = np.linalg.qr(rng.normal(size=(D, d)))[0]
    return rng.normal(size=(n, d)) @ basis.T + noise * rng.normal(size=(n, D)) + shift


@pytest.mark.parametrize("k", [1, 2, 10, 30])
def test_projected_equals_brute_force(k):
    X = _low_rank(1500, shift=50.0)  # far from the origin: centring must keep it exact
    a = knn(X, k, method="brute", screen_dtype=torch.float64)
    b = knn(X, k, method="projected", block_size=100)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12, atol=1e-12)


def test_projected_is_exact_where_the_bound_is_useless():
    # isotropic data: the projection excludes almost nothing; rows are screened again with
    # (nearly) all points as candidates, and the rest fall back to brute force
    X = np.random.default_rng(1).normal(size=(600, 40))
    a, b = knn(X, 5, method="brute"), knn(X, 5, method="projected")
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12)


@pytest.mark.parametrize(
    "kw", [{}, {"query_indices": np.arange(0, 1500, 3)}, {"Y": "self"}], ids=["self", "qi", "Y"]
)
def test_projected_screens_uncertified_rows_again(caplog, kw):
    # points far off the principal subspace, in random directions: their bound is loose
    X = _low_rank(1500, seed=6)
    X[:12] += 3.0 * np.random.default_rng(7).normal(size=(12, X.shape[1]))
    kw = {"Y": X.copy()} if kw.get("Y") == "self" else kw
    with caplog.at_level(logging.DEBUG, logger="geomsae.neighbors.projected"):
        b = knn(X, 5, method="projected", **kw)
    again = re.search(r"(\d+) of \d+ rows screened again with \d+ candidates, (\d+) certified",
                      caplog.text)  # fmt: skip
    assert again and int(again.group(2)) > 0  # the second screen certified some rows
    a = knn(X, 5, method="brute", screen_dtype=torch.float64, **kw)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12, atol=1e-12)


def test_projected_with_no_queries_and_inputs_that_require_grad():
    X = _low_rank(300, seed=8)
    nb = knn(X, 3, query_indices=np.array([], dtype=int), method="projected")
    assert nb.indices.shape == (0, 3) and nb.distances.shape == (0, 3)
    Xt = torch.from_numpy(X).requires_grad_(True)
    for method in ("brute", "projected"):
        got = knn(Xt, 4, method=method)
        assert not got.distances.requires_grad
        np.testing.assert_array_equal(got.indices.numpy(), knn(X, 4).indices)
    G = radius_neighbors(Xt, 0.3)
    assert G.nnz == radius_neighbors(X, 0.3).nnz


def test_projected_with_reference_set_query_indices_and_duplicates():
    X = _low_rank(900, seed=2)
    X[10] = X[3]
    X[11] = X[3]
    Y = _low_rank(700, seed=3)
    for kw in ({"Y": Y}, {"query_indices": np.arange(0, 900, 7)}, {}):
        a = knn(X, 4, method="brute", screen_dtype=torch.float64, **kw)
        b = knn(X, 4, method="projected", **kw)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_allclose(a.distances, b.distances, rtol=1e-12, atol=1e-12)
    nb = knn(X, 2, method="projected")
    assert nb.distances[3, 0] == 0.0 and set(nb.indices[3]) == {10, 11}  # exact zeros


def test_projected_on_torch_float32_and_tiny_dimensions():
    X = torch.from_numpy(_low_rank(500, d=2, D=3, seed=4)).float()
    a = knn(X, 6, method="brute", screen_dtype=torch.float64)
    b = knn(X, 6, method="projected")
    assert isinstance(b.indices, torch.Tensor)
    assert torch.equal(a.indices, b.indices)
    one = knn(np.arange(50.0)[:, None] ** 1.5, 3, method="projected")  # D = 1: brute force
    np.testing.assert_array_equal(one.indices, knn(np.arange(50.0)[:, None] ** 1.5, 3).indices)


def test_auto_plans_the_projection_on_low_rank_data_only():
    import geomsae.neighbors.plan as proj
    from geomsae.neighbors.brute import Reference

    X = torch.from_numpy(_low_rank(4000, d=5, D=200, seed=5))
    ref = Reference.of(X)
    chosen = proj.plan(X, torch.arange(4000), ref, 10)
    assert chosen is not None and chosen.n_components >= 5  # needs the 5 signal directions
    assert chosen.certified_fraction > 0.9 and chosen.predicted_speedup > 1.5
    iso = torch.from_numpy(np.random.default_rng(6).normal(size=(4000, 200)))
    assert proj.plan(iso, torch.arange(4000), Reference.of(iso), 10) is None
    a, b = knn(X, 10), knn(X, 10, method="brute")
    assert torch.equal(a.indices, b.indices)


def test_planner_declines_hopeless_data_early_and_keeps_good_plans(caplog):
    # above 4 x 2048 points a sampled estimate of the tightest bound declines flat spectra
    # before the coordinates of every point are computed; low-rank data still gets its plan
    import geomsae.neighbors.plan as proj
    from geomsae.neighbors.brute import Reference

    n = 9000
    iso = torch.from_numpy(np.random.default_rng(7).normal(size=(n, 300)))
    with caplog.at_level(logging.DEBUG, logger="geomsae.neighbors.plan"):
        assert proj.plan(iso, torch.arange(n), Reference.of(iso), 10) is None
    assert "hopeless by a 2048-row estimate" in caplog.text
    low = torch.from_numpy(_low_rank(n, d=5, D=64, seed=9))
    ref = Reference.of(low)
    chosen = proj.plan(low, torch.arange(n), ref, 10)
    assert chosen is not None and chosen.n_components >= 5
    est = proj._estimated_ceiling(
        proj._BoundCounter(low[:64] - ref.mu, None, ref, chosen.basis), torch.full((64,), 1e30)
    )
    assert torch.all(est == n)  # an infinite radius excludes nothing: every point counted


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_projected_on_gpu_matches_cpu():
    X = torch.from_numpy(_low_rank(3000, seed=8))
    g = knn(X.cuda(), 10, method="projected")
    assert g.indices.is_cuda
    assert torch.equal(g.indices.cpu(), knn(X, 10, method="brute").indices)
    G = radius_neighbors(X.cuda(), 0.5, method="projected")
    B = radius_neighbors(X, 0.5, method="brute")
    np.testing.assert_array_equal(G.indices, B.indices)


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="method must be one of"):
        knn(np.eye(4), 1, method="kdtree")


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 5),
    n=st.integers(1, 3000),
    c=st.integers(1, 40),
    ties=st.booleans(),
    dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]),
    n_inf=st.integers(0, 50),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_grouped_selection_is_topk(b, n, c, ties, dtype, n_inf, seed):
    from geomsae.neighbors.brute import smallest

    c = min(c, n)
    g = torch.Generator().manual_seed(seed)
    d2 = torch.randint(0, 20, (b, n), generator=g).float() if ties else None
    d2 = (torch.randn(b, n, generator=g) if d2 is None else d2).to(dtype)
    d2.view(-1)[torch.randint(0, b * n, (n_inf,), generator=g)] = math.inf  # excluded selves
    vals, idx = smallest(d2, c)
    ref = torch.topk(d2, c, dim=1, largest=False).values
    assert torch.equal(torch.sort(vals, 1).values, ref)  # the same multiset of values
    assert torch.equal(d2.gather(1, idx), vals)  # at the positions it names
    assert all(len(set(r.tolist())) == c for r in idx)  # distinct columns


@pytest.mark.parametrize("cap", [None, 3])
def test_projected_radius_graph_equals_brute_force(cap):
    X = _low_rank(1200, seed=7, shift=20.0)
    X[5] = X[9]  # a duplicate: an explicit zero in both graphs
    r = float(np.median(knn(X, 8).distances[:, -1]))
    a = radius_neighbors(X, r, max_neighbors=cap, method="brute")
    b = radius_neighbors(X, r, max_neighbors=cap, method="projected")
    assert a.nnz == b.nnz and b.has_sorted_indices
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.data, b.data, rtol=1e-12, atol=1e-12)
    assert b[5, 9] == 0.0 and (b[5].indices == 9).any()
    if cap is None:  # mirrored pairs carry the very same value
        assert abs(a - a.T).max() == 0 and abs(b - b.T).max() == 0


@settings(max_examples=30, deadline=None)
@given(
    b=st.integers(1, 4),
    n=st.integers(32, 2000),
    c=st.integers(1, 40),
    ties=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_group_screen_keeps_the_c_smallest_and_bounds_the_rest(b, n, c, ties, seed):
    from geomsae.neighbors import grouped

    c = max(1, min(c, n // 32))
    g = torch.Generator().manual_seed(seed)
    keys = torch.randint(0, 9, (b, n), generator=g).float() if ties else torch.randn(b, n)
    vals, cols, T = grouped.group_screen(keys, c)
    assert vals.shape == cols.shape == (b, 16 * c + n % 16)
    assert torch.equal(keys.gather(1, cols), vals)
    for i in range(b):
        kept = set(cols[i].tolist())
        assert len(kept) == cols.shape[1]  # distinct columns
        rest = torch.tensor(sorted(set(range(n)) - kept), dtype=torch.long)
        if rest.numel():
            assert bool((keys[i, rest] >= T[i]).all())  # the certificate's threshold
        cth = torch.topk(keys[i], c, largest=False).values.max()
        assert float(T[i]) >= float(cth)  # at least the c-th smallest key


@pytest.mark.parametrize("k", [1, 5, 20])
def test_grouped_refinement_equals_the_plain_top_c(monkeypatch, k):
    """The grouped screen (used when n >= 32 c) returns exactly what the top-c screen does."""
    from geomsae.neighbors import grouped

    X = _low_rank(2600, d=8, D=120, seed=9, shift=20.0)
    X[100:110] = X[5]  # duplicates
    X[200:300] = np.round(X[200:300], 1)  # some ties
    Y = _low_rank(2100, d=8, D=120, seed=10, shift=20.0)
    for kw in ({}, {"query_indices": np.arange(0, 2600, 5)}, {"Y": Y}):
        a = knn(X, k, method="projected", **kw)
        with monkeypatch.context() as m:
            m.setattr(grouped, "fits", lambda n, c: False)
            b = knn(X, k, method="projected", **kw)
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.distances, b.distances)
        brute = knn(X, k, method="brute", screen_dtype=torch.float64, **kw)
        np.testing.assert_allclose(a.distances, brute.distances, rtol=1e-12, atol=1e-12)


def test_huge_norms_do_not_overflow_the_reduced_precision_screens():
    """Norms ~1e20 would overflow float32 keys (every bound inf, every row 'certified')."""
    rng = np.random.default_rng(13)
    v = rng.normal(size=80)
    Y = np.where(np.arange(1000) % 2, -1.0, 1.0)[:, None] * np.linspace(1e20, 2e20, 1000)[:, None]
    Y = Y * v / np.linalg.norm(v)  # a line of points at norms 1e20-2e20, on both sides
    X = np.zeros((200, 80))  # nearest: the smallest norms, rows 0, 1, 2
    expected = np.argsort(((X[:, None, :] - Y[None]) ** 2).sum(-1), axis=1, kind="stable")[:, :3]
    for dtype in (None, torch.bfloat16, torch.float32):
        got = knn(X, 3, Y=Y, screen_dtype=dtype)
        np.testing.assert_array_equal(got.indices, expected)
    Z = np.concatenate([Y, Y[:5] + 1e5])
    for method in ("auto", "projected"):
        nb = knn(Z, 1, method=method)
        np.testing.assert_array_equal(nb.indices[1000:, 0], np.arange(5))
        G = radius_neighbors(Z, 1e6, method=method)
        assert G.nnz == 10  # the five pairs, both ways


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, None])
def test_ties_at_the_kth_distance_go_by_index(dtype):
    """Twenty copies of a point: its 5 nearest are the 5 lowest-index copies, in every precision
    (float64 used to keep whichever 5 its expansion's rounding ranked first)."""
    X = np.random.default_rng(14).normal(size=(1007, 80))
    X[500:520] = X[7]
    nb = knn(X, 5, screen_dtype=dtype)
    np.testing.assert_array_equal(nb.indices[7], [500, 501, 502, 503, 504])
    np.testing.assert_array_equal(nb.indices[510], [7, 500, 501, 502, 503])
    assert (nb.distances[7] == 0).all()
    q = knn(X, 5, screen_dtype=dtype, query_indices=[7, 519])
    np.testing.assert_array_equal(q.indices, nb.indices[[7, 519]])


@pytest.mark.parametrize("method", ["brute", "projected"])
def test_max_neighbors_keeps_ties_by_column(method):
    """Capped rows keep the (distance, column) first pairs: on an integer lattice (duplicates
    and exact ties) equal distances came out a few ulps apart, and 102 of 300 rows kept
    columns by rounding noise; pairs near the cap are now measured directly."""
    rng = np.random.default_rng(3)
    X = rng.integers(0, 5, size=(300, 3)).astype(float)
    full = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    G = radius_neighbors(X, 1.5, max_neighbors=3, method=method)
    for i in range(len(X)):
        first = np.lexsort((np.arange(len(X)), full[i]))[:3]
        want = sorted(j for j in first if full[i, j] <= 1.5)
        assert G.indices[G.indptr[i] : G.indptr[i + 1]].tolist() == want, i
    assert G[0, 31] == 1.0  # measured directly: exact
