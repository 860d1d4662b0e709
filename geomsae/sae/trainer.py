"""Train SAEs: :func:`train` (one) and :func:`train_many` (several from one pass over the data).

The loop reads one global batch per step and hands it to every SAE (a sweep over k, alpha or d_sae
shares the data loading). Per SAE and step: learning-rate warm-up/decay and L1 warm-up, the
architecture's loss, gradient-norm clipping, Adam, the unit-norm decoder constraint,
dead-feature bookkeeping (AuxK for the TopK family, Anthropic-style resampling for L1 SAEs).
With ``out_dir`` it checkpoints atomically every ``checkpoint_every`` steps, resumes from the
checkpoint when restarted with the same configs, and refuses to overwrite a finished SAE unless
told to.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from geomsae.models import resolve_device
from geomsae.sae import checkpoint as ckpt
from geomsae.sae import ddp
from geomsae.sae.architectures import SAE, build_sae
from geomsae.sae.config import DATA_FIELDS, L1_FAMILY, TOPK_FAMILY, SAEConfig
from geomsae.sae.data import ChunkedSource, as_source
from geomsae.sae.io import is_finished, save_sae
from geomsae.sae.losses import StepContext

logger = logging.getLogger(__name__)


def geometric_median(x: torch.Tensor, n_iter: int = 200, tol: float = 1e-7) -> torch.Tensor:
    """Weiszfeld's geometric median of the rows of ``x`` (n_samples, d), shape (d,)."""
    x = x.double()
    m = x.mean(0)
    for _ in range(n_iter):
        w = 1.0 / (x - m).norm(dim=1).clamp_min(1e-12)
        new = (w[:, None] * x).sum(0) / w.sum()
        if (new - m).norm() <= tol * (m.norm() + 1e-12):
            m = new
            break
        m = new
    return m.float()


def lr_factor(step: int, total: int, warmup: int, decay_fraction: float) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to 0 over the last fraction."""
    w = min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0
    decay_start = total * (1 - decay_fraction)
    if step < decay_start or decay_fraction == 0:
        return w
    return w * max(0.0, (total - step) / max(total - decay_start, 1e-12))


def _adam(params, config: SAEConfig) -> torch.optim.Adam:
    """Adam, fused where torch supports it (several times faster on CPU for d_sae x d_in
    weights; torch >= 2.4), else the default implementation."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=config.resolved_lr, betas=config.adam_betas, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=config.resolved_lr, betas=config.adam_betas)


