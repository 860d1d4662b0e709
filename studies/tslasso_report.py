"""Report of the TSLasso study: aggregation over charts, top contexts, figures, Markdown."""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from studies.common import markdown_table, save_figure

logger = logging.getLogger("studies.tslasso")


def aggregate(results: list[dict]) -> list[dict]:
    """Per feature: in how many charts (of each kind) it was selected, and its mean frequency.

    Sorted by the number of charts, then by mean selection frequency.
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
        }
        for j, v in per.items()
    ]
    return sorted(rows, key=lambda r: (-r["charts"], -r["mean_selection_frequency"], r["feature"]))


def top_contexts(store, sae, features: list[int], m: int, batch_size: int = 4096) -> dict:
    """The ``m`` highest activations of each feature over the whole store, with their contexts.

    One streamed pass over the store; memory is ``O(m * len(features))`` beyond one batch.
    """
    if not features or m <= 0:
        return {}
    sub = sae.subset(features)
    best_val = torch.full((m, len(features)), -torch.inf)
    best_row = torch.full((m, len(features)), -1, dtype=torch.long)
    start = 0
    with torch.no_grad():
        for x in store.iter_batches(batch_size, shuffle=False):
            acts = sub.encode(x.float())  # (b, f)
            rows = torch.arange(start, start + len(x))[:, None].expand_as(acts)
            vals = torch.cat([best_val, acts])
            idx = torch.cat([best_row, rows])
            top = vals.topk(min(m, len(vals)), dim=0)
            best_val, best_row = top.values, idx.gather(0, top.indices)
            start += len(x)
    meta = store.metadata
    out: dict[int, list[dict]] = {}
    for c, j in enumerate(features):
        items = []
        for v, r in zip(best_val[:, c].tolist(), best_row[:, c].tolist()):
            if r < 0 or v <= 0:
                continue
            items.append(
                {
                    "activation": float(v),
                    "row": int(r),
                    "token": meta.token_str(r),
                    "context": meta.context(r, before=12, after=4),
                }
            )
        out[int(j)] = items
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
