"""Toy Models of Superposition (Elhage et al. 2022): the pentagon and the D_i phase picture.

    python -m studies.toy_models [--out runs/toy_models] [--seed 0] [--device auto] [--smoke]

Two experiments, each trained as one batched model (every sparsity x seed is an instance):

1. **5 features in 2 dimensions**, importance ``0.9^i``, ``1 - S`` swept from 1 to 0.01 over
   ``n_seeds`` seeds, with the ReLU output model and its linear baseline. Reported: how many
   features each instance represents, its mean ``D_i``, and in how many seeds the columns of
   ``W`` form a regular pentagon (all ``D_i = 2/5``). Expected: the pentagon at ``1 - S <= 0.05``
   in (nearly) every seed, only the two most important features (orthogonal) at ``S = 0``, and
   never any superposition in the linear baseline.
2. **Phase picture**: 100 features of equal importance in 10 dimensions, ``1 - S`` log-spaced
   from 1 to 1/300. ``D_i`` of every feature against ``1 / (1 - S)``; at intermediate sparsity the
   values cluster at the sticky fractions (2/3, 1/2, 2/5, 3/8, ...) and fall towards
   ``d_hidden / n_features`` when very sparse. Reported per sparsity: the share of features with
   ``D_i > 0.03`` lying within 0.03 of a sticky fraction.

``--model`` is accepted for a uniform command line but unused (no language model here).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np

from geomsae.models import resolve_device
from geomsae.superposition import (
    STICKY_FRACTIONS,
    ToyTrainConfig,
    importance_decay,
    is_regular_polygon,
    train_toy_models,
)
from geomsae.superposition.plots import plot_dimensionality_phase, plot_toy_columns
from studies.common import (
    Timer,
    base_parser,
    markdown_table,
    save_figure,
    seed_everything,
    setup_logging,
    write_atomic,
    write_json,
)


@dataclasses.dataclass(frozen=True)
class ToyStudyConfig:
    """Settings of the toy-model study."""

    out: Path = Path("runs/toy_models")
    """Report folder."""
    seed: int = 0
    """Random seed of the initialisations and data."""
    device: str = "auto"
    """Torch device."""
    n_seeds: int = 5
    """Seeds per sparsity in the 5-in-2 sweep."""
    pentagon_probabilities: tuple[float, ...] = (1.0, 0.3, 0.1, 0.05, 0.02, 0.01)
    """``1 - S`` values of the 5-in-2 sweep."""
    phase_features: int = 100
    """Features of the phase-picture model (equal importance)."""
    phase_hidden: int = 10
    """Hidden dimensions of the phase-picture model."""
    phase_batch_size: int = 256
    """Batch of the phase-picture model (smaller than Elhage et al.'s 1024 to fit 2 CPU cores)."""
    phase_instances: int = 16
    """Sparsities in the phase picture, ``1 - S`` log-spaced from 1 to ``phase_min_probability``."""
    phase_min_probability: float = 1 / 300
    """Smallest ``1 - S`` of the phase picture."""
    train: ToyTrainConfig = ToyTrainConfig()
    """Optimisation (Elhage et al.: 10k AdamW steps, batch 1024, lr 1e-3)."""


SMOKE = ToyStudyConfig(
    n_seeds=2,
    pentagon_probabilities=(1.0, 0.02),
    phase_features=12,
    phase_hidden=4,
    phase_instances=3,
    phase_batch_size=64,
    train=ToyTrainConfig(steps=30, batch_size=64),
)
"""A configuration that runs the whole study in seconds."""


def _pentagon_rows(res, probs: tuple[float, ...], n_seeds: int) -> list[dict]:
    rows = []
    for i, p in enumerate(probs):
        ks = range(i * n_seeds, (i + 1) * n_seeds)
        kept = [int((res.norms[k] >= 0.5).sum()) for k in ks]
        rows.append(
            {
                "1-S": p,
                "features with norm >= 0.5 (mean)": float(np.mean(kept)),
                "mean D_i of those": _mean_kept_dimensionality(res, ks),
                "pentagon seeds": sum(is_regular_polygon(res.W[k], 5) for k in ks),
                "seeds": n_seeds,
                "loss": float(np.mean(res.loss[list(ks)])),
            }
        )
    return rows


def _mean_kept_dimensionality(res, ks: range) -> float:
    kept = np.concatenate([res.dimensionality[k][res.norms[k] >= 0.5] for k in ks])
    return float(kept.mean()) if kept.size else 0.0


def _sticky_share(D: np.ndarray, tol: float = 0.03) -> float:
    kept = D[D > tol]
    if kept.size == 0:
        return 0.0
    near = np.zeros(kept.shape, dtype=bool)
    for _, v in STICKY_FRACTIONS:
        near |= np.abs(kept - v) <= tol
    return float(near.mean())


def run(config: ToyStudyConfig) -> dict:
    """Run both experiments and write report.json, report.md and the figures into config.out."""
    seed_everything(config.seed)
    device = resolve_device(config.device)
    out = Path(config.out)
    timer = Timer()
    probs = tuple(config.pentagon_probabilities)
    prob_inst = np.repeat(probs, config.n_seeds)
    imp = importance_decay(5)
    with timer("5-in-2 ReLU"):
        relu = train_toy_models(5, 2, prob_inst, imp, "relu", config.train, config.seed, device)
    with timer("5-in-2 linear"):
        lin = train_toy_models(5, 2, prob_inst, imp, "linear", config.train, config.seed, device)
    phase_p = np.geomspace(1.0, config.phase_min_probability, config.phase_instances)
    with timer("phase picture"):
        phase_train = dataclasses.replace(config.train, batch_size=config.phase_batch_size)
        phase = train_toy_models(
            config.phase_features,
            config.phase_hidden,
            phase_p,
            None,
            "relu",
            phase_train,
            config.seed,
            device,
        )

    relu_rows = _pentagon_rows(relu, probs, config.n_seeds)
    lin_rows = _pentagon_rows(lin, probs, config.n_seeds)
    phase_rows = [
        {
            "1/(1-S)": float(1 / p),
            "features with norm >= 0.5": int((phase.norms[k] >= 0.5).sum()),
            "sum D_i": float(phase.dimensionality[k].sum()),
            "share near sticky": _sticky_share(phase.dimensionality[k]),
        }
        for k, p in enumerate(phase_p)
    ]
    first_seed = [i * config.n_seeds for i in range(len(probs))]
    save_figure(plot_toy_columns(relu, first_seed, ncols=len(probs)), out / "pentagon_relu.png")
    save_figure(plot_toy_columns(lin, first_seed, ncols=len(probs)), out / "pentagon_linear.png")
    save_figure(plot_dimensionality_phase(phase), out / "phase_dimensionality.png")

    report = {
        "config": config,
        "device": str(device),
        "pentagon_relu": relu_rows,
        "pentagon_linear": lin_rows,
        "phase": phase_rows,
        "phase_share_near_sticky": _sticky_share(phase.dimensionality.ravel()),
        "timings_s": timer.timings,
    }
    write_json(out / "report.json", report)
    md = [
        "# Toy Models of Superposition\n",
        "## 5 features in 2 dimensions, ReLU output model (importance 0.9^i)\n",
        markdown_table(relu_rows),
        "\n![columns of W](pentagon_relu.png)\n",
        "\n## Linear baseline\n",
        markdown_table(lin_rows),
        "\n![columns of W, linear](pentagon_linear.png)\n",
        f"\n## Phase picture ({config.phase_features} features in {config.phase_hidden} dims)\n",
        f"Share of represented features within 0.03 of a sticky fraction: "
        f"{report['phase_share_near_sticky']:.3f}\n\n",
        markdown_table(phase_rows),
        "\n![D_i vs 1/(1-S)](phase_dimensionality.png)\n",
        "\n## Timings (s)\n",
        markdown_table([{k: round(v, 1) for k, v in timer.timings.items()}]),
    ]
    write_atomic(out / "report.md", "".join(md))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], "runs/toy_models")
    p.add_argument("--seeds", type=int, default=5, help="seeds per sparsity in the 5-in-2 sweep")
    p.add_argument("--steps", type=int, default=10_000, help="AdamW steps")
    p.add_argument("--smoke", action="store_true", help="tiny configuration (seconds)")
    args = p.parse_args(argv)
    setup_logging(args.verbose)
    base = SMOKE if args.smoke else ToyStudyConfig()
    train = base.train if args.smoke else dataclasses.replace(base.train, steps=args.steps)
    config = dataclasses.replace(
        base,
        out=Path(args.out),
        seed=args.seed,
        device=args.device,
        train=train,
        n_seeds=base.n_seeds if args.smoke else args.seeds,
    )
    return run(config)


if __name__ == "__main__":
    main()
