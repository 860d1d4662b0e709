"""Exactness at the edges of floating point: tiny and huge scales, pairs at exactly the radius,
and ties between distinct points at the same distance (ordered by index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.neighbors import NearestNeighbors

from geomsae.neighbors import knn, radius_neighbors


def _sklearn_knn(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    d, i = NearestNeighbors(n_neighbors=k + 1, algorithm="brute").fit(X).kneighbors(X)
    return d[:, 1:], i[:, 1:]


@pytest.mark.parametrize("scale", [1e-22, 1e-120, 1e-200, 1e160, 1e250])
@pytest.mark.parametrize("n_features", [8, 80])
@pytest.mark.parametrize("screen_dtype", [None, torch.float32, torch.float64])
def test_knn_is_scale_equivariant_far_from_one(scale, n_features, screen_dtype):
    """Scaling by any factor scales the distances and keeps the neighbours: no float32
    underflow in the screens' error bounds, no float64 overflow of the squared norms."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, n_features))
    ref = knn(X, 5, screen_dtype=screen_dtype)
    got = knn(X * scale, 5, screen_dtype=screen_dtype)
    np.testing.assert_array_equal(got.indices, ref.indices)
    assert np.all(np.isfinite(got.distances))
    np.testing.assert_allclose(got.distances, ref.distances * scale, rtol=1e-12)


@pytest.mark.parametrize("scale", [1e-22, 1e-200, 1e200])
def test_knn_scales_with_queries_given_separately(scale):
    rng = np.random.default_rng(1)
    X, Y = rng.standard_normal((300, 6)), rng.standard_normal((400, 6))
    ref = knn(X, 4, Y=Y)
    got = knn(X * scale, 4, Y=Y * scale)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.distances, ref.distances * scale, rtol=1e-12)


def test_knn_tiny_scale_matches_sklearn():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8)) * 1e-22
    got = knn(X, 5)
    d, i = _sklearn_knn(X / 1e-22, 5)
    np.testing.assert_array_equal(got.indices, i)


@pytest.mark.parametrize("scale", [1e-22, 1e-200, 1e200])
@pytest.mark.parametrize("method", ["brute", "projected"])
def test_radius_neighbors_scale_equivariant(scale, method):
    rng = np.random.default_rng(2)
    X = rng.standard_normal((2500, 40))
    r = 7.0
    ref = radius_neighbors(X, r, method=method)
    got = radius_neighbors(X * scale, r * scale, method=method)
    assert got.nnz == ref.nnz
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.data, ref.data * scale, rtol=1e-12)


def test_radius_neighbors_tiny_scale_float32_screen():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((600, 8))
    ref = radius_neighbors(X, 3.0)
    got = radius_neighbors(X * 1e-22, 3e-22)
    assert got.nnz == ref.nnz


_BOUNDARY = np.array(
    [[37, 17, 49], [0, 12, 56], [27, 15, 5], [7, 52, -27], [40, 21, 61]], dtype=float
)


@pytest.mark.parametrize("method", ["brute", "projected"])
def test_radius_keeps_pairs_at_exactly_the_radius(method):
    """|x0 - x4| = sqrt(9 + 16 + 144) = 13 exactly; the expansion rounds it a few ulps above."""
    assert np.sqrt(((_BOUNDARY[0] - _BOUNDARY[4]) ** 2).sum()) == 13.0
    G = radius_neighbors(_BOUNDARY, 13.0, method=method)
    assert list(G[0].indices) == [4]
    assert G[0, 4] == 13.0


def test_radius_boundary_on_an_integer_lattice():
    """Every pair of an integer grid at an integer distance lies exactly on such a radius."""
    g = np.arange(6.0)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * 7 + 100.0
    for r in (7.0, 35.0, 49.0):
        G = radius_neighbors(X, r)
        D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
        expected = (D <= r).sum() - len(X)
        assert G.nnz == expected, r


_TIES = np.array(
    [
        [458, 264, 87], [119, 870, -446], [631, 341, -995], [-212, 714, 108],
        [-933, 529, 459], [470, 260, 90], [461, 268, 99],
    ],
    dtype=float,
)  # fmt: skip


