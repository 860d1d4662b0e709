"""Effective number of features (Bereska et al. 2025).

With ``q_j`` the share of feature ``j`` in the mean absolute activation,
``q_j = E|a_j| / sum_k E|a_k|``, the effective number of features is ``F = exp(H(q))`` with
``H(q) = -sum_j q_j log q_j``: ``F = n`` when all ``n`` features carry equal mass, ``F = 1`` when
one feature carries everything, and dead features do not count.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm


def effective_features_from_means(mean_abs: Tensor | np.ndarray) -> float:
    """``exp(H(q))`` from the mean absolute activation of every feature.

    Parameters
    ----------
    mean_abs : array of shape (n_features,)
        ``E|a_j|`` (non-negative, not all zero).

    Returns
    -------
    float
        Between 1 and ``n_features``.
    """
    m = np.asarray(mean_abs.detach().cpu() if isinstance(mean_abs, Tensor) else mean_abs, float)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"mean_abs must be a non-empty 1-D array, got shape {m.shape}")
    if not np.all(np.isfinite(m)) or (m < 0).any():
        raise ValueError("mean_abs must be finite and non-negative (pass mean |activation|)")
    total = m.sum()
    if total <= 0:
        raise ValueError("every feature has zero mean |activation|: no feature is ever active")
    q = m[m > 0] / total
    return float(np.exp(-(q * np.log(q)).sum()))


def effective_features(codes: Tensor | np.ndarray) -> float:
    """Effective number of features of feature activations.

    Parameters
    ----------
    codes : array or Tensor of shape (n_samples, n_features)
        Feature activations (e.g. ``dictionary.encode(x)``).

    Returns
    -------
    float

    Examples
    --------
    >>> import numpy as np
    >>> round(effective_features(np.ones((10, 4))), 6)
    4.0
    """
    c = torch.as_tensor(codes)
    if c.ndim != 2:
        raise ValueError(f"codes must have shape (n_samples, n_features), got {tuple(c.shape)}")
    if c.shape[0] == 0:
        raise ValueError("codes has no samples")
    return effective_features_from_means(c.abs().double().mean(dim=0))


@torch.no_grad()
def mean_abs_activation(
    dictionary: torch.nn.Module, X: Tensor | np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """``E|a_j|`` of a dictionary's features over ``X``, encoded in batches.

    Parameters
    ----------
    dictionary : Dictionary
        Anything with ``encode(x) -> (n, n_features)`` and parameters on one device.
    X : array or Tensor of shape (n_samples, d_in)
    batch_size : int

    Returns
    -------
    ndarray of shape (n_features,)
    """
    X = torch.as_tensor(X)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"X must have shape (n_samples, d_in) with n_samples > 0, got {X.shape}")
    param = next(dictionary.parameters(), None)
    device = param.device if param is not None else X.device
    dtype = param.dtype if param is not None else torch.float32
    total = None
    starts = range(0, X.shape[0], batch_size)
    for s in tqdm(starts, desc="encoding", leave=False, disable=len(starts) < 20):
        a = dictionary.encode(X[s : s + batch_size].to(device=device, dtype=dtype))
        part = a.abs().double().sum(dim=0)
        total = part if total is None else total + part
    return (total / X.shape[0]).cpu().numpy()