class _Run:
    """One SAE being trained: module, optimizer, counters and history."""

    def __init__(self, config: SAEConfig, device: torch.device, total_steps: int):
        self.config = config
        self.total_steps = total_steps
        self.sae: SAE = build_sae(config, device=device)
        self.opt = _adam(self.sae.parameters(), config)
        self.since_fired = torch.zeros(self.sae.n_features, dtype=torch.int64, device=device)
        self.gen = torch.Generator().manual_seed(config.seed + 7919)
        self.history: list[dict[str, float]] = []
        self.window: list[dict[str, float]] = []

    @torch.no_grad()
    def init_from_sample(self, sample: torch.Tensor) -> None:
        c = self.config
        if c.b_dec_init == "mean":
            self.sae.b_dec.copy_(sample.mean(0))
        elif c.b_dec_init == "geometric_median":
            self.sae.b_dec.copy_(geometric_median(sample))

    def context(self, step: int) -> StepContext:
        c = self.config
        warm = c.l1_warmup_fraction * self.total_steps
        coef_factor = min(1.0, (step + 1) / warm) if warm > 0 else 1.0
        coef = c.l0_coefficient if c.arch == "jumprelu" else c.l1_coefficient
        dead = None
        if c.arch in TOPK_FAMILY:
            dead = self.since_fired >= c.dead_tokens
        return StepContext(
            coef * coef_factor,
            dead,
            ddp.reduce_sum,
            ddp.reduce_min,
            ddp.all_gather,
            ddp.world_size(),
        )

    def step(self, x: torch.Tensor, step: int, n_global: int, amp: bool) -> dict[str, float]:
        c = self.config
        factor = lr_factor(step, self.total_steps, c.lr_warmup_steps, c.lr_decay_fraction)
        lr = c.resolved_lr * factor
        for g in self.opt.param_groups:
            g["lr"] = lr
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=amp):
            out = self.sae.training_step(x, self.context(step))
        if not torch.isfinite(out.loss):
            raise FloatingPointError(
                f"{c.arch} SAE: loss became {out.loss.item()} at step {step}; check the data for "
                "NaN/inf rows or lower lr"
            )
        self.opt.zero_grad(set_to_none=True)
        out.loss.backward()
        ddp.average_gradients(list(self.sae.parameters()))
        self.sae.remove_parallel_grad()
        if c.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.sae.parameters(), c.max_grad_norm, foreach=True)
        self.opt.step()
        self.sae.apply_constraints()
        fired = ddp.reduce_sum(out.fired.to(torch.int32)) > 0
        self.since_fired += n_global
        self.since_fired[fired] = 0
        # batch FVU around the batch mean, from the loss's own MSE (no extra pass over x_hat)
        var = x.float().var(0, unbiased=False).sum().clamp_min(1e-12)
        fvu = out.terms["mse"] / var.item()
        stats = {"loss": out.loss.item(), "fvu": fvu, "l0": out.l0, "lr": lr, **out.terms}
        self.window.append(stats)
        return stats

    def log(self, step: int, tokens: int) -> dict[str, float]:
        keys = self.window[0].keys()
        row = {k: sum(w[k] for w in self.window) / len(self.window) for k in keys}
        row.update(step=step, tokens=tokens, dead_fraction=self.dead_fraction())
        self.history.append(row)
        self.window = []
        return row

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.config.dead_tokens).float().mean())

    @torch.no_grad()
    def resample(self, x: torch.Tensor) -> int:
        """Anthropic's resampling: dead features take the directions of poorly reconstructed
        inputs (sampled with probability proportional to the squared loss)."""
        c = self.config
        window = min(c.dead_tokens, c.resample_every * c.batch_size // 2)
        dead = (self.since_fired >= window).nonzero().squeeze(1)
        if len(dead) == 0:
            return 0
        sae = self.sae
        err = (sae.training_step(x, StepContext()).x_hat - x).pow(2).sum(1)
        probs = err.pow(2).cpu().double()
        if not probs.sum() > 0:
            return 0
        pick = torch.multinomial(probs, len(dead), replacement=True, generator=self.gen)
        dirs = x[pick.to(x.device)] - sae.b_dec
        dirs = dirs / dirs.norm(dim=1, keepdim=True).clamp_min(1e-12)
        alive = torch.ones(sae.n_features, dtype=torch.bool, device=x.device)
        alive[dead] = False
        if c.arch == "tied_relu":
            sae.W_dec[dead] = dirs
        else:
            enc_norm = sae.enc_weight[alive].norm(dim=1).mean() if alive.any() else 1.0
            sae.W_dec[dead] = dirs * sae.W_dec[alive].norm(dim=1).mean() if alive.any() else dirs
            sae.enc_weight[dead] = dirs * 0.2 * enc_norm
        sae.b_enc[dead] = 0.0
        rows = [sae.W_dec, sae.b_enc] + ([sae.enc_weight] if c.arch != "tied_relu" else [])
        for p in rows:
            st = self.opt.state.get(p)
            if st:
                st["exp_avg"][dead] = 0.0
                st["exp_avg_sq"][dead] = 0.0
        self.since_fired[dead] = 0
        return len(dead)


def _check_configs(configs: Sequence[SAEConfig]) -> None:
    if not configs:
        raise ValueError("train_many needs at least one SAEConfig")
    for f in DATA_FIELDS:
        values = {repr(getattr(c, f)) for c in configs}
        if len(values) > 1:
            raise ValueError(
                f"SAEs trained in one pass must share {f!r}; got {sorted(values)}. Train them in "
                "separate calls or align the field"
            )


def _keep_fn(config: SAEConfig, source: ChunkedSource):
    """Row filter: BOS (position 0) and high-norm exclusion; raises on NaN/inf rows."""
    threshold = None
    if config.exclude_high_norm is not None:
        sample = source.sample(config.init_samples, config.data_seed + 1, _finite_check)
        threshold = float(sample.norm(dim=1).median()) * config.exclude_high_norm

    def keep(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        mask = _finite_check(x, pos)
        if config.exclude_bos and pos is not None:
            mask &= torch.as_tensor(pos).to(mask.device) != 0
        if threshold is not None:
            mask &= x.norm(dim=1) <= threshold
        return mask

    return keep


def _finite_check(x: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
    finite = torch.isfinite(x).all(1)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        raise ValueError(
            f"the activations contain {bad} rows with NaN or inf; drop them before training "
            "(e.g. x[torch.isfinite(x).all(1)])"
        )
    return finite


def train(config: SAEConfig, activations, **kwargs) -> SAE:
    """Train one SAE; see :func:`train_many` for the arguments.

    With ``out_dir`` the SAE is written there as a SAELens folder (plus ``history.json``).
    """
    return train_many([config], activations, _single=True, **kwargs)[0]


def train_many(
    configs: Sequence[SAEConfig],
    activations,
    *,
    out_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    checkpoint_every: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    log_every: int = 50,
    amp: bool | None = None,
    compile: bool = False,
    decode: str = "auto",
    _single: bool = False,
) -> list[SAE]:
    """Train several SAEs on one shared pass over the data.

    Parameters
    ----------
    configs : sequence of SAEConfig
        May differ in architecture, size, k, alpha, lr and seed; must agree on the data fields
        (``batch_size``, ``train_tokens``, ``init_samples``, exclusions, ``d_in``,
        ``data_seed``). The batches are a function of the data and ``data_seed`` only, so every
        SAE sees the same batches as it would in its own :func:`train` call.
    activations : array or tensor of shape (n_samples, d_in), ChunkedSource, or a cache
        The training data (a cache folder path or an opened cache streams from disk).
    out_dir : path, optional
        Where to write the SAEs (``out_dir`` itself for :func:`train`, ``out_dir/sae_{i}``
        here) and ``checkpoint.safetensors``. An unfinished checkpoint with the same configs
        is resumed; a finished SAE raises FileExistsError unless ``overwrite``.
    device : optional
        ``None``/"auto" picks CUDA when available. Under ``torchrun`` each process joins the
        process group and trains on its slice of every batch (data parallel).
    checkpoint_every : int, optional
        Steps between checkpoints (needs ``out_dir``).
    progress : bool
        tqdm bar with live L0 and FVU.
    log_every : int
        Steps averaged into each ``history_`` row.
    amp : bool, optional
        bf16 autocast; default on for CUDA, off on CPU. On a CPU with bf16 matmul units
        (avx512_bf16/AMX) ``amp=True`` runs the dense matmuls about 2x faster (their inputs
        rounded to bf16, float32 accumulation, float32 weights and Adam state); the sparse
        kernels stay float32. Opt-in: it changes the numerics slightly (see docs/sae.md).
    compile : bool
        ``torch.compile`` the training steps (CUDA; needs a working compiler toolchain).
    decode : {"auto", "sparse", "dense"}
        Training path of the TopK family, the ReLU SAEs (``relu``, ``tied_relu``) and
        JumpReLU: sparse gather/``embedding_bag`` kernels (:mod:`geomsae.sae.sparse`) or dense
        matmuls. "auto" is dense on CUDA; on CPU it is sparse for the TopK family (about 3.6x
        faster at k/d_sae = 1/144, see ``benchmarks/bench_sae.py``) and, for ReLU and
        JumpReLU SAEs, sparse on the steps where at most ``SPARSE_MAX_DENSITY`` (15%; 8%
        under bf16 autocast, ``SPARSE_MAX_DENSITY_BF16``) of the codes are non-zero.

    Returns
    -------
    list of SAE
        In raw activation units (training scale folded in), in eval mode, each with
        ``history_`` (list of dicts: step, tokens, loss, mse, fvu, l0, dead_fraction, lr).
    """
    configs = list(configs)
    _check_configs(configs)
    if decode not in ("auto", "sparse", "dense"):
        raise ValueError(f"decode={decode!r}; use 'auto', 'sparse' or 'dense'")
    c0 = configs[0]
    dev = resolve_device(device)
    info = ddp.setup_distributed(dev)
    if info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", torch.cuda.current_device())
    if c0.batch_size % info.world_size:
        raise ValueError(
            f"batch_size={c0.batch_size} is not divisible by the {info.world_size} processes"
        )
    amp = (dev.type == "cuda") if amp is None else amp
    source = as_source(activations, d_in=c0.d_in, hook=c0.hook_name or None)
    total_tokens = c0.train_tokens or source.n_rows
    total_steps = max(1, total_tokens // c0.batch_size)

    out = Path(out_dir) if out_dir is not None else None
    save_dirs = [out] if (out is not None and _single) else None
    if out is not None and not _single:
        save_dirs = [out / f"sae_{i}" for i in range(len(configs))]
    if save_dirs is not None and not overwrite:
        done = [str(d) for d in save_dirs if is_finished(d)]
        if done:
            raise FileExistsError(
                f"finished SAE(s) already in {done}; pass overwrite=True (--overwrite) or choose "
                "another out_dir"
            )
    ckpt_path = out / ckpt.FILENAME if out is not None else None
    if checkpoint_every is not None and ckpt_path is None:
        raise ValueError("checkpoint_every needs out_dir")

    keep = _keep_fn(c0, source)
    sample = source.sample(c0.init_samples, c0.data_seed + 1, keep).to(dev)
    scale = math.sqrt(c0.d_in) / float(sample.norm(dim=1).mean().clamp_min(1e-12))
    runs = [_Run(c, dev, total_steps) for c in configs]
    for run in runs:
        run.sae.decode_impl = decode
    scales = [scale if c.normalize_activations else 1.0 for c in configs]
    for run, s in zip(runs, scales):
        run.init_from_sample(sample * s)
    del sample

    start = 0
    meta_expected = {"configs": [c.to_dict() for c in configs], "n_rows": source.n_rows}
    if ckpt_path is not None and ckpt_path.is_file():
        tensors, meta = ckpt.read_checkpoint(ckpt_path)
        if {k: meta.get(k) for k in meta_expected} != meta_expected:
            raise ValueError(
                f"{ckpt_path} was written for different configs or data; delete it to start "
                "afresh or choose another out_dir"
            )
        for i, run in enumerate(runs):
            ckpt.load_run(str(i), tensors, run.sae, run.opt, run.since_fired, run.gen)
            run.history = meta["history"][i]
        start = int(meta["step"])
        logger.info("resuming from %s at step %d/%d", ckpt_path, start, total_steps)

    if compile:
        for run in runs:
            run.sae.training_step = torch.compile(run.sae.training_step)

    bar = tqdm(
        total=total_steps, initial=start, disable=not (progress and info.is_main), unit="step"
    )
    batches = source.batches(c0.batch_size, c0.data_seed, keep, start=start)
    for step in range(start, total_steps):
        x_global = next(batches).to(dev, non_blocking=True)
        x = ddp.local_slice(x_global, info)
        for run, s in zip(runs, scales):
            xs = x * s if s != 1.0 else x
            stats = run.step(xs, step, c0.batch_size, amp)
            rs = run.config.resample_every
            if run.config.arch in L1_FAMILY and rs and (step + 1) % rs == 0:
                n = run.resample(x_global * s if s != 1.0 else x_global)
                logger.info("step %d: resampled %d dead features", step + 1, n)
        if (step + 1) % log_every == 0 or step + 1 == total_steps:
            for run in runs:
                run.log(step + 1, (step + 1) * c0.batch_size)
        bar.set_postfix(l0=f"{stats['l0']:.1f}", fvu=f"{stats['fvu']:.3f}", refresh=False)
        bar.update(1)
        if checkpoint_every and (step + 1) % checkpoint_every == 0 and step + 1 < total_steps:
            _write_ckpt(ckpt_path, runs, step + 1, meta_expected, info)
    bar.close()

    for run, s in zip(runs, scales):
        run.sae._workspace.clear()
        run.sae.set_input_scale(s)
        run.sae.eval()
        run.sae.history_ = run.history
    if save_dirs is not None and info.is_main:
        for run, d in zip(runs, save_dirs):
            extra = {"finished": True, "steps": total_steps, "tokens": total_steps * c0.batch_size}
            save_sae(run.sae, d, extra)
            (d / "history.json").write_text(json.dumps(run.history, indent=1) + "\n")
        if ckpt_path is not None:
            ckpt_path.unlink(missing_ok=True)
    ddp.barrier()
    return [run.sae for run in runs]


def _write_ckpt(path: Path, runs: list[_Run], step: int, meta: dict, info: ddp.DistInfo) -> None:
    if info.is_main:
        tensors = {}
        for i, run in enumerate(runs):
            tensors.update(ckpt.run_tensors(str(i), run.sae, run.opt, run.since_fired, run.gen))
        full = dict(meta, step=step, history=[r.history for r in runs])
        ckpt.write_checkpoint(path, tensors, full)
        logger.debug("checkpoint at step %d -> %s", step, path)
    ddp.barrier()
