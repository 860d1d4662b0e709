"""Which SAE features are local coordinates of the residual-stream manifold? (TSLasso)

    python -m studies.tslasso --layer 6
        [--out runs/tslasso] [--model NAME] [--device auto] [--seed 0] [--hook TEMPLATE]
        [--tokens 30000] [--sae PATH | --arch topk --k 32 --expansion 8 --sae-epochs 12]
        [--cloud 4000] [--d D] [--max-d 12] [--charts global knn feature]
        [--n-knn-charts 6] [--chart-size 300] [--n-feature-charts 3] [--feature J ...]
        [--n-points 100] [--replicates 10] [--tangent-neighbors K] [--min-active 0.2]
        [--max-candidates 400] [--candidates alive|interpretable] [--min-purity 0.5] [--smoke]

Steps: harvest the layer's residual stream (or reuse the cache), train an SAE on it (or reuse
the cached one, or load ``--sae``), draw a point cloud, estimate its intrinsic dimension as a
function of scale and choose ``d``, then run Tangent Space Lasso (Koelle et al., AISTATS 2024)
with the SAE's features as the dictionary, inside *charts*.

Why charts. An SAE feature is zero wherever it is inactive, so its gradient vanishes there and it
can only be a coordinate of the manifold where it fires. A single global TSLasso run over random
tokens mostly sees features that are off, and ends up choosing whichever features happen to fire
on the sampled points. So by default the study runs TSLasso inside local charts, and a global
run stays available:

* ``knn``: the ``chart_size`` nearest neighbours of a random anchor token (a k-NN ball);
* ``feature``: the tokens on which one chosen feature fires (its support);
* ``global``: a random sample of the whole cloud.

In each chart ``d`` is the median pointwise MLE dimension of the chart's points (clipped to
``max_d``), the tangent spaces are estimated by local PCA using neighbours from the whole cloud,
and the candidate features are those active on at least ``min_active`` of the chart's points
(with ``--candidates interpretable``, only those whose top activations mostly fall on one token).
The report aggregates, for each feature, in how many charts it was selected. Caveats, also
stated in the report: the tangent spaces and ``d`` are estimated from a few thousand points in
576 dimensions, so they are noisy; a feature "selected" is one whose gradient field best spans
the estimated tangent spaces among the candidates, not a proven coordinate chart; and a chart's
answer depends on its candidate set.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import torch

from geomsae.activations import harvest
from geomsae.dimension import id_scale_curve
from geomsae.models import TINY_MODEL
from geomsae.sae.top import token_purity, top_activations
from studies.common import (
    LayerStudyConfig,
    Timer,
    base_parser,
    markdown_table,
    seed_everything,
    setup_logging,
    write_atomic,
    write_json,
)
from studies.tslasso_charts import Chart, choose_d, make_charts, pointwise_dimension, run_chart
from studies.tslasso_report import aggregate, figures, markdown, top_contexts

logger = logging.getLogger("studies.tslasso")


@dataclasses.dataclass(frozen=True)
class TSLassoStudyConfig(LayerStudyConfig):
    """Settings of the TSLasso study."""

    out: Path = Path("runs/tslasso")
    """Report folder."""
    tokens: int = 30_000
    """Activation rows harvested (SAE training data and pool of the cloud)."""
    context_length: int = 128
    """Tokens per harvested window."""
    sae: str | None = None
    """SAE folder (geomsae, SAELens, sparsify); None trains one, cached beside the activations."""
    arch: str = "topk"
    """Architecture of the SAE trained when --sae is not given."""
    k: int = 32
    """Active features of the TopK SAE."""
    expansion: float = 8.0
    """d_sae / d_model of the trained SAE."""
    sae_epochs: float = 12.0
    """Passes over the harvested tokens when training the SAE."""
    sae_batch_size: int = 1024
    """Tokens per SAE training step."""
    cloud: int = 4000
    """Points (distinct tokens) in the point cloud."""
    d: int | None = None
    """Intrinsic dimension for the global chart (None: from the ID scale curve)."""
    max_d: int = 12
    """Largest d used in any chart."""
    charts: tuple[str, ...] = ("global", "knn", "feature")
    """Kinds of charts to run."""
    n_knn_charts: int = 6
    """k-NN charts around random anchor tokens."""
    chart_size: int = 300
    """Points in a k-NN chart (and the most in a feature chart)."""
    n_feature_charts: int = 3
    """Feature-support charts (the most frequent features with enough support)."""
    features: tuple[int, ...] = ()
    """Features whose supports are charts (overrides the automatic choice)."""
    n_points: int = 100
    """Points per TSLasso replicate."""
    replicates: int = 10
    """TSLasso replicates per chart."""
    tangent_neighbors: int | None = None
    """Neighbours of the local PCA (None: max(3 d, 30))."""
    min_active: float = 0.2
    """Candidate features fire on at least this fraction of a local chart's points."""
    candidate_rule: str = "alive"
    """"alive": every feature active often enough; "interpretable": those with token purity
    >= min_purity only (the talk's "TSLasso on the most interpretable features")."""
    min_purity: float = 0.5
    """Token purity threshold of the "interpretable" rule."""
    max_candidates: int = 400
    """At most this many candidates per chart (the most often active)."""
    top_contexts: int = 5
    """Top-activating contexts shown per selected feature."""
    overwrite: bool = False
    """Retrain a cached SAE."""


