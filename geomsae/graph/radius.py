"""Choosing the neighbourhood radius (megaman's ``estimate_radius`` and two spectral rules).

For each candidate radius ``r`` (bandwidth ``eps = r / cutoff``, megaman/TSLasso: ``cutoff = 3``)
and a random sample of points, three curves are computed and all returned:

``distortion`` (megaman, Perrault-Joncas & Meila; the default rule)
    Project each sample point's neighbours on its weighted local PCA tangent plane ``T_i``
    (coordinates ``y_j = T_i^T (x_j - x_i)``), compute the dual Riemannian metric ``H_i`` of that
    projection with the scaled geometric Laplacian, and average ``||H_i - I_d||`` (spectral norm by
    default; megaman's script uses Frobenius). A projection onto the tangent plane is an isometry
    to first order, so ``H_i = I_d`` at a good radius: too small and the Laplacian is noise, too
    large and curvature shrinks the projection.
``eigengap``
    Mean ratio ``lambda_{d+1} / lambda_d`` of the local covariance eigenvalues: small when the
    neighbourhood is clearly ``d``-dimensional (too small a radius lets noise in, too large lets
    curvature in).
``stability``
    Mean geodesic Grassmann distance between the tangent spaces at ``r`` and at the next larger
    candidate: small where the estimate does not depend on the radius.

The chosen radius minimises the selected curve among the *valid* radii, those giving every sample
point at least ``min_neighbors`` neighbours (others are NaN in the curves).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from geomsae.graph.affinity import affinity_matrix
from geomsae.graph.laplacian import laplacian_matrix
from geomsae.grassmann import grassmann_distance
from geomsae.neighbors import as_tensor, check_points, knn, radius_neighbors, unit_scale
from geomsae.neighbors.checks import check_real
from geomsae.tangent import weighted_local_pca

logger = logging.getLogger(__name__)

__all__ = ["CRITERIA", "RadiusSelection", "select_radius"]

CRITERIA = ("distortion", "eigengap", "stability")


@dataclasses.dataclass(frozen=True)
class RadiusSelection:
    """Result of :func:`select_radius`.

    Attributes
    ----------
    radius : float
        Chosen neighbourhood radius (the graph cutoff).
    bandwidth : float
        ``radius / cutoff``: the ``eps`` to pass to ``tangent_spaces`` / ``affinity_matrix``.
    criterion : str
        Rule used to choose.
    radii : ndarray of shape (n_radii,)
        Candidates, ascending.
    distortion, eigengap, stability : ndarray of shape (n_radii,)
        The three curves (NaN where the radius is invalid; ``stability`` is NaN for the last).
    mean_neighbors : ndarray of shape (n_radii,)
        Mean number of neighbours (self excluded) of the sample points.
    valid : ndarray of bool, shape (n_radii,)
        Every sample point has at least ``min_neighbors`` neighbours.
    sample : ndarray of shape (n_sample,)
        Rows of ``X`` the curves were averaged over.
    """

    radius: float
    bandwidth: float
    criterion: str
    radii: np.ndarray
    distortion: np.ndarray
    eigengap: np.ndarray
    stability: np.ndarray
    mean_neighbors: np.ndarray
    valid: np.ndarray
    sample: np.ndarray


def _padded_rows(M: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of a csr matrix as padded (indices, values) arrays (-1 / 0 on padding) + counts."""
    counts = np.diff(M.indptr)
    k = max(int(counts.max()) if counts.size else 1, 1)
    row = np.repeat(np.arange(M.shape[0]), counts)
    pos = np.arange(M.nnz) - np.repeat(M.indptr[:-1], counts)
    idx = np.full((M.shape[0], k), -1, dtype=np.int64)
    val = np.zeros((M.shape[0], k))
    idx[row, pos], val[row, pos] = M.indices, M.data
    return idx, val, counts


def _restrict(G: sp.csr_matrix, r: float) -> sp.csr_matrix:
    """Edges of the distance graph no longer than ``r`` (explicit zeros kept)."""
    C = G.tocoo()
    keep = C.data <= r
    return sp.csr_matrix((C.data[keep], (C.row[keep], C.col[keep])), shape=G.shape)