@pytest.mark.parametrize("screen_dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_ties_between_distinct_points_go_by_index(screen_dtype):
    """Points 5 and 6 are both exactly 13 from point 0."""
    nb = knn(_TIES, 2, screen_dtype=screen_dtype)
    assert list(nb.indices[0]) == [5, 6]
    assert list(nb.distances[0]) == [13.0, 13.0]


@pytest.mark.parametrize("screen_dtype", [None, torch.float64, torch.float32])
@pytest.mark.parametrize("k", [1, 4, 6, 10])
def test_lattice_ties_go_by_index(screen_dtype, k):
    """On a shifted integer lattice every row has many exact ties (also across the k-th
    neighbour): the neighbours are the k first by (distance, index)."""
    g = np.arange(7.0)
    X = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3) * 3 + 1000.0
    nb = knn(X, k, screen_dtype=screen_dtype)
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(X)), D.shape), D), axis=1)[:, :k]
    np.testing.assert_array_equal(nb.indices, order)
    np.testing.assert_array_equal(nb.distances, np.take_along_axis(D, order, 1))


def test_lattice_ties_projected():
    rng = np.random.default_rng(0)
    g = np.arange(4.0)
    base = np.stack(np.meshgrid(g, g, g, g, indexing="ij"), -1).reshape(-1, 4) * 5
    # embed the 4-d lattice isometrically in 40 dimensions by a signed coordinate permutation
    X = np.zeros((len(base), 40))
    cols = rng.choice(40, 4, replace=False)
    X[:, cols] = base
    X = np.concatenate([X, X + 1000.0])  # 512 points, ties everywhere
    X = np.concatenate([X] * 1) + 0.0
    nb = knn(X, 8, method="projected")
    D = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(len(X)), D.shape), D), axis=1)[:, :8]
    np.testing.assert_array_equal(nb.indices, order)


def test_subnormal_data_and_huge_radius():
    X = np.array([[0.0], [1e-310], [3e-310]])
    nb = knn(X, 1)
    np.testing.assert_array_equal(nb.indices.ravel(), [1, 0, 1])
    np.testing.assert_allclose(nb.distances.ravel(), [1e-310, 1e-310, 2e-310], rtol=1e-6)
    assert radius_neighbors(X, 1.5e-310).nnz == 2  # the pair (0, 1), both ways
    assert radius_neighbors(np.array([[0.0], [1.0], [3.0]]), 1e200).nnz == 6


def test_coordinates_near_float64_max_are_refused():
    with pytest.raises(ValueError, match="scale the data down"):
        knn(np.array([[1e308], [1.5e308], [0.0]]), 1)


@pytest.mark.parametrize("bad", [0, -1, 2.5, True])
def test_block_size_is_checked_for_every_method(bad):
    X = np.random.default_rng(0).normal(size=(20, 3))
    for method in ("brute", "projected"):
        with pytest.raises(ValueError, match="block_size"):
            knn(X, 2, method=method, block_size=bad)
        with pytest.raises(ValueError, match="block_size"):
            radius_neighbors(X, 1.0, method=method, block_size=bad)
    with pytest.raises(ValueError, match="n_neighbors"):
        knn(X, True)


def test_boolean_points_are_refused_for_numpy_and_torch():
    for bad in (np.eye(4, dtype=bool), torch.eye(4, dtype=torch.bool)):
        with pytest.raises(TypeError, match="must hold numbers"):
            knn(bad, 1)


def test_integers_beyond_2_to_53_are_refused():
    X = np.array([[2**60], [2**60 + 1], [2**60 + 3]], dtype=np.int64)  # float64 merges all
    for arr in (X, torch.from_numpy(X)):
        with pytest.raises(ValueError, match="beyond 2\\^53.*X - X.min"):
            knn(arr, 1)
    got = knn(X - X.min(0), 1)  # the fix the message names: exact
    assert got.distances[0, 0] == 1.0
    assert knn(np.array([[2**53], [0], [5]], dtype=np.int64), 1).distances[0, 0] == 2**53 - 5


@pytest.mark.parametrize("bad", [0, 2.5, 2.0, True])
def test_counts_must_be_integers(bad):
    from geomsae.graph import affinity_matrix, laplacian_spectrum

    X = np.random.default_rng(0).normal(size=(30, 2))
    with pytest.raises(ValueError, match="max_neighbors must be a positive integer"):
        radius_neighbors(X, 1.0, max_neighbors=bad)
    with pytest.raises(ValueError, match="n_eigenvalues must be a positive integer"):
        laplacian_spectrum(affinity_matrix(radius_neighbors(X, 2.0), 1.0), bad)


