"""Sparse kernels for training SAEs without dense (n_samples, d_sae) matmuls.

A TopK SAE's codes have ``k << d_sae`` non-zeros per sample, and a trained ReLU SAE's codes are
sparse too (L0 of a few hundred of thousands of features), so apart from the encoder's forward
matmul everything can be done on the non-zeros:

* the decoder ``x_hat_i = sum_s v_is W_dec[j_is]`` is an ``F.embedding_bag`` (its backward is a
  scatter-add into ``W_dec`` and a gather-dot for the values), and
* the gradient of the codes is only needed at the non-zeros (the ReLU's gate is 0 elsewhere):
  ``<W_dec[j], g_i>`` at the selected pairs, a sampled dense-dense product (SDDMM), and
* the encoder's weight gradient ``dL/dW_enc[j] = sum_i g_ij (x_i - b_dec)`` only involves the
  selected ``(i, j)`` pairs: it is an ``embedding_bag`` over the samples, grouped by feature.

Measured on the 2-core CPU with d_in=576, d_sae=4608 and 4096 samples (see
``benchmarks/bench_sae.py``), this makes a training step 3.6x faster than the dense path for
TopK (k=32) and 2.2x for ReLU at L0 ~ 280. At high density (a ReLU SAE early in training) the
dense path is faster; :func:`sparse_wins` is the rule the SAEs use to choose.

Sparse codes are stored row by row (CSR-like): ``cols`` (nnz,) feature indices, ``rows`` (nnz,)
sample indices (non-decreasing) and ``offsets`` (n_samples,) where each sample's run starts.
"""

from __future__ import annotations

import warnings
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


class SparseCodes(NamedTuple):
    """Selected (sample, feature) pairs of a batch, row-major, with their grouping by feature.

    Attributes
    ----------
    rows : Tensor of int64, shape (nnz,)
        Sample index of each entry, non-decreasing.
    cols : Tensor of int64, shape (nnz,)
        Feature index of each entry.
    offsets : Tensor of int64, shape (n_samples,)
        Start of each sample's entries in ``rows``/``cols``.
    pre : Tensor, shape (nnz,)
        Pre-activations at the selected entries (no gradient).
    order : Tensor of int64, shape (nnz,)
        Entries sorted by feature (stable), shared by both weight gradients.
    col_offsets : Tensor of int64, shape (n_features,)
        Start of each feature's run in ``order``.
    sorted_cols : bool
        Whether ``cols`` increase within each sample (a valid CSR layout), which lets the code
        gradient use ``torch.sparse.sampled_addmm``.
    rows_by_feature : Tensor of int64, shape (nnz,), optional
        ``rows[order]``, gathered once for both weight gradients (None: gathered when used).
    """

    rows: Tensor
    cols: Tensor
    offsets: Tensor
    pre: Tensor
    order: Tensor
    col_offsets: Tensor
    sorted_cols: bool = False
    rows_by_feature: Tensor | None = None


SPARSE_MAX_DENSITY = 0.15
"""Largest fraction of non-zero codes at which ``"auto"`` trains a ReLU or JumpReLU SAE on the
CPU through the sparse kernels. Measured on the 2-core CPU, one thread (d_in=576, d_sae=4608,
4096 samples, a whole training step, sparse vs dense, median of 4 interleaved): 0.79 vs 1.60 s
at density 0.05, 1.21 vs 1.56 s at 0.1, 1.45 vs 1.52 s at 0.15, 1.73 vs 1.44 s at 0.2 and
2.39 vs 1.36 s at 0.3."""

SPARSE_MAX_DENSITY_BF16 = 0.08
"""The same under bf16 autocast (``train(..., amp=True)``), where the dense matmuls run about
twice as fast and the sparse kernels stay in float32: 0.56 vs 0.85 s at density 0.05, 0.92 vs
0.84 s at 0.1 and 1.44 vs 0.88 s at 0.15."""


