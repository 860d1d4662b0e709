"""The TSLasso study end to end at smoke size (tiny random model), its report and its errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from studies import tslasso
from studies.tslasso_report import aggregate


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One activation/SAE cache for the module, outside the user's cache."""
    path = tmp_path_factory.mktemp("geomsae_cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GEOMSAE_CACHE_DIR", str(path))
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def smoke_report(cache_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("tslasso_smoke")
    config = dataclasses.replace(tslasso.SMOKE, out=out)
    return out, tslasso.run(config)


@pytest.mark.slow
def test_smoke_run_writes_a_complete_report(smoke_report) -> None:
    out, report = smoke_report
    for name in ("report.json", "report.md", "id_scale.png", "selection_by_chart.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "report.json").read_text())
    assert data["layer"] == tslasso.SMOKE.layer
    assert set(data["timings"]) >= {"harvest", "sae", "dimension", "tslasso"}
    kinds = {c["kind"] for c in data["charts"]}
    assert kinds == {"global", "knn", "feature"}
    d_sae = data["sae"]["d_sae"]
    ran = [c for c in data["charts"] if "skipped" not in c]
    assert ran, "every chart was skipped"
    for c in ran:
        assert len(c["selected_features"]) == c["d"] == len(c["selection_frequency"])
        assert len(set(c["selected_features"])) == c["d"]
        assert all(0 <= j < d_sae for j in c["selected_features"])
        assert all(0 < f <= 1 for f in c["selection_frequency"])
        assert c["n_replicates"] == tslasso.SMOKE.replicates
        assert c["n_points"] <= c["chart_points"]
        assert c["lambda"] > 0 and c["lambda"] <= c["lambda_max"] + 1e-9
    for c in data["charts"]:
        if c["kind"] == "feature":  # the chart is the feature's support: it fires everywhere
            assert c["chart_points"] >= 3
    # the dimension section is computed, not copied: d within the scale curve's range, capped
    idd = data["intrinsic_dimension"]
    assert 1 <= idd["d"] <= tslasso.SMOKE.max_d
    assert len(idd["curve"]["dimension"]) >= 3
    # every feature named in the aggregate was selected in the charts it claims
    for row in data["aggregate"]:
        hits = sum(row["feature"] in c.get("selected_features", []) for c in data["charts"])
        assert hits == row["charts"]
    # contexts of selected features come from the harvested tokens and mark the token
    for items in data["contexts"].values():
        for it in items:
            assert it["activation"] > 0 and "«" in it["context"]
    md = (out / "report.md").read_text()
    assert "Why charts." in md and "## Charts" in md


@pytest.mark.slow
def test_second_run_reuses_the_cached_sae(smoke_report, tmp_path) -> None:
    _, first = smoke_report
    config = dataclasses.replace(tslasso.SMOKE, out=tmp_path, charts=("knn",), n_knn_charts=1)
    again = tslasso.run(config)
    assert again["sae"]["path"] == first["sae"]["path"]
    assert again["timings"]["sae"] < first["timings"]["sae"]


@pytest.mark.slow
def test_interpretable_rule_keeps_only_pure_features(smoke_report, tmp_path) -> None:
    config = dataclasses.replace(
        tslasso.SMOKE, out=tmp_path, charts=("knn", "feature"), candidate_rule="interpretable",
        min_purity=0.3,
    )  # fmt: skip
    report = tslasso.run(config)
    ran = [c for c in report["charts"] if "skipped" not in c]
    assert ran
    for c in ran:
        assert all(p >= 0.3 for p in c["token_purity"])
    _, first = smoke_report  # the default rule admits impure features too
    assert report["candidate_rule"] == "interpretable" and first["candidate_rule"] == "alive"


@pytest.mark.slow
@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"d": 64}, "--d must satisfy"),
        ({"chart_size": 10_000}, "exceeds the"),
        ({"charts": ("everything",)}, "charts must be among"),
        ({"features": (10_000,)}, "outside the SAE"),
        ({"candidate_rule": "pretty"}, "candidate_rule must be"),
    ],
)
def test_bad_input_is_one_clear_error(smoke_report, tmp_path, change, message) -> None:
    config = dataclasses.replace(tslasso.SMOKE, out=tmp_path, **change)
    with pytest.raises(ValueError, match=message):
        tslasso.run(config)


@pytest.mark.slow
def test_sae_of_another_width_is_rejected(smoke_report, tmp_path) -> None:
    from geomsae.sae import SAEConfig, build_sae

    build_sae(SAEConfig(arch="topk", d_in=48, n_features=96, k=4)).save(tmp_path / "sae")
    config = dataclasses.replace(tslasso.SMOKE, out=tmp_path / "out", sae=str(tmp_path / "sae"))
    with pytest.raises(ValueError, match="d_in=48"):
        tslasso.run(config)


@pytest.mark.slow
def test_layer_outside_the_model_is_rejected(cache_dir, tmp_path) -> None:
    config = dataclasses.replace(tslasso.SMOKE, out=tmp_path, layer=99)
    with pytest.raises(ValueError, match="layer"):
        tslasso.run(config)


def test_aggregate_counts_charts_and_orders_features() -> None:
    charts = [
        {"kind": "knn", "selected_features": [3, 5], "selection_frequency": [1.0, 0.5]},
        {"kind": "feature", "selected_features": [5, 7], "selection_frequency": [0.9, 0.2]},
        {"kind": "global", "skipped": "too few candidates"},
    ]
    rows = aggregate(charts)
    assert [r["feature"] for r in rows] == [5, 3, 7]
    five = rows[0]
    assert five["charts"] == 2 and five["knn_charts"] == 1 and five["feature_charts"] == 1
    assert np.isclose(five["mean_selection_frequency"], 0.7)


@pytest.mark.slow
def test_several_layers_get_one_folder_each(cache_dir, tmp_path) -> None:
    config = dataclasses.replace(tslasso.SMOKE, out=tmp_path, charts=("knn",), n_knn_charts=1)
    index = tslasso.run_layers(config, [1, 2])
    assert index["layers"] == [1, 2]
    for layer in (1, 2):
        sub = json.loads((tmp_path / f"layer_{layer}" / "report.json").read_text())
        assert sub["layer"] == layer and sub["hook"] == f"blocks.{layer}.hook_resid_post"
    assert "layer_2/report.md" in (tmp_path / "report.md").read_text()


def test_cli_reports_bad_input_in_one_line(cache_dir, tmp_path, capsys) -> None:
    argv = ["--layer", "99", "--model", "geomsae-tiny-llama", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as exc:
        tslasso.main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("layer 99 is outside the model: it has 8 layers, 0..7")
    assert not any("Traceback" in line for line in err)
