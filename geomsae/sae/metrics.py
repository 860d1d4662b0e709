"""SAE quality: sparsity and reconstruction on activations, and the model's loss with the SAE
spliced in at its hook.

* :func:`evaluate` -- L0, dead and dense fractions, MSE and the fraction of variance unexplained
  **around the mean** (FVU = sum ||x - x_hat||^2 / sum ||x - mean(x)||^2), and the per-feature
  firing density.
* :func:`spliced_metrics` -- next-token cross-entropy of the clean model, with the SAE's
  reconstruction replacing the activations at ``hook_name``, and with them zero-ablated; the KL
  divergence from the clean predictions; and CE loss recovered
  = (CE_zero - CE_sae) / (CE_zero - CE_clean).
* :func:`plot_feature_density` -- the seaborn histogram of log10 firing densities.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from geomsae.sae.architectures import SAE
from geomsae.sae.data import as_source


@dataclass(frozen=True)
class SAEMetrics:
    """Sparsity and reconstruction of an SAE on a set of activations.

    Attributes
    ----------
    n_samples : int
    l0 : float
        Mean number of active features per sample.
    dead_fraction : float
        Features never active on these samples.
    dense_fraction : float
        Features active on more than ``dense_threshold`` of the samples.
    mse : float
        Mean over samples of ||x - x_hat||^2.
    fvu : float
        Fraction of variance unexplained, around the mean.
    feature_density : ndarray of shape (d_sae,)
        Fraction of samples on which each feature is active.
    """

    n_samples: int
    l0: float
    dead_fraction: float
    dense_fraction: float
    mse: float
    fvu: float
    feature_density: np.ndarray

    def summary(self) -> dict[str, float]:
        """The scalar metrics as a dict (no density)."""
        d = asdict(self)
        d.pop("feature_density")
        return d


@torch.no_grad()
def evaluate(
    sae: SAE,
    activations: Any,
    batch_size: int = 4096,
    dense_threshold: float = 0.1,
    max_samples: int | None = None,
) -> SAEMetrics:
    """Sparsity and reconstruction metrics of ``sae`` on activations (n_samples, d_in).

    ``activations`` is an array, tensor, ChunkedSource or cache; rows are read in order,
    ``max_samples`` at most.
    """
    source = as_source(activations, d_in=sae.d_in)
    dev = sae.W_dec.device
    n = 0
    sse = torch.zeros((), dtype=torch.float64, device=dev)
    s1 = torch.zeros(sae.d_in, dtype=torch.float64, device=dev)
    s2 = torch.zeros((), dtype=torch.float64, device=dev)
    fires = torch.zeros(sae.n_features, dtype=torch.int64, device=dev)
    for chunk in source.chunks:
        data, _ = chunk.load()
        for start in range(0, len(data), batch_size):
            if max_samples is not None and n >= max_samples:
                break
            x = data[start : start + batch_size].to(dev).float()
            if max_samples is not None:
                x = x[: max_samples - n]
            if not bool(torch.isfinite(x).all()):
                raise ValueError("the activations contain NaN or inf; drop those rows first")
            f = sae.encode(x)
            x_hat = sae.decode(f)
            sse += (x - x_hat).double().pow(2).sum()
            s1 += x.double().sum(0)
            s2 += x.double().pow(2).sum()
            fires += (f > 0).sum(0)
            n += len(x)
    if n == 0:
        raise ValueError("no activations to evaluate")
    var = s2 - s1.pow(2).sum() / n
    density = (fires.double() / n).cpu().numpy()
    return SAEMetrics(
        n_samples=n,
        l0=float(fires.sum()) / n,
        dead_fraction=float((density == 0).mean()),
        dense_fraction=float((density > dense_threshold).mean()),
        mse=float(sse) / n,
        fvu=float(sse / var.clamp_min(1e-30)),
        feature_density=density,
    )


@dataclass(frozen=True)
class SplicedMetrics:
    """The model's next-token loss with the SAE spliced in (nats per token).

    Attributes
    ----------
    ce_clean, ce_sae, ce_zero_ablation : float
        Cross-entropy of the clean model, with the SAE's reconstruction at the hook, and with
        the hooked activations set to zero.
    kl_sae : float
        Mean KL(clean || spliced) of the next-token distributions.
    ce_loss_recovered : float
        (ce_zero_ablation - ce_sae) / (ce_zero_ablation - ce_clean); 1 is perfect.
    n_tokens : int
        Predicted tokens averaged over.
    """

    ce_clean: float
    ce_sae: float
    ce_zero_ablation: float
    kl_sae: float
    ce_loss_recovered: float
    n_tokens: int


def _splice(fn, skip_bos: bool):
    def hook(act: Tensor, hook=None) -> Tensor:
        new = fn(act.reshape(-1, act.shape[-1])).reshape(act.shape).to(act.dtype)
        if skip_bos:
            new = torch.cat([act[:, :1], new[:, 1:]], dim=1)
        return new

    return hook


def _ce_and_logp(logits: Tensor, target: Tensor) -> tuple[float, Tensor]:
    """Summed next-token cross-entropy and the log-probabilities, shape (n_tokens, vocab)."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).reshape(-1, logits.shape[-1])
    return float(F.nll_loss(logp, target.to(logp.device), reduction="sum")), logp


