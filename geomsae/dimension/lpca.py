"""Local PCA: count the significant eigenvalues of a (local) covariance matrix.

Rules applied to the eigenvalues ``l_1 >= l_2 >= ...``:

* ``"fo"`` (Fukunaga & Olsen 1971): the number of ``l_j > alpha * l_1`` (default alpha 0.05);
* ``"variance"``: the fewest leading components explaining ``variance`` of the total (0.95);
* ``"gap"``: the position of the largest ratio ``l_j / l_(j+1)``; on curved manifolds with
  little noise the gap from the curvature eigenvalue (~``r^4 / R^2``) to the noise floor can
  beat the tangent one (~``R^2 / r^2``), and it counts ``d + 1`` (a noise-free 3-sphere:
  4 at every point, as scikit-dimension's ``maxgap``); prefer ``"fo"`` there;
* ``"participation_ratio"``: ``(sum l)^2 / sum l^2`` (continuous; a *linear* dimension).

``fit`` uses the covariance of the whole data set (global PCA, a linear dimension);
``fit_pointwise`` the covariance of each point together with its ``n_neighbors`` nearest
neighbours, computed in blocks through the (k+1) x (k+1) Gram matrix when that is smaller than
the feature dimension, and batched ``eigvalsh`` -- no Python loop over points. On CPUs that
multiply bfloat16 natively, the ``"fo"`` counts come from bfloat16 Gram
matrices with a rigorous bound on their eigenvalues' error: a count is kept only where no
eigenvalue lies within that bound of the rule's threshold (so it is the count the exact
eigenvalues give), and the other neighbourhoods are recomputed in float32.
Local PCA overshoots on curved sets (curvature adds variance off the tangent plane) and
undershoots at high dimension when neighbourhoods are small.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from geomsae.dimension.base import IDEstimator, check_n_neighbors
from geomsae.dimension.ritz import ritz_bounds, ritz_certify, ritz_rank
from geomsae.neighbors import DEFAULT_MEMORY_BYTES, knn
from geomsae.neighbors.brute import native_bf16, trial_first

__all__ = ["LocalPCA", "dimension_from_eigenvalues", "local_eigenvalues", "local_pca"]

_RULES = ("fo", "variance", "gap", "participation_ratio")


def dimension_from_eigenvalues(
    eigenvalues: torch.Tensor,
    rule: str = "fo",
    *,
    alpha: float = 0.05,
    variance: float = 0.95,
    rtol: float = 1e-12,
) -> torch.Tensor:
    """Apply a counting rule to each row of descending, non-negative eigenvalues.

    A row whose largest eigenvalue is 0 (all points of the neighbourhood identical) has
    dimension 0 under every rule.

    Parameters
    ----------
    eigenvalues : tensor of shape (n_batches, r), each row sorted descending
    rule : {"fo", "variance", "gap", "participation_ratio"}
    alpha : float
        Fukunaga-Olsen threshold (fraction of the largest eigenvalue).
    variance : float
        Fraction of the variance to explain for ``"variance"``.
    rtol : float
        ``"gap"`` and ``"variance"``: eigenvalues below ``rtol * l_1`` are taken as zero
        (rounding noise: their ratios are meaningless, and with ``variance=1`` they would be
        counted); pass about ``m * eps`` of the precision they were computed in.

    Returns
    -------
    tensor of shape (n_batches,), float64 (integer-valued except for ``participation_ratio``)
    """
    lam = eigenvalues.clamp_min(0)
    flat = lam[:, 0] <= 0 if lam.shape[1] else torch.ones(0, dtype=torch.bool)
    if bool(flat.any()):
        out = torch.zeros(lam.shape[0], dtype=torch.float64, device=lam.device)
        live = torch.nonzero(~flat).flatten()
        if live.numel():
            out[live] = dimension_from_eigenvalues(
                lam[live], rule, alpha=alpha, variance=variance, rtol=rtol
            )
        elif rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}; got {rule!r}")
        return out
    if rule == "fo":
        return (lam > alpha * lam[:, :1]).sum(1).to(torch.float64)
    if rule == "variance":
        lam = torch.where(lam > rtol * lam[:, :1], lam, torch.zeros_like(lam))
        frac = torch.cumsum(lam, 1) / lam.sum(1, keepdim=True)
        return 1.0 + (frac < variance - 1e-12).sum(1).to(torch.float64)
    if rule == "gap":
        if lam.shape[1] < 2:
            return torch.ones(lam.shape[0], dtype=torch.float64, device=lam.device)
        # a floor keeps exactly-flat data finite: the gap to a numerical zero is then the largest
        floor = lam[:, :1] * rtol + torch.finfo(torch.float64).tiny
        lam = torch.maximum(lam, floor)
        return 1.0 + torch.argmax(lam[:, :-1] / lam[:, 1:], dim=1).to(torch.float64)
    if rule == "participation_ratio":
        return lam.sum(1) ** 2 / (lam**2).sum(1)
    raise ValueError(f"rule must be one of {_RULES}; got {rule!r}")


def local_eigenvalues(
    X: torch.Tensor,
    indices: torch.Tensor,
    *,
    block_size: int | None = None,
    dtype: torch.dtype = torch.float64,
    rebase: bool = False,
) -> torch.Tensor:
    """Covariance eigenvalues of each neighbourhood ``X[indices[i]]``, descending.

    Each neighbourhood is expressed relative to its first point (translation does not change a
    covariance, and it keeps the numbers small), its Gram matrix (m x m, when m <= D) or scatter
    matrix (D x D) is formed by one batched product and centred algebraically, and
    ``eigvalsh`` runs on the whole batch.

    Parameters
    ----------
    X : tensor of shape (n_samples, n_features)
    indices : int tensor of shape (n_queries, m)
        Rows of each neighbourhood (m points each; the first is the reference point).
    block_size : int, optional
        Neighbourhoods per batch (default: about 256 MiB of work space).
    dtype : torch.dtype
        Precision of the products and eigenvalues (float32 halves the memory traffic; the
        eigenvalues keep ~6 significant digits, plenty for counting rules).
    rebase : bool
        In a narrower ``dtype`` than ``X``'s: gather each neighbourhood in ``X``'s precision
        and take it relative to its first point there, before rounding (else the rows are
        rounded once, from a globally centred copy). Needed for neighbourhoods much smaller
        than their distance from the data's mean, whose spread the rounding would swamp.

    Returns
    -------
    tensor of shape (n_queries, min(m, n_features)), float64
    """
    n_q, m = indices.shape
    D = X.shape[1]
    r = min(m, D)
    item = torch.finfo(dtype).bits // 8
    if block_size is None:
        # ~256 neighbourhoods: the gathered block stays in cache for its product (~25% faster)
        block_size = max(1, min(256, DEFAULT_MEMORY_BYTES // (item * (2 * m * D + 2 * r * r))))
    rebase = rebase and torch.finfo(dtype).bits < torch.finfo(X.dtype).bits
    Xd, scale = (X, _power_of_two_scale(X)) if rebase else working_copy(X, dtype)
    centre = torch.eye(m, dtype=dtype, device=X.device) - 1.0 / m  # I - 11^T / m
    out = []
    for start in range(0, n_q, block_size):
        idx = indices[start : start + block_size]
        b = idx.shape[0]
        Y = Xd.index_select(0, idx.reshape(-1)).view(b, m, D)  # (b, m, D)
        Y.sub_(Y[:, :1].clone())  # relative to the reference point: keeps the numbers small
        if rebase:
            Y = Y.mul_(scale).to(dtype)
        if m <= D:  # nonzero spectra of Y^T C Y and C Y Y^T C coincide: use the smaller
            G = centre @ (Y @ Y.transpose(1, 2)) @ centre
        else:
            Yc = Y - Y.mean(1, keepdim=True)
            G = Yc.transpose(1, 2) @ Yc
        out.append(torch.linalg.eigvalsh(G / (m - 1)).flip(-1).to(torch.float64))
    return torch.cat(out) / scale**2


def working_copy(X: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, float]:
    """``X`` in ``dtype`` for local covariances, and the factor ``s`` it was scaled by.

    In a narrower precision than ``X``'s, the points are first centred and scaled by a power
    of two ``s`` (largest norm in [0.5, 1)) in ``X``'s own precision: rounding absolute
    coordinates far from the origin to float32 would lose the neighbourhoods' digits (an
    offset of 1e4 left local PCA's counts wrong on half the points), and squares of very
    large or small coordinates would overflow or underflow float32. Covariances of the copy
    are ``s^2`` times those of ``X``.
    """
    if torch.finfo(dtype).bits >= torch.finfo(X.dtype).bits or X.shape[0] == 0:
        return X.to(dtype), 1.0
    Xc = X - X.mean(0)
    scale = _power_of_two_scale(Xc)
    return Xc.mul_(scale).to(dtype), scale


def _power_of_two_scale(Xc: torch.Tensor) -> float:
    """``2^e`` putting the largest row norm of ``Xc`` in [0.5, 1) (1 for empty, zero or
    non-finite data)."""
    if Xc.shape[0] == 0:
        return 1.0
    top = float(torch.sqrt((Xc * Xc).sum(1).max()))
    if top == 0.0 or not np.isfinite(top):
        return 1.0
    return math.ldexp(1.0, -math.frexp(top)[1])


_REBASE_BELOW = 1e4  # neighbourhood radius / (eps |x - mean|) below this: re-based in float64
_BF16_U = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)
_EPS32 = float(torch.finfo(torch.float32).eps)
_BF16_BLOCK = 32  # neighbourhoods per block: the gathered block stays in cache (fastest)
_BF16_TRIAL = 256  # neighbourhoods tried before the certified share is judged
_BF16_MIN_CERTIFIED = 0.5  # below this share of the trial, the rest goes straight to float32
_RITZ_BLOCK = 256  # neighbourhoods per Rayleigh-Ritz batch (its small products amortised)
# a Ritz batch may take this many times the trial's eigvalsh per row before it is dropped: in
# the pipeline, between the gathers, it runs up to 1.7x slower than on its own (n = 20 000)
# while the trial's eigvalsh ran with warm caches, and it still saved 13 % there
_RITZ_SLOWER = 1.5


def _bf16_gram(
    X32: torch.Tensor, indices: torch.Tensor, work: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bfloat16 Gram matrix of each neighbourhood, and what bounds its eigenvalues' error.

    Each neighbourhood ``Y = X32[indices[i]]`` (m <= D points) is taken relative to its first
    point and centred, in float32, rounded to bfloat16, and ``Y Y^T`` is formed by one batched
    bfloat16 product (float32 accumulation, bfloat16 output). With ``u = 2^-8``,
    ``F = |Y|_F`` and ``S = |Y|_2`` (the largest singular value), Weyl's inequality bounds the
    distance of every eigenvalue of ``G`` (or computed by ``eigvalsh`` in float32) from the
    exact one of the float32 neighbourhood's covariance by ``(3.1 u + 4 eps32) F S + 2 c S +
    c^2 + (2 u^2 + (D + 4 m + 8) eps32) F^2`` (for ``Y Y^T``; divided by ``m - 1`` for the
    covariance): rounding the input
    (``2 u F S + u^2 F^2``) and the centring subtractions (``2 eps32 F S``), the bfloat16 output
    (``u |Y Y^T|_F <= u F S``), the float32 accumulation (``D eps32 F^2``), ``eigvalsh``'s
    backward error (a few ``m eps32 F^2``), and the float32 mean's error ``r`` (the centred
    rows' mean is ``r``, not 0: ``|Y Y^T|`` moves by ``<= 2 sqrt(m) |r| S + m |r|^2``), with
    ``sqrt(m) |r| <= c = (m + 2) eps32 |Y_0|_F``, ``Y_0`` the rows before centring. ``S^2`` is
    bounded by the largest computed eigenvalue plus the cruder bound with ``S = F``. Taking
    the rows relative to the first point first keeps ``c`` at the neighbourhood's own scale
    (centring far from the origin would leave a mean error of ``eps32 |x|``).

    Parameters
    ----------
    X32 : tensor of shape (n_samples, n_features), float32
    indices : int tensor of shape (n_queries, m), m <= n_features
    work : dict, optional
        Work buffers reused across calls (fresh multi-megabyte blocks are paged in on first
        touch, which costs more than the gather itself).

    Returns
    -------
    G : tensor of shape (n_queries, m, m), float32
        The computed ``Y Y^T`` (not divided by ``m - 1``).
    f2 : tensor of shape (n_queries,), float64
        An upper bound on ``F^2``.
    c : tensor of shape (n_queries,), float64
        The bound ``c`` on the mean's error; :func:`_bf16_bound` turns these into the bound.
    """
    b, m = indices.shape
    D = X32.shape[1]
    work = {} if work is None else work
    if work.get("rows", 0) < b * m:
        work["rows"] = b * m
        work["y"] = torch.empty(b * m, D, dtype=X32.dtype, device=X32.device)
        work["yb"] = torch.empty(b * m, D, dtype=torch.bfloat16, device=X32.device)
    Y = torch.index_select(X32, 0, indices.reshape(-1), out=work["y"][: b * m]).view(b, m, D)
    Y.sub_(Y[:, :1].clone())  # relative to the first point: the local scale
    mu = Y.mean(1, keepdim=True)
    Yb = work["yb"][: b * m].view(b, m, D)
    torch.sub(Y, mu, out=Yb)  # centred in float32, then rounded to bfloat16: one pass
    G = torch.bmm(Yb, Yb.transpose(1, 2)).float()
    # |Y|_F^2 from the computed diagonal: each entry is at least (1 - u)^3 (1 - D eps32) of its
    # exact value (input rounding twice, accumulation, output rounding)
    u, eps = _BF16_U, _EPS32
    f2 = torch.diagonal(G, dim1=1, dim2=2).double().sum(1) / ((1 - u) ** 3 * (1 - D * eps))
    f2 = f2 * (1 + 1e-3)  # slack for the centring's own rounding of the norms
    y0 = f2 + m * (mu.double() ** 2).sum((1, 2))  # |Y_0|_F^2 = |Y|_F^2 + m |mu|^2
    c = (m + 2) * eps * torch.sqrt(y0)
    return G, f2, c


