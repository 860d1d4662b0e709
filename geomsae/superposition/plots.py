"""Figures for superposition: D_i histogram, toy-model geometry, phase picture, stability curves.

Every function returns a matplotlib ``Figure`` (matplotlib and seaborn are imported lazily).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from geomsae.superposition.dimensionality import STICKY_FRACTIONS

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from geomsae.superposition.stability import StabilityResult
    from geomsae.superposition.toy_model import ToyModelResult


def _mark_sticky(ax: Any, axis: str = "x") -> None:
    line = ax.axvline if axis == "x" else ax.axhline
    values = [v for _, v in STICKY_FRACTIONS]
    for label, value in STICKY_FRACTIONS:
        line(value, color="0.35", ls="--", lw=0.8, zorder=0)
        # labels of close neighbours (2/5 and 3/8) are pushed apart
        near = [w for w in values if w != value and abs(w - value) < 0.04]
        side = 0 if not near else (-1 if value < near[0] else 1)
        if axis == "x":
            ha = {0: "center", -1: "right", 1: "left"}[side]
            ax.text(
                value,
                1.0,
                label,
                transform=ax.get_xaxis_transform(),
                ha=ha,
                va="bottom",
                fontsize=8,
            )
        else:
            va = {0: "center", -1: "top", 1: "bottom"}[side]
            ax.text(
                1.0,
                value,
                " " + label,
                transform=ax.get_yaxis_transform(),
                ha="left",
                va=va,
                fontsize=8,
            )


def plot_dimensionality_histogram(
    D: np.ndarray, title: str = "feature dimensionality", bins: int = 60
) -> Figure:
    """Histogram of ``D_i`` with the sticky fractions (1, 3/4, 2/3, 1/2, 2/5, 3/8) marked."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    D = np.asarray(D, dtype=float)
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    sns.histplot(x=D, bins=np.linspace(0, 1, bins + 1), ax=ax, color="C0")
    _mark_sticky(ax, "x")
    ax.set_xlim(0, 1.02)
    ax.set_xlabel(r"$D_i = \|W_i\|^2 / \sum_j (\hat W_i \cdot W_j)^2$")
    ax.set_ylabel("features")
    ax.set_title(f"{title}  (n={D.size}, $\\Sigma D_i$={D.sum():.1f})", pad=14)
    fig.tight_layout()
    return fig


def plot_toy_columns(
    result: ToyModelResult, instances: list[int] | None = None, ncols: int = 5
) -> Figure:
    """The columns of each instance's 2-D ``W`` as arrows, coloured by importance."""
    import matplotlib.pyplot as plt

    if result.W.shape[1] != 2:
        raise ValueError(f"plot_toy_columns needs d_hidden = 2, got {result.W.shape[1]}")
    idx = list(range(result.W.shape[0])) if instances is None else list(instances)
    ncols = min(ncols, len(idx))
    nrows = -(-len(idx) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.4 * ncols, 2.6 * nrows), squeeze=False)
    lim = max(1.2, 1.1 * float(result.norms[idx].max()))
    cmap = plt.get_cmap("viridis")
    for ax, k in zip(axes.flat, idx):
        W, imp = result.W[k], result.importance[k]
        colors = cmap(imp / imp.max()) if imp.max() > 0 else cmap(np.zeros_like(imp))
        for i in range(W.shape[1]):  # a handful of arrows per panel
            ax.annotate(
                "",
                xy=(W[0, i], W[1, i]),
                xytext=(0, 0),
                arrowprops={"arrowstyle": "->", "color": colors[i], "lw": 1.5},
            )
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"1-S={result.feature_probability[k]:.3g}", fontsize=9)
    for ax in axes.flat[len(idx) :]:
        ax.axis("off")
    fig.suptitle(f"columns of W ({result.activation}; colour = importance)")
    fig.tight_layout()
    return fig


def plot_dimensionality_phase(result: ToyModelResult) -> Figure:
    """``D_i`` of every feature against ``1 / (1 - S)`` (log axis), sticky fractions marked."""
    import matplotlib.pyplot as plt

    x = 1.0 / result.feature_probability
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    xs = np.repeat(x[:, None], result.dimensionality.shape[1], axis=1)
    ax.scatter(
        xs.ravel(), result.dimensionality.ravel(), s=4, alpha=0.35, color="C0", label=r"$D_i$"
    )
    # Elhage et al.'s "dimensions per feature": d_hidden / ||W||_F^2, one value per instance.
    dims_per_feature = result.W.shape[1] / (result.W**2).sum(axis=(1, 2))
    order = np.argsort(x)
    ax.plot(
        x[order], dims_per_feature[order], color="C3", lw=1.2, label=r"$d_{hidden} / \|W\|_F^2$"
    )
    _mark_sticky(ax, "y")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlabel("1 / (1 - S)")
    ax.set_ylabel("feature dimensionality")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return fig


def plot_stability(result: StabilityResult) -> Figure:
    """Stability-of-p curves: matched fraction and MMCS per neighbour pair; matched count."""
    import matplotlib.pyplot as plt

    p = result.sizes[:-1]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
    fm = result.fraction_matched
    ax1.fill_between(p, fm.min(axis=0), fm.max(axis=0), color="C0", alpha=0.2)
    ax1.plot(
        p,
        np.median(fm, axis=0),
        "o-",
        color="C0",
        label=f"fraction matched (cos >= {result.threshold:g}) to next size",
    )
    ax1.plot(p, np.median(result.mmcs, axis=0), "s--", color="C1", label="MMCS to next size")
    if np.isfinite(result.cross_seed_fraction).any():
        ax1.plot(
            result.sizes,
            result.cross_seed_fraction,
            "^:",
            color="C2",
            label="fraction matched across seeds (same size)",
        )
    ax1.set_xscale("log", base=2)
    ax1.set_ylim(0, 1.05)
    ax1.set_xlabel("dictionary size p")
    ax1.legend(fontsize=7, loc="lower left")
    nm = result.n_matched
    ax2.fill_between(p, nm.min(axis=0), nm.max(axis=0), color="C0", alpha=0.2)
    ax2.plot(p, np.median(nm, axis=0), "o-", color="C0", label="matched features")
    ax2.plot(p, p, color="0.6", lw=0.8, ls=":", label="n = p")
    lo, hi = result.interval
    ax2.axhspan(lo, hi, color="C3", alpha=0.15)
    kind = "" if result.saturated else " (lower bound)"
    ax2.axhline(
        result.estimate,
        color="C3",
        lw=1.2,
        label=f"estimate {result.estimate:.0f} [{lo:.0f}, {hi:.0f}]{kind}",
    )
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log", base=2)
    ax2.set_xlabel("dictionary size p")
    ax2.set_ylabel("atoms matched to the next size")
    ax2.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