def _distortion(Xt, sample, bases, L, norm, block=256) -> np.ndarray:
    """||H_i - I_d|| of the tangent-plane projection at each sample point."""
    lidx, lval, _ = _padded_rows(L[sample].tocsr())
    d = bases.shape[-1]
    out = np.empty(sample.size)
    for a in range(0, sample.size, block):
        nb = torch.as_tensor(lidx[a : a + block])
        lv = torch.as_tensor(lval[a : a + block])
        disp = Xt[nb.clamp(min=0)] - Xt[torch.as_tensor(sample[a : a + block])][:, None, :]
        y = torch.einsum("mkD,mDd->mkd", disp, bases[a : a + block])  # tangent coordinates
        H = -0.5 * torch.einsum("mk,mki,mkj->mij", lv.masked_fill(nb < 0, 0.0), y, y)
        E = H - torch.eye(d, dtype=H.dtype)
        if norm == "fro":
            out[a : a + block] = torch.linalg.matrix_norm(E, "fro").numpy()
        else:
            out[a : a + block] = torch.linalg.eigvalsh(E).abs().amax(-1).numpy()
    return out


def _default_radii(Xt, sample, min_neighbors: int, n_radii: int) -> np.ndarray:
    n = Xt.shape[0]
    k_hi = min(n - 1, max(200, 10 * min_neighbors))
    nb = knn(Xt, k_hi, query_indices=sample)
    r_lo = float(nb.distances[:, min_neighbors - 1].max()) * (1 + 1e-9)
    r_hi = max(float(nb.distances[:, -1].median()), 2 * r_lo)
    if r_lo == 0.0:
        raise ValueError(
            f"every sampled point has at least {min_neighbors} exact duplicates, so no radius "
            "separates them; deduplicate first (`X, kept = geomsae.neighbors.deduplicate(X)`) "
            "or pass radii="
        )
    return np.geomspace(r_lo, r_hi, n_radii)


_MAX_EXTENSIONS = 3  # continuations of the default radius grid (each by n_radii / 2 steps)


