"""SAE architectures behind the :class:`~geomsae.sae.dictionary.Dictionary` interface.

Every SAE computes pre-activations ``pre = (s x - b_dec) W_enc + b_enc`` and decodes
``x_hat = (f W_dec + b_dec) / s`` (``s`` = ``input_scale``, 1 unless a tied SAE was trained on
rescaled activations; untied SAEs fold ``s`` into their weights). They differ in ``f(pre)``:

========== ===================================================== ===============================
name       activation                                            sparsity
========== ===================================================== ===============================
tied_relu  ReLU, W_enc = W_dec^T, unit-norm rows (the seed)      alpha * ||f||_1
relu       ReLU, untied                                          alpha * sum_j |f_j| ||W_dec_j||
topk       ReLU of the k largest pre-activations                 k (+ AuxK for dead features)
batchtopk  the n*k largest over a batch; inference threshold     k on average (+ AuxK)
jumprelu   pre * H(pre - theta_j), straight-through estimator    lambda * L0
========== ===================================================== ===============================

All of them are piecewise linear, so ``df_j/dx = gate_j(x) * s * W_enc[:, j]`` with
``gate_j = [f_j(x) > 0]`` (:meth:`SAE.jacobian_gate`).

References: Cunningham et al. 2023 (tied ReLU); Bricken et al. / Conerly et al. 2024 (ReLU with
decoder-norm-weighted L1); Gao et al. 2024 (TopK, AuxK); Bussmann et al. 2024 (BatchTopK);
Rajamanoharan et al. 2024 (JumpReLU).
"""

from __future__ import annotations

import math
from typing import ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from geomsae.sae.config import SAEConfig
from geomsae.sae.dictionary import Dictionary
from geomsae.sae.losses import (
    StepContext,
    auxk_loss,
    jumprelu,
    jumprelu_l0,
    reconstruction_loss,
)
from geomsae.sae.sparse import (
    SparseCodes,
    centred_linear,
    codes_from_mask,
    codes_from_positive,
    codes_from_topk,
    dense_codes,
    gather_pre_acts,
    linear_nograd,
    relu_codes,
    sparse_decode,
    sparse_wins,
)


class StepOutput(NamedTuple):
    """What one training forward returns.

    Attributes
    ----------
    loss : Tensor
        Scalar to minimise.
    x_hat : Tensor of shape (n_samples, d_in)
        Reconstruction (detached).
    fired : Tensor of bool, shape (d_sae,)
        Features active on at least one sample of the batch.
    l0 : float
        Mean number of active features per sample.
    terms : dict[str, float]
        The loss terms (``mse``, ``sparsity``, ``aux``).
    """

    loss: Tensor
    x_hat: Tensor
    fired: Tensor
    l0: float
    terms: dict[str, float]