def sparse_wins(n_nonzero: int, n_samples: int, n_features: int, bf16: bool | None = None) -> bool:
    """Whether the sparse kernels beat dense matmuls for codes with ``n_nonzero`` entries.

    ``bf16``: whether the dense matmuls would run under bf16 autocast (default: whether CPU
    autocast is on now).
    """
    if bf16 is None:
        bf16 = torch.is_autocast_enabled("cpu")
    limit = SPARSE_MAX_DENSITY_BF16 if bf16 else SPARSE_MAX_DENSITY
    return n_nonzero <= limit * n_samples * n_features


class _CentredLinear(torch.autograd.Function):
    """``(x - b_dec) @ weight.T + bias`` whose ``b_dec`` gradient is ``-(sum_i g_i) @ weight``:
    autograd would form the (n, d_in) gradient of ``x - b_dec`` with a sixth dense matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias, b_dec):  # noqa: D102
        ctx.amp = _autocast_state(x.device.type)
        xc = x - b_dec
        ctx.save_for_backward(xc, weight)
        return F.linear(xc, weight, bias)

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        xc, weight = ctx.saved_tensors
        need_x, need_w, need_b, need_bdec = ctx.needs_input_grad
        col_sum = g.sum(0, dtype=weight.dtype)
        with torch.autocast(xc.device.type, ctx.amp or torch.bfloat16, ctx.amp is not None):
            grad_x = (g @ weight).to(xc.dtype) if need_x else None
            grad_w = (g.T @ xc).to(weight.dtype) if need_w else None
        grad_bdec = -(col_sum @ weight) if need_bdec else None
        return grad_x, grad_w, col_sum if need_b else None, grad_bdec


def centred_linear(x: Tensor, weight: Tensor, bias: Tensor, b_dec: Tensor) -> Tensor:
    """Pre-activations ``(x - b_dec) @ weight.T + bias``, shape (n_samples, n_features).

    Same values and gradients as autograd of the formula, with five dense matmuls per SAE
    step instead of six. Under autocast (bf16) its matmuls, backward included, run in bf16.
    """
    return _CentredLinear.apply(x, weight, bias, b_dec)


def _autocast_state(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None (custom backwards run outside
    autocast, so they re-enter it with this state, as ``torch.amp.custom_bwd`` does)."""
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return None


def _buffer(workspace: dict | None, name: str, shape, dtype: torch.dtype, device) -> Tensor | None:
    """A CPU buffer kept in ``workspace`` between training steps (None: allocate afresh).

    glibc serves allocations over 32 MB with fresh pages, so every new (4096, 4608) float32
    temporary costs ~30 ms of page faults on this CPU, as much as a few sparse kernels.
    Autograd's version counter turns any use of a buffer overwritten since into an error.
    """
    if workspace is None or torch.device(device).type != "cpu":
        return None
    buf = workspace.get(name)
    if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
        buf = workspace[name] = torch.empty(shape, dtype=dtype)
    return buf


def linear_nograd(x: Tensor, weight: Tensor, bias: Tensor, workspace: dict | None = None) -> Tensor:
    """``x @ weight.T + bias`` without gradient, in the autocast dtype when autocast is on; on
    the CPU written into ``workspace["pre"]`` (see :func:`_buffer`) when a dict is given."""
    dt = _autocast_state(x.device.type) or weight.dtype
    with torch.no_grad():
        out = _buffer(workspace, "pre", (x.shape[0], weight.shape[0]), dt, x.device)
        if out is None:
            return F.linear(x, weight, bias)
        return torch.addmm(bias.to(dt), x.to(dt), weight.to(dt).T, out=out)