SMOKE = TSLassoStudyConfig(
    out=Path("runs/tslasso_smoke"),
    model=TINY_MODEL,
    layer=2,
    tokens=2500,
    context_length=32,
    k=8,
    expansion=4.0,
    sae_epochs=2.0,
    sae_batch_size=256,
    cloud=800,
    max_d=4,
    n_knn_charts=2,
    chart_size=120,
    n_feature_charts=1,
    n_points=40,
    replicates=3,
    min_active=0.1,
)


def _device(config: TSLassoStudyConfig) -> str | None:
    return None if config.device == "auto" else config.device


def _load_or_train_sae(config: TSLassoStudyConfig, store, hook_name: str):
    from geomsae.sae import SAEConfig, load, train

    if config.sae is not None:
        sae = load(config.sae)
        if sae.d_in != store.d_in:
            raise ValueError(
                f"the SAE in {config.sae} has d_in={sae.d_in} but {hook_name} has "
                f"d_model={store.d_in}; pass an SAE trained on this hook"
            )
        return sae.eval(), str(config.sae)
    sae_config = SAEConfig(
        arch=config.arch,
        d_in=store.d_in,
        expansion=config.expansion,
        k=config.k,
        batch_size=min(config.sae_batch_size, len(store)),
        train_tokens=int(config.sae_epochs * len(store)),
        dead_tokens=max(len(store) // 2, 1),
        seed=config.seed,
        hook_name=hook_name,
        model_name=config.model or "smollm2-135m-instruct-gguf",
    )
    name = (
        f"{config.arch}-k{config.k}-x{config.expansion:g}-e{config.sae_epochs:g}"
        f"-b{sae_config.batch_size}-s{config.seed}"
    )
    folder = Path(store.path) / "saes" / name
    done = (folder / "cfg.json").is_file() and (folder / "sae_weights.safetensors").is_file()
    if done and not config.overwrite:
        logger.info("reusing the cached SAE in %s", folder)
        return load(folder).eval(), str(folder)
    sae = train(
        sae_config,
        store,
        out_dir=folder,
        device=_device(config),
        checkpoint_every=100,
        overwrite=config.overwrite,
    )
    return sae.eval(), str(folder)


def _cloud(store, n: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """``n`` distinct activation rows (float64) and their row indices in the store."""
    from geomsae.neighbors import deduplicate

    X, rows = store.sample(min(n, len(store)), seed=seed)
    X, kept = deduplicate(X.double())
    if len(kept) < len(rows):
        logger.info("dropped %d duplicate activation rows from the cloud", len(rows) - len(kept))
    return X, rows[kept]


def run(config: TSLassoStudyConfig) -> dict:
    """Run the study, write report.json, report.md and the figures into ``config.out``."""
    seed_everything(config.seed)
    timer = Timer()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.candidate_rule not in ("alive", "interpretable"):
        raise ValueError(
            f"candidate_rule must be 'alive' or 'interpretable', got {config.candidate_rule!r}"
        )
    unknown = sorted(set(config.charts) - {"global", "knn", "feature"})
    if unknown or not config.charts:
        raise ValueError(f"charts must be among global, knn, feature; got {list(config.charts)}")
    with timer("harvest"):
        store = harvest(
            config.tokens,
            None,
            model=config.model,
            layers=(config.layer,),
            hook=config.hook,
            context_length=config.context_length,
            seed=config.seed,
            device=_device(config),
        )
    hook_name = store.hooks[0]
    if config.d is not None and not 1 <= config.d < store.d_in:
        raise ValueError(f"--d must satisfy 1 <= d < d_model={store.d_in}, got {config.d}")
    with timer("sae"):
        sae, sae_path = _load_or_train_sae(config, store, hook_name)
        sae = sae.to("cpu")
    with timer("top_activations"):
        top = top_activations(sae, store, m=max(20, config.top_contexts))
        purity = token_purity(top, store.metadata.token_id)
    allowed = purity >= config.min_purity if config.candidate_rule == "interpretable" else None
    with timer("cloud"):
        X, rows = _cloud(store, config.cloud, config.seed)
        with torch.no_grad():
            codes = torch.cat([sae.encode(b.float()) for b in X.split(2048)])
        active = (codes > 0).numpy()
    if config.chart_size > len(X):
        raise ValueError(
            f"chart_size={config.chart_size} exceeds the {len(X)} points of the cloud; "
            "lower --chart-size or raise --cloud"
        )
    with timer("dimension"):
        curve = id_scale_curve(X, random_state=config.seed)
        d_global = config.d if config.d is not None else choose_d(curve, config.max_d)
        d_pw = pointwise_dimension(X)
    logger.info("%r -> d = %d", curve, d_global)
    rng = np.random.default_rng(config.seed)
    charts: list[Chart] = make_charts(config, X, active, d_global, d_pw, rng)
    results = []
    with timer("tslasso"):
        for chart in charts:
            results.append(run_chart(chart, X, sae, active, config, allowed, purity))
    with timer("contexts"):
        selected = sorted(
            {j for r in results if r.get("selected_features") for j in r["selected_features"]}
        )
        contexts = top_contexts(store, top, selected, config.top_contexts)
    agg = aggregate(results, purity)
    report = {
        "layer": config.layer,
        "hook": hook_name,
        "model": config.model or "smollm2-135m-instruct-gguf",
        "activations": store.summary(),
        "sae": {
            "path": sae_path,
            "arch": type(sae).__name__,
            "d_sae": sae.n_features,
            "alive_fraction": float((top.values[0] > 0).mean()),
            "median_token_purity": float(np.median(purity[top.values[0] > 0])),
        },
        "candidate_rule": config.candidate_rule,
        "cloud": {"n_points": len(X), "d_model": int(X.shape[1])},
        "intrinsic_dimension": {
            "estimator": curve.estimator,
            "curve": curve.as_dict(),
            "plateau": curve.choose(),
            "d": d_global,
            "pointwise_mle_median": float(np.median(d_pw)),
        },
        "charts": results,
        "aggregate": agg,
        "contexts": {str(j): c for j, c in contexts.items()},
        "config": config,
        "timings": timer.timings,
    }
    with timer("figures"):
        names = figures(out, curve, d_global, results, agg)
    report["figures"] = names
    write_json(out / "report.json", report)
    write_atomic(out / "report.md", markdown(report, __doc__))
    return report


def main(argv: list[str] | None = None) -> dict:
    p = base_parser(__doc__.splitlines()[0], "runs/tslasso")
    d = TSLassoStudyConfig()
    p.add_argument(
        "--layer", type=int, nargs="+", default=[d.layer],
        help="layer(s); several layers each get a sub-folder layer_L of --out",
    )  # fmt: skip
    p.add_argument("--hook", default=d.hook, help="hook template, {layer} substituted")
    p.add_argument("--tokens", type=int, default=d.tokens)
    p.add_argument("--context-length", type=int, default=d.context_length)
    p.add_argument("--sae", default=None, help="SAE folder to load instead of training one")
    p.add_argument("--arch", default=d.arch)
    p.add_argument("--k", type=int, default=d.k)
    p.add_argument("--expansion", type=float, default=d.expansion)
    p.add_argument("--sae-epochs", type=float, default=d.sae_epochs)
    p.add_argument("--sae-batch-size", type=int, default=d.sae_batch_size)
    p.add_argument("--cloud", type=int, default=d.cloud, help="points in the cloud")
    p.add_argument("--d", type=int, default=None, help="d of the global chart (default: ID)")
    p.add_argument("--max-d", type=int, default=d.max_d)
    p.add_argument(
        "--charts", nargs="+", default=list(d.charts), choices=["global", "knn", "feature"]
    )
    p.add_argument("--n-knn-charts", type=int, default=d.n_knn_charts)
    p.add_argument("--chart-size", type=int, default=d.chart_size)
    p.add_argument("--n-feature-charts", type=int, default=d.n_feature_charts)
    p.add_argument(
        "--feature", type=int, nargs="*", default=[], help="features whose supports are charts"
    )
    p.add_argument("--n-points", type=int, default=d.n_points, help="points per replicate")
    p.add_argument("--replicates", type=int, default=d.replicates)
    p.add_argument("--tangent-neighbors", type=int, default=None)
    p.add_argument("--min-active", type=float, default=d.min_active)
    p.add_argument("--max-candidates", type=int, default=d.max_candidates)
    p.add_argument(
        "--candidates", default=d.candidate_rule, choices=["alive", "interpretable"],
        help="candidate features: all alive ones, or only those with token purity >= --min-purity",
    )  # fmt: skip
    p.add_argument("--min-purity", type=float, default=d.min_purity)
    p.add_argument("--top-contexts", type=int, default=d.top_contexts)
    p.add_argument("--overwrite", action="store_true", help="retrain a cached SAE")
    p.add_argument("--smoke", action="store_true", help="tiny random model, seconds")
    a = p.parse_args(argv)
    setup_logging(a.verbose)
    if a.smoke:
        config = dataclasses.replace(
            SMOKE, out=Path(a.out) if a.out != "runs/tslasso" else SMOKE.out
        )
    else:
        config = TSLassoStudyConfig(
            out=Path(a.out), model=a.model, device=a.device, seed=a.seed, layer=a.layer[0],
            hook=a.hook, tokens=a.tokens, context_length=a.context_length, sae=a.sae,
            arch=a.arch, k=a.k, expansion=a.expansion, sae_epochs=a.sae_epochs,
            sae_batch_size=a.sae_batch_size, cloud=a.cloud,
            d=a.d, max_d=a.max_d, charts=tuple(a.charts), n_knn_charts=a.n_knn_charts,
            chart_size=a.chart_size, n_feature_charts=a.n_feature_charts,
            features=tuple(a.feature), n_points=a.n_points, replicates=a.replicates,
            tangent_neighbors=a.tangent_neighbors, min_active=a.min_active,
            max_candidates=a.max_candidates, candidate_rule=a.candidates,
            min_purity=a.min_purity, top_contexts=a.top_contexts, overwrite=a.overwrite,
        )  # fmt: skip
    layers = [config.layer] if a.smoke else a.layer
    try:
        if len(layers) == 1:
            report = run(config)
            print((Path(config.out) / "report.md").read_text())
            return report
        return run_layers(config, layers)
    except (ValueError, OSError) as err:  # bad input: one line, no traceback
        p.error(str(err))


def run_layers(config: TSLassoStudyConfig, layers: list[int]) -> dict:
    """Run the study for several layers into ``out/layer_L`` and write an index report."""
    out = Path(config.out)
    reports = {}
    for layer in layers:
        reports[layer] = run(dataclasses.replace(config, layer=layer, out=out / f"layer_{layer}"))
    rows = [
        {
            "layer": layer,
            "d": r["intrinsic_dimension"]["d"],
            "ID plateau": r["intrinsic_dimension"]["plateau"],
            "charts run": sum("skipped" not in c for c in r["charts"]),
            "most shared feature": r["aggregate"][0]["feature"] if r["aggregate"] else "-",
            "report": f"[layer_{layer}/report.md](layer_{layer}/report.md)",
        }
        for layer, r in reports.items()
    ]
    index = {"layers": layers, "summary": rows, "reports": {str(k): v for k, v in reports.items()}}
    write_json(out / "report.json", index)
    title = "# Tangent Space Lasso across layers\n\n"
    write_atomic(out / "report.md", title + markdown_table(rows))
    print((out / "report.md").read_text())
    return index


if __name__ == "__main__":
    main()
