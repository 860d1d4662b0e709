"""Full-precision float32 products for the code whose rounding bounds assume them.

``torch.set_float32_matmul_precision("medium")`` (common in training scripts) lets oneDNN
multiply float32 matrices on CPU in bfloat16 (``torch.backends.mkldnn.matmul.fp32_precision``
becomes ``"bf16"``): errors of ~2e-3 instead of float32's ~1e-7, which the certified float32
screens of :mod:`geomsae.neighbors` and the float32 local covariances of
:mod:`geomsae.dimension` do not allow for (25 of 3000 rows of a float32 k-NN screen came out
wrong). :func:`ieee_float32` restores IEEE float32 products for the duration of a call. TF32
on CUDA is left as the user set it: the screens' products allow for it in their bounds
(:func:`cuda_tf32` reads the setting through either of PyTorch's APIs), and their low-rank key
updates run elementwise on CUDA, out of TF32's reach.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["cuda_tf32", "ieee_float32"]


def cuda_tf32() -> bool:
    """Whether cuBLAS may multiply float32 in TF32 (10 mantissa bits), by the setting in force.

    Reads PyTorch's precision API (``torch.backends.cuda.matmul.fp32_precision``, ``"none"``
    deferring to ``torch.backends.fp32_precision``), then the legacy ``allow_tf32``; reading
    the legacy flag raises once the new API has been used in some ways, so anything unreadable
    counts as TF32 (the bounds are then only looser).
    """
    matmul = torch.backends.cuda.matmul
    for source in (matmul, torch.backends):
        value = getattr(source, "fp32_precision", None)
        if value in ("tf32", "ieee"):
            return value == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return True


@contextlib.contextmanager
def ieee_float32() -> Iterator[None]:
    """Within the block (or the decorated function), float32 products on CPU are IEEE float32
    whatever ``torch.set_float32_matmul_precision`` says; the setting is restored after.

    The setting is process-wide: other threads multiplying float32 meanwhile also get IEEE
    products (more precise, never less).
    """
    backend = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
    previous = getattr(backend, "fp32_precision", None)
    if previous is None or previous in ("ieee", "none"):  # already IEEE (or an older torch)
        yield
        return
    backend.fp32_precision = "ieee"
    try:
        yield
    finally:
        backend.fp32_precision = previous