class _ReLUCodes(torch.autograd.Function):
    """Decoding ``f @ W_dec`` and per-feature sums ``f.sum(0)`` of ReLU codes ``f`` computed
    without gradient, with a fused backward through the encoder."""

    @staticmethod
    def forward(ctx, f, xc, enc_weight, b_enc, b_dec, W_dec, workspace):  # noqa: D102
        ctx.dtype = _autocast_state(f.device.type) or W_dec.dtype  # of the matmuls
        ctx.workspace = workspace
        ctx.save_for_backward(f, xc, enc_weight, W_dec)
        return f @ W_dec, f.sum(0, dtype=W_dec.dtype)

    @staticmethod
    def backward(ctx, g_dec, g_sum):  # noqa: D102
        f, xc, enc_weight, W_dec = ctx.saved_tensors
        need_enc, need_benc, need_bdec, need_dec = ctx.needs_input_grad[2:6]
        dt = ctx.dtype
        n, p = f.shape
        g_dec = (W_dec.new_zeros(n, W_dec.shape[1]) if g_dec is None else g_dec).to(dt)
        g_sum = (W_dec.new_zeros(p) if g_sum is None else g_sum).to(dt)
        w_dec, f = W_dec.to(dt), f.to(dt)
        # the code gradient, with the per-feature term broadcast as the matmul's bias, then
        # masked by the ReLU in place
        out = _buffer(ctx.workspace, "grad", (n, p), dt, f.device)
        g_pre = torch.addmm(g_sum, g_dec, w_dec.T, out=out)
        torch.ops.aten.threshold_backward.grad_input(g_pre, f, 0, grad_input=g_pre)
        grad_benc = g_pre.sum(0, dtype=enc_weight.dtype)
        grad_enc = (g_pre.T @ xc.to(dt)).to(enc_weight.dtype) if need_enc else None
        grad_dec = (f.T @ g_dec).to(W_dec.dtype) if need_dec else None
        grad_bdec = -(grad_benc @ enc_weight) if need_bdec else None
        return None, None, grad_enc, grad_benc if need_benc else None, grad_bdec, grad_dec, None


def relu_codes(
    f: Tensor,
    xc: Tensor,
    enc_weight: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    W_dec: Tensor,
    workspace: dict | None = None,
) -> tuple[Tensor, Tensor]:
    """``(f @ W_dec, f.sum(0))`` for ``f = ReLU((x - b_dec) @ enc_weight.T + b_enc)`` given
    *without* gradient (``xc = x - b_dec``), differentiable in the four parameters.

    The dense training step of a ReLU SAE: the same five matmuls as autograd of the formula,
    but the code gradient takes the L1 term as the bias of its matmul and is masked in place,
    so a step makes a few passes over the (n_samples, n_features) codes instead of about a
    dozen. Under autocast (bf16) the backward's matmuls run in bf16 too. ``workspace`` keeps
    the code gradient's buffer between steps on the CPU (see :func:`linear_nograd`).
    """
    return _ReLUCodes.apply(f, xc.detach(), enc_weight, b_enc, b_dec, W_dec, workspace)


def group_by_feature(cols: Tensor, n_features: int) -> tuple[Tensor, Tensor]:
    """Stable order of the entries by feature and each feature's start in it.

    On the CPU this is NumPy's radix sort on 16-bit keys (about 40x faster than
    ``torch.argsort(stable=True)`` for 131k entries); elsewhere ``torch.argsort``.
    """
    if cols.device.type == "cpu":
        keys = cols.numpy().astype(np.int16 if n_features < 2**15 else np.int32)
        order = torch.from_numpy(np.argsort(keys, kind="stable"))
    else:
        order = torch.argsort(cols, stable=True)
    counts = torch.bincount(cols, minlength=n_features)
    return order, torch.cumsum(counts, 0) - counts


def _codes(rows, cols, offsets, values, n_features: int, sorted_cols: bool = False) -> SparseCodes:
    order, col_offsets = group_by_feature(cols, n_features)
    return SparseCodes(
        rows, cols, offsets, values, order, col_offsets, sorted_cols, rows_by_feature=rows[order]
    )