def _curves(
    Xt: torch.Tensor,
    sample: np.ndarray,
    radii: np.ndarray,
    d: int,
    cutoff: float,
    norm: str,
    min_neighbors: int,
    square_weights: bool,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """The three criteria, the mean neighbour count and validity at each radius."""
    G = radius_neighbors(Xt, float(radii[-1]))
    curves = {c: np.full(radii.size, np.nan) for c in ("distortion", "eigengap", "stability")}
    mean_nb, valid = np.zeros(radii.size), np.zeros(radii.size, dtype=bool)
    prev = None
    for t, r in enumerate(radii):
        eps = r / cutoff
        K = affinity_matrix(_restrict(G, r), eps)
        nbr, w, counts = _padded_rows(K[sample].tocsr())
        mean_nb[t] = counts.mean() - 1
        valid[t] = counts.min() - 1 >= min_neighbors
        ts = weighted_local_pca(
            Xt, nbr, w, d, indices=sample, bandwidth=eps, square_weights=square_weights,
            check_rank=False,
        )  # fmt: skip
        if valid[t]:
            L = laplacian_matrix(K, "geometric", scaling_epps=eps)
            curves["distortion"][t] = _distortion(Xt, sample, ts.bases, L, norm).mean()
            lam = ts.eigenvalues
            nxt = lam[:, d] if lam.shape[1] > d else torch.zeros_like(lam[:, 0])
            curves["eigengap"][t] = float((nxt / lam[:, d - 1]).mean())
            if prev is not None and valid[t - 1]:
                gd = grassmann_distance(prev, ts.bases, check=False)
                curves["stability"][t - 1] = float(gd.mean())
        prev = ts.bases
        logger.debug(
            "select_radius: r=%.4g nbrs=%.1f %s",
            r,
            mean_nb[t],
            {k: v[t] for k, v in curves.items()},
        )
    return curves, mean_nb, valid


def select_radius(
    X: Any,
    d: int,
    radii: Any | None = None,
    *,
    criterion: str = "distortion",
    n_samples: int = 200,
    n_radii: int = 12,
    cutoff: float = 3.0,
    norm: str = "2",
    min_neighbors: int | None = None,
    square_weights: bool = False,
    random_state: int | None = 0,
) -> RadiusSelection:
    """Choose the neighbourhood radius (and bandwidth) for local PCA and graph Laplacians.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, D)
    d : int
        Intrinsic dimension, ``1 <= d < D``.
    radii : array of shape (n_radii,), optional
        Candidate radii. Default: ``n_radii`` log-spaced values from the smallest radius that
        gives every sample point ``min_neighbors`` neighbours to the median distance to the
        ``max(200, 10 * min_neighbors)``-th neighbour (at least twice the smallest). Where
        the criterion is still falling at that end, the grid is continued geometrically by
        ``n_radii / 2`` radii at a time (at most 3 times, and not once the mean neighbour
        count reaches ``n / 2``); the result's ``radii`` holds every radius tried.
    criterion : {"distortion", "eigengap", "stability"}
        Curve to minimise (all three are returned).
    n_samples : int
        Number of random points the curves are averaged over.
    cutoff : float
        Radius in units of the bandwidth (``eps = radius / cutoff``).
    norm : {"2", "fro"}
        Matrix norm of ``H_i - I_d`` in the distortion.
    min_neighbors : int, optional
        Neighbours (self excluded) every sample point needs for a radius to count (default
        ``d + 1``).
    square_weights : bool
        Local PCA with ``w^2`` (megaman's ``estimate_radius`` and montlake) instead of ``w``.
    random_state : int, optional
        Seed of the sample.

    Returns
    -------
    RadiusSelection
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}; got {criterion!r}")
    if norm not in ("2", "fro"):
        raise ValueError(f"norm must be '2' or 'fro'; got {norm!r}")
    Xt = as_tensor(check_points(X, min_samples=3)).cpu()
    n, D = Xt.shape
    if not isinstance(d, (int, np.integer)) or not 1 <= d < D:
        raise ValueError(f"d must be an integer with 1 <= d < D = {D}; got {d!r}")
    min_neighbors = d + 1 if min_neighbors is None else int(min_neighbors)
    if not 1 <= min_neighbors < n:
        raise ValueError(f"min_neighbors must be in [1, {n - 1}]; got {min_neighbors}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise ValueError(f"n_samples must be an integer >= 1; got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1; got {n_samples!r}")
    cutoff = check_real("cutoff", cutoff)
    rng = np.random.default_rng(random_state)
    sample = np.sort(rng.choice(n, size=min(int(n_samples), n), replace=False))
    # every curve is scale-free: data far from unit scale (float64's squares over- or
    # underflow beyond ~1e±154) are scaled by a power of two, the radii scaled back at the end
    unit = unit_scale(Xt)
    if unit != 1.0:
        Xt = Xt * unit
    default_grid = radii is None
    if radii is not None:
        radii = np.sort(np.asarray(radii, dtype=float).ravel())
        if radii.size == 0 or not np.isfinite(radii).all() or (radii <= 0).any():
            raise ValueError("radii must be a non-empty array of finite numbers > 0")
        with np.errstate(over="ignore"):
            scaled = radii * unit
        if not np.isfinite(scaled).all():
            raise ValueError(
                f"radii up to {radii.max():.4g} exceed the data's extent by more than "
                "float64's range; pass radii at the data's scale"
            )
        radii = scaled
    else:
        radii = np.sort(np.asarray(_default_radii(Xt, sample, min_neighbors, n_radii), float))
    curves, mean_nb, valid = _curves(Xt, sample, radii, d, cutoff, norm, min_neighbors,
                                     square_weights)  # fmt: skip
    for _ in range(_MAX_EXTENSIONS if default_grid else 0):
        # the default grid ends at a guess (the 200th neighbour); where the minimum sits on
        # that end, continue the grid geometrically (while it adds neighbours, up to n / 2)
        score = curves[criterion]
        finite = np.flatnonzero(np.isfinite(score))
        if finite.size < 2 or int(np.nanargmin(score)) != finite[-1]:
            break
        if mean_nb[-1] >= n / 2:
            break
        step = radii[-1] / radii[-2]
        radii = np.r_[radii, radii[-1] * step ** np.arange(1, max(1, n_radii // 2) + 1)]
        logger.info("select_radius: %s still falling at the default grid's end; radii up to "
                    "%.4g", criterion, radii[-1] / unit)  # fmt: skip
        curves, mean_nb, valid = _curves(Xt, sample, radii, d, cutoff, norm, min_neighbors,
                                         square_weights)  # fmt: skip
    score = curves[criterion]
    if not np.isfinite(score).any():
        raise ValueError(
            f"no candidate radius gives every sample point {min_neighbors} neighbours and a finite "
            f"{criterion}; try larger radii (largest was {radii[-1] / unit:.4g}) or fewer "
            "min_neighbors"
        )
    best = int(np.nanargmin(score))
    finite = np.flatnonzero(np.isfinite(score))
    if best == finite[-1] and finite.size > 1:
        logger.warning(
            "select_radius: %s is smallest at the largest candidate radius (%.4g); the minimum "
            "may lie beyond it: pass larger radii",
            criterion, radii[best] / unit,
        )  # fmt: skip
    radii = radii / unit  # data units again
    logger.info(
        "select_radius: %s picks radius %.4g (eps %.4g, %.1f neighbours)",
        criterion, radii[best], radii[best] / cutoff, mean_nb[best],
    )  # fmt: skip
    return RadiusSelection(
        radius=float(radii[best]), bandwidth=float(radii[best] / cutoff), criterion=criterion,
        radii=radii, mean_neighbors=mean_nb, valid=valid, sample=sample, **curves,
    )  # fmt: skip
