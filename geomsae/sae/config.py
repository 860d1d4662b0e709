"""The configuration of one sparse autoencoder and its training run (:class:`SAEConfig`).

A config is data: a frozen dataclass, one docstring per field, checked once in ``__post_init__``.
Values that depend on the data or on other fields (the learning rate from ``d_sae``, ``aux_k`` from
``d_in``) are resolved by properties, never by mutating the object.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

ARCHS = ("topk", "batchtopk", "relu", "tied_relu", "jumprelu")
"""Architecture names understood by :class:`SAEConfig` (see ``geomsae.sae.ARCHITECTURES``)."""

TOPK_FAMILY = ("topk", "batchtopk")
L1_FAMILY = ("relu", "tied_relu")
B_DEC_INITS = ("mean", "geometric_median", "zeros")


@dataclass(frozen=True, kw_only=True)
class SAEConfig:
    """Architecture, size, sparsity and optimisation of one sparse autoencoder.

    Examples
    --------
    >>> cfg = SAEConfig(arch="topk", d_in=576, expansion=8, k=32)
    >>> cfg.d_sae
    4608
    """

    d_in: int
    """Input dimension (``d_model`` of the hooked activations)."""

    arch: str = "topk"
    """One of ``topk``, ``batchtopk``, ``relu`` (untied, L1 weighted by decoder norms),
    ``tied_relu`` (the seed's c = ReLU(Wx + b), x_hat = W^T c, unit-norm rows) or ``jumprelu``."""

    expansion: float | None = 8.0
    """Dictionary ratio R = d_sae / d_in; ignored when ``n_features`` is given."""

    n_features: int | None = None
    """Number of dictionary features ``d_sae`` (takes precedence over ``expansion``)."""

    k: int | None = 32
    """Active features per sample for ``topk`` and mean active features for ``batchtopk``."""

    l1_coefficient: float = 5.0
    """Sparsity coefficient alpha of the L1 penalty (``relu`` and ``tied_relu``). The loss is
    mean_i ||x_i - x_hat_i||^2 + alpha * mean_i sum_j |f_ij| ||W_dec_j|| (SAELens' convention,
    so values transfer; with normalised activations alpha ~ 1-10)."""

    l0_coefficient: float = 1.0
    """Coefficient of the straight-through L0 penalty of ``jumprelu``."""

    jumprelu_bandwidth: float = 0.05
    """Width of the rectangle kernel of the JumpReLU pseudo-derivative."""

    jumprelu_init_threshold: float = 0.1
    """Initial JumpReLU threshold (in units of normalised activations; 0.001, SAELens' default,
    takes thousands of steps to grow through the log-parametrisation)."""

    lr: float | None = None
    """Adam learning rate; ``None`` gives 2e-4 / sqrt(d_sae / 2**14) (dictionary_learning)."""

    adam_betas: tuple[float, float] = (0.9, 0.999)
    """Adam (beta1, beta2)."""

    max_grad_norm: float | None = 1.0
    """Clip the global norm of the SAE's gradient (all its parameters, after data-parallel
    averaging) to this value before each Adam step, as SAELens does and Anthropic's 2024 recipe
    prescribes; ``None`` disables. Without it, the large early L1 gradients shrink the decoder
    and inflate Adam's second moments: over 300 steps on SmolLM2 layer 6 (alpha 8) clipping
    took the held-out L0 / FVU from 78 / 0.195 to 53 / 0.161."""

    lr_warmup_steps: int = 100
    """Linear learning-rate warm-up from 0 over this many steps."""

    lr_decay_fraction: float = 0.2
    """Linear decay of the learning rate to 0 over this final fraction of the steps."""

    l1_warmup_fraction: float = 0.05
    """Linear warm-up of the sparsity coefficient over this first fraction of the steps."""

    batch_size: int = 4096
    """Samples (tokens) per optimisation step, summed over all processes."""

    train_tokens: int | None = None
    """Samples to train on; ``None`` is one pass over the data."""

    b_dec_init: str = "mean"
    """Initial decoder bias: ``mean``, ``geometric_median`` of an initial sample, or ``zeros``."""

    init_samples: int = 65536
    """Size of the sample used for b_dec, the activation scale and the norm threshold."""

    normalize_activations: bool = True
    """Scale inputs so that their mean norm is sqrt(d_in) while training; the scale is folded
    into the weights when the SAE is returned or saved, so it then works on raw activations."""

    exclude_high_norm: float | None = None
    """Drop samples whose norm exceeds this multiple of the median norm (attention-sink/BOS-like
    outliers); ``None`` keeps everything."""

    exclude_bos: bool = True
    """Drop position-0 tokens when the activation cache records positions."""

    decoder_init_norm: float | None = None
    """Norm of the initial decoder rows; ``None``: 1 for unit-norm archs, 0.1 otherwise."""

    aux_k: int | None = None
    """Dead features used by the AuxK loss (TopK family); ``None`` gives d_in // 2."""

    aux_k_coefficient: float = 1 / 32
    """Weight of the AuxK loss (TopK family)."""

    dead_tokens: int = 10_000_000
    """A feature is dead after this many samples without firing (AuxK and resampling)."""

    resample_every: int | None = None
    """Resample dead features every this many steps (L1 architectures, Anthropic's recipe);
    ``None`` disables resampling."""

    batchtopk_threshold_lr: float = 0.01
    """Exponential-moving-average rate of the BatchTopK inference threshold."""

    seed: int = 0
    """Seed of the initial weights and of resampling (not of the data: see ``data_seed``)."""

    data_seed: int = 0
    """Seed of the data order (chunk and row shuffling) and of the initial sample (b_dec, the
    activation scale, the norm threshold). SAEs trained in one pass share it, so the data they
    see never depends on which config comes first, and ``train_many`` equals separate
    ``train`` calls whatever their ``seed``."""

    hook_name: str = ""
    """TransformerLens hook of the activations (``blocks.6.hook_resid_post``); metadata only."""

    model_name: str = ""
    """Name of the model the activations come from; metadata only."""

    def __post_init__(self) -> None:
        def bad(msg: str) -> None:
            raise ValueError(f"SAEConfig: {msg}")

        if self.arch not in ARCHS:
            bad(f"arch={self.arch!r} is unknown; use one of {', '.join(ARCHS)}")
        if not isinstance(self.d_in, int) or self.d_in < 1:
            bad(f"d_in must be a positive int, got {self.d_in!r}")
        if self.n_features is None:
            if self.expansion is None or not self.expansion > 0:
                bad("give n_features or a positive expansion")
            if int(round(self.expansion * self.d_in)) < 1:
                bad(f"expansion={self.expansion} gives no features for d_in={self.d_in}")
        elif self.n_features < 1:
            bad(f"n_features must be positive, got {self.n_features}")
        if self.arch in TOPK_FAMILY:
            if self.k is None or self.k < 1:
                bad(f"arch={self.arch!r} needs a positive k, got k={self.k}")
            if self.k > self.d_sae:
                bad(f"k={self.k} exceeds the number of features d_sae={self.d_sae}; lower k")
        if self.l1_coefficient < 0 or self.l0_coefficient < 0 or self.aux_k_coefficient < 0:
            bad("sparsity and auxiliary coefficients must be >= 0")
        if self.jumprelu_bandwidth <= 0 or self.jumprelu_init_threshold <= 0:
            bad("jumprelu_bandwidth and jumprelu_init_threshold must be > 0")
        if self.lr is not None and not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}")
        if not (0 <= self.lr_decay_fraction <= 1 and 0 <= self.l1_warmup_fraction <= 1):
            bad("lr_decay_fraction and l1_warmup_fraction must lie in [0, 1]")
        if self.lr_warmup_steps < 0:
            bad("lr_warmup_steps must be >= 0")
        if self.batch_size < 1:
            bad(f"batch_size must be positive, got {self.batch_size}")
        if self.train_tokens is not None and self.train_tokens < 1:
            bad(f"train_tokens must be positive, got {self.train_tokens}")
        if self.b_dec_init not in B_DEC_INITS:
            bad(f"b_dec_init={self.b_dec_init!r}; use one of {', '.join(B_DEC_INITS)}")
        if self.init_samples < 1:
            bad("init_samples must be positive")
        if self.exclude_high_norm is not None and not self.exclude_high_norm > 1:
            bad("exclude_high_norm is a multiple of the median norm and must be > 1")
        if self.aux_k is not None and self.aux_k < 1:
            bad("aux_k must be positive")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            bad("max_grad_norm must be > 0 (or None to disable clipping)")
        if self.resample_every is not None and self.resample_every < 1:
            bad("resample_every must be a positive number of steps")
        if self.dead_tokens < 1:
            bad("dead_tokens must be positive")
        if not 0 < self.batchtopk_threshold_lr <= 1:
            bad("batchtopk_threshold_lr must lie in (0, 1]")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            bad("adam_betas must be two numbers in [0, 1)")

    # ----- resolved values ------------------------------------------------------------------
    @property
    def d_sae(self) -> int:
        """Number of features (``n_features`` or ``round(expansion * d_in)``)."""
        if self.n_features is not None:
            return int(self.n_features)
        return int(round(self.expansion * self.d_in))

    @property
    def resolved_lr(self) -> float:
        """The learning rate, defaulting to 2e-4 / sqrt(d_sae / 2**14)."""
        return self.lr if self.lr is not None else 2e-4 / math.sqrt(self.d_sae / 2**14)

    @property
    def resolved_aux_k(self) -> int:
        """AuxK size, defaulting to d_in // 2 (at most d_sae)."""
        return min(self.aux_k if self.aux_k is not None else max(self.d_in // 2, 1), self.d_sae)

    @property
    def unit_norm_decoder(self) -> bool:
        """Whether the decoder rows are kept at unit norm (TopK family and tied ReLU)."""
        return self.arch in TOPK_FAMILY or self.arch == "tied_relu"

    @property
    def resolved_decoder_init_norm(self) -> float:
        if self.decoder_init_norm is not None:
            return self.decoder_init_norm
        return 1.0 if self.unit_norm_decoder else 0.1

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON dict of the fields (tuples become lists)."""
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SAEConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"SAEConfig.from_dict: unknown keys {unknown}")
        d = dict(d)
        if "adam_betas" in d:
            d["adam_betas"] = tuple(d["adam_betas"])
        return cls(**d)


# Fields that change how the data are read; every SAE trained in one pass must agree on them.
DATA_FIELDS = (
    "batch_size",
    "train_tokens",
    "init_samples",
    "exclude_high_norm",
    "exclude_bos",
    "d_in",
    "data_seed",
)
