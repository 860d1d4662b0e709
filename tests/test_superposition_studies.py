"""The toy-models and superposition studies end to end at smoke size."""

from __future__ import annotations

import dataclasses
import json

import pytest

from studies import superposition, toy_models


def test_toy_models_smoke(tmp_path) -> None:
    report = toy_models.run(dataclasses.replace(toy_models.SMOKE, out=tmp_path))
    for name in ("report.json", "report.md", "pentagon_relu.png", "pentagon_linear.png",
                 "phase_dimensionality.png"):  # fmt: skip
        assert (tmp_path / name).is_file(), name
    data = json.loads((tmp_path / "report.json").read_text())
    assert len(data["pentagon_relu"]) == len(toy_models.SMOKE.pentagon_probabilities)
    assert len(data["phase"]) == toy_models.SMOKE.phase_instances
    assert report["pentagon_linear"][0]["seeds"] == toy_models.SMOKE.n_seeds


def test_toy_models_cli(tmp_path) -> None:
    report = toy_models.main(["--smoke", "--out", str(tmp_path), "--seed", "3"])
    assert report["config"].seed == 3 and (tmp_path / "report.md").is_file()


@pytest.mark.slow
def test_superposition_smoke(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GEOMSAE_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "out"
    superposition.main(["--smoke", "--out", str(out)])
    for name in ("report.json", "report.md", "dimensionality.png", "stability.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    sizes = data["stability"]["sizes"]
    assert sizes == [32, 64, 128]  # ratios 0.5, 1, 2 of d_model = 64
    assert len(data["stability"]["curves"]) == 2
    assert len(data["effective_features"]) == len(sizes) * superposition.SMOKE.n_seeds
    dim = data["dimensionality"]
    assert dim["n_features"] == 128 and 0 < dim["sum_D"] <= 64
    assert all(0 < r["chance MMCS"] < 1 for r in data["stability"]["curves"])
