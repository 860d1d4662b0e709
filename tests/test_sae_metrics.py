"""SAE metrics on activations with known answers, spliced CE/KL on the tiny model, and the
train_sae study at smoke size."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from geomsae.sae import SAEConfig, build_sae, evaluate, plot_feature_density, spliced_metrics


def identity_sae(d: int, hook_name: str = "") -> torch.nn.Module:
    """x = ReLU(x) - ReLU(-x): an exact SAE with 2d features (W_enc = [I, -I])."""
    sae = build_sae(SAEConfig(arch="relu", d_in=d, n_features=2 * d, hook_name=hook_name))
    eye = torch.eye(d)
    with torch.no_grad():
        sae.enc_weight.copy_(torch.cat([eye, -eye]))
        sae.W_dec.copy_(torch.cat([eye, -eye]))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
    return sae


def test_evaluate_known_answers():
    g = torch.Generator().manual_seed(0)
    X = torch.rand(500, 4, generator=g) + 3.0  # far from 0: FVU against 0 would be tiny
    sae = identity_sae(4)
    m = evaluate(sae, X, batch_size=128)
    assert m.fvu == pytest.approx(0.0, abs=1e-10) and m.mse == pytest.approx(0.0, abs=1e-10)
    # every coordinate is positive, so the 4 "negative" features never fire
    assert m.dead_fraction == 0.5 and m.l0 == pytest.approx(4.0)
    assert m.dense_fraction == 0.5
    np.testing.assert_allclose(m.feature_density, [1, 1, 1, 1, 0, 0, 0, 0])
    # an SAE that outputs the mean explains none of the variance around the mean
    with torch.no_grad():
        sae.W_dec.zero_()
        sae.b_dec.copy_(X.mean(0))
    m = evaluate(sae, X, max_samples=300)
    assert m.n_samples == 300
    Y = X[:300]
    expected = ((Y - X.mean(0)) ** 2).sum() / ((Y - Y.mean(0)) ** 2).sum()
    assert m.fvu == pytest.approx(float(expected), rel=1e-6)
    assert m.fvu > 0.99
    ax = plot_feature_density(np.array([0.5, 0.01, 0.0, 1e-4]))
    assert "1 dead of 4" in ax.get_title()


def test_spliced_metrics_on_tiny_model(tiny_model):
    hook = "blocks.1.hook_resid_post"
    tokens = torch.randint(3, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1  # BOS
    exact = spliced_metrics(identity_sae(32, hook), tiny_model, tokens, batch_size=2)
    assert exact.ce_sae == pytest.approx(exact.ce_clean, abs=1e-4)
    assert exact.kl_sae == pytest.approx(0.0, abs=1e-4)
    assert exact.ce_loss_recovered == pytest.approx(1.0, abs=1e-3)
    assert exact.n_tokens == 3 * 11
    zero = identity_sae(32, hook)
    with torch.no_grad():
        zero.W_dec.zero_()
    z = spliced_metrics(zero, tiny_model, tokens)
    assert z.ce_sae == pytest.approx(z.ce_zero_ablation, abs=1e-4)
    assert z.ce_loss_recovered == pytest.approx(0.0, abs=1e-3)
    assert z.kl_sae > 1e-4
    with pytest.raises(ValueError, match="hook_name"):
        spliced_metrics(identity_sae(32), tiny_model, tokens)


@pytest.mark.slow
def test_train_sae_study_smoke(tmp_path, monkeypatch):
    from studies import train_sae

    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path / "cache"))
    config = dataclasses.replace(train_sae.SMOKE, out=tmp_path / "run", eval_sequences=2)
    report = train_sae.run(config)
    out = tmp_path / "run"
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json", "report.md",
                 "feature_density.png", "history.json"):  # fmt: skip
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["l0"] == pytest.approx(4.0, abs=0.5)
    assert 0 <= metrics["fvu"] < 1
    assert np.isfinite(metrics["ce_sae"]) and report["metrics"]["d_sae"] == 128
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.2.hook_resid_post" and cfg["architecture"] == "topk"
    with pytest.raises(FileExistsError):
        train_sae.run(config)


@pytest.mark.slow
def test_train_sae_study_streams_from_the_model(tmp_path, monkeypatch):
    from studies import train_sae

    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path / "cache"))
    config = dataclasses.replace(
        train_sae.SMOKE, out=tmp_path / "run", eval_sequences=0, stream=True
    )
    report = train_sae.run(config)
    assert not (tmp_path / "cache").exists()  # nothing harvested to disk
    assert report["metrics"]["l0"] == pytest.approx(4.0, abs=0.5)
    assert 0 <= report["metrics"]["fvu"] < 1
    with pytest.raises(ValueError, match="not both"):
        train_sae.run(dataclasses.replace(config, activations="x.npy"))


@pytest.mark.slow
@pytest.mark.usefixtures("one_thread")
def test_train_sae_cli_on_the_embedded_model(tmp_path, monkeypatch, capsys):
    """The documented command line, on the embedded SmolLM2 at layer 6 with few tokens."""
    from studies import train_sae

    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    flags = "--layer 6 --arch topk --k 32 --expansion 8 --tokens 2048 --out"
    report = train_sae.main(flags.split() + [str(out)])
    for name in ("cfg.json", "sae_weights.safetensors", "metrics.json"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["hook_name"] == "blocks.6.hook_resid_post" and cfg["architecture"] == "topk"
    assert (cfg["d_in"], cfg["d_sae"]) == (576, 8 * 576)
    metrics = json.loads((out / "metrics.json").read_text())
    assert report["metrics"] == metrics
    assert 0 < metrics["l0"] <= 32 and 0 <= metrics["fvu"] < 1
    assert np.isfinite(metrics["ce_sae"]) and np.isfinite(metrics["kl_sae"])
    printed = capsys.readouterr().out
    header = printed.splitlines()[0]
    assert header.startswith("| arch | d_sae |") and "| l0 |" in header and "| fvu |" in header
    assert "| topk | 4608 |" in printed and f"report in {out}" in printed