# --- centring: coordinates far below the mean keep their digits (direct measurements are
# made on the points as given, not on the centred copy) ---


def _direct_knn(Q: np.ndarray, R: np.ndarray, k: int, exclude_self: bool):
    """Exact k-NN by direct differences (no expansion, no centring), ties by index."""
    d = np.sqrt(((Q[:, None, :] - R[None, :, :]) ** 2).sum(-1))
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    order = np.lexsort((np.broadcast_to(np.arange(R.shape[0]), d.shape), d), axis=1)[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("screen_dtype", [None, torch.bfloat16, torch.float32, torch.float64])
def test_coordinates_below_the_mean_keep_their_digits(screen_dtype):
    X = np.array([[0.0], [1e-17], [1.0], [3.0]])
    got = knn(X, 1, screen_dtype=screen_dtype)
    np.testing.assert_array_equal(got.indices.ravel(), [1, 0, 0, 2])
    np.testing.assert_array_equal(got.distances.ravel(), [1e-17, 1e-17, 1.0, 2.0])


def test_radius_keeps_tiny_distances_below_the_mean():
    X = np.array([[0.0], [1e-17], [1.0], [3.0]])
    assert radius_neighbors(X, 1e-18).nnz == 0
    G = radius_neighbors(X, 1e-17)
    assert G.nnz == 2 and G[0, 1] == 1e-17 and G[1, 0] == 1e-17


@pytest.mark.parametrize("screen_dtype", [None, torch.float32, torch.float64])
def test_small_cloud_beside_a_far_outlier(screen_dtype):
    rng = np.random.default_rng(1)
    X = np.vstack([rng.normal(size=(200, 3)) * 1e-6, [[1e10, 0, 0]]])
    got = knn(X, 5, screen_dtype=screen_dtype)
    d, i = _direct_knn(X, X, 5, exclude_self=True)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-12)  # the expansion's accuracy


def test_small_cloud_beside_far_outliers_queries_given():
    rng = np.random.default_rng(2)
    Y = np.vstack([rng.normal(size=(300, 4)) * 1e-6, [[1e9, 0, 0, 0], [0, -1e9, 0, 0]]])
    X = rng.normal(size=(50, 4)) * 1e-6
    got = knn(X, 3, Y=Y)
    d, i = _direct_knn(X, Y, 3, exclude_self=False)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-14)


