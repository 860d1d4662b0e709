"""Stability of p: how many features does the data hold? (Sharkey, Braun & Millidge 2022.)

Train SAEs of sizes ``p_1 < p_2 < ...`` (e.g. ``{1/2, 1, 2, 4, 8, 16} * d_in``) on the same
activations and compare each with the next larger one: the MMCS of the smaller against the larger,
and the number ``n_matched`` of its atoms with a one-to-one (Hungarian) partner above cosine 0.9.

With ``G`` true features, a dictionary with ``p <= G`` atoms learns features the larger one also
learns, so ``n_matched ~ p``; past ``G`` the extra atoms are dead, duplicated or split and do not
recur, so ``n_matched`` stops growing at ``~ G``. The estimate is therefore the plateau height
``max_k n_matched(p_k, p_{k+1})``, taken per seed; the interval is its range over seeds. On real
activations expect feature splitting rather than one true ``p``: when ``n_matched`` is still growing
at the largest pair, the estimate is only a lower bound and :attr:`StabilityResult.saturated` is
False. Dead features (never active on the evaluation sample) are left out of the comparison, since
an untrained atom keeps its random initialisation.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from geomsae.superposition.compare import hungarian_match, mmcs

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StabilityResult:
    """Curves and the estimated number of features of a stability-of-p run.

    Attributes
    ----------
    sizes : ndarray of int, shape (n_sizes,)
        Dictionary sizes ``p``, increasing.
    seeds : ndarray of int, shape (n_seeds,)
    n_alive : ndarray of int, shape (n_seeds, n_sizes)
        Features active on the evaluation sample (the ones compared).
    mmcs : ndarray of shape (n_seeds, n_sizes - 1)
        MMCS of size ``k`` (alive atoms) against size ``k + 1``.
    mmcs_reverse : ndarray of shape (n_seeds, n_sizes - 1)
        MMCS of size ``k + 1`` against size ``k``.
    n_matched : ndarray of int, shape (n_seeds, n_sizes - 1)
        Hungarian pairs between sizes ``k`` and ``k + 1`` with cosine ``>= threshold``.
    fraction_matched : ndarray of shape (n_seeds, n_sizes - 1)
        ``n_matched / n_alive`` of the smaller dictionary.
    cross_seed_fraction : ndarray of shape (n_sizes,)
        Mean over seed pairs of the fraction Hungarian-matched between two seeds of the same size
        (NaN with one seed).
    estimates : ndarray of shape (n_seeds,)
        Per-seed estimate ``max_k n_matched``.
    estimate : float
        Median of ``estimates``.
    interval : tuple of float
        ``(min, max)`` of ``estimates`` over seeds.
    saturated : bool
        Whether ``n_matched`` stopped growing (last pair ``<= growth_tol`` times the one before,
        median over seeds) at a non-zero estimate. If False, the estimate is a lower bound.
    threshold : float
        Cosine threshold of a match.
    """

    sizes: np.ndarray
    seeds: np.ndarray
    n_alive: np.ndarray
    mmcs: np.ndarray
    mmcs_reverse: np.ndarray
    n_matched: np.ndarray
    fraction_matched: np.ndarray
    cross_seed_fraction: np.ndarray
    estimates: np.ndarray
    estimate: float
    interval: tuple[float, float]
    saturated: bool
    threshold: float

    def curves(self) -> list[dict[str, float]]:
        """One row per neighbour pair: medians and ranges over seeds (for tables and JSON)."""
        rows = []
        for k in range(len(self.sizes) - 1):
            fm = self.fraction_matched[:, k]
            rows.append(
                {
                    "p": int(self.sizes[k]),
                    "next p": int(self.sizes[k + 1]),
                    "alive": float(np.median(self.n_alive[:, k])),
                    "MMCS": float(np.median(self.mmcs[:, k])),
                    "MMCS reverse": float(np.median(self.mmcs_reverse[:, k])),
                    "matched": float(np.median(self.n_matched[:, k])),
                    "fraction matched": float(np.median(fm)),
                    "fraction min": float(fm.min()),
                    "fraction max": float(fm.max()),
                    "cross-seed fraction": float(self.cross_seed_fraction[k]),
                }
            )
        return rows


def compare_sizes(
    directions: Sequence[Sequence[Tensor | np.ndarray]],
    sizes: Sequence[int],
    seeds: Sequence[int],
    alive: Sequence[Sequence[np.ndarray]] | None = None,
    threshold: float = 0.9,
    growth_tol: float = 1.25,
) -> StabilityResult:
    """Compare dictionaries of neighbouring sizes and estimate the number of features.

    Parameters
    ----------
    directions : nested sequence ``[seed][size]`` of arrays of shape (p, d_in)
        Feature directions (``Dictionary.feature_directions``).
    sizes : sequence of int
        The sizes ``p``, increasing, matching the inner index of ``directions``.
    seeds : sequence of int
    alive : nested sequence ``[seed][size]`` of bool arrays of shape (p,), optional
        Features to compare (all by default).
    threshold : float
        Cosine of a match (0.9).
    growth_tol : float
        ``saturated`` when the last pair's ``n_matched`` is at most ``growth_tol`` times the
        previous pair's.

    Returns
    -------
    StabilityResult
    """
    sizes = np.asarray(sizes, dtype=int)
    n_seeds, n_sizes = len(directions), len(sizes)
    if n_sizes < 2 or np.any(np.diff(sizes) <= 0):
        raise ValueError(f"need at least two increasing sizes, got {sizes.tolist()}")
    if n_seeds < 1 or len(seeds) != n_seeds or any(len(d) != n_sizes for d in directions):
        raise ValueError("directions must be indexed [seed][size] with one entry per seed and size")
    dirs = [[torch.as_tensor(d) for d in row] for row in directions]
    if alive is None:
        alive = [[np.ones(len(d), dtype=bool) for d in row] for row in dirs]
    elif [[np.shape(a) for a in row] for row in alive] != [
        [(len(d),) for d in row] for row in dirs
    ]:
        raise ValueError(
            "alive must hold one bool array of shape (p,) per dictionary, [seed][size]"
        )
    live = [
        [d[torch.as_tensor(np.asarray(a, bool))] for d, a in zip(row, arow)]
        for row, arow in zip(dirs, alive)
    ]
    n_alive = np.array([[len(d) for d in row] for row in live])
    shape = (n_seeds, n_sizes - 1)
    mm, mm_rev, frac = np.zeros(shape), np.zeros(shape), np.zeros(shape)
    n_matched = np.zeros(shape, dtype=int)
    for s, k in itertools.product(range(n_seeds), range(n_sizes - 1)):
        small, big = live[s][k], live[s][k + 1]
        if len(small) == 0 or len(big) == 0:
            continue  # nothing alive: no match (zeros)
        mm[s, k], mm_rev[s, k] = mmcs(small, big), mmcs(big, small)
        m = hungarian_match(small, big, threshold=threshold)
        n_matched[s, k] = m.n_matched
        frac[s, k] = m.n_matched / len(small)
    cross = np.full(n_sizes, np.nan)
    if n_seeds > 1:
        for k in range(n_sizes):
            pairs = [
                hungarian_match(live[a][k], live[b][k], threshold).fraction_matched
                for a, b in itertools.combinations(range(n_seeds), 2)
                if len(live[a][k]) and len(live[b][k])
            ]
            cross[k] = float(np.mean(pairs)) if pairs else np.nan
    estimates = n_matched.max(axis=1).astype(float)
    last, prev = np.median(n_matched[:, -1]), np.median(n_matched[:, -2]) if n_sizes > 2 else 0.0
    found = float(np.median(estimates)) > 0
    saturated = bool(n_sizes > 2 and found and last <= growth_tol * max(prev, 1.0))
    if not found:
        logger.warning(
            "stability of p: no atom matched its neighbour above cosine %.2f; the SAEs are "
            "undertrained or the threshold too strict",
            threshold,
        )
    elif not saturated:
        logger.warning(
            "stability of p: matched features still grow at the largest sizes (%d -> %d); the "
            "estimate %.0f is a lower bound, add larger sizes",
            int(prev),
            int(last),
            float(np.median(estimates)),
        )
    return StabilityResult(
        sizes=sizes,
        seeds=np.asarray(seeds, dtype=int),
        n_alive=n_alive,
        mmcs=mm,
        mmcs_reverse=mm_rev,
        n_matched=n_matched,
        fraction_matched=frac,
        cross_seed_fraction=cross,
        estimates=estimates,
        estimate=float(np.median(estimates)),
        interval=(float(estimates.min()), float(estimates.max())),
        saturated=saturated,
        threshold=float(threshold),
    )


@torch.no_grad()
def alive_features(dictionary: torch.nn.Module, X: Tensor, batch_size: int = 4096) -> np.ndarray:
    """Bool array of shape (n_features,): features active on at least one row of ``X``."""
    param = next(dictionary.parameters())
    fired = None
    for s in range(0, X.shape[0], batch_size):
        a = dictionary.encode(X[s : s + batch_size].to(param.device, param.dtype)) > 0
        fired = a.any(dim=0) if fired is None else fired | a.any(dim=0)
    return fired.cpu().numpy()


DEFAULT_RATIOS: tuple[float, ...] = (0.5, 1, 2, 4, 8, 16)
"""Dictionary sizes as multiples of ``d_in`` (REFERENCE section 6)."""


@dataclasses.dataclass(frozen=True)
class StabilityRun:
    """A stability-of-p run: the comparison and the trained dictionaries.

    Attributes
    ----------
    result : StabilityResult
    dictionaries : list of list of SAE
        ``dictionaries[seed][size]``, trained in one shared pass over the data.
    configs : list of list of SAEConfig
        The configurations they were trained with (same layout).
    """

    result: StabilityResult
    dictionaries: list[list]
    configs: list[list]


def stability_of_p(
    activations,
    base_config,
    sizes: Sequence[int] | None = None,
    ratios: Sequence[float] = DEFAULT_RATIOS,
    seeds: Sequence[int] = (0, 1),
    eval_samples: int = 10_000,
    threshold: float = 0.9,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> StabilityRun:
    """Train SAEs of several sizes and seeds in one pass and compare neighbouring sizes.

    Parameters
    ----------
    activations : array or Tensor of shape (n_samples, d_in), activation cache, or its path
        Anything :func:`geomsae.sae.train_many` accepts.
    base_config : SAEConfig
        Architecture, sparsity (one ``k`` or ``l1_coefficient`` for all sizes), optimisation and
        data fields; ``n_features`` and ``seed`` are replaced per SAE.
    sizes : sequence of int, optional
        Dictionary sizes ``p``; by default ``round(ratio * d_in)`` for ``ratios``.
    ratios : sequence of float
        Sizes as multiples of ``d_in`` when ``sizes`` is not given.
    seeds : sequence of int
        One SAE per size and seed. SAE seeds are ``1000 * seed + size index``, so sizes do
        not share initial weights.
    eval_samples : int
        Rows (from a shuffled pass) on which a feature must fire to count as alive.
    threshold : float
        Cosine of a match.
    device : str or torch.device, optional
    progress : bool

    Returns
    -------
    StabilityRun
    """
    from geomsae.sae import as_source, train_many

    d_in = base_config.d_in
    if sizes is None:
        if not ratios:
            raise ValueError("give sizes or ratios (e.g. ratios=(0.5, 1, 2, 4, 8, 16))")
        sizes = sorted({max(1, int(round(r * d_in))) for r in ratios})
    sizes = [int(p) for p in sizes]
    if len(sizes) < 2 or any(b <= a for a, b in zip(sizes, sizes[1:])):
        raise ValueError(f"sizes must be at least two increasing integers, got {sizes}")
    if not seeds:
        raise ValueError("give at least one seed")
    if base_config.arch in ("topk", "batchtopk") and base_config.k > sizes[0]:
        raise ValueError(
            f"k={base_config.k} exceeds the smallest size {sizes[0]}; drop that size or lower k"
        )
    configs = [
        [
            dataclasses.replace(base_config, n_features=p, expansion=None, seed=1000 * s + i)
            for i, p in enumerate(sizes)
        ]
        for s in seeds
    ]
    flat = [c for row in configs for c in row]
    logger.info("stability of p: %d SAEs (sizes %s x %d seeds)", len(flat), sizes, len(seeds))
    saes = train_many(flat, activations, device=device, progress=progress)
    dicts = [saes[j * len(sizes) : (j + 1) * len(sizes)] for j in range(len(seeds))]
    source = as_source(activations, d_in=d_in)
    X_eval = source.sample(eval_samples, seed=int(seeds[0]) + 7)
    alive = [[alive_features(sae, X_eval) for sae in row] for row in dicts]
    directions = [[sae.feature_directions.detach().cpu() for sae in row] for row in dicts]
    result = compare_sizes(directions, sizes, list(seeds), alive, threshold=threshold)
    return StabilityRun(result=result, dictionaries=dicts, configs=configs)
