"""Charts of the TSLasso study: choosing d, building k-NN / feature-support / global charts, and
running Tangent Space Lasso inside each (see ``studies/tslasso.py`` for the design)."""

from __future__ import annotations

import dataclasses
import logging
import time

import numpy as np
import torch

from geomsae.dimension import MLE
from geomsae.neighbors import knn
from geomsae.tangent import tangent_spaces
from geomsae.tslasso import TSLasso

logger = logging.getLogger("studies.tslasso")


@dataclasses.dataclass(frozen=True)
class Chart:
    """A set of cloud points on which TSLasso runs."""

    kind: str
    """"global", "knn" or "feature"."""
    points: np.ndarray
    """Row indices into the cloud, shape (n_chart,)."""
    d: int
    """Intrinsic dimension used in this chart (before capping by the candidates)."""
    anchor: int | None = None
    """Cloud row of the anchor token (knn charts)."""
    feature: int | None = None
    """SAE feature whose support this is (feature charts)."""


def pointwise_dimension(X: torch.Tensor, n_neighbors: int = 20) -> np.ndarray:
    """Pointwise Levina-Bickel MLE of every cloud point, shape (n_points,)."""
    k = min(n_neighbors, len(X) - 1)
    return np.asarray(MLE().fit_pointwise(X, n_neighbors=k).dimension_pw_, dtype=float)


def _chart_d(d_pw: np.ndarray, points: np.ndarray, max_d: int) -> int:
    return int(np.clip(round(float(np.median(d_pw[points]))), 1, max_d))


def make_charts(
    config, X: torch.Tensor, active: np.ndarray, d_global: int, d_pw, rng
) -> list[Chart]:
    """The charts the config asks for: global, k-NN balls around anchors, feature supports."""
    n = len(X)
    charts: list[Chart] = []
    if "global" in config.charts:
        charts.append(Chart("global", np.arange(n), d_global))
    if "knn" in config.charts and config.n_knn_charts > 0:
        anchors = np.sort(rng.choice(n, size=min(config.n_knn_charts, n), replace=False))
        nb = knn(X, config.chart_size - 1, query_indices=anchors)
        for a, row in zip(anchors, np.asarray(nb.indices)):
            pts = np.concatenate([[a], row])
            charts.append(Chart("knn", pts, _chart_d(d_pw, pts, config.max_d), anchor=int(a)))
    if "feature" in config.charts:
        counts = active.sum(0)
        if config.features:
            feats = list(config.features)
            bad = [f for f in feats if not 0 <= f < active.shape[1]]
            if bad:
                raise ValueError(f"--feature {bad} outside the SAE's {active.shape[1]} features")
        else:
            min_support = max(config.n_points // 2, 4 * config.max_d)
            ok = np.flatnonzero(counts >= min_support)
            feats = ok[np.argsort(-counts[ok], kind="stable")][: config.n_feature_charts].tolist()
            if len(feats) < config.n_feature_charts:
                logger.warning(
                    "only %d features fire on >= %d cloud points; %d feature charts",
                    len(feats), min_support, len(feats),
                )  # fmt: skip
        for f in feats:
            pts = np.flatnonzero(active[:, f])
            if len(pts) > config.chart_size:
                pts = np.sort(rng.choice(pts, size=config.chart_size, replace=False))
            if len(pts) < 3:
                logger.warning("feature %d fires on %d cloud points: no chart", f, len(pts))
                continue
            charts.append(Chart("feature", pts, _chart_d(d_pw, pts, config.max_d), feature=int(f)))
    return charts


def candidates(
    active_chart: np.ndarray, kind: str, min_active: float, max_candidates: int, allowed=None
):
    """Features active often enough on the chart, most often active first.

    Local charts keep features active on at least ``min_active`` of their points; the global
    chart, where any one feature is rarely on, keeps those active on ``min_active / 10``.
    ``allowed`` (boolean, one per feature) restricts the choice further.
    """
    frac = active_chart.mean(0)
    threshold = min_active if kind != "global" else min_active / 10
    ok = frac >= threshold
    ok = np.flatnonzero(ok if allowed is None else ok & allowed)
    ok = ok[np.argsort(-frac[ok], kind="stable")][:max_candidates]
    return ok, frac


def run_chart(
    chart: Chart, X: torch.Tensor, sae, active: np.ndarray, config, allowed=None, purity=None
) -> dict:
    """TSLasso with the SAE's candidate features inside one chart; a JSON-able result dict."""
    t0 = time.perf_counter()
    info = {
        "kind": chart.kind,
        "anchor": chart.anchor,
        "feature": chart.feature,
        "chart_points": len(chart.points),
    }
    cand, frac = candidates(
        active[chart.points], chart.kind, config.min_active, config.max_candidates, allowed
    )
    d = min(chart.d, len(cand) - 1)
    info.update(n_candidates=len(cand), d_estimated=chart.d, d=d)
    if d < 1:
        info["skipped"] = f"{len(cand)} candidate features fire on >= the threshold; need d + 1"
        logger.info("chart %s skipped: %s", chart.kind, info["skipped"])
        return info
    k = config.tangent_neighbors or max(3 * d, 30)
    ts = tangent_spaces(X, d, n_neighbors=min(k, len(X) - 1), indices=chart.points)
    bases = torch.as_tensor(ts.bases)
    n_points = min(config.n_points, len(chart.points))
    est = TSLasso(
        d=d,
        n_points=n_points,
        n_replicates=config.replicates,
        n_lambdas=12 if chart.kind == "global" else 0,
        path_min_ratio=0.2,
        max_subsets=3000,  # the two-stage brute force only where it is cheap (about 1 s)
        device=config.device,
        random_state=config.seed,
    )
    est.fit(X[torch.as_tensor(chart.points)], dictionary=sae.subset(cand), bases=bases)
    freq = est.selection_frequency_
    top = np.argsort(-freq, kind="stable")[: max(10, d)]
    info.update(
        n_points=n_points,
        n_replicates=config.replicates,
        selected_features=[int(cand[j]) for j in est.support_],
        selection_frequency=[float(freq[j]) for j in est.support_],
        support_frequency=float(est.result_.support_frequency),
        activation_frequency=[float(frac[cand[j]]) for j in est.support_],
        token_purity=None if purity is None else [float(purity[cand[j]]) for j in est.support_],
        **{"lambda": float(est.lambda_)},
        lambda_max=float(np.median([r.lambda_max for r in est.replicates_])),
        two_stage_support=None
        if est.two_stage_support_ is None
        else [int(cand[j]) for j in est.two_stage_support_],
        top_frequencies={int(cand[j]): float(freq[j]) for j in top if freq[j] > 0},
        path=_path_dict(est.path_, cand) if chart.kind == "global" else None,
        seconds=time.perf_counter() - t0,
    )
    logger.info(
        "%s chart (%d points, d=%d, %d candidates): %s", chart.kind, len(chart.points), d,
        len(cand), info["selected_features"],
    )  # fmt: skip
    return info


def _path_dict(path, cand: np.ndarray) -> dict:
    """The regularisation path with SAE feature ids: lambdas and the group norms of the features
    ever selected."""
    ever = path.ever_selected()
    norms = path.norm_matrix()[:, ever]
    return {
        "lambda_max": float(path.lambda_max),
        "lambdas": path.lambdas.tolist(),
        "features": [int(cand[j]) for j in ever],
        "norms": norms.tolist(),
    }


def choose_d(curve, max_d: int) -> int:
    """d for the global chart: the curve's plateau-rule estimate, rounded, capped at ``max_d``."""
    return int(np.clip(round(curve.choose()), 1, max_d))
