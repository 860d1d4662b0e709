"""Intrinsic dimension as a function of scale, with bootstrap confidence intervals.

A single number hides noise (which inflates the ID at the smallest scales) and curvature or
finite size (which deflate it at the largest). :func:`id_scale_curve` estimates the ID at a
range of neighbourhood scales:

* ``estimator="gride"`` (default): GRIDE at neighbour ranks ``(n1, 2 n1)`` for
  ``n1 = 1, 2, 4, ...`` (Denti et al. 2022; the protocol of Cheng et al. for LM representations);
* ``estimator="mle"``: Levina-Bickel / MacKay-Ghahramani at ``k = 5, 10, 20, 40, ...``.

Each scale also gets a length, ``radius`` = the mean distance to the farthest neighbour used.
Confidence intervals come from a nonparametric bootstrap over points of the per-point statistics
(``log r_{n2}/r_{n1}``, or the inverse Levina-Bickel estimate), re-solved for every resample --
vectorised over resamples, with no neighbour search repeated (resampling points themselves would
create duplicates, for which the neighbour statistics are undefined).

Choosing d from the curve (:meth:`IDScaleCurve.choose`): the **plateau rule** takes the
``window`` consecutive scales whose estimates vary least (smallest ``(max - min) / mean``;
ties go to the smaller scale) and returns their mean. It selects the scale range where the
estimate is stable, which is where neither noise nor curvature dominates.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from geomsae.dimension.base import prepare_points
from geomsae.dimension.gride import gride_mle, usable
from geomsae.dimension.mle import mle_pointwise_from_distances
from geomsae.neighbors import knn, unit_scale
from geomsae.neighbors.checks import check_positive_int

logger = logging.getLogger(__name__)

__all__ = ["IDScaleCurve", "id_scale_curve", "plot_id_scale_curve"]

_ESTIMATORS = ("gride", "mle")


@dataclass(frozen=True, repr=False)
class IDScaleCurve:
    """Intrinsic dimension across scales.

    Attributes
    ----------
    estimator : str
        ``"gride"`` or ``"mle"``.
    scales : ndarray of shape (n_scales,)
        Neighbour rank ``n1`` (GRIDE, with ``n2 = 2 n1``) or ``k`` (MLE).
    radius : ndarray of shape (n_scales,)
        Mean distance to the farthest neighbour used at each scale (a length scale).
    dimension : ndarray of shape (n_scales,)
        Point estimate at each scale; NaN where it is undefined (GRIDE with fewer than 2
        untied ratios at that scale, e.g. on a lattice at its smallest scales; logged).
    ci_low, ci_high : ndarray of shape (n_scales,)
        Bootstrap percentile interval at level ``confidence``.
    confidence : float
    n_bootstrap : int
    n_samples : int
    """

    estimator: str
    scales: np.ndarray
    radius: np.ndarray
    dimension: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    confidence: float
    n_bootstrap: int
    n_samples: int

    def __repr__(self) -> str:
        pts = ", ".join(f"{s:g}: {d:.2f}" for s, d in zip(self.scales, self.dimension))
        return f"IDScaleCurve({self.estimator}, n_samples={self.n_samples}, {{{pts}}})"

    def choose(self, window: int = 3) -> float:
        """The plateau rule: mean estimate over the most stable ``window`` consecutive scales.

        Parameters
        ----------
        window : int
            Number of consecutive scales compared (clipped to the number of scales). Windows
        with an undefined (NaN) estimate are skipped; a ValueError if every window has one.
        """
        d = self.dimension
        w = int(min(max(window, 1), len(d)))
        spans = np.lib.stride_tricks.sliding_window_view(d, w)  # (n_scales - w + 1, w)
        finite = np.isfinite(spans).all(1)  # scales where the estimate is undefined: skipped
        if not finite.any():
            raise ValueError(
                f"no {w} consecutive scales have a finite estimate (dimension: {d}); "
                "use a smaller window or larger scales (ties: discrete data?)"
            )
        with np.errstate(invalid="ignore", divide="ignore"):
            spread = (spans.max(1) - spans.min(1)) / spans.mean(1)
        spread = np.where(finite, spread, np.inf)
        best = int(np.argmin(spread))  # argmin returns the first (smallest-scale) minimiser
        return float(spans[best].mean())

    def as_dict(self) -> dict[str, list[float]]:
        """Columns as plain lists (for JSON reports and ``pandas.DataFrame``)."""
        return {
            "scale": self.scales.tolist(),
            "radius": self.radius.tolist(),
            "dimension": self.dimension.tolist(),
            "ci_low": self.ci_low.tolist(),
            "ci_high": self.ci_high.tolist(),
        }


def _default_scales(estimator: str, n: int, max_rank: int) -> np.ndarray:
    top = min(max_rank, n - 1)
    if estimator == "gride":
        return 2 ** np.arange(int(np.log2(top // 2)) + 1) if top >= 2 else np.array([], int)
    ks = [k for k in (5, 10, 20, 40, 80, 160, 320) if k <= top]
    return np.array(ks, dtype=int)


def id_scale_curve(
    X: Any,
    *,
    estimator: str = "gride",
    scales: Any = None,
    max_rank: int = 64,
    n_bootstrap: int = 200,
    confidence: float = 0.9,
    random_state: int | None = 0,
    on_duplicates: str = "raise",
) -> IDScaleCurve:
    """Estimate the intrinsic dimension at a range of scales, with bootstrap intervals.

    Parameters
    ----------
    X : array or tensor of shape (n_samples, n_features)
    estimator : {"gride", "mle"}
    scales : sequence of int, optional
        GRIDE ranks ``n1`` (``n2 = 2 n1``) or MLE neighbourhood sizes ``k``. By default
        ``1, 2, 4, ...`` with ``2 n1 <= max_rank`` (GRIDE) or ``5, 10, 20, ... <= max_rank`` (MLE).
    max_rank : int, default 64
        Largest neighbour rank used by the default scales.
    n_bootstrap : int, default 200
        Bootstrap resamples (0 for no intervals: then ``ci_low = ci_high = dimension``).
    confidence : float, default 0.9
        Level of the percentile intervals.
    random_state : int or None, default 0
    on_duplicates : {"raise", "drop", "ignore"}
        Duplicate-point policy: raise (default) or drop the repeats; ``"ignore"`` skips the
        check (when the points are known to be distinct).

    Returns
    -------
    IDScaleCurve
    """
    if estimator not in _ESTIMATORS:
        raise ValueError(f"estimator must be one of {_ESTIMATORS}; got {estimator!r}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence!r}")
    if isinstance(n_bootstrap, bool) or not isinstance(n_bootstrap, numbers.Integral):
        raise ValueError(f"n_bootstrap must be an integer >= 0; got {n_bootstrap!r}")
    if n_bootstrap < 0:
        raise ValueError(f"n_bootstrap must be an integer >= 0; got {n_bootstrap!r}")
    check_positive_int(max_rank=max_rank)
    Xt, _ = prepare_points(X, on_duplicates=on_duplicates, min_samples=3)
    unit = unit_scale(Xt)  # exact; the radii are divided by it again
    if unit != 1.0:
        Xt = Xt * unit
    n = Xt.shape[0]
    if scales is None:
        sc = _default_scales(estimator, n, max_rank)
    else:
        given = np.asarray(scales)
        if given.ndim != 1 or not np.issubdtype(given.dtype, np.integer):
            raise ValueError(f"scales must be a 1-D sequence of integers; got {scales!r}")
        sc = given.astype(int)
    far = 2 * sc if estimator == "gride" else sc
    if sc.size == 0 or sc.min() < (1 if estimator == "gride" else 2) or far.max() > n - 1:
        raise ValueError(
            f"scales {sc.tolist()} do not fit {n} points: the largest neighbour rank must be "
            f"<= {n - 1} (GRIDE uses rank 2*n1, MLE needs k >= 2)"
        )
    dist = knn(Xt, int(far.max())).distances  # (n, max rank)
    rng = np.random.default_rng(random_state)
    W = None
    if n_bootstrap > 0:
        W = torch.as_tensor(rng.multinomial(n, np.full(n, 1.0 / n), size=n_bootstrap)).to(dist)
    est, lo, hi = [], [], []
    tied = 0  # MLE scales with points left out
    q = [(1 - confidence) / 2, (1 + confidence) / 2]
    for s in sc:
        if estimator == "gride":
            stat = torch.log(dist[:, 2 * s - 1] / dist[:, s - 1])  # (n,)
            keep = usable(stat)  # tied distances and DADApy's overlap guard
            stat = torch.where(keep, stat, torch.ones_like(stat))
            point = gride_mle(stat[None], int(s), int(2 * s), keep[None].to(stat))[0][0]
            boot = None
            if W is not None:
                init = point.expand(n_bootstrap)
                boot = gride_mle(stat.expand(n_bootstrap, n), int(s), int(2 * s), W * keep, init)[0]
        else:
            # 1 / m_k(x), with MLE's rule for undefined points (tied or zero distances): they
            # are left out of the mean (and of every resample), as MLE(n_neighbors=k) does
            m_k = mle_pointwise_from_distances(dist[:, :s])
            keep = torch.isfinite(m_k)
            tied += int((~keep).sum()) > 0
            inv = torch.where(keep, 1.0 / m_k, torch.zeros_like(m_k))
            point = keep.sum() / inv.sum() if bool(keep.any()) else inv.new_tensor(float("nan"))
            boot = None
            if W is not None:
                Wk = W * keep
                boot = Wk.sum(1) / (Wk @ inv)
        est.append(float(point))
        if boot is None:
            lo.append(float(point))
            hi.append(float(point))
        else:
            b = np.quantile(boot.cpu().numpy(), q)
            lo.append(float(b[0]))
            hi.append(float(b[1]))
    if tied:
        logger.warning(
            "id_scale_curve: at %d MLE scales some points have r_1 = r_k or r_1 = 0 (tied "
            "distances or duplicates); they are left out there, as MLE does", tied,
        )  # fmt: skip
    undefined = [int(v) for v, e in zip(sc, est) if not np.isfinite(e)]
    if undefined:
        logger.warning(
            "id_scale_curve: the %s estimate is undefined (NaN) at scales %s: tied distances "
            "(discrete data?)", estimator, undefined,
        )  # fmt: skip
    return IDScaleCurve(
        estimator=estimator,
        scales=sc.astype(float),
        radius=dist[:, far - 1].mean(0).cpu().numpy() / unit,
        dimension=np.array(est),
        ci_low=np.array(lo),
        ci_high=np.array(hi),
        confidence=float(confidence),
        n_bootstrap=int(n_bootstrap),
        n_samples=int(n),
    )


def plot_id_scale_curve(
    curves: IDScaleCurve | dict[str, IDScaleCurve],
    *,
    ax: Any = None,
    x: str = "radius",
    show_choice: bool = True,
) -> Any:
    """Plot one curve or several (a dict label -> curve) with their intervals (seaborn).

    Parameters
    ----------
    curves : IDScaleCurve or dict of str -> IDScaleCurve
    ax : matplotlib Axes, optional
    x : {"radius", "scale"}
        Horizontal axis: the length scale (log axis) or the neighbour rank.
    show_choice : bool
        Draw the plateau-rule choice of each curve as a dotted horizontal line.

    Returns
    -------
    matplotlib Axes
    """
    import matplotlib.pyplot as plt
    import seaborn as sns

    if x not in ("radius", "scale"):
        raise ValueError(f"x must be 'radius' or 'scale'; got {x!r}")
    if isinstance(curves, IDScaleCurve):
        curves = {curves.estimator: curves}
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    palette = sns.color_palette(n_colors=len(curves))
    for color, (label, c) in zip(palette, curves.items()):
        xs = c.radius if x == "radius" else c.scales
        sns.lineplot(x=xs, y=c.dimension, marker="o", color=color, label=label, ax=ax)
        ax.fill_between(xs, c.ci_low, c.ci_high, color=color, alpha=0.2, linewidth=0)
        if show_choice:
            ax.axhline(c.choose(), color=color, linestyle=":", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("neighbourhood radius" if x == "radius" else "neighbour rank")
    ax.set_ylabel("intrinsic dimension")
    return ax