@pytest.mark.parametrize("method", ["brute", "projected"])
def test_cloud_beside_outliers_in_many_dimensions(method):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(2500, 40)) * 1e-4
    X[:5, 0] += 1e8  # a few far tokens move the mean far from the cloud
    got = knn(X, 4, method=method)
    d, i = _direct_knn(X, X, 4, exclude_self=True)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-12)
    r = float(np.median(d[:, -1]))
    G = radius_neighbors(X, r, method=method)
    full = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    rows, cols = np.nonzero(full <= r)
    assert G.nnz == rows.size
    np.testing.assert_allclose(np.asarray(G[rows, cols]).ravel(), full[rows, cols], rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 300),
    dim=st.integers(1, 8),
    k=st.integers(1, 5),
    log_scale=st.integers(-150, 150),
    log_offset=st.integers(0, 12),
    lattice=st.booleans(),
    n_dup=st.integers(0, 5),
    given_y=st.booleans(),
    screen_dtype=st.sampled_from([None, torch.bfloat16, torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_knn_matches_direct_differences(
    n, dim, k, log_scale, log_offset, lattice, n_dup, given_y, screen_dtype, seed
):
    """Any scale, any offset far beyond the spread, lattices with exact ties, duplicates:
    the neighbours of direct-difference brute force (ties by index), and its distances."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)) * 8
    if lattice:
        X = np.round(X)
    if n_dup and n > 1:
        X[rng.integers(0, n, n_dup)] = X[rng.integers(0, n, n_dup)]
    offset = rng.normal(size=dim) * 10.0**log_offset
    X = (X + np.round(offset)) * 2.0 ** round(log_scale * 3.3)  # exact: a power of two
    Q = X[: max(1, n // 3)] + 0.5 * 2.0 ** round(log_scale * 3.3) if given_y else X
    k = min(k, n if given_y else n - 1)
    if k < 1:
        return
    got = knn(Q, k, Y=X if given_y else None, screen_dtype=screen_dtype)
    d, i = _direct_knn(Q, X, k, exclude_self=not given_y)
    np.testing.assert_allclose(got.distances, d, rtol=1e-7, atol=0)
    differ = got.indices != i
    if differ.any():  # only ties up to the truth's own last-bit rounding may differ
        rows, cols = np.nonzero(differ)
        theirs = np.sqrt(((Q[rows] - X[got.indices[rows, cols]]) ** 2).sum(-1))
        np.testing.assert_allclose(theirs, d[rows, cols], rtol=1e-14, atol=0)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 200),
    dim=st.integers(1, 6),
    log_scale=st.integers(-150, 150),
    log_offset=st.integers(0, 12),
    lattice=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_property_radius_matches_direct_differences(n, dim, log_scale, log_offset, lattice, seed):
    """The radius graph holds exactly the pairs with direct distance <= radius, also when the
    radius is itself a pair's distance (lattices), at any scale and offset."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, dim)) * 4
    if lattice:
        X = np.round(X)
    unit = 2.0 ** round(log_scale * 3.3)
    X = (X + np.round(rng.normal(size=dim) * 10.0**log_offset)) * unit
    full = np.sqrt(((X[:, None, :] - X[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    finite = full[np.isfinite(full)]
    r = float(np.median(finite)) if finite.size else 1.0
    G = radius_neighbors(X, r)
    # off a lattice, a pair within an ulp or two of r may go either way: numpy and torch sum
    # the squares in different orders; on a lattice every sum is exact and nothing is excused
    slack = 0.0 if lattice else 1e-14 * r
    C = G.tocoo()  # explicit zeros (duplicates) stay stored
    stored = np.zeros(full.shape, dtype=bool)
    stored[C.row, C.col] = True
    assert not np.any((full <= r - slack) & ~stored)  # nothing inside is missed
    assert np.all(full[C.row, C.col] <= r + slack)  # nothing outside is kept
    np.testing.assert_allclose(C.data, full[C.row, C.col], rtol=1e-7, atol=0)


def test_small_differences_beside_coordinates_near_float64s_top():
    """The centred copy is scaled up (norms ~1e-20) while the points sit at 2^1000: direct
    measurements scale the differences, not the points (which would overflow)."""
    X = np.array([[0.0, 2.0**1000], [1e-20, 2.0**1000], [3e-20, 2.0**1000], [7e-20, 2.0**1000]])
    d, i = _direct_knn(X, X, 2, exclude_self=True)
    got = knn(X, 2)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-15)
    full = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    G = radius_neighbors(X, full[1, 2])
    assert sorted(zip(*G.nonzero())) == [(0, 1), (1, 0), (1, 2), (2, 1)]


def test_tiny_differences_beside_huge_norms_do_not_underflow():
    """Norms of 1e13 scale the centred copy down by 2^-44; differences of 1e-150 must not
    underflow to fake duplicates when measured directly."""
    X = np.array([[0, 0], [0, 3e-150], [0, 1e-150], [1e13, 0], [-1e13, 0]])
    got = knn(X, 2)
    d, i = _direct_knn(X, X, 2, exclude_self=True)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-15)
    full = np.sqrt(((X[:, None] - X[None]) ** 2).sum(-1))
    np.fill_diagonal(full, np.inf)
    for r in (1e-150, 2.5e-150):
        G = radius_neighbors(X, r)
        assert sorted(zip(*G.nonzero())) == sorted(zip(*np.nonzero(full <= r)))
    assert radius_neighbors(X, 1e-150)[0, 2] == 1e-150


def test_direct_measurement_of_subnormal_differences():
    X = np.array([[0.0], [5e-324], [2e-323], [1.0]])
    got = knn(X, 1)
    np.testing.assert_array_equal(got.indices.ravel(), [1, 0, 1, 0])  # 1 - 2e-323 == 1
    np.testing.assert_array_equal(got.distances.ravel()[:3], [5e-324, 5e-324, 1.5e-323])


def test_input_messages():
    with pytest.raises(TypeError, match="integers beyond int64"):
        knn([[2**70, 1], [3, 4], [5, 6]], 1)
    import scipy.sparse

    with pytest.raises(TypeError, match="toarray"):
        knn(scipy.sparse.eye(4).tocsr(), 1)
    with pytest.raises(ValueError, match="at least 1 point;"):
        knn(np.zeros((0, 3)), 1)
    with pytest.raises(ValueError, match="magnitude up to"):
        knn(np.array([[-(2**53) - 2], [0], [1]], dtype=np.int64), 1)
    for bad in ("1", None, True, np.nan):
        with pytest.raises(ValueError, match="radius must be a finite number"):
            radius_neighbors(np.eye(3), bad)


def test_estimator_counts_must_be_integers():
    from geomsae import dimension

    X = np.random.default_rng(0).normal(size=(200, 3))
    with pytest.raises(ValueError, match="n_repeats must be a positive integer"):
        dimension.Calibrated(n_repeats=1.5).fit(X)
    with pytest.raises(ValueError, match="max_samples must be a positive integer"):
        dimension.Calibrated(max_samples=1e3).fit(X)
    with pytest.raises(ValueError, match="max_rank must be a positive integer"):
        dimension.id_scale_curve(X, max_rank=64.0)


def test_constant_columns_off_the_grid_are_centred_exactly():
    from geomsae.neighbors.brute import centre

    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(600, 4)), np.full(600, 1.2345678912345e25), np.zeros(600)]
    X[5, 5] = 1.0  # not constant: stays centred by the mean
    Rc, mu = centre(torch.from_numpy(X))
    assert bool((Rc[:, 4] == 0).all()) and float(mu[4]) == X[0, 4]
    assert float(Rc[5, 5]) != 0.0
    got, ref = knn(X, 5), knn(X[:, [0, 1, 2, 3, 5]], 5)
    np.testing.assert_array_equal(got.indices, ref.indices)
    np.testing.assert_allclose(got.distances, ref.distances, rtol=1e-13)
    G, H = radius_neighbors(X, 1.0), radius_neighbors(X[:, [0, 1, 2, 3, 5]], 1.0)
    assert G.nnz == H.nnz


@pytest.mark.parametrize("screen_dtype", [torch.float64, torch.float32])
def test_a_far_outlier_does_not_make_every_pair_a_direct_measurement(monkeypatch, screen_dtype):
    """One token at 1e10 beside a cloud of unit scale: the centre stays with the bulk (sample
    median) and the expansion's error bound goes through the pair's distance, not the largest
    norm, so rows are not all 'tied' (before: all n^2 pairs measured directly, ~20 s)."""
    from geomsae.neighbors import brute

    rng = np.random.default_rng(1)
    Z, A = rng.standard_normal((2500, 4)), np.linalg.qr(rng.standard_normal((48, 4)))[0]
    X = Z @ A.T + 0.01 * rng.standard_normal((2500, 48))
    X[-1] = 1e10
    measured = []
    real = brute.measure_directly

    def counting(q, ref, rows, cols):
        measured.append(rows.numel())
        return real(q, ref, rows, cols)

    monkeypatch.setattr(brute, "measure_directly", counting)
    got = knn(X, 10, screen_dtype=screen_dtype, method="brute")
    assert sum(measured) < 0.05 * X.shape[0] * 10
    d, i = _sklearn_knn(X, 10)
    np.testing.assert_array_equal(got.indices, i)


def _hard_first(rng: np.random.Generator, D: int = 64) -> tuple[np.ndarray, int]:
    """400 rows of a tight far cluster (bfloat16's bound ~3 % of |q| |r| cannot certify
    them), first, then 3000 rows of a 3-dim cloud that bfloat16 certifies."""
    bulk = rng.normal(size=(3000, 3)) @ rng.normal(size=(3, D)) / 3
    bulk += 0.01 * rng.normal(size=(3000, D))
    hard = 100 * np.eye(D)[0] + rng.normal(size=(400, D))
    return np.vstack([hard, bulk]), 400


def _rows_screened_per_dtype(monkeypatch) -> dict[torch.dtype, int]:
    """Counts (filled as knn runs) of the query rows each brute-force screen dtype handles."""
    from geomsae.neighbors import brute

    screened: dict[torch.dtype, int] = {}
    real = brute._knn_block

    def spy(Qb, self_b, ref, dtype, n_cand, k):
        screened[dtype] = screened.get(dtype, 0) + Qb.shape[0]
        return real(Qb, self_b, ref, dtype, n_cand, k)

    monkeypatch.setattr(brute, "_knn_block", spy)
    return screened


def test_sorted_input_does_not_abort_the_reduced_precision_pass(monkeypatch):
    """The pass is judged on a trial of evenly spaced rows, not on its first block: with a
    run of hard rows first, only those go to the next precision (before: the bfloat16 pass
    stopped after its first block and the float32 one after its second, leaving 2964 of 3400
    rows to float64; on 20 000 kd-sorted activations 9.1 s instead of 5.4 s)."""
    X, n_hard = _hard_first(np.random.default_rng(0))
    screened = _rows_screened_per_dtype(monkeypatch)
    perm = np.random.default_rng(1).permutation(len(X))
    got = {}
    for name, Y in (("hard first", X), ("shuffled", X[perm]), ("hard last", X[::-1].copy())):
        screened.clear()
        got[name] = knn(Y, 10, screen_dtype=torch.bfloat16, method="brute", block_size=256)
        assert screened[torch.bfloat16] == len(X), name
        assert screened.get(torch.float32, 0) <= n_hard + 16, (name, screened)
        assert screened.get(torch.float64, 0) <= 16, (name, screened)
    d, i = _sklearn_knn(X, 10)
    np.testing.assert_array_equal(got["hard first"].indices, i)
    np.testing.assert_allclose(got["hard first"].distances, d, rtol=1e-10)
    inv = np.argsort(perm)
    np.testing.assert_array_equal(perm[got["shuffled"].indices[inv]], i)


def test_a_screen_that_fails_its_trial_hands_every_row_on():
    """Data that defeats bfloat16 everywhere stops the pass after the trial; all rows still
    get exact neighbours from the next precision."""
    rng = np.random.default_rng(2)
    X = 100 * np.eye(64)[0] + rng.normal(size=(2000, 64))  # far, tight: bfloat16 is hopeless
    got = knn(X, 5, screen_dtype=torch.bfloat16, method="brute", block_size=128)
    d, i = _sklearn_knn(X, 5)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-10)


def _bf16_key_cases() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    D = 96
    mid = np.full((40, D), 1 + 2.0**-8)  # every entry at a bfloat16 midpoint: aligned errors
    mid *= rng.choice([1.0, -1.0], size=(40, 1)) * 2.0 ** rng.integers(-3, 4, size=(40, 1))
    spiky = rng.normal(size=(60, D))
    spiky[:, 0] *= 300  # one dominant coordinate: its own rounding is the whole error
    acts = rng.standard_t(3, size=(200, D)) * np.exp(rng.normal(size=(200, 1)))
    return {"midpoints": mid, "one dominant coordinate": spiky, "heavy tails": acts}


@pytest.mark.parametrize("name", list(_bf16_key_cases()))
def test_bf16_keys_are_lower_bounds(name):
    """The bfloat16 keys, from the inputs' actual rounding errors, stay below the exact
    ``|r|^2 - 2 q.r`` for every pair, also where the errors align (every entry at a midpoint,
    where the bound is attained to first order), and are well inside the worst case."""
    from geomsae.neighbors.brute import Screen, pair_coef, row_sq

    X = torch.from_numpy(_bf16_key_cases()[name])
    sq = row_sq(X)
    screen = Screen(X.bfloat16(), sq, X)
    keys = screen.shifted(X, None, sq).double().clone()
    exact = sq[None, :] - 2.0 * (X @ X.T)
    slack = screen.error_bound(sq)[:, None]
    assert bool((keys - slack <= exact).all())
    # the product alone is off by up to ~4 u |q| |r| at the midpoints: the bound is needed
    worst = pair_coef(torch.bfloat16, X.shape[1]) * torch.sqrt(sq[:, None] * sq[None, :])
    if name == "midpoints":
        raw = X.bfloat16().double() @ X.bfloat16().double().T
        assert float(((X @ X.T - raw).abs() * 2 / worst).max()) > 0.45
    else:
        assert float(((exact - keys) / worst).median()) < 0.6


def _cloud_with_large_tokens(rng: np.random.Generator, D: int, factor: float) -> np.ndarray:
    """A 3-dim cloud in ``D`` dimensions plus 1 % of its rows scaled by ``factor`` (the
    outlier tokens of residual streams have 10-100x the typical norm)."""
    X = rng.normal(size=(2000, 3)) @ rng.normal(size=(3, D)) / 3 + 0.05 * rng.normal(size=(2000, D))
    X[rng.choice(len(X), 20, replace=False)] *= factor
    return X


@pytest.mark.parametrize(
    "dtype, D", [(torch.float32, 96), (torch.float32, 16), (torch.bfloat16, 96)]
)
def test_screen_keys_are_lower_bounds_beside_large_norms(dtype, D):
    """``key + |q|^2 - error_bound`` stays below the exact squared distance pair by pair when
    a few reference rows are 1e4 times the others' norm (the ``|r|^2`` part of the assembly
    error is taken off each column's keys; float32 at D = 16 is the folded product)."""
    from geomsae.neighbors.brute import Screen, row_sq

    X = torch.from_numpy(_cloud_with_large_tokens(np.random.default_rng(4), D, 1e4)[:600])
    sq = row_sq(X)
    screen = Screen(X.to(dtype), sq, X)
    assert screen.folded == (D == 16)
    low = screen.shifted(X, None, sq).double() + sq[:, None] - screen.error_bound(sq)[:, None]
    exact = row_sq((X[:, None, :] - X[None, :, :]).reshape(-1, D)).reshape(len(X), len(X))
    assert bool((low <= exact).all())


@pytest.mark.parametrize("screen_dtype", [torch.float32, torch.bfloat16])
def test_a_few_large_tokens_do_not_uncertify_every_row(monkeypatch, screen_dtype):
    """20 of 2000 rows at 100x the typical norm: rows are certified by the reduced-precision
    screen as without them (before, the screen's row bound went through the largest
    ``|r|^2``: 1527 of these rows fell to float64 from float32, 356 from bfloat16; 20 000
    SmolLM2 activations with 20 tokens at 30x took 4.2 s instead of 1.6 s)."""
    X = _cloud_with_large_tokens(np.random.default_rng(5), 96, 100.0)
    screened = _rows_screened_per_dtype(monkeypatch)
    got = knn(X, 10, screen_dtype=screen_dtype, method="brute")
    assert screened[screen_dtype] == len(X)
    assert sum(v for t, v in screened.items() if t != screen_dtype) <= 0.05 * len(X), screened
    d, i = _sklearn_knn(X, 10)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-10)


