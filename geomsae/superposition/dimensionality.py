"""Feature dimensionality D_i (Elhage et al. 2022, *Toy Models of Superposition*).

For feature directions ``W_i`` (rows of ``W``, shape ``(n_features, d_model)``)

    D_i = ||W_i||^2 / sum_j (W_i_hat . W_j)^2        (the sum includes j = i)

is the fraction of a dimension that feature ``i`` gets: 1 for a feature orthogonal to all others,
``d / k`` for ``k`` features forming a tight frame in a ``d``-dimensional subspace (pentagon in the
plane: 2/5), 0 for a feature that is not represented (zero vector). ``0 <= D_i <= 1`` and
``sum_i D_i <= d_model``.

The denominator is a quadratic form, ``sum_j (W_i_hat . W_j)^2 = W_i_hat^T (W^T W) W_i_hat``, so
the ``(n_features, n_features)`` Gram matrix is never formed: one ``(d_model, d_model)`` matrix and
blocks of rows suffice, and ``n_features = 65536`` SAE decoders fit comfortably in memory.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

STICKY_FRACTIONS: tuple[tuple[str, float], ...] = (
    ("1", 1.0),
    ("3/4", 3 / 4),
    ("2/3", 2 / 3),
    ("1/2", 1 / 2),
    ("2/5", 2 / 5),
    ("3/8", 3 / 8),
)
"""The "sticky" values of D_i seen by Elhage et al.: orthogonal, tetrahedron, triangle, antipodal
pair / square, pentagon, square antiprism."""


def as_directions(W: Tensor | np.ndarray, name: str = "W") -> Tensor:
    """Check and convert feature directions to a 2-D floating torch tensor (no copy if possible).

    Parameters
    ----------
    W : array or Tensor of shape (n_features, d_model)
    name : str
        Name used in error messages.

    Returns
    -------
    Tensor of shape (n_features, d_model)
    """
    if isinstance(W, np.ndarray):
        W = torch.from_numpy(W)
    elif not isinstance(W, Tensor):
        raise ValueError(
            f"{name} must be a numpy array or torch tensor of shape (n_features, d_model), "
            f"got {type(W).__name__}; convert it with np.asarray({name})"
        )
    if W.ndim != 2:
        raise ValueError(
            f"{name} must have shape (n_features, d_model), got shape {tuple(W.shape)}; "
            "pass one feature direction per row (for a toy model's W of shape (d_hidden, "
            "n_features) pass W.T)"
        )
    if W.shape[0] == 0 or W.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(W.shape)}); pass at least one feature")
    if not torch.is_floating_point(W):
        W = W.double()
    if not bool(torch.isfinite(W).all()):
        raise ValueError(f"{name} contains NaN or infinite values; clean the directions first")
    return W.detach()


def _work_dtype(device: torch.device) -> torch.dtype:
    # float64 where the device has it (MPS does not): D_i of near-duplicate features is a ratio
    # of nearly equal sums.
    return torch.float32 if device.type == "mps" else torch.float64


def feature_dimensionality(
    W: Tensor | np.ndarray,
    block_size: int = 8192,
    eps: float = 1e-12,
) -> np.ndarray:
    """Feature dimensionality ``D_i`` of every feature direction.

    Parameters
    ----------
    W : array or Tensor of shape (n_features, d_model)
        One feature direction per row: SAE decoder rows (``Dictionary.feature_directions``),
        baseline directions, or the columns of a toy model's ``W`` (pass ``W.T``). Computed on
        ``W``'s device.
    block_size : int
        Rows processed at a time (memory is ``O(block_size * d_model + d_model^2)``).
    eps : float
        Rows with squared norm ``<= eps * max squared norm`` count as zero vectors and get
        ``D_i = 0`` (a feature that is not represented has no dimension).

    Returns
    -------
    ndarray of shape (n_features,)
        ``D_i`` in ``[0, 1]``, float64.

    Examples
    --------
    >>> import numpy as np
    >>> angles = 2 * np.pi * np.arange(5) / 5
    >>> pentagon = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    >>> np.round(feature_dimensionality(pentagon), 6)
    array([0.4, 0.4, 0.4, 0.4, 0.4])
    """
    if block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size}")
    W = as_directions(W)
    W = W.to(_work_dtype(W.device))
    sq_norms = (W * W).sum(dim=1)  # (n_features,)
    top = float(sq_norms.max())
    nonzero = sq_norms > eps * top if top > 0 else torch.zeros_like(sq_norms, dtype=torch.bool)
    M = W.T @ W  # (d_model, d_model): sum_j W_j W_j^T
    out = torch.zeros_like(sq_norms)
    for start in range(0, W.shape[0], block_size):
        rows = W[start : start + block_size]
        n2 = sq_norms[start : start + block_size]
        keep = nonzero[start : start + block_size]
        unit = rows / torch.where(keep, n2, torch.ones_like(n2)).sqrt()[:, None]
        denom = ((unit @ M) * unit).sum(dim=1)  # sum_j (unit_i . W_j)^2, >= n2 > 0 when kept
        d = torch.where(keep, n2 / torch.where(keep, denom, torch.ones_like(denom)), 0.0)
        out[start : start + block_size] = d
    return out.clamp_(0.0, 1.0).cpu().numpy()


def total_dimensionality(W: Tensor | np.ndarray, block_size: int = 8192) -> float:
    """``sum_i D_i``: the number of dimensions the features use (at most ``d_model``)."""
    return float(feature_dimensionality(W, block_size=block_size).sum())


def sticky_counts(D: np.ndarray, tol: float = 0.02) -> dict[str, int]:
    """How many ``D_i`` lie within ``tol`` of each sticky fraction (and how many are ~0).

    Parameters
    ----------
    D : array of shape (n_features,)
        Output of :func:`feature_dimensionality`.
    tol : float
        Half-width of the window around each fraction.

    Returns
    -------
    dict
        ``{"0": n, "1": n, "3/4": n, ...}`` in the order of :data:`STICKY_FRACTIONS`.
    """
    D = np.asarray(D, dtype=float)
    out = {"0": int((D <= tol).sum())}
    for label, value in STICKY_FRACTIONS:
        out[label] = int((np.abs(D - value) <= tol).sum())
    return out