def codes_from_topk(values: Tensor, indices: Tensor, n_features: int) -> SparseCodes:
    """Row-major sparse codes from a per-row top-k, shapes (n, k)."""
    n, k = indices.shape
    dev = indices.device
    rows = torch.arange(n, device=dev).repeat_interleave(k)
    offsets = torch.arange(0, n * k, k, device=dev)
    cols = indices.reshape(-1)
    return _codes(rows, cols, offsets, values.reshape(-1), n_features)


def codes_from_positive(pre: Tensor, keep: Tensor | None = None) -> SparseCodes:
    """Row-major sparse codes of the positive entries of ``pre`` (n_samples, n_features), or
    of the entries where ``keep`` (bool, same shape) is true.

    The entries of a ReLU's active set, in CSR order (features increasing within each sample).
    """
    n, p = pre.shape
    pre = pre.detach().contiguous()
    keep = pre > 0 if keep is None else keep.contiguous()
    flat = keep.view(-1).nonzero().squeeze(1)  # row-major, so rows are non-decreasing
    rows = torch.div(flat, p, rounding_mode="floor")
    cols = flat - rows * p
    offsets = torch.searchsorted(flat, torch.arange(0, n * p, p, device=pre.device))
    values = pre.view(-1)[flat]
    return _codes(rows, cols, offsets, values, p, sorted_cols=True)


def codes_from_mask(values: Tensor, indices: Tensor, keep: Tensor, n_features: int) -> SparseCodes:
    """Row-major sparse codes keeping ``keep`` (bool, (n, m)) of candidates ``indices`` (n, m)."""
    n = indices.shape[0]
    counts = keep.sum(1)
    offsets = torch.cumsum(counts, 0) - counts
    rows = torch.arange(n, device=indices.device).repeat_interleave(counts)
    cols = indices[keep]
    return _codes(rows, cols, offsets, values[keep], n_features)


def grouped_sum(codes: SparseCodes, weights: Tensor, src: Tensor) -> Tensor:
    """``out[j] = sum_{e: cols[e] = j} weights[e] * src[rows[e]]``, shape (n_features, d).

    One ``embedding_bag`` over the entries grouped by feature: no (nnz, d) intermediate.
    """
    o = codes.order
    return F.embedding_bag(
        codes.rows[o] if codes.rows_by_feature is None else codes.rows_by_feature,
        src,
        codes.col_offsets,
        mode="sum",
        per_sample_weights=weights[o].to(src.dtype),
    )


class _GatherPreActs(torch.autograd.Function):
    """Pre-activations ``(x - b_dec) @ W_enc[j] + b_enc[j]`` at given entries, sparse backward."""

    @staticmethod
    def forward(ctx, x, enc_weight, b_enc, b_dec, codes, xc):  # noqa: D102
        ctx.save_for_backward(x, enc_weight, b_dec, xc)
        ctx.codes = codes
        return codes.pre.to(enc_weight.dtype).clone()

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        x, enc_weight, b_dec, xc = ctx.saved_tensors
        codes = ctx.codes
        cols, offsets = codes.cols, codes.offsets
        g = g.to(enc_weight.dtype)
        n_features = enc_weight.shape[0]
        grad_x = grad_enc = grad_b_enc = grad_b_dec = None
        need_x, need_enc, need_benc, need_bdec = ctx.needs_input_grad[:4]
        if need_enc:
            if xc.numel() == 0:
                xc = x.to(enc_weight.dtype) - b_dec
            grad_enc = grouped_sum(codes, g, xc)
        col_sum = torch.zeros(n_features, dtype=g.dtype, device=g.device).index_add_(0, cols, g)
        if need_benc:
            grad_b_enc = col_sum
        if need_bdec:
            grad_b_dec = -(col_sum @ enc_weight)
        if need_x:
            grad_x = F.embedding_bag(cols, enc_weight, offsets, mode="sum", per_sample_weights=g)
            grad_x = grad_x.to(x.dtype)
        return grad_x, grad_enc, grad_b_enc, grad_b_dec, None, None


