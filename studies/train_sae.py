"""Train one SAE on a layer's residual stream and report its metrics.

    python -m studies.train_sae --layer 6 --arch topk --k 32 --expansion 8 --tokens 200000
        [--out runs/train_sae] [--model NAME] [--device auto] [--seed 0]
        [--activations CACHE_DIR | --stream] [--l1-coefficient 5] [--epochs 1] [--batch-size 4096]
        [--lr LR] [--eval-sequences 16] [--checkpoint-every 200] [--overwrite] [--smoke]

Activations come from the harvester's cache (``geomsae.activations.harvest``: reused when it
exists, filled otherwise) or from ``--activations`` (a cache folder, or a ``.npy`` array of shape
(n_tokens, d_model)); with ``--stream`` they are computed from the model's forward passes while
training, with no cache (``geomsae.sae.stream_from_model``: a shuffle buffer of bounded size;
the metrics pass runs the model once more). The SAE is written to ``--out`` as a SAELens folder
(``cfg.json`` + ``sae_weights.safetensors``) with ``metrics.json``, ``history.json``,
``report.json``, ``report.md`` and ``feature_density.png``. A killed run resumes from its
checkpoint when started again with the same arguments; a finished one is only replaced with
``--overwrite``.

Metrics: L0, dead/dense fractions, MSE, FVU (around the mean) on the training activations, and,
with the model, next-token CE with the SAE spliced in at the hook, KL to the clean model and
CE loss recovered against zero ablation, on ``--eval-sequences`` windows of the corpus.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import harvest, open_cache
from geomsae.models import TINY_MODEL, load_model
from geomsae.sae import (
    ChunkedSource,
    SAEConfig,
    evaluate,
    plot_feature_density,
    spliced_metrics,
    stream_from_model,
    train,
)
from studies.common import (
    LayerStudyConfig,
    Timer,
    base_parser,
    markdown_table,
    save_figure,
    seed_everything,
    setup_logging,
    write_atomic,
    write_json,
)

logger = logging.getLogger("studies.train_sae")


@dataclasses.dataclass(frozen=True)
class TrainSAEStudyConfig(LayerStudyConfig):
    """Settings of the SAE training study."""

    out: Path = Path("runs/train_sae")
    """Output folder: the SAE (SAELens format) and the report."""
    activations: str | None = None
    """Cache folder or .npy array to train on instead of harvesting."""
    stream: bool = False
    """Train straight from the model's forward passes (no activation cache)."""
    tokens: int = 200_000
    """Activation rows to harvest (and train on per epoch)."""
    arch: str = "topk"
    """SAE architecture (topk, batchtopk, relu, tied_relu, jumprelu)."""
    k: int = 32
    """Active features (TopK family)."""
    expansion: float = 8.0
    """Dictionary ratio d_sae / d_model."""
    l1_coefficient: float = 5.0
    """L1 coefficient (relu, tied_relu); also the L0 coefficient of jumprelu / 5."""
    epochs: float = 1.0
    """Passes over the activations."""
    batch_size: int = 4096
    """Tokens per step."""
    lr: float | None = None
    """Adam learning rate (None: 2e-4 / sqrt(d_sae / 2^14))."""
    eval_sequences: int = 16
    """Corpus windows for the spliced CE/KL metrics (0 skips them)."""
    context_length: int = 128
    """Tokens per window (harvest and spliced evaluation)."""
    checkpoint_every: int | None = 200
    """Steps between checkpoints."""
    overwrite: bool = False
    """Replace a finished SAE in --out."""


SMOKE = TrainSAEStudyConfig(
    out=Path("runs/train_sae_smoke"),
    model=TINY_MODEL,
    layer=2,
    tokens=3000,
    k=4,
    expansion=2.0,
    batch_size=256,
    epochs=2.0,
    eval_sequences=4,
    context_length=32,
    checkpoint_every=5,
)


def _activations(config: TrainSAEStudyConfig):
    if config.stream and config.activations is not None:
        raise ValueError("give --activations or --stream, not both")
    if config.stream:
        return stream_from_model(
            config.tokens,
            model=config.model,
            hook=config.hook.format(layer=config.layer),
            context_length=config.context_length,
            seed=config.seed,
            device=None if config.device == "auto" else config.device,
        )
    if config.activations is None:
        return harvest(
            config.tokens,
            None,
            model=config.model,
            layers=(config.layer,),
            hook=config.hook,
            context_length=config.context_length,
            seed=config.seed,
            device=None if config.device == "auto" else config.device,
        )
    path = Path(config.activations)
    if path.suffix == ".npy":
        return torch.from_numpy(np.load(path, mmap_mode="r")[: config.tokens].astype(np.float32))
    return open_cache(path)


def _eval_tokens(model, n: int, length: int, seed: int) -> torch.Tensor:
    """``n`` full windows of the default corpus, BOS first (documents in a seeded order)."""
    from geomsae.activations.windows import iter_windows
    from geomsae.text import load_corpus

    corpus = load_corpus(None)
    texts = [d.text for d in corpus.documents]
    order = np.random.default_rng(seed + 991).permutation(len(texts))
    tok = model.tokenizer
    windows = []
    for w in iter_windows(texts, order, tok, length, tok.bos_token_id):
        if len(w.tokens) == length:
            windows.append(torch.as_tensor(w.tokens))
        if len(windows) == n:
            break
    return torch.stack(windows)