def test_projected_search_beside_large_tokens():
    """The projected screen's bound takes the projection's error pair by pair too: a few
    large tokens leave the neighbours exact (and rows certified in z-space)."""
    X = _cloud_with_large_tokens(np.random.default_rng(6), 96, 30.0)
    got = knn(X, 10, method="projected")
    d, i = _sklearn_knn(X, 10)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_allclose(got.distances, d, rtol=1e-10)


def test_projected_radius_beside_far_tokens_measures_few_pairs(monkeypatch):
    """The z-space screen is centred robustly (a sample median when far points drag the
    mean): 20 rows at 1e9x left the centred z-points ~1e7 from the bulk and the float32 keys
    useless, so every pair was measured (5000 points of the 10-dim Gaussian: 12 s, now 0.3)."""
    from geomsae.neighbors import projected

    X = _cloud_with_large_tokens(np.random.default_rng(7), 96, 1e9)
    radius = float(np.median(knn(X, 10).distances[:, -1]))
    measured = []
    real = projected.refine_pairs

    def counting(q, ref, crow, cols, **kw):
        measured.append(cols.numel())
        return real(q, ref, crow, cols, **kw)

    monkeypatch.setattr(projected, "refine_pairs", counting)
    G = radius_neighbors(X, radius, method="projected")
    H = radius_neighbors(X, radius, method="brute")
    assert G.nnz == H.nnz and not (G != H).nnz
    assert sum(measured) < 3 * G.nnz + 10 * X.shape[0], (sum(measured), G.nnz)