@torch.no_grad()
def spliced_metrics(
    sae: SAE,
    model: Any,
    tokens: Tensor,
    hook_name: str | None = None,
    batch_size: int = 8,
    skip_bos: bool = True,
) -> SplicedMetrics:
    """CE loss, KL and CE-loss-recovered with ``sae`` spliced into ``model`` at ``hook_name``.

    Parameters
    ----------
    sae : SAE
    model : TransformerBridge
        From :func:`geomsae.models.load_model` (anything with ``run_with_hooks``).
    tokens : Tensor of int, shape (n_sequences, seq_len)
    hook_name : str, optional
        TransformerLens hook (default ``sae.config.hook_name``), e.g. ``blocks.6.hook_resid_post``.
    skip_bos : bool
        Leave position 0 (the BOS token, an outlier SAEs are usually not trained on) untouched,
        in both the SAE and the zero-ablation runs.
    """
    hook_name = hook_name or sae.config.hook_name
    if not hook_name:
        raise ValueError("give hook_name (the SAE's config does not record one)")
    tokens = torch.as_tensor(tokens)
    if tokens.ndim != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must have shape (n_sequences, seq_len >= 2), got {tokens.shape}")
    sae_hook = _splice(lambda a: sae(a.to(sae.W_dec.dtype)), skip_bos)
    zero_hook = _splice(torch.zeros_like, skip_bos)
    sums = np.zeros(4)
    n_tok = 0
    for start in range(0, len(tokens), batch_size):
        toks = tokens[start : start + batch_size]
        target = toks[:, 1:].reshape(-1)

        runs = {}
        for name, hooks in (
            ("clean", []),
            ("sae", [(hook_name, sae_hook)]),
            ("zero", [(hook_name, zero_hook)]),
        ):
            logits = model.run_with_hooks(toks, return_type="logits", fwd_hooks=hooks)
            runs[name] = _ce_and_logp(logits, target)
        (ce_c, lp_c), (ce_s, lp_s), (ce_z, _) = runs["clean"], runs["sae"], runs["zero"]
        kl = float((lp_c.exp() * (lp_c - lp_s)).sum())
        sums += [ce_c, ce_s, ce_z, kl]
        n_tok += len(target)
    ce_c, ce_s, ce_z, kl = sums / n_tok
    denom = ce_z - ce_c
    recovered = (ce_z - ce_s) / denom if abs(denom) > 1e-12 else float("nan")
    return SplicedMetrics(ce_c, ce_s, ce_z, kl, recovered, n_tok)


def plot_feature_density(density: np.ndarray, ax=None, label: str | None = None):
    """Histogram of log10 feature firing densities (dead features counted in the title)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    density = np.asarray(density, dtype=float)
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    alive = density[density > 0]
    sns.histplot(np.log10(alive), bins=50, ax=ax, label=label, element="step")
    ax.set_xlabel("log10 feature density (fraction of tokens active)")
    ax.set_ylabel("features")
    ax.set_title(f"feature density ({int((density == 0).sum())} dead of {len(density)})")
    return ax