def _bf16_bound(
    f2: torch.Tensor, c: torch.Tensor, top: torch.Tensor, m: int, D: int
) -> torch.Tensor:
    """The Weyl bound of :func:`_bf16_gram` on every eigenvalue of ``G`` (not divided by
    ``m - 1``), given ``top``: the largest eigenvalue of ``G`` computed by ``eigvalsh``, or an
    upper bound on it."""
    u, eps = _BF16_U, _EPS32
    small = (2 * u * u + (D + 4 * m + 8) * eps) * f2

    def bound(s: torch.Tensor) -> torch.Tensor:
        return (3.1 * u + 4 * eps) * torch.sqrt(f2) * s + 2 * c * s + c * c + small

    s = torch.sqrt(top.clamp_min(0) + bound(torch.sqrt(f2)))  # S <= this (S <= F first)
    return bound(s)


def _bf16_eigenvalues(
    X32: torch.Tensor, indices: torch.Tensor, work: dict | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, float64) and their error bound from :func:`_bf16_gram`, both
    divided by ``m - 1`` like the covariance."""
    m, D = indices.shape[1], X32.shape[1]
    G, f2, c = _bf16_gram(X32, indices, work)
    lam = torch.linalg.eigvalsh(G).flip(-1).double()
    return lam / (m - 1), _bf16_bound(f2, c, lam[:, 0], m, D) / (m - 1)


def _certified(eigenvalues: torch.Tensor, error: torch.Tensor, alpha: float) -> torch.Tensor:
    """Rows whose Fukunaga-Olsen count cannot change when each eigenvalue moves by ``error``.

    The count is that of ``l_j > alpha l_1`` (:func:`dimension_from_eigenvalues`, eigenvalues
    clamped at 0: the exact ones are >= 0, so a clamped value stays within ``error``); it
    holds when every ``|l_j - alpha l_1| > (1 + alpha) error``.
    """
    lam = eigenvalues.clamp_min(0)
    return ((lam - alpha * lam[:, :1]).abs() > (1 + alpha) * error[:, None]).all(1)


_GRAM_ROWS = 2048  # rows per float32 block of the global Gram matrix (sums in float64)
_EPS64 = float(torch.finfo(torch.float64).eps)


def _covariance_eigenvalues32(X: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Covariance eigenvalues of the rows of ``X`` (float64, n > D) from float32 Gram blocks.

    The rows are centred in float64, rounded to float32 in blocks of ``b = 2048``, each
    block's ``Y_b^T Y_b`` is a float32 product (a symmetric rank-k update), and the blocks are
    summed in float64. With ``u = 2^-24``, ``t = 2^-150`` (the absolute rounding error of a
    float32 result in the subnormal range) and ``F = |Y|_F``, the rounded rows are ``Y + E`` with
    ``|E|_F <= e = u F + sqrt(n D) t``, and Weyl's inequality bounds every eigenvalue's error by
    ``2 e F + e^2 + g_b |Y + E|_F^2 + n D t + (n / b + 2 + 64 D) eps64 |Y + E|_F^2``, over
    ``n - 1``: the rounding of the input, the float32 accumulation of each block
    (``g_b = b u / (1 - b u)``, any summation order, times ``| |Y|^T |Y| |_2 <= |Y|_F^2``, plus
    ``t`` for each product that underflows), the float64 sums, and ``eigvalsh``'s backward
    error. ``|Y + E|_F^2`` is bounded from the computed trace, and ``F`` from that.

    Returns
    -------
    (eigenvalues, error) : array of shape (D,), float64, descending, and a float bounding
        ``|computed - exact|`` for every eigenvalue; or None when a float32 product overflowed
        (entries beyond ~1e19).
    """
    n, D = X.shape
    mu = X.mean(0)
    G = np.zeros((D, D))
    work = np.empty((min(n, _GRAM_ROWS), D), dtype=np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, _GRAM_ROWS):
            rows = X[start : start + _GRAM_ROWS]
            Y = np.subtract(rows, mu, out=work[: len(rows)], casting="unsafe")  # rounded once
            G += Y.T @ Y  # numpy forms Y^T Y as a symmetric rank-k update
    if not np.isfinite(G).all():
        return None
    u, t = 2.0**-24, 2.0**-150
    b = min(n, _GRAM_ROWS)
    g = b * u / (1 - b * u)
    under = n * D * t
    fh2 = (float(np.trace(G)) + under) / ((1 - g) * (1 - 1e-9))  # >= |Y + E|_F^2
    F = (np.sqrt(fh2) + np.sqrt(n * D) * t) / (1 - u)  # >= |Y|_F
    e = u * F + np.sqrt(n * D) * t
    err = 2 * e * F + e * e + g * fh2 + under + (n / b + 2 + 64 * D) * _EPS64 * fh2
    lam = np.linalg.eigvalsh(G)[::-1].copy()
    return lam / (n - 1), err / (n - 1)


