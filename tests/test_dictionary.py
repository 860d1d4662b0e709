"""The Dictionary interface's generic parts: Jacobians from the gate, projections, subsets."""

from __future__ import annotations

import pytest
import torch

from geomsae.sae import ARCHS, SAEConfig, build_sae
from geomsae.sae.dictionary import FeatureSubset


def _sae(arch: str):
    torch.manual_seed(0)
    sae = build_sae(SAEConfig(arch=arch, d_in=12, n_features=40, k=5, seed=0))
    with torch.no_grad():  # move pre-activations around zero so gates are mixed
        for p in sae.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return sae


@pytest.mark.parametrize("arch", ARCHS)
def test_projected_jacobian_matches_full_jacobian(arch: str) -> None:
    sae = _sae(arch)
    x = torch.randn(7, 12)
    bases = torch.linalg.qr(torch.randn(7, 12, 3)).Q
    full = sae.jacobian(x)  # (n, f, D)
    expected = torch.einsum("nfD,nDd->nfd", full, bases)
    torch.testing.assert_close(sae.projected_jacobian(x, bases), expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_subset_restricts_every_view(arch: str) -> None:
    sae = _sae(arch)
    x = torch.randn(9, 12)
    feats = [31, 2, 17, 5]
    sub = sae.subset(feats)
    assert isinstance(sub, FeatureSubset) and sub.n_features == 4 and sub.d_in == 12
    torch.testing.assert_close(sub.encode(x), sae.encode(x)[:, feats])
    torch.testing.assert_close(sub.jacobian(x), sae.jacobian(x)[:, feats])
    torch.testing.assert_close(sub.jacobian_gate(x), sae.jacobian_gate(x)[:, feats])
    torch.testing.assert_close(sub.feature_directions, sae.feature_directions[feats])
    bases = torch.linalg.qr(torch.randn(9, 12, 2)).Q
    torch.testing.assert_close(
        sub.projected_jacobian(x, bases), sae.projected_jacobian(x, bases)[:, feats]
    )
    # decoding the subset's codes equals decoding the parent's codes with the others zeroed
    codes = sae.encode(x)
    masked = torch.zeros_like(codes)
    masked[:, feats] = codes[:, feats]
    torch.testing.assert_close(sub.decode(sub.encode(x)), sae.decode(masked))


def test_subset_rejects_bad_indices() -> None:
    sae = _sae("relu")
    with pytest.raises(ValueError, match=r"\[0, 40\)"):
        sae.subset([0, 40])
    with pytest.raises(ValueError, match="at least one"):
        sae.subset([])


def test_sizes_with_one_seed_draw_independent_initial_atoms() -> None:
    small = build_sae(SAEConfig(arch="topk", d_in=12, n_features=24, k=4, seed=3))
    large = build_sae(SAEConfig(arch="topk", d_in=12, n_features=48, k=4, seed=3))
    again = build_sae(SAEConfig(arch="topk", d_in=12, n_features=48, k=4, seed=3))
    torch.testing.assert_close(large.feature_directions, again.feature_directions)
    a = small.feature_directions / small.feature_directions.norm(dim=1, keepdim=True)
    b = large.feature_directions[:24] / large.feature_directions[:24].norm(dim=1, keepdim=True)
    assert (a * b).sum(1).abs().max() < 0.99  # not the same first rows