class SAE(Dictionary):
    """A sparse autoencoder; subclasses set :attr:`arch` and the activation.

    Parameters
    ----------
    config : SAEConfig
    device, dtype : optional
        Where and in what precision the weights live.

    Attributes
    ----------
    config : SAEConfig
    d_in, n_features (= d_sae) : int
    b_enc : Parameter of shape (d_sae,)
    b_dec : Parameter of shape (d_in,)
    input_scale : buffer, scalar
    """

    arch: ClassVar[str]

    def __init__(self, config: SAEConfig, device=None, dtype: torch.dtype | None = None):
        super().__init__()
        if config.arch != self.arch:
            raise ValueError(f"{type(self).__name__} needs arch={self.arch!r}, got {config.arch!r}")
        self.config = config
        self.d_in = config.d_in
        self.n_features = config.d_sae
        kw = {"device": device, "dtype": dtype or torch.float32}
        gen = torch.Generator().manual_seed(_init_seed(config))
        w = torch.randn(self.n_features, self.d_in, generator=gen)
        w = w / w.norm(dim=1, keepdim=True) * config.resolved_decoder_init_norm
        self._init_weights(w.to(**kw))
        self.b_enc = nn.Parameter(torch.zeros(self.n_features, **kw))
        self.b_dec = nn.Parameter(torch.zeros(self.d_in, **kw))
        self.register_buffer("input_scale", torch.ones((), **kw))
        self.decode_impl = "auto"  # training path: "sparse" | "dense" | "auto" (see _use_sparse)
        self._workspace: dict = {}  # CPU buffers reused between training steps (sparse.py)

    # ----- weights -------------------------------------------------------------------------
    def _init_weights(self, w: Tensor) -> None:
        """Untied: encoder = decoder^T at init (W_enc[:, j] = W_dec[j])."""
        self.W_dec = nn.Parameter(w.clone())
        self.enc_weight = nn.Parameter(w.clone())

    @property
    def encoder_weight(self) -> Tensor:
        """Encoder rows, shape (d_sae, d_in) (``W_enc`` transposed)."""
        return self.enc_weight

    @property
    def W_enc(self) -> Tensor:
        """Encoder in SAELens' layout, shape (d_in, d_sae), input scale folded in."""
        return (self.encoder_weight * self.input_scale).T

    @property
    def feature_directions(self) -> Tensor:
        """Decoder rows in input units, shape (d_sae, d_in)."""
        return self.W_dec / self.input_scale

    @property
    def encoder_directions(self) -> Tensor:
        """``s * W_enc^T``, shape (d_sae, d_in): df_j/dx on the linear piece."""
        return self.encoder_weight * self.input_scale

    # ----- inference -----------------------------------------------------------------------
    def pre_acts(self, x: Tensor) -> Tensor:
        """Pre-activations, shape (n_samples, d_sae)."""
        x = self._check_input(x)
        return F.linear(x * self.input_scale - self.b_dec, self.encoder_weight, self.b_enc)

    def activation(self, pre: Tensor) -> Tensor:
        """Inference activation f(pre), shape (n_samples, d_sae)."""
        return F.relu(pre)

    def encode(self, x: Tensor) -> Tensor:
        """Feature activations, shape (n_samples, d_sae)."""
        return self.activation(self.pre_acts(x))

    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction in input units, shape (n_samples, d_in)."""
        return (codes.to(self.W_dec.dtype) @ self.W_dec + self.b_dec) / self.input_scale

    def jacobian_gate(self, x: Tensor) -> Tensor:
        """1 where feature j is on its linear piece at x, i.e. active; (n_samples, d_sae)."""
        return self.encode(x) > 0

    def _check_input(self, x: Tensor) -> Tensor:
        if x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(
                f"expected activations of shape (n_samples, {self.d_in}), got {tuple(x.shape)}; "
                "flatten (batch, pos, d_model) inputs with x.reshape(-1, d_model)"
            )
        return x.to(self.W_dec.dtype)

    # ----- training ------------------------------------------------------------------------
    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        """Loss of a batch ``x`` (n_samples, d_in), already in training units."""
        raise NotImplementedError

    def _use_sparse(self, x: Tensor) -> bool:
        """Whether a training step uses the sparse kernels: ``decode_impl``, or for "auto" the
        CPU (where they win; dense matmuls win on CUDA)."""
        if self.decode_impl == "auto":
            return x.device.type == "cpu"
        return self.decode_impl == "sparse"

    @torch.no_grad()
    def remove_parallel_grad(self) -> None:
        """Project out the decoder-gradient component along each unit-norm decoder row."""
        if not self.config.unit_norm_decoder or self.W_dec.grad is None:
            return
        g, w = self.W_dec.grad, self.W_dec
        g -= (g * w).sum(1, keepdim=True) * w

    @torch.no_grad()
    def apply_constraints(self) -> None:
        """Renormalise decoder rows to unit norm where the architecture requires it."""
        if self.config.unit_norm_decoder:
            self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def set_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``scale * x`` work on raw ``x`` (outputs unchanged).

        Untied SAEs fold ``scale`` into their weights (W_enc *= s, W_dec /= s, b_dec /= s);
        the tied SAE keeps it in ``input_scale``.
        """
        s = float(scale) * float(self.input_scale)
        self.enc_weight *= s
        self.W_dec /= s
        self.b_dec /= s
        self.input_scale.fill_(1.0)

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Rescale features so decoder rows have unit norm, leaving outputs unchanged.

        Valid for ReLU and JumpReLU (f_j scales with its row); TopK rows are already unit norm.
        """
        n = self.W_dec.norm(dim=1).clamp_min(1e-12)
        self.W_dec /= n[:, None]
        self.enc_weight *= n[:, None]
        self.b_enc *= n
        if hasattr(self, "log_threshold"):
            self.log_threshold += torch.log(n)

    def save(self, path, extra: dict | None = None):
        """Write a SAELens-format folder (``cfg.json`` + ``sae_weights.safetensors``) at ``path``.

        See :func:`geomsae.sae.io.save_sae`; :func:`geomsae.sae.load` reads it back.
        """
        from geomsae.sae.io import save_sae

        return save_sae(self, path, extra)

    def extra_repr(self) -> str:
        return f"arch={self.arch}, d_in={self.d_in}, d_sae={self.n_features}"


class ReLUSAE(SAE):
    """Untied ReLU SAE with the L1 penalty weighted by decoder norms (Conerly et al. 2024)."""

    arch = "relu"

    def _decoder_norms(self) -> Tensor:
        return self.W_dec.norm(dim=1)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        """Reconstruction + alpha * decoder-norm-weighted L1.

        On the sparse path (``decode_impl``, or "auto" on the CPU when the active set is sparse
        enough, :func:`~geomsae.sae.sparse.sparse_wins`) everything after the encoder's forward
        matmul runs on the active (sample, feature) pairs; the dense path is one fused
        function (:func:`~geomsae.sae.sparse.relu_codes`). Both give the loss and gradients of
        autograd of the formula up to floating-point rounding.
        """
        with torch.no_grad():  # both paths write the gradient through the encoder out
            xc = x - self.b_dec
            f = linear_nograd(xc, self.encoder_weight, self.b_enc, self._workspace).relu_()
            active = f > 0
            n_active = int(torch.count_nonzero(active))  # ~1% of a dense step
        if self._use_sparse(x) and (
            self.decode_impl == "sparse" or sparse_wins(n_active, *f.shape)
        ):
            return self._sparse_step(x, xc, codes_from_positive(f, active), ctx)
        del active
        dec, per_feature = relu_codes(
            f, xc, self.encoder_weight, self.b_enc, self.b_dec, self.W_dec, self._workspace
        )
        x_hat = dec + self.b_dec
        mse = reconstruction_loss(x, x_hat)
        l1 = (per_feature * self._decoder_norms()).sum() / x.shape[0]
        loss = mse + ctx.sparsity_coefficient * l1
        return StepOutput(
            loss,
            x_hat.detach(),
            per_feature.detach() > 0,
            n_active / x.shape[0],
            {"mse": mse.item(), "sparsity": l1.item(), "aux": 0.0},
        )

    def _sparse_step(
        self, x: Tensor, xc: Tensor, codes: SparseCodes, ctx: StepContext
    ) -> StepOutput:
        """The same loss through the sparse kernels, from the active set ``codes``."""
        n = x.shape[0]
        vals = gather_pre_acts(x, self.encoder_weight, self.b_enc, self.b_dec, codes, xc)
        x_hat = sparse_decode(codes, vals, self.W_dec) + self.b_dec
        mse = reconstruction_loss(x, x_hat)
        per_feature = vals.new_zeros(self.n_features).index_add(0, codes.cols, vals)
        l1 = (per_feature * self._decoder_norms()).sum() / n
        loss = mse + ctx.sparsity_coefficient * l1
        fired = torch.zeros(self.n_features, dtype=torch.bool, device=x.device)
        fired[codes.cols] = True
        return StepOutput(
            loss,
            x_hat.detach(),
            fired,
            len(codes.cols) / n,
            {"mse": mse.item(), "sparsity": l1.item(), "aux": 0.0},
        )


class TiedReLUSAE(ReLUSAE):
    """The seed's SAE: c = ReLU(W x + b), x_hat = W^T c, unit-norm rows (Cunningham et al. 2023).

    Centred with a learned ``b_dec`` (initialised from the data; ``b_dec_init="zeros"`` keeps the
    seed's exact model at init). ``encoder_weight`` *is* ``W_dec``.
    """

    arch = "tied_relu"

    def _init_weights(self, w: Tensor) -> None:
        self.W_dec = nn.Parameter(w.clone())

    @property
    def encoder_weight(self) -> Tensor:
        return self.W_dec

    def _decoder_norms(self) -> Tensor:
        return torch.ones(self.n_features, device=self.W_dec.device, dtype=self.W_dec.dtype)

    @torch.no_grad()
    def set_input_scale(self, scale: float) -> None:
        """Tied weights cannot absorb a scale; keep it in ``input_scale`` (outputs unchanged)."""
        self.input_scale *= float(scale)

    @torch.no_grad()
    def fold_decoder_norms(self) -> None:
        """Rows are unit norm already; nothing to fold."""


class TopKSAE(SAE):
    """TopK SAE (Gao et al. 2024): keep the k largest pre-activations, ReLU, unit-norm decoder.

    Trains through sparse kernels (:mod:`geomsae.sae.sparse`) on CPU; AuxK revives dead features.
    """

    arch = "topk"

    def activation(self, pre: Tensor) -> Tensor:
        vals, idx = pre.topk(self.config.k, dim=-1, sorted=False)
        return torch.zeros_like(pre).scatter(-1, idx, F.relu(vals))

    def _select(self, pre: Tensor, ctx: StepContext) -> SparseCodes:
        vals, idx = pre.topk(self.config.k, dim=-1, sorted=False)
        return codes_from_topk(vals, idx, self.n_features)

    def _values_and_decode(
        self, x: Tensor, pre: Tensor | None, codes: SparseCodes, sparse: bool, xc: Tensor
    ):
        """Differentiable activations at the selected entries and their decoding (no bias)."""
        if sparse:
            pre_sel = gather_pre_acts(x, self.encoder_weight, self.b_enc, self.b_dec, codes, xc)
            vals = F.relu(pre_sel)
            return vals, sparse_decode(codes, vals, self.W_dec)
        vals = F.relu(pre[codes.rows, codes.cols])
        dense = dense_codes(codes, vals, x.shape[0], self.n_features)
        return vals, dense @ self.W_dec

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        sparse = self._use_sparse(x)
        xc = x - self.b_dec
        if sparse:
            pre = linear_nograd(xc, self.encoder_weight, self.b_enc, self._workspace)
            pre_nograd = pre
        else:
            pre = centred_linear(x, self.encoder_weight, self.b_enc, self.b_dec)
            pre_nograd = pre.detach()
        codes = self._select(pre_nograd, ctx)
        vals, dec = self._values_and_decode(x, pre, codes, sparse, xc)
        x_hat = dec + self.b_dec
        mse = reconstruction_loss(x, x_hat)
        aux = x.new_zeros(())
        if ctx.dead is not None and self.config.aux_k_coefficient > 0:
            n_dead = int(ctx.dead.sum())
            if n_dead > 0:
                k_aux = min(self.config.resolved_aux_k, n_dead)
                dead_idx = ctx.dead.nonzero().squeeze(1)
                avals, aidx = pre_nograd.index_select(1, dead_idx).topk(k_aux, dim=-1, sorted=False)
                aux_codes = codes_from_topk(avals, dead_idx[aidx], self.n_features)
                _, e_hat = self._values_and_decode(x, pre, aux_codes, sparse, xc)
                scale = min(n_dead / self.config.resolved_aux_k, 1.0)
                aux = scale * auxk_loss(x - x_hat.detach(), e_hat, ctx)
        loss = mse + self.config.aux_k_coefficient * aux
        active = vals.detach() > 0
        fired = torch.zeros(self.n_features, dtype=torch.bool, device=x.device)
        fired[codes.cols[active]] = True
        self._after_select(codes, vals.detach(), ctx)
        return StepOutput(
            loss,
            x_hat.detach(),
            fired,
            active.sum().item() / x.shape[0],
            {"mse": mse.item(), "sparsity": 0.0, "aux": float(aux.detach())},
        )

    def _after_select(self, codes: SparseCodes, vals: Tensor, ctx: StepContext) -> None:
        """Hook for BatchTopK's threshold update."""


class BatchTopKSAE(TopKSAE):
    """BatchTopK SAE (Bussmann et al. 2024): the n*k largest activations over a batch.

    The batch is the global one: under data parallel the selection threshold is agreed over all
    processes (:meth:`_select`), so training equals the single-process run. At inference a single
    threshold theta replaces the batch selection: f = ReLU(pre) [pre > theta], with theta an
    exponential moving average of the smallest selected activation of each global batch (the same
    on every process).
    """

    arch = "batchtopk"

    def __init__(self, config: SAEConfig, device=None, dtype: torch.dtype | None = None):
        super().__init__(config, device, dtype)
        self.register_buffer("threshold", torch.zeros((), device=device, dtype=dtype))
        self.register_buffer("threshold_initialized", torch.zeros((), dtype=torch.bool))

    def activation(self, pre: Tensor) -> Tensor:
        return F.relu(pre) * (pre > self.threshold)

    def _select(self, pre: Tensor, ctx: StepContext) -> SparseCodes:
        """The ``N = n_global * k`` largest pre-activations of the global batch.

        Candidates are each row's top ``m = min(d_sae, 4k)``. Every process sends its largest
        ``N`` candidates to all others (:attr:`StepContext.all_gather`); the N-th largest gathered
        value is the threshold tau, identical on every process, and each process keeps its local
        entries ``>= tau``. The result is the single-process selection over the concatenated
        batch: entries tied with tau are all kept (then more than N are selected, as in one
        process). The candidates are exact unless some row on some process has its m-th
        candidate ``>= tau`` (it may hold more of the selection than it offered); each process
        sends that bound along with its values, and then all of them redo the selection over
        every entry.
        """
        n, p = pre.shape
        k = self.config.k
        m = min(p, 4 * k)
        cvals, cidx = pre.topk(m, dim=-1, sorted=False)
        no_bound = pre.new_tensor(-math.inf)
        bound = cvals.min(1).values.max() if m < p and n > 0 else no_bound
        tau, redo = self._global_threshold(cvals, bound, k, ctx)
        if redo:
            cvals, cidx = pre.topk(p, dim=-1, sorted=False)
            tau, _ = self._global_threshold(cvals, no_bound, k, ctx)
        keep = cvals >= tau
        return codes_from_mask(cvals, cidx, keep, self.n_features)

    @staticmethod
    def _global_threshold(
        cvals: Tensor, bound: Tensor, k: int, ctx: StepContext
    ) -> tuple[Tensor, bool]:
        """The N-th largest of all processes' candidates ``cvals`` (n_local, m), N = n_global * k,
        and whether any process's ``bound`` reaches it."""
        total = cvals.shape[0] * ctx.world_size * k
        flat = cvals.reshape(-1)
        c = min(flat.numel(), total)
        local = flat.topk(c, sorted=False).values
        gathered = ctx.all_gather(torch.cat([local, bound.to(local.dtype)[None]]))
        gathered = gathered.view(-1, c + 1)
        if gathered.shape[0] == 1:  # one process: its own top N is the selection
            tau = local.min()
        else:
            tau = gathered[:, :c].reshape(-1).topk(min(total, gathered.shape[0] * c), sorted=False)
            tau = tau.values.min()
        return tau, bool((gathered[:, c] >= tau).any())

    @torch.no_grad()
    def _after_select(self, codes: SparseCodes, vals: Tensor, ctx: StepContext) -> None:
        pos = vals[vals > 0]
        local_min = pos.min() if pos.numel() else vals.new_tensor(math.inf)
        global_min = ctx.reduce_min(local_min)
        if not torch.isfinite(global_min):
            return
        if not bool(self.threshold_initialized):
            self.threshold.copy_(global_min)
            self.threshold_initialized.fill_(True)
        else:
            lr = self.config.batchtopk_threshold_lr
            self.threshold.mul_(1 - lr).add_(lr * global_min)

    @torch.no_grad()
    def set_input_scale(self, scale: float) -> None:
        """The threshold lives in pre-activation units, which folding leaves unchanged."""
        super().set_input_scale(scale)


class JumpReLUSAE(SAE):
    """JumpReLU SAE (Rajamanoharan et al. 2024): f = pre * H(pre - theta), L0 penalty.

    theta = exp(log_threshold) is learned through a rectangle-kernel pseudo-derivative of width
    ``jumprelu_bandwidth`` (straight-through estimator); the L0 penalty is trained the same way.
    """

    arch = "jumprelu"

    def __init__(self, config: SAEConfig, device=None, dtype: torch.dtype | None = None):
        super().__init__(config, device, dtype)
        init = math.log(config.jumprelu_init_threshold)
        self.log_threshold = nn.Parameter(
            torch.full((self.n_features,), init, device=device, dtype=dtype or torch.float32)
        )

    @property
    def threshold(self) -> Tensor:
        """Per-feature threshold theta, shape (d_sae,)."""
        return self.log_threshold.exp()

    def activation(self, pre: Tensor) -> Tensor:
        return F.relu(pre) * (pre > self.threshold)

    def training_step(self, x: Tensor, ctx: StepContext) -> StepOutput:
        """Reconstruction + lambda * L0 (straight-through in the thresholds).

        On the sparse path (as for :class:`ReLUSAE`) the kernels run on the entries with
        ``pre > theta - bandwidth / 2``: the active ones and those in the rectangle kernel's
        window below the threshold, the only entries with a threshold gradient.
        """
        bw = self.config.jumprelu_bandwidth
        if self._use_sparse(x):
            with torch.no_grad():
                xc = x - self.b_dec
                pre = linear_nograd(xc, self.encoder_weight, self.b_enc, self._workspace)
                keep = pre > self.threshold - bw / 2
            n_keep = int(torch.count_nonzero(keep))
            if self.decode_impl == "sparse" or sparse_wins(n_keep, *pre.shape):
                return self._sparse_step(x, xc, codes_from_positive(pre, keep), ctx)
        pre = centred_linear(x, self.encoder_weight, self.b_enc, self.b_dec)
        theta = self.threshold
        f = jumprelu(pre, theta, bw)
        x_hat = f @ self.W_dec + self.b_dec
        mse = reconstruction_loss(x, x_hat)
        l0 = jumprelu_l0(pre, theta, bw).sum(1).mean()
        loss = mse + ctx.sparsity_coefficient * l0
        active = f.detach() > 0
        return StepOutput(
            loss,
            x_hat.detach(),
            active.any(0),
            active.sum(1).float().mean().item(),
            {"mse": mse.item(), "sparsity": l0.item(), "aux": 0.0},
        )

    def _sparse_step(
        self, x: Tensor, xc: Tensor, codes: SparseCodes, ctx: StepContext
    ) -> StepOutput:
        """The same loss through the sparse kernels, on the entries of ``codes``."""
        n, bw = x.shape[0], self.config.jumprelu_bandwidth
        pre = gather_pre_acts(x, self.encoder_weight, self.b_enc, self.b_dec, codes, xc)
        theta = self.threshold[codes.cols]
        vals = jumprelu(pre, theta, bw)
        x_hat = sparse_decode(codes, vals, self.W_dec) + self.b_dec
        mse = reconstruction_loss(x, x_hat)
        l0 = jumprelu_l0(pre, theta, bw).sum() / n
        loss = mse + ctx.sparsity_coefficient * l0
        active = vals.detach() > 0
        fired = torch.zeros(self.n_features, dtype=torch.bool, device=x.device)
        fired[codes.cols[active]] = True
        return StepOutput(
            loss,
            x_hat.detach(),
            fired,
            int(active.sum()) / n,
            {"mse": mse.item(), "sparsity": l0.item(), "aux": 0.0},
        )


ARCHITECTURES: dict[str, type[SAE]] = {
    cls.arch: cls for cls in (TiedReLUSAE, ReLUSAE, TopKSAE, BatchTopKSAE, JumpReLUSAE)
}
"""SAE classes by architecture name."""


def _init_seed(config: SAEConfig) -> int:
    """Seed of the initial weights: the config's seed mixed with the shape.

    With ``seed`` alone, SAEs of different sizes would share their first initial atoms (one
    generator draws the rows in order), which makes untrained atoms look "stable" across sizes.
    """
    return (config.seed * 1_000_003 + config.d_sae * 7_919 + config.d_in) % (2**63 - 1)


def build_sae(config: SAEConfig, device=None, dtype: torch.dtype | None = None) -> SAE:
    """A freshly initialised SAE of ``config.arch``."""
    return ARCHITECTURES[config.arch](config, device=device, dtype=dtype)
