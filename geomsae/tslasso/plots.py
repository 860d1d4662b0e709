"""Seaborn figures of Tangent Space Lasso: the regularisation path and selection frequencies.

Each function draws on ``ax`` (a new figure when None) and returns the matplotlib ``Axes``;
matplotlib and seaborn are imported lazily.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from geomsae.tslasso.result import RegularizationPath, TSLassoResult


def _axes(ax: Any, size: tuple[float, float]) -> Any:
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=size)
    return ax


def _name(j: int, names: Sequence[str] | None) -> str:
    return str(names[j]) if names is not None else f"g{j}"


def plot_path(
    path: RegularizationPath,
    support: Sequence[int] | None = None,
    names: Sequence[str] | None = None,
    max_lines: int = 30,
    ax: Any = None,
) -> Any:
    """Coefficient group norms ``||beta_.j.||_F`` against ``lam / lambda_max`` (log x-axis).

    Parameters
    ----------
    path : RegularizationPath
    support : sequence of int, optional
        Functions to highlight (solid, labelled); the others are drawn thin and grey.
    names : sequence of str, optional
        Function names (default ``g{j}``).
    max_lines : int
        Draw at most this many functions (the first to enter the path).
    ax : matplotlib Axes, optional
    """
    import seaborn as sns

    ax = _axes(ax, (6.0, 4.0))
    order = np.argsort(-path.lambdas)
    lam = path.lambdas[order] / path.lambda_max
    norms = path.norm_matrix()[order]
    chosen = set(support or [])
    palette = sns.color_palette("deep", max(len(chosen), 1))
    colour = {j: palette[k] for k, j in enumerate(sorted(chosen))}
    for j in path.ever_selected()[:max_lines]:
        if j in chosen:
            ax.plot(lam, norms[:, j], color=colour[j], lw=2.0, label=_name(j, names))
        else:
            ax.plot(lam, norms[:, j], color="0.6", lw=0.8)
    ax.set_xscale("log")
    ax.invert_xaxis()
    ax.set_xlabel(r"$\lambda / \lambda_{max}$")
    ax.set_ylabel(r"$\|\beta_{\cdot j \cdot}\|_F$")
    ax.set_title("TSLasso regularisation path")
    if chosen:
        ax.legend(frameon=False, fontsize="small")
    sns.despine(ax=ax)
    return ax


def plot_selection_frequencies(
    result: TSLassoResult,
    names: Sequence[str] | None = None,
    top: int = 20,
    two_stage: bool = False,
    ax: Any = None,
) -> Any:
    """Bar chart of the ``top`` most frequently selected functions over replicates.

    Parameters
    ----------
    result : TSLassoResult
    names : sequence of str, optional
    top : int
        Bars shown (functions never selected are left out).
    two_stage : bool
        Plot the two-stage variant's frequencies instead.
    ax : matplotlib Axes, optional
    """
    import seaborn as sns

    freq = result.two_stage_frequency if two_stage else result.selection_frequency
    if freq is None:
        raise ValueError("this result has no two-stage frequencies; fit with two_stage=True")
    freq = np.asarray(freq)
    idx = [int(j) for j in np.argsort(-freq, kind="stable")[:top] if freq[j] > 0]
    ax = _axes(ax, (max(4.0, 0.35 * len(idx) + 2), 3.5))
    labels = [_name(j, names) for j in idx]
    support = set(result.two_stage_support or []) if two_stage else set(result.support)
    hue = ["support" if j in support else "other" for j in idx]
    sns.barplot(x=labels, y=freq[idx], hue=hue, dodge=False, ax=ax, palette="deep")
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"selection frequency ({len(result.replicates)} replicates)")
    ax.set_xlabel("function")
    ax.tick_params(axis="x", rotation=60)
    ax.set_title("TSLasso selections" + (" (two-stage)" if two_stage else ""))
    sns.despine(ax=ax)
    return ax
