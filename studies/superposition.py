"""Superposition in a layer's residual stream: D_i, stability of p, effective features.

    python -m studies.superposition --layer 6 [--tokens 65536] [--out runs/superposition]
        [--model NAME] [--device auto] [--seed 0] [--activations CACHE_DIR] [--sae SAE_DIR]
        [--ratios 0.5 1 2 4 8] [--seeds 2] [--arch topk] [--k 32] [--epochs 3]
        [--batch-size 256] [--lr 3e-3] [--smoke]

1. Activations of ``blocks.{layer}.hook_resid_post`` from the harvester's cache (reused when it
   exists, filled otherwise) or from ``--activations``.
2. **Stability of p** (Sharkey et al. 2022): SAEs of sizes ``ratio * d_model`` for every seed,
   all trained in one shared pass (``geomsae.sae.train_many``), one sparsity (``k``) for all
   sizes. Each size is compared with the next larger one (MMCS and the fraction of atoms with a
   one-to-one match above cosine 0.9, with the chance MMCS of random directions for reference);
   the estimated number of features is the plateau of matched atoms, with its range over seeds,
   flagged as a lower bound when it has not saturated.
3. **Feature dimensionality** ``D_i`` (Elhage et al. 2022) of the layer's SAE (``--sae``, or the
   largest one trained in step 2), its histogram with the sticky fractions marked, and the same
   for random directions of the same shape as a reference.
4. **Effective number of features** ``exp(H(q))`` (Bereska et al. 2025) of every trained SAE.

Writes report.json, report.md, dimensionality.png and stability.png into ``--out``. On the
default settings it runs in about 15 minutes on 2 CPU cores (when the cache exists); the SAEs are
trained for a few hundred steps only, so read the numbers as those of small, short-trained SAEs.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import harvest, open_cache
from geomsae.models import TINY_MODEL
from geomsae.sae import SAEConfig, as_source, load
from geomsae.superposition import (
    alive_features,
    chance_mmcs,
    compare_sizes,
    effective_features_from_means,
    feature_dimensionality,
    mean_abs_activation,
    stability_of_p,
    sticky_counts,
)
from geomsae.superposition.plots import plot_dimensionality_histogram, plot_stability
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

logger = logging.getLogger("studies.superposition")


@dataclasses.dataclass(frozen=True)
class SuperpositionStudyConfig(LayerStudyConfig):
    """Settings of the superposition study."""

    out: Path = Path("runs/superposition")
    """Report folder."""
    tokens: int = 65_536
    """Activation rows to harvest; one epoch is this many rows (a larger reused cache is
    sampled from)."""
    context_length: int = 128
    """Tokens per harvest window."""
    activations: str | None = None
    """Cache folder to use instead of harvesting."""
    sae: str | None = None
    """Folder of an SAE (geomsae / SAELens / sparsify) for the D_i histogram; default: the
    largest SAE of the stability run."""
    ratios: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0)
    """Dictionary sizes as multiples of d_model."""
    n_seeds: int = 2
    """SAEs per size (the interval of the estimate is their range)."""
    arch: str = "topk"
    """SAE architecture (one sparsity for all sizes)."""
    k: int = 32
    """Active features (TopK family)."""
    l1_coefficient: float = 5.0
    """L1 coefficient (relu, tied_relu)."""
    epochs: float = 3.0
    """Passes over the activations."""
    batch_size: int = 256
    """Tokens per step (small: more steps for the same tokens, which the short CPU run needs)."""
    lr: float | None = 3e-3
    """Adam learning rate for every size (None: 2e-4 / sqrt(d_sae / 2^14))."""
    eval_samples: int = 8192
    """Rows for alive features and effective features."""
    threshold: float = 0.9
    """Cosine of a one-to-one match."""
    loose_threshold: float = 0.7
    """A second, looser match threshold reported alongside (short runs rarely reach 0.9)."""


SMOKE = SuperpositionStudyConfig(
    out=Path("runs/superposition_smoke"),
    model=TINY_MODEL,
    layer=2,
    tokens=3000,
    context_length=32,
    ratios=(0.5, 1.0, 2.0),
    k=4,
    epochs=2.0,
    batch_size=256,
    eval_samples=1000,
)
"""A configuration that runs the whole study in seconds (tiny random model)."""


def _activations(config: SuperpositionStudyConfig):
    if config.activations is not None:
        return open_cache(config.activations)
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


def _dimensionality(sae, label: str, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    W = sae.feature_directions.detach()
    D = feature_dimensionality(W)
    gen = torch.Generator().manual_seed(seed)
    D_rand = feature_dimensionality(torch.randn(W.shape, generator=gen, dtype=torch.float64))
    summary = {
        "sae": label,
        "n_features": int(W.shape[0]),
        "d_model": int(W.shape[1]),
        "sum_D": float(D.sum()),
        "mean_D": float(D.mean()),
        "median_D": float(np.median(D)),
        "mean_D_random_directions": float(D_rand.mean()),
        "sticky_counts": sticky_counts(D),
    }
    return summary, D, D_rand


def run(config: SuperpositionStudyConfig) -> dict:
    """Run the study and write report.json, report.md and the figures into config.out."""
    seed_everything(config.seed)
    timer = Timer()
    out = Path(config.out)
    device = None if config.device == "auto" else config.device
    with timer("activations"):
        store = _activations(config)
    n_rows, d_in = len(store), store.d_in
    base = SAEConfig(
        arch=config.arch,
        d_in=int(d_in),
        k=config.k,
        l1_coefficient=config.l1_coefficient,
        lr=config.lr,
        batch_size=min(config.batch_size, n_rows),
        # a reused cache may hold more rows than asked for: train on `tokens` rows' worth
        train_tokens=int(config.epochs * min(config.tokens, n_rows)),
        init_samples=min(65_536, n_rows),
        seed=config.seed,
        hook_name=store.hook,
        model_name=config.model or "smollm2-135m-instruct-gguf",
    )
    seeds = tuple(config.seed + i for i in range(config.n_seeds))
    with timer("train SAEs"):
        srun = stability_of_p(
            store, base, ratios=config.ratios, seeds=seeds, eval_samples=config.eval_samples,
            threshold=config.threshold, device=device,
        )  # fmt: skip
    res = srun.result
    X_eval = as_source(store).sample(config.eval_samples, seed=config.seed + 11)
    with timer("loose matching"):
        loose = compare_sizes(
            [[sae.feature_directions.detach().cpu() for sae in row] for row in srun.dictionaries],
            res.sizes,
            list(seeds),
            [[alive_features(sae, X_eval) for sae in row] for row in srun.dictionaries],
            threshold=config.loose_threshold,
        )
    with timer("effective features"):
        eff_rows = []
        for s, row in zip(seeds, srun.dictionaries):
            for sae in row:
                hist = sae.history_[-1] if getattr(sae, "history_", None) else {}
                means = mean_abs_activation(sae, X_eval)
                eff_rows.append(
                    {
                        "p": sae.n_features,
                        "seed": s,
                        "effective features": effective_features_from_means(means),
                        "alive": int((means > 0).sum()),
                        "fvu": float(hist.get("fvu", np.nan)),
                        "l0": float(hist.get("l0", np.nan)),
                    }
                )
    with timer("dimensionality"):
        if config.sae is not None:
            layer_sae, label = load(config.sae), str(config.sae)
        else:
            layer_sae = srun.dictionaries[0][-1]
            label = f"stability run, p={layer_sae.n_features}, seed {seeds[0]}"
        dim_summary, D, D_rand = _dimensionality(layer_sae, label, config.seed)
        fig = plot_dimensionality_histogram(
            D, title=f"{store.hook}: {layer_sae.n_features} features"
        )
        fig.axes[0].hist(D_rand, bins=np.linspace(0, 1, 61), histtype="step", color="C3",
                         label="random directions, same shape")  # fmt: skip
        fig.axes[0].legend(fontsize=8)
        save_figure(fig, out / "dimensionality.png")
    save_figure(plot_stability(res), out / "stability.png")

    curves = res.curves()
    for row, loose_row in zip(curves, loose.curves()):
        row["chance MMCS"] = chance_mmcs(int(d_in), int(row["next p"]))
        row[f"matched at {config.loose_threshold:g}"] = loose_row["matched"]
    near_chance = all(r["MMCS"] < r["chance MMCS"] + 0.15 for r in curves)
    if near_chance:
        logger.warning("MMCS between sizes is within 0.15 of chance: the SAEs are undertrained")
    report = {
        "config": config,
        "hook": store.hook,
        "n_rows": n_rows,
        "d_model": int(d_in),
        "sae_config": base.to_dict(),
        "stability": {
            "sizes": res.sizes,
            "seeds": res.seeds,
            "curves": curves,
            "n_matched": res.n_matched,
            "estimate": res.estimate,
            "interval": res.interval,
            "saturated": res.saturated,
            "threshold": res.threshold,
            "loose_threshold": loose.threshold,
            "loose_estimate": loose.estimate,
            "loose_interval": loose.interval,
            "near_chance": near_chance,
        },
        "effective_features": eff_rows,
        "dimensionality": dim_summary,
        "timings_s": timer.timings,
    }
    write_json(out / "report.json", report)
    kind = (
        "" if res.saturated else " -- a lower bound: matched atoms still grow at the largest size"
    )
    lo, hi = res.interval
    md = [
        f"# Superposition at `{store.hook}`\n\n",
        f"{n_rows} activation rows, d_model {d_in}; {config.arch} SAEs (k={config.k}), "
        f"{config.epochs:g} epochs, sizes {res.sizes.tolist()} x seeds {list(seeds)}.\n\n",
        "## Stability of p\n\n",
        f"Estimated number of stable features: **{res.estimate:.0f}** (range over seeds "
        f"[{lo:.0f}, {hi:.0f}]){kind}. At cosine {loose.threshold:g}: {loose.estimate:.0f} "
        f"[{loose.interval[0]:.0f}, {loose.interval[1]:.0f}].\n\n",
        (
            "**MMCS between sizes is within 0.15 of chance: these SAEs are undertrained; train "
            "longer (--epochs, --tokens) before reading the estimate.**\n\n"
            if near_chance
            else ""
        ),
        markdown_table(curves),
        "\n![stability](stability.png)\n\n## Effective number of features\n\n",
        markdown_table(eff_rows),
        f"\n## Feature dimensionality ({label})\n\n",
        f"sum D_i = {dim_summary['sum_D']:.1f} of d_model = {d_in}; mean D_i "
        f"{dim_summary['mean_D']:.3f} (random directions of the same shape: "
        f"{dim_summary['mean_D_random_directions']:.3f}).\n\n",
        markdown_table([dim_summary["sticky_counts"]]),
        "\n![D_i](dimensionality.png)\n\n## Timings (s)\n\n",
        markdown_table([{k: round(v, 1) for k, v in timer.timings.items()}]),
    ]
    write_atomic(out / "report.md", "".join(md))
    logger.info("estimate %.0f [%.0f, %.0f]; report in %s", res.estimate, lo, hi, out)
    return report


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], "runs/superposition")
    d = SuperpositionStudyConfig()
    p.add_argument("--layer", type=int, default=d.layer, help="layer to hook")
    p.add_argument("--tokens", type=int, default=d.tokens, help="activation rows")
    p.add_argument("--activations", default=None, help="cache folder to use")
    p.add_argument("--sae", default=None, help="SAE folder for the D_i histogram")
    p.add_argument("--ratios", type=float, nargs="+", default=list(d.ratios),
                   help="sizes as multiples of d_model")  # fmt: skip
    p.add_argument("--seeds", type=int, default=d.n_seeds, help="SAEs per size")
    p.add_argument("--arch", default=d.arch, help="SAE architecture")
    p.add_argument("--k", type=int, default=d.k, help="active features (TopK family)")
    p.add_argument("--epochs", type=float, default=d.epochs, help="passes over the data")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="tokens per step")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate")
    p.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    base = SMOKE if args.smoke else d
    explicit = {
        "out": Path(args.out), "device": args.device, "seed": args.seed,
        "activations": args.activations, "sae": args.sae,
    }  # fmt: skip
    for name, field in (("layer", "layer"), ("tokens", "tokens"), ("seeds", "n_seeds"),
                        ("arch", "arch"), ("k", "k"), ("epochs", "epochs"),
                        ("batch_size", "batch_size"), ("lr", "lr")):  # fmt: skip
        if getattr(args, name) != p.get_default(name):
            explicit[field] = getattr(args, name)
    if args.ratios != p.get_default("ratios"):
        explicit["ratios"] = tuple(args.ratios)
    if args.model is not None:
        explicit["model"] = args.model
    if args.smoke and args.out == p.get_default("out"):
        explicit["out"] = SMOKE.out
    return run(dataclasses.replace(base, **explicit))


if __name__ == "__main__":
    main()