def gather_pre_acts(
    x: Tensor,
    enc_weight: Tensor,
    b_enc: Tensor,
    b_dec: Tensor,
    codes: SparseCodes,
    centred: Tensor | None = None,
) -> Tensor:
    """Differentiable pre-activations at the entries of ``codes``, shape (nnz,).

    The forward reuses ``codes.pre`` (computed without gradient); the backward costs
    O(nnz * d_in) instead of the O(n * d_sae * d_in) of a dense matmul. ``centred`` is
    ``x - b_dec`` if the caller has it (saves recomputing it).
    """
    xc = centred.detach() if centred is not None else x.new_empty(0)
    return _GatherPreActs.apply(x, enc_weight, b_enc, b_dec, codes, xc)


class _SparseDecode(torch.autograd.Function):
    """``embedding_bag`` decoder whose weight gradient reuses the codes' feature grouping."""

    @staticmethod
    def forward(ctx, values, W_dec, codes):  # noqa: D102
        ctx.save_for_backward(values, W_dec)
        ctx.codes = codes
        return F.embedding_bag(
            codes.cols, W_dec, codes.offsets, mode="sum", per_sample_weights=values
        )

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        values, W_dec = ctx.saved_tensors
        codes = ctx.codes
        g = g.to(W_dec.dtype).contiguous()
        grad_w = grouped_sum(codes, values, g) if ctx.needs_input_grad[1] else None
        grad_v = None
        if ctx.needs_input_grad[0]:
            grad_v = _entry_dots(W_dec, g, codes).to(values.dtype)
        return grad_v, grad_w, None


def _entry_dots(W_dec: Tensor, g: Tensor, codes: SparseCodes, chunk: int = 8192) -> Tensor:
    """``<W_dec[cols[e]], g[rows[e]]>`` for every entry, shape (nnz,)."""
    if codes.sorted_cols and g.device.type == "cpu":  # MKL's SDDMM: ~1.5x the gather-dot
        n, nnz = g.shape[0], len(codes.cols)
        crow = torch.cat([codes.offsets, codes.offsets.new_tensor([nnz])])
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(
                crow, codes.cols, g.new_zeros(nnz), (n, W_dec.shape[0]), check_invariants=False
            )
            try:
                return torch.sparse.sampled_addmm(pattern, g, W_dec.T, beta=0.0).values()
            except (RuntimeError, NotImplementedError):  # pragma: no cover - builds without MKL
                pass
    try:  # ATen's kernel for exactly this (embedding_bag's per-sample-weight gradient)
        return torch.ops.aten._embedding_bag_per_sample_weights_backward(
            g, W_dec, codes.cols, codes.offsets, codes.rows, 0, -1
        )
    except (RuntimeError, AttributeError):  # pragma: no cover - other torch versions
        out = torch.empty(len(codes.cols), dtype=g.dtype, device=g.device)
        for s in range(0, len(codes.cols), chunk):
            c, r = codes.cols[s : s + chunk], codes.rows[s : s + chunk]
            out[s : s + chunk] = (W_dec[c] * g[r]).sum(1)
        return out


def sparse_decode(codes: SparseCodes, values: Tensor, W_dec: Tensor) -> Tensor:
    """``sum_s values_s W_dec[cols_s]`` per sample, shape (n_samples, d_in) (no bias)."""
    return _SparseDecode.apply(values.to(W_dec.dtype), W_dec, codes)


def dense_codes(codes: SparseCodes, values: Tensor, n_samples: int, n_features: int) -> Tensor:
    """Scatter sparse values into a dense (n_samples, n_features) tensor (differentiable)."""
    out = values.new_zeros(n_samples, n_features)
    return out.index_put((codes.rows, codes.cols), values)