def test_float32_screen_at_very_large_dimension():
    """At D = 16 384 the float32 keys took the bias |r|^2 through the BLAS's C (rounded again
    at every block of the inner dimension, ~D / 64 times: beyond the bound), and a decoy 8e-4
    farther in squared distance than the true nearest point was returned (one thread; the
    reviewer's construction). The bias now comes after the product."""
    K = 16384
    t = np.float32(0.49 * 2.0**-9 / 512)
    q = np.full(K, t, dtype=np.float64)
    q[0] = 0
    rstar, e0 = np.ones(K), np.eye(1, K)[0]
    d_star = ((q - rstar) ** 2).sum()
    a, b = np.sqrt(d_star + 0.0008), np.sqrt(d_star + 0.0175)
    R = np.stack([rstar, -rstar, a * e0, -a * e0] + [b * e0, -b * e0] * 4)  # mean exactly 0
    Q = np.tile(q, (128, 1))  # >= 128 rows: the float32 screen is made
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        got = knn(Q, 1, Y=R, screen_dtype=torch.float32, method="brute")
    finally:
        torch.set_num_threads(threads)
    assert (got.indices[:, 0] == 0).all()
    np.testing.assert_allclose(got.distances[:, 0] ** 2, d_star, rtol=1e-12)


def test_float32_products_stay_ieee_under_medium_matmul_precision():
    """``torch.set_float32_matmul_precision("medium")`` lets oneDNN multiply float32 in
    bfloat16 on CPU; the float32 screens' bounds assume IEEE products (before: 25-26 of 3000
    rows wrong). The searches and estimators run with IEEE float32 products and restore the
    setting."""
    from geomsae import dimension as gd

    rng = np.random.default_rng(0)
    X = rng.standard_normal((3000, 6)) @ rng.standard_normal((6, 200))
    X += 0.01 * rng.standard_normal((3000, 200))
    d, i = _sklearn_knn(X, 10)
    lpca = gd.LocalPCA().fit_pointwise(X, n_neighbors=20).dimension_pw_
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("medium")
    try:
        got = knn(X, 10, screen_dtype=torch.float32, method="brute")
        medium = gd.LocalPCA().fit_pointwise(X, n_neighbors=20).dimension_pw_
        assert torch.get_float32_matmul_precision() == "medium"
    finally:
        torch.set_float32_matmul_precision(before)
    np.testing.assert_array_equal(got.indices, i)
    np.testing.assert_array_equal(medium, lpca)


