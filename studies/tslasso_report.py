"""Report of the TSLasso study: aggregation over charts, top contexts, figures, Markdown."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np

from studies.common import markdown_table, save_figure

logger = logging.getLogger("studies.tslasso")


def aggregate(results: list[dict], purity=None) -> list[dict]:
    """Per feature: in how many charts (of each kind) it was selected, and its mean frequency.

    Sorted by the number of charts, then by mean selection frequency. With ``purity`` (an array
    over all features) each row also gets the feature's token purity.
    """
    per: dict[int, dict] = defaultdict(
        lambda: {"charts": 0, "freqs": [], "kinds": defaultdict(int)}
    )
    for r in results:
        for j, f in zip(r.get("selected_features") or [], r.get("selection_frequency") or []):
            per[j]["charts"] += 1
            per[j]["freqs"].append(f)
            per[j]["kinds"][r["kind"]] += 1
    rows = [
        {
            "feature": j,
            "charts": v["charts"],
            "mean_selection_frequency": float(np.mean(v["freqs"])),
            **{f"{k}_charts": v["kinds"].get(k, 0) for k in ("global", "knn", "feature")},
            **({"token_purity": float(purity[j])} if purity is not None else {}),
        }
        for j, v in per.items()
    ]
    return sorted(rows, key=lambda r: (-r["charts"], -r["mean_selection_frequency"], r["feature"]))


def top_contexts(store, top, features: list[int], m: int) -> dict:
    """The ``m`` highest activations of each selected feature, with their token contexts.

    ``top`` is a :class:`geomsae.sae.top.TopActivations` over all features of the store.
    """
    meta = store.metadata
    column = {int(j): c for c, j in enumerate(top.features)}
    out: dict[int, list[dict]] = {}
    for j in features:
        vals, rows = top.positive(column[int(j)])
        out[int(j)] = [
            {
                "activation": float(v),
                "row": int(r),
                "token": meta.token_str(int(r)),
                "context": meta.context(int(r), before=12, after=4),
            }
            for v, r in zip(vals[:m], rows[:m])
        ]
    return out


def figures(out: Path, curve, d: int, results: list[dict], agg: list[dict]) -> list[str]:
    """Write the PNG figures; return their file names."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    from geomsae.dimension import plot_id_scale_curve

    names = []
    ax = plot_id_scale_curve(curve, x="scale")
    ax.axhline(d, color="k", ls="--", lw=1, label=f"d used = {d}")
    ax.legend()
    ax.set_title("Intrinsic dimension vs scale (GRIDE, 90% bootstrap CI)")
    save_figure(ax.figure, out / "id_scale.png")
    names.append("id_scale.png")

    ran = [r for r in results if r.get("selected_features")]
    if agg and ran:
        feats = [a["feature"] for a in agg[:30]]
        labels = [_chart_label(r) for r in ran]
        M = np.array([[r["top_frequencies"].get(f, 0.0) for f in feats] for r in ran])
        fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(feats) + 2), 0.35 * len(ran) + 1.8))
        sns.heatmap(M, ax=ax, vmin=0, vmax=1, cmap="viridis", xticklabels=feats,
                    yticklabels=labels, cbar_kws={"label": "selection frequency"})  # fmt: skip
        ax.set_xlabel("SAE feature")
        ax.set_title("TSLasso selection frequency per chart")
        save_figure(fig, out / "selection_by_chart.png")
        names.append("selection_by_chart.png")

    glob = next((r for r in results if r["kind"] == "global" and r.get("path")), None)
    if glob is not None:
        p = glob["path"]
        fig, ax = plt.subplots(figsize=(6, 4))
        lam = np.asarray(p["lambdas"]) / p["lambda_max"]
        norms = np.asarray(p["norms"])
        for c, j in enumerate(p["features"]):
            ax.plot(lam, norms[:, c], marker=".", label=str(j) if c < 12 else None)
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel("lambda / lambda_max")
        ax.set_ylabel("group norm ||beta_j||")
        ax.set_title("Global chart: regularisation path (first replicate)")
        ax.legend(title="feature", fontsize=7, ncol=2)
        save_figure(fig, out / "global_path.png")
        names.append("global_path.png")
    return names


def _chart_label(r: dict) -> str:
    if r["kind"] == "knn":
        return f"knn @{r['anchor']} (d={r['d']})"
    if r["kind"] == "feature":
        return f"feature {r['feature']} (d={r['d']})"
    return f"global (d={r['d']})"


def markdown(report: dict, design: str) -> str:
    """The Markdown summary of a report dict."""
    idd = report["intrinsic_dimension"]
    lines = [
        f"# Tangent Space Lasso on `{report['hook']}` of {report['model']}\n\n",
        f"SAE: {report['sae']['arch']} with {report['sae']['d_sae']} features "
        f"(`{report['sae']['path']}`). Cloud: {report['cloud']['n_points']} distinct tokens in "
        f"{report['cloud']['d_model']} dimensions, from {report['activations']['n_tokens']} "
        "harvested.\n\n",
        "## Intrinsic dimension\n\n",
        f"Plateau of the {idd['estimator'].upper()} scale curve: {idd['plateau']:.1f}; d used in "
        f"the global chart: **{idd['d']}** (capped by --max-d); median pointwise MLE "
        f"{idd['pointwise_mle_median']:.1f}. ID as a function of scale:\n\n",
        markdown_table([dict(zip(idd["curve"], v)) for v in zip(*idd["curve"].values())]),
        "\n![ID vs scale](id_scale.png)\n\n",
        "## Charts\n\n",
    ]
    rows = []
    for r in report["charts"]:
        rows.append(
            {
                "chart": _chart_label(r),
                "points": r["chart_points"],
                "candidates": r["n_candidates"],
                "selected features": ", ".join(map(str, r.get("selected_features") or [])) or "-",
                "selection frequency": ", ".join(
                    f"{f:.2f}" for f in r.get("selection_frequency") or []
                )
                or r.get("skipped", "-"),
                "support frequency": r.get("support_frequency", float("nan")),
                "lambda": r.get("lambda", float("nan")),
            }
        )
    lines.append(markdown_table(rows))
    if "selection_by_chart.png" in report["figures"]:
        lines.append("\n![selection by chart](selection_by_chart.png)\n")
    if "global_path.png" in report["figures"]:
        lines.append("\n![regularisation path](global_path.png)\n")
    lines.append("\n## Features selected across charts\n\n")
    lines.append(markdown_table(report["aggregate"][:30]))
    lines.append(
        "\nToken purity: share of a feature's top activations on its most common token "
        "(an offline interpretability proxy, `geomsae.sae.top.token_purity`).\n"
    )
    lines.append("\n## Top-activating contexts of the selected features\n\n")
    for j, items in report["contexts"].items():
        lines.append(f"**Feature {j}**\n\n")
        for it in items:
            ctx = it["context"].replace("\n", "⏎").replace("|", "\\|")
            lines.append(f"- {it['activation']:.2f}: `{ctx}`\n")
        lines.append("\n")
    lines.append("## Timings (s)\n\n")
    lines.append(markdown_table([{k: round(v, 1) for k, v in report["timings"].items()}]))
    lines.append("\n## Design and caveats\n\n")
    lines.append(_design_text(design))
    return "".join(lines)


def _freqs(r: dict) -> str:
    return ", ".join(f"{f:.2f}" for f in r.get("selection_frequency") or [])


def _design_text(doc: str) -> str:
    """The 'Why charts' paragraphs of the study's docstring."""
    start = doc.find("Why charts.")
    return doc[start:].strip() + "\n" if start >= 0 else ""
