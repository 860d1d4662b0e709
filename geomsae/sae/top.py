"""Top-activating tokens of dictionary features, and a token-purity interpretability proxy.

:func:`top_activations` streams once over an activation source and keeps, for every requested
feature, its ``m`` largest activations and the rows where they occur (memory ``O(m * n_features)``
beyond one batch). :func:`token_purity` turns those rows into an offline interpretability proxy:
the share of a feature's top activations that fall on its single most common token. A feature
that fires on one token type ("the token ``import``") scores near 1; a polysemantic or
context-driven one scores low. It is a crude stand-in for an LLM explanation score, useful to
rank or filter features without network access.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from geomsae.sae.dictionary import Dictionary


class TopActivations(NamedTuple):
    """The ``m`` largest activations of each feature.

    Attributes
    ----------
    features : ndarray of int, shape (n_selected,)
        Feature indices (columns of the two arrays below).
    values : ndarray of shape (m, n_selected)
        Activations, descending down each column; ``-inf`` where fewer than ``m`` rows exist.
    rows : ndarray of int, shape (m, n_selected)
        Activation rows (token indices of the source) of those values; ``-1`` for padding.
    """

    features: np.ndarray
    values: np.ndarray
    rows: np.ndarray

    def positive(self, column: int) -> tuple[np.ndarray, np.ndarray]:
        """(values, rows) of one column restricted to positive activations."""
        keep = (self.rows[:, column] >= 0) & (self.values[:, column] > 0)
        return self.values[keep, column], self.rows[keep, column]


def top_activations(
    dictionary: Dictionary,
    activations,
    m: int,
    features=None,
    *,
    batch_size: int = 4096,
    hook: str | None = None,
) -> TopActivations:
    """The ``m`` largest activations of each feature over a whole activation source.

    Parameters
    ----------
    dictionary : Dictionary
    activations : ActivationSource, array or tensor of shape (n_samples, d_in)
        Anything :func:`geomsae.activations.as_activation_store` takes; read in order, once.
    m : int
        Activations kept per feature.
    features : sequence of int, optional
        Features to track (all by default).
    batch_size : int
    hook : str, optional
        Hook of a multi-hook store.

    Returns
    -------
    TopActivations
    """
    from geomsae.activations import as_activation_store

    if m <= 0:
        raise ValueError(f"m must be positive, got {m}")
    store = as_activation_store(activations)
    if store.d_in != dictionary.d_in:
        raise ValueError(
            f"activations have d_in={store.d_in} but the dictionary expects {dictionary.d_in}"
        )
    feats = np.arange(dictionary.n_features) if features is None else np.asarray(features, int)
    sub = dictionary if features is None else dictionary.subset(feats)
    device = next(iter(sub.parameters()), torch.empty(0)).device
    best_val = torch.full((m, len(feats)), -torch.inf, device=device)
    best_row = torch.full((m, len(feats)), -1, dtype=torch.long, device=device)
    start = 0
    with torch.no_grad():
        for x in store.iter_batches(batch_size, shuffle=False, hook=hook, device=device):
            acts = sub.encode(x).to(best_val.dtype)  # (b, f)
            rows = torch.arange(start, start + len(x), device=device)[:, None].expand_as(acts)
            vals = torch.cat([best_val, acts])
            idx = torch.cat([best_row, rows])
            top = vals.topk(min(m, len(vals)), dim=0)
            best_val, best_row = top.values, idx.gather(0, top.indices)
            start += len(x)
    return TopActivations(feats, best_val.cpu().numpy(), best_row.cpu().numpy())


def token_purity(top: TopActivations, token_ids: np.ndarray) -> np.ndarray:
    """Share of each feature's positive top activations that fall on its most common token.

    Parameters
    ----------
    top : TopActivations
    token_ids : ndarray of int, shape (n_samples,)
        Token id of every activation row (``store.metadata.token_id``).

    Returns
    -------
    ndarray of shape (n_selected,)
        In [0, 1]; 0 for features that never fire.
    """
    token_ids = np.asarray(token_ids)
    valid = (top.rows >= 0) & (top.values > 0)  # (m, f)
    tokens = np.where(valid, token_ids[np.where(valid, top.rows, 0)], -1)
    n_valid = valid.sum(0)
    out = np.zeros(tokens.shape[1])
    # modal count per column, vectorised: sort each column, count runs of equal tokens
    s = np.sort(tokens, axis=0)
    same = np.vstack([np.zeros((1, s.shape[1]), bool), s[1:] == s[:-1]]) & (s >= 0)
    run = np.zeros(s.shape, int)
    for i in range(s.shape[0]):  # over the m ranks (m is small), not over points or features
        run[i] = np.where(same[i], run[i - 1] + 1, 0) if i else 0
    modal = np.where(s >= 0, run + 1, 0).max(0)
    np.divide(modal, n_valid, out=out, where=n_valid > 0)
    return out