def test_low_rank_key_update_is_the_same_elementwise():
    """The CUDA form of the keys' rank-2 update (elementwise, so cuBLAS cannot round |r|^2 to
    TF32) gives the addmm result up to float32 rounding."""
    from geomsae.neighbors.brute import _add_outer

    g = torch.Generator().manual_seed(0)
    d2 = torch.randn(64, 300, generator=g)
    U, V = torch.randn(64, 2, generator=g), torch.rand(2, 300, generator=g) * 1e4
    for beta, alpha in ((-2.0, 1.0), (1.0, -1.0)):
        a, b = d2.clone(), d2.clone()
        _add_outer(a, U, V, beta=beta, alpha=alpha, elementwise=False)
        _add_outer(b, U, V, beta=beta, alpha=alpha, elementwise=True)
        exact = beta * d2.double() + alpha * (U.double() @ V.double())
        scale = (d2.double().abs() + U.double().abs() @ V.double()).max()
        assert float((a.double() - exact).abs().max()) <= 4e-7 * float(scale)
        assert float((b.double() - exact).abs().max()) <= 4e-7 * float(scale)


def test_tf32_setting_is_read_through_either_api():
    """pair_coef / the screens read the TF32 setting without the legacy flag's RuntimeError
    (raised once the new precision API is in some states), TF32 only where it is on."""
    from geomsae.neighbors.brute import pair_coef
    from geomsae.neighbors.precision import cuda_tf32

    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        assert cuda_tf32() is False
        plain = pair_coef(torch.float32, 64, cuda=True)
        assert plain == pair_coef(torch.float32, 64, cuda=False)
        matmul.fp32_precision = "tf32"
        assert cuda_tf32() is True
        assert pair_coef(torch.float32, 64, cuda=True) > plain
    finally:
        matmul.fp32_precision = before


def test_csr_dots_gather_path_is_chunked_and_agrees():
    """The GPU form of the candidate dot products (gathers, chunked within the memory
    budget) gives the CPU form's values."""
    from geomsae.neighbors.brute import _csr_dots

    g = torch.Generator().manual_seed(0)
    Q, R = (
        torch.randn(40, 64, generator=g, dtype=torch.float64),
        torch.randn(300, 64, generator=g, dtype=torch.float64),
    )
    counts = torch.randint(0, 30, (40,), generator=g)
    crow = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(counts, 0)])
    cols = torch.randint(0, 300, (int(counts.sum()),), generator=g)
    ref = _csr_dots(Q, R, crow, cols, sampled=True)
    for budget in (None, 2 * 8 * 64 * 7):  # 7 pairs per chunk
        got = _csr_dots(Q, R, crow, cols, sampled=False, memory_bytes=budget)
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    rows = torch.repeat_interleave(counts)
    torch.testing.assert_close(ref, (Q[rows] * R[cols]).sum(1), rtol=1e-12, atol=1e-12)