def run(config: TrainSAEStudyConfig) -> dict:
    """Train the SAE into ``config.out``, evaluate it, write the report, return it as a dict."""
    seed_everything(config.seed)
    timer = Timer()
    out = Path(config.out)
    with timer("activations"):
        acts = _activations(config)
    if isinstance(acts, ChunkedSource):
        n_rows, d_in, hook_name = acts.n_rows, acts.d_in, config.hook.format(layer=config.layer)
    elif isinstance(acts, torch.Tensor):
        n_rows, d_in = acts.shape
        hook_name = config.hook.format(layer=config.layer)
    else:
        n_rows, d_in, hook_name = len(acts), acts.d_in, acts.hook
    train_tokens = int(config.epochs * n_rows)
    sae_config = SAEConfig(
        arch=config.arch,
        d_in=int(d_in),
        expansion=config.expansion,
        k=config.k,
        l1_coefficient=config.l1_coefficient,
        l0_coefficient=config.l1_coefficient / 5,
        lr=config.lr,
        batch_size=min(config.batch_size, n_rows),
        train_tokens=train_tokens,
        # short runs: warm up over at most a tenth of the steps
        lr_warmup_steps=min(100, max(1, train_tokens // min(config.batch_size, n_rows) // 10)),
        dead_tokens=max(min(10_000_000, train_tokens // 4), 1),
        seed=config.seed,
        data_seed=config.seed,
        hook_name=hook_name,
        model_name=config.model or "smollm2-135m-instruct-gguf",
    )
    device = None if config.device == "auto" else config.device
    with timer("train"):
        sae = train(
            sae_config,
            acts,
            out_dir=out,
            device=device,
            checkpoint_every=config.checkpoint_every,
            overwrite=config.overwrite,
        )
    with timer("evaluate"):
        m = evaluate(sae, acts, max_samples=200_000)
        metrics = {"arch": config.arch, "d_sae": sae.n_features, **m.summary()}
        if config.eval_sequences > 0:
            model = load_model(config.model, device=device)
            tokens = _eval_tokens(model, config.eval_sequences, config.context_length, config.seed)
            sm = spliced_metrics(sae.to(next(model.parameters()).device), model, tokens)
            metrics.update(dataclasses.asdict(sm))
    metrics["train_tokens_per_second"] = train_tokens / timer.timings["train"]
    write_json(out / "metrics.json", metrics)
    ax = plot_feature_density(m.feature_density, label=config.arch)
    save_figure(ax.figure, out / "feature_density.png")
    report = {"config": config, "sae_config": sae_config.to_dict(), "metrics": metrics,
              "timings": timer.timings}  # fmt: skip
    write_json(out / "report.json", report)
    table = markdown_table([metrics])
    md = [
        f"# SAE on `{hook_name}`\n\n",
        f"{config.arch}, d_in {d_in}, d_sae {sae.n_features}, {train_tokens} training tokens "
        f"({n_rows} distinct).\n\n",
        table,
        "\n![feature density](feature_density.png)\n\n## Timings (s)\n\n",
        markdown_table([{k: round(v, 1) for k, v in timer.timings.items()}]),
    ]
    write_atomic(out / "report.md", "".join(md))
    print(table)
    print(f"SAE (SAELens format) and report in {out}")
    return report


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], "runs/train_sae")
    d = TrainSAEStudyConfig()
    # unset flags keep the (smoke or full) config's value, shown in the help text
    p.argument_default = argparse.SUPPRESS
    p.add_argument("--layer", type=int, help=f"layer to hook (default: {d.layer})")
    p.add_argument("--hook", help=f"hook name template, {{layer}} substituted (default: {d.hook})")
    p.add_argument("--activations", help="cache folder or .npy to train on (default: harvest)")
    p.add_argument("--stream", action="store_true", default=False,
                   help="train from the model's forward passes, no activation cache")  # fmt: skip
    p.add_argument("--tokens", type=int, help=f"activation rows (default: {d.tokens})")
    p.add_argument("--arch", choices=["topk", "batchtopk", "relu", "tied_relu", "jumprelu"],
                   help=f"SAE architecture (default: {d.arch})")  # fmt: skip
    p.add_argument("--k", type=int, help=f"active features, TopK family (default: {d.k})")
    p.add_argument("--expansion", type=float, help=f"d_sae / d_model (default: {d.expansion})")
    p.add_argument("--l1-coefficient", type=float, help=f"L1 alpha (default: {d.l1_coefficient})")
    p.add_argument("--epochs", type=float, help=f"passes over the data (default: {d.epochs})")
    p.add_argument("--batch-size", type=int, help=f"tokens per step (default: {d.batch_size})")
    p.add_argument("--lr", type=float, help="learning rate (default: 2e-4 / sqrt(d_sae / 2^14))")
    p.add_argument(
        "--eval-sequences", type=int, help=f"CE/KL windows (default: {d.eval_sequences})"
    )
    p.add_argument("--checkpoint-every", type=int, help=f"steps (default: {d.checkpoint_every})")
    p.add_argument("--overwrite", action="store_true", default=False, help="replace a finished SAE")
    p.add_argument("--smoke", action="store_true", default=False, help="tiny random model")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    base = SMOKE if args.smoke else d
    fields = {f.name for f in dataclasses.fields(d)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.smoke and args.out == p.get_default("out"):
        given.pop("out")
    given["out"] = Path(given.get("out", base.out))
    given["overwrite"] = args.overwrite
    given["stream"] = args.stream
    return run(dataclasses.replace(base, **given))


if __name__ == "__main__":
    main()