class LocalPCA(IDEstimator):
    """Intrinsic dimension by (local) principal component analysis.

    Parameters
    ----------
    rule : {"fo", "variance", "gap", "participation_ratio"}, default "fo"
        How eigenvalues are turned into a dimension (see the module docstring).
    alpha : float, default 0.05
        Fukunaga-Olsen threshold.
    variance : float, default 0.95
        Variance fraction for ``rule="variance"``.
    n_neighbors : int, optional
        If given, ``fit`` returns the mean of the pointwise estimates with this neighbourhood
        size (a nonlinear estimate); by default ``fit`` is PCA of the whole data set.
    dtype : torch.dtype, default torch.float32
        Precision of the pointwise local covariances (float32 is ~2x faster; the counting rules
        need far fewer digits than it keeps). With float32 on a CPU with native bfloat16
        products, ``"fo"`` first uses bfloat16 Gram matrices with a rigorous
        bound on their eigenvalues' error, keeping only the counts that bound certifies and
        redoing the other neighbourhoods in float32: the same counts, with ~4x cheaper
        products where the spectra are clearly separated from the threshold (where they are
        not, as on SmolLM2 activations, 256 neighbourhoods are tried, then float32). The global
        ``"fo"`` PCA on a CPU (more points than features) likewise sums float32 Gram blocks
        in float64 and keeps the count where a rigorous bound certifies it (float64
        otherwise): ~1.5x faster; ``eigenvalues_`` are then within ``eigenvalue_error_`` of
        the exact ones (0 for the float64 Gram). ``dtype=torch.float64`` makes both float64.

    Notes
    -----
    ``fit`` with ``n_neighbors=None`` is global PCA (a linear dimension). Pointwise
    neighbourhoods contain the point itself and its ``n_neighbors`` nearest neighbours.
    Duplicate points are harmless here.

    Examples
    --------
    >>> from geomsae.manifolds import cube
    >>> X = cube(500, d=4, ambient_dim=30, random_state=0).X
    >>> LocalPCA().fit(X).dimension_
    4.0
    """

    _needs_distinct = False

    def __init__(
        self,
        rule: str = "fo",
        *,
        alpha: float = 0.05,
        variance: float = 0.95,
        n_neighbors: int | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.rule = rule
        self.alpha = alpha
        self.variance = variance
        self.n_neighbors = n_neighbors
        self.dtype = dtype

    def _check(self) -> None:
        if self.rule not in _RULES:
            raise ValueError(f"rule must be one of {_RULES}; got {self.rule!r}")
        if not 0 < self.alpha < 1 or not 0 < self.variance <= 1:
            raise ValueError("need 0 < alpha < 1 and 0 < variance <= 1")

    def _count(
        self, lam: torch.Tensor, m: int = 0, precision: torch.dtype | None = None
    ) -> torch.Tensor:
        """The rule's counts; ``m``: the points per neighbourhood (or data set), ``precision``:
        what the eigenvalues were computed in (default ``self.dtype``).

        ``m`` centred points span at most ``m - 1`` dimensions, so when ``m <= D`` the last
        eigenvalue is a rounding-level zero by construction: it is left out (the largest-gap
        rule would otherwise find its biggest ratio there and count ``m - 1``). ``m`` eps of
        ``precision`` is also the noise floor of the ``"gap"`` and ``"variance"`` rules.
        """
        if 1 < m <= lam.shape[1]:
            lam = lam[:, : m - 1]
        rtol = max(1e-12, m * torch.finfo(precision or self.dtype).eps)
        return dimension_from_eigenvalues(
            lam, self.rule, alpha=self.alpha, variance=self.variance, rtol=rtol
        )

    def _global(self, X: torch.Tensor) -> float:
        self._check()
        if self.n_neighbors is not None:
            k = check_n_neighbors(self.n_neighbors, X.shape[0])
            return float(self._pointwise(X, k).mean())
        n, D = X.shape
        if not X.is_cuda and self.dtype == torch.float32 and self.rule == "fo" and n > D:
            fast = _covariance_eigenvalues32(X.numpy())
            if fast is not None:
                lam32, err = fast
                lam, e = torch.from_numpy(lam32), torch.tensor([err], dtype=torch.float64)
                if bool(_certified(lam[None], e, self.alpha)):
                    self._keep_eigenvalues(lam32, err)
                    return float(self._count(lam[None])[0])
        if X.is_cuda:
            Y = X - X.mean(0)
            G = Y @ Y.T if n <= D else Y.T @ Y
            lam = torch.linalg.eigvalsh(G / (n - 1)).flip(-1)
        else:  # numpy's BLAS forms A^T A as a symmetric rank-k update: ~2x torch's product
            Y = X.numpy() - X.numpy().mean(0)
            G = Y @ Y.T if n <= D else Y.T @ Y
            lam = torch.from_numpy(np.linalg.eigvalsh(G / (n - 1))[::-1].copy())
        self._keep_eigenvalues(lam.cpu().numpy(), 0.0)
        return float(self._count(lam[None], n, lam.dtype)[0])  # float64 eigenvalues

    def _keep_eigenvalues(self, lam: np.ndarray, err: float) -> None:
        """``eigenvalues_`` and ``eigenvalue_error_`` in data units (squared), from those of
        the data as scaled by ``_prepare``."""
        u = np.float64(getattr(self, "_unit", 1.0))
        with np.errstate(over="ignore", under="ignore"):  # beyond ~1e154: inf in data units
            self.eigenvalues_ = np.asarray(lam) / u / u
            self.eigenvalue_error_ = float(np.float64(err) / u / u)

    def _pointwise(self, X: torch.Tensor, n_neighbors: int) -> torch.Tensor:
        self._check()
        nb = knn(X, n_neighbors)
        own = torch.arange(X.shape[0], device=nb.indices.device)[:, None]
        hood = torch.cat([own, nb.indices], dim=1)
        m = hood.shape[1]
        if (
            self.dtype == torch.float32
            and self.rule == "fo"
            and not X.is_cuda
            and native_bf16()
            and X.shape[1] >= 64
            and m <= X.shape[1]
        ):
            out = self._bf16_pointwise(X, hood)
        else:
            out = self._count(local_eigenvalues(X, hood, dtype=self.dtype), m)
        tight = self._tight(X, nb.distances[:, -1])
        if tight.numel():  # their spread is below the rounding of a globally centred copy
            lam = local_eigenvalues(X, hood[tight], dtype=self.dtype, rebase=True)
            out[tight] = self._count(lam, m)
        return out

    def _tight(self, X: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Rows whose neighbourhood radius is below ``_REBASE_BELOW`` eps of the working
        precision times the point's distance from the mean: rounding the globally centred
        copy would perturb their coordinates by more than 1e-4 of their spread."""
        eps = torch.finfo(self.dtype).eps
        if torch.finfo(X.dtype).eps >= eps:
            return torch.zeros(0, dtype=torch.long, device=X.device)
        mu = X.mean(0)  # in L2-sized blocks: no (n, D) temporary
        far = torch.cat([torch.linalg.vector_norm(c - mu, dim=1) for c in X.split(512)])
        return torch.nonzero(radius.to(far) < _REBASE_BELOW * eps * far).flatten()

    def _bf16_pointwise(self, X: torch.Tensor, hood: torch.Tensor) -> torch.Tensor:
        """Counts from certified bfloat16 Grams, the uncertified rows redone in float32.

        A trial of ``_BF16_TRIAL`` evenly spaced neighbourhoods gets a full ``eigvalsh``; if at
        least half are certified, their spectra choose the rank of the Rayleigh-Ritz
        certificate (:mod:`geomsae.dimension.ritz`; none where it is not predicted to be
        cheaper) for the rest, in batches of evenly interleaved rows (so that each batch, like
        the trial, stands for the whole set whatever the input's order: sorted input may
        start with a run of hard rows). Its uncertified rows get the full ``eigvalsh`` of
        their Gram matrix, and it is dropped for the rest as soon as its batches so far
        certify fewer than half their rows or take ``_RITZ_SLOWER`` times the trial's
        ``eigvalsh`` per row (LAPACK's speed at this size varies 2x between CPUs).
        Certified counts are exact whichever test proved them.
        """
        X32, _ = working_copy(X, torch.float32)  # counts do not depend on the scale
        n, m = hood.shape
        D = X.shape[1]
        out = torch.empty(n, dtype=torch.float64, device=X.device)
        todo: list[torch.Tensor] = []
        work: dict = {}
        trial: list[tuple[torch.Tensor, torch.Tensor]] = []
        eig_seconds = [0.0]

        def settle(rows: torch.Tensor, G: torch.Tensor, f2: torch.Tensor, c: torch.Tensor):
            t = time.perf_counter()
            lam = torch.linalg.eigvalsh(G).flip(-1).double()
            eig_seconds[0] += time.perf_counter() - t
            err = _bf16_bound(f2, c, lam[:, 0], m, D)
            out[rows] = self._count(lam)
            todo.append(rows[~_certified(lam, err, self.alpha)])
            if len(trial) * _BF16_BLOCK < _BF16_TRIAL:
                trial.append((lam, err))

        # the trial: evenly spaced rows (sorted input would make its first rows unrepresentative)
        first, *others = trial_first(n, min(n, _BF16_TRIAL), X.device)
        for rows in first.split(_BF16_BLOCK):
            settle(rows, *_bf16_gram(X32, hood[rows], work))
        rest = torch.cat(others) if others else first[:0]
        if sum(t.numel() for t in todo) > (1 - _BF16_MIN_CERTIFIED) * first.numel():
            todo.append(rest)  # the rest in float32
            rest = rest[:0]
        rank, eig_per_row = None, 0.0
        if rest.numel():
            lam, err = (torch.cat(t) for t in zip(*trial, strict=True))
            rank = ritz_rank(lam, err, self.alpha)
            eig_per_row = eig_seconds[0] / first.numel()
        # batches of evenly interleaved rows: each stands for the set, whatever the input's order
        n_batches = -(-rest.numel() // _RITZ_BLOCK)
        batches = [rest[j::n_batches] for j in range(n_batches)]
        done, ritz_rows, ritz_bad, ritz_seconds = 0, 0, 0, 0.0
        while done < n_batches and rank is not None:
            rows = batches[done]
            grams = [_bf16_gram(X32, hood[r], work) for r in rows.split(_BF16_BLOCK)]
            G, f2, c = (torch.cat(t) for t in zip(*grams, strict=True))
            t = time.perf_counter()
            bounds = ritz_bounds(G, rank)
            cnt, ok = ritz_certify(bounds, _bf16_bound(f2, c, bounds.top, m, D), self.alpha)
            out[rows] = cnt
            bad = torch.nonzero(~ok).flatten()
            for sel in bad.split(_BF16_BLOCK):
                settle(rows[sel], G[sel], f2[sel], c[sel])
            ritz_rows += len(G)
            ritz_bad += bad.numel()
            ritz_seconds += time.perf_counter() - t
            too_few = ritz_bad > (1 - _BF16_MIN_CERTIFIED) * ritz_rows
            too_slow = ritz_seconds > _RITZ_SLOWER * eig_per_row * ritz_rows
            if too_few or too_slow:
                rank = None  # this data (or this CPU) does not favour the certificate
            done += 1
        if done < n_batches:  # the rest in order (the gathers' locality)
            left = torch.cat(batches[done:]).sort().values
            for rows in left.split(_BF16_BLOCK):
                settle(rows, *_bf16_gram(X32, hood[rows], work))
        bad = torch.cat(todo) if todo else torch.zeros(0, dtype=torch.long, device=X.device)
        if bad.numel():
            out[bad] = self._count(local_eigenvalues(X32, hood[bad], dtype=torch.float32))
        return out


def local_pca(X: Any, rule: str = "fo", **params: Any) -> float:
    """Global PCA dimension by ``rule``; see :class:`LocalPCA`."""
    return LocalPCA(rule, **params).fit(X).dimension_
