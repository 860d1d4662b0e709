"""Input checks and the duplicate-point policy shared by every geometry module."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

__all__ = [
    "as_indices",
    "as_tensor",
    "check_block_size",
    "check_no_duplicates",
    "check_points",
    "check_positive_int",
    "deduplicate",
    "find_duplicates",
    "unit_scale",
]


def _all_finite(X: np.ndarray | torch.Tensor) -> bool:
    """Whether every entry is finite: one sum (a NaN or Inf anywhere makes it non-finite), and
    the element-wise test only when the sum is not finite (NaN/Inf present, or an overflow)."""
    if isinstance(X, torch.Tensor):
        if X.is_floating_point() and bool(torch.isfinite(X.sum())):
            return True
        return bool(torch.isfinite(X).all())
    if np.issubdtype(X.dtype, np.floating):
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is only a fallback
            if np.isfinite(np.add.reduce(X, axis=None)):
                return True
    return bool(np.isfinite(X).all())


def check_points(X: Any, *, name: str = "X", min_samples: int = 2) -> np.ndarray | torch.Tensor:
    """Check that ``X`` is a finite 2-D point cloud and return it (numpy or torch, unchanged type).

    Raises
    ------
    ValueError
        If ``X`` is not 2-D, has fewer than ``min_samples`` rows or no columns, holds NaN/Inf,
        or holds integers beyond ``2^53`` (float64, in which every search computes, would
        round them: distinct points could merge).
    TypeError
        If ``X`` is neither array-like nor a torch tensor, or holds booleans or complex numbers.
    """
    if not isinstance(X, torch.Tensor):
        try:
            X = np.asarray(X)
        except Exception as exc:  # pragma: no cover - exotic inputs
            raise TypeError(f"{name} must be a numpy array or a torch tensor") from exc
        if X.dtype == object or not np.issubdtype(X.dtype, np.number):
            hint = ""
            if X.dtype == object and X.ndim == 0:
                hint = " (a scipy.sparse matrix? pass X.toarray())"
            elif X.dtype == object:
                hint = " (ragged rows, non-numbers, or integers beyond int64?)"
            raise TypeError(f"{name} must hold numbers; got dtype {X.dtype}{hint}")
    if isinstance(X, torch.Tensor) and X.dtype == torch.bool:
        raise TypeError(f"{name} must hold numbers; got dtype torch.bool (pass X.double())")
    if X.dtype.is_complex if isinstance(X, torch.Tensor) else np.iscomplexobj(X):
        raise TypeError(
            f"{name} is complex ({X.dtype}); points must be real: pass X.real, or stack real "
            "and imaginary parts as features"
        )
    shape = tuple(X.shape)
    if len(shape) != 2:
        hint = " (for one feature use X.reshape(-1, 1))" if len(shape) == 1 else ""
        raise ValueError(
            f"{name} must be 2-D of shape (n_samples, n_features); got shape {shape}{hint}"
        )
    if shape[1] == 0:
        raise ValueError(f"{name} has no features (shape {shape})")
    if shape[0] < min_samples:
        points = "point" if min_samples == 1 else "points"
        raise ValueError(f"{name} needs at least {min_samples} {points}; got {shape[0]}")
    if not _all_finite(X):
        raise ValueError(
            f"{name} contains NaN or Inf; drop those rows first "
            f"(e.g. X[np.isfinite(X).all(axis=1)])"
        )
    _check_exact_in_float64(X, name)
    return X


def _check_exact_in_float64(X: np.ndarray | torch.Tensor, name: str) -> None:
    """A ValueError for integer entries beyond 2^53, which float64 rounds."""
    integer = not X.is_floating_point() if isinstance(X, torch.Tensor) else X.dtype.kind in "iu"
    if not integer or (X.numel() if isinstance(X, torch.Tensor) else X.size) == 0:
        return
    top = max(abs(int(X.min())), abs(int(X.max())))
    if top > 2**53:
        raise ValueError(
            f"{name} holds integers of magnitude up to {top}, beyond 2^53: float64 (in which "
            "distances are computed) cannot hold them exactly, so distinct points could merge; "
            "subtract an offset first (e.g. X - X.min(0)), or pass floats if the rounding is "
            "acceptable"
        )


def as_tensor(X: Any, device: str | torch.device | None = None) -> torch.Tensor:
    """``X`` as a float64 torch tensor (zero-copy for float64 numpy arrays on CPU)."""
    t = X if isinstance(X, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(X))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


_UNIT_RANGE = (2.0**-40, 2.0**40)
_UNIT_SAMPLE = 256


def unit_scale(X: torch.Tensor) -> float:
    """1.0, or the power of two that brings the data's coordinate range into [0.5, 1).

    Intrinsic dimensions and tangent spaces are invariant to uniform scaling, but float64 is
    not: squared distances and covariances overflow beyond ~1e154 and underflow below ~1e-154.
    The estimators and local PCA scale such data by a power of two first (exact, short of
    subnormals) and report lengths in data units again. A strided sample of 256 rows decides
    cheaply whether to scale: only when its range (largest column ``max - min``) lies outside
    [2^-40, 2^40], or is 0, are all rows read, and the factor then comes from their range,
    capped so that the largest ``|entry|`` stays below 2^1000 (an outlier, or a constant
    column far from 0, must not overflow).
    """
    if X.numel() == 0:
        return 1.0
    sample = X[:: max(1, X.shape[0] // _UNIT_SAMPLE)].detach().cpu().numpy()
    half = float((sample.max(0) * 0.5 - sample.min(0) * 0.5).max())  # halves: no overflow
    if half > 0.0 and _UNIT_RANGE[0] <= 2 * half <= _UNIT_RANGE[1]:
        return 1.0
    A = X.detach().cpu().numpy()
    hi, lo = A.max(0), A.min(0)
    half = float((hi * 0.5 - lo * 0.5).max())
    if half == 0.0 or _UNIT_RANGE[0] <= 2 * half <= _UNIT_RANGE[1]:
        return 1.0
    top = float(max(np.abs(hi).max(), np.abs(lo).max()))
    exp = min(-math.frexp(half)[1] - 1, 1000 - math.frexp(top)[1], 1023)
    return math.ldexp(1.0, exp)


def check_real(name: str, value: Any, *, minimum: float = 0.0, inclusive: bool = False) -> float:
    """``value`` as a float, or a ValueError naming ``name``: a finite real number above
    ``minimum`` (at or above with ``inclusive``), given as a Python or NumPy scalar or a 0-d
    array or tensor (``torch.tensor(0.1)``); bools, strings and complex numbers are refused."""
    v = value
    if isinstance(v, (torch.Tensor, np.ndarray)) and v.ndim == 0:
        v = v.item()  # a bool or complex stays one, and is refused
    ok = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)
    if ok:
        v = float(v)
        ok = math.isfinite(v) and (v >= minimum if inclusive else v > minimum)
    if not ok:
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number {bound}; got {value!r}")
    return v


def check_positive_int(**values: Any) -> None:
    """A ``ValueError`` for any argument that is not an integer >= 1 (bools and floats such
    as 2.5 or 2.0 refused: a silent ``int()`` would truncate)."""
    for name, v in values.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer; got {v!r}")


def check_block_size(block_size: Any) -> None:
    """A ValueError unless ``block_size`` is None or an integer >= 1."""
    if block_size is not None:
        check_positive_int(block_size=block_size)


def as_indices(
    indices: Any, n: int, *, name: str = "indices", device: torch.device | str | None = None
) -> torch.Tensor:
    """Row indices as a flat int64 tensor, or a ``ValueError`` naming the fix.

    Integer arrays, lists and tensors are accepted; boolean masks and floats are refused (a
    mask would silently be read as the rows 0 and 1), as are indices outside ``[0, n)``.
    """
    t = indices if isinstance(indices, torch.Tensor) else torch.as_tensor(np.asarray(indices))
    if t.dtype == torch.bool:
        raise ValueError(
            f"{name} is a boolean mask; pass row numbers instead (np.flatnonzero(mask))"
        )
    if t.numel() and (t.is_floating_point() or t.is_complex()):
        raise ValueError(f"{name} must be integers; got dtype {t.dtype}")
    t = t.reshape(-1).long().to(device if device is not None else t.device)
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"{name} must lie in [0, {n})")
    return t


def _out(t: torch.Tensor, like_torch: bool) -> Any:
    return t if like_torch else t.cpu().numpy()


# --------------------------------------------------------------------------------------------
# duplicates


def _hash_runs(A: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by a hash of the columns ``cols``, and which sorted neighbours share it.

    Equal rows have equal bit patterns (after ``+ 0.0`` maps -0.0 to 0.0), hence equal hashes
    (exact integer arithmetic mod 2^64), hashed in cache-sized chunks.
    """
    coeff = np.random.default_rng(0x5EED).integers(1, 2**63, size=A.shape[1], dtype=np.uint64)
    coeff = coeff[cols] | np.uint64(1)
    sub = A if len(cols) == A.shape[1] else A[:, cols]
    h = np.empty(A.shape[0], dtype=np.uint64)
    step = max(1, 2**20 // sub.shape[1])
    for lo in range(0, A.shape[0], step):
        h[lo : lo + step] = ((sub[lo : lo + step] + 0.0).view(np.uint64) * coeff).sum(1)
    order = np.argsort(h, kind="stable")
    return order, h[order][1:] == h[order][:-1]


def find_duplicates(X: Any) -> np.ndarray:
    """Mask of the rows that exactly repeat an earlier row.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)

    Returns
    -------
    mask : bool array of shape (n_samples,)
        ``True`` for every row equal to some earlier row, so ``X[~mask]`` keeps the first
        occurrence of each distinct point (see :func:`deduplicate`).
    """
    X = check_points(X, min_samples=1)
    A = X.detach().cpu().double().numpy() if isinstance(X, torch.Tensor) else X
    A = np.asarray(A, dtype=np.float64)
    mask = np.zeros(A.shape[0], dtype=bool)
    # only rows whose hashes collide are compared, exactly: sorting n hashes instead of n rows
    # of D floats is ~10x faster at D = 576
    # A first hash over at most 64 evenly spaced columns (equal rows agree on any columns) is
    # enough for continuous data; when it leaves many collisions (rows that share those
    # columns, as sparse codes do), every column is hashed.
    cols = np.unique(np.linspace(0, A.shape[1] - 1, min(A.shape[1], 64)).round().astype(int))
    order, same = _hash_runs(A, cols)
    if same.sum() > max(16, A.shape[0] // 100) and len(cols) < A.shape[1]:
        order, same = _hash_runs(A, np.arange(A.shape[1]))
    if not same.any():
        return mask
    edges = np.flatnonzero(np.diff(np.concatenate([[0], same.astype(np.int8), [0]])))
    void = np.dtype((np.void, A.dtype.itemsize * A.shape[1]))
    for lo, hi in zip(edges[::2], edges[1::2]):  # one run of equal hashes: order[lo : hi + 1]
        members = np.sort(order[lo : hi + 1])
        rows = np.ascontiguousarray(A[members] + 0.0).view(void).ravel()
        _, first = np.unique(rows, return_index=True)
        repeat = np.ones(len(members), dtype=bool)
        repeat[first] = False
        mask[members[repeat]] = True
    return mask


def deduplicate(X: Any) -> tuple[Any, np.ndarray]:
    """Remove repeated rows, keeping first occurrences in their original order.

    Returns
    -------
    X_unique : same type as ``X``, shape (n_unique, n_features)
    kept : int array of shape (n_unique,)
        Row indices of ``X`` that were kept.
    """
    kept = np.flatnonzero(~find_duplicates(X))
    if isinstance(X, torch.Tensor):
        return X[torch.as_tensor(kept, device=X.device)], kept
    return np.asarray(X)[kept], kept


def check_no_duplicates(X: Any, *, name: str = "X") -> None:
    """Raise a ``ValueError`` naming the fix if ``X`` has repeated rows.

    Estimators that divide by the nearest-neighbour distance call this (policy: fail loudly
    rather than silently drop points). The fix is ``X, kept = geomsae.neighbors.deduplicate(X)``
    or the estimator's ``on_duplicates="drop"`` option.
    """
    mask = find_duplicates(X)
    n_dup = int(mask.sum())
    if n_dup:
        example = int(np.flatnonzero(mask)[0])
        raise ValueError(
            f"{name} has {n_dup} duplicate point(s) (e.g. row {example} repeats an earlier row); "
            f"nearest-neighbour distances of 0 break this estimator. Remove them with "
            f"`X, kept = geomsae.neighbors.deduplicate(X)` or pass on_duplicates='drop'."
        )
