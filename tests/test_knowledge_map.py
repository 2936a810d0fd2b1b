"""Knowledge map assembly from fixture metric tables: intervals, stability, consensus, summary, figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kmap.maps.curves import MapSettings, choose_metric, consensus, curve_from_tables, curve_intervals, map_curve
from kmap.maps.figures import draw_cross_model, draw_map, summary_figure
from kmap.maps.intervals import RuleParams
from kmap.maps.table1 import concept_curves, markdown_table, summary_table

LAYERS = np.arange(-1, 16)

REPO = Path(__file__).resolve().parents[1]


def _tables(method: str, metric: str, curve: np.ndarray, domain: str = "disease", model: str = "m"):
    rng = np.random.default_rng(0)
    metrics = pd.DataFrame(
        {
            "model": model,
            "domain": domain,
            "method": method,
            "layer": LAYERS,
            "metric": metric,
            "value": curve,
            "ci_low": curve - 0.05,
            "ci_high": curve + 0.05,
            "n": 50,
        }
    )
    reps = [
        (model, domain, method, layer, metric, b, value + rng.normal(0, 0.02))
        for b in range(100)
        for layer, value in zip(LAYERS, curve, strict=True)
    ]
    replicates = pd.DataFrame(reps, columns=["model", "domain", "method", "layer", "metric", "replicate", "value"])
    return metrics, replicates


def _bump(center: float) -> np.ndarray:
    return np.exp(-0.5 * ((LAYERS - center) / 1.5) ** 2)


def test_choose_metric_prefers_first_present() -> None:
    assert choose_metric(["kl", "judge"], ["judge", "kl"]) == "judge"
    assert choose_metric(["kl"], ["judge", "kl"]) == "kl"
    assert choose_metric(["x"], ["judge", "kl"]) is None


def test_intervals_and_cells_from_tables() -> None:
    metrics, replicates = _tables("patching", "P_last", _bump(8))
    curve = curve_from_tables(metrics, replicates, "P_last", "percentile")
    assert curve.replicates.shape == (100, len(LAYERS))
    intervals, cells = curve_intervals(curve, RuleParams())
    assert len(intervals) == 1
    assert intervals.iloc[0]["start"] <= 8 <= intervals.iloc[0]["end"]
    assert intervals.iloc[0]["n_layers"] == 16
    peak = cells.set_index("layer").loc[8]
    assert bool(peak["selected"]) and peak["stability"] > 0.95
    assert cells.set_index("layer").loc[0, "stability"] < 0.05
    assert cells["depth"].max() == 15 / 16


def test_consensus_needs_two_methods() -> None:
    cells = []
    for method, centre in [("patching", 8), ("saliency", 9), ("ablation", 2)]:
        metrics, reps = _tables(method, "v", _bump(centre))
        cells.append(curve_intervals(curve_from_tables(metrics, reps, "v", "percentile"), RuleParams())[1])
    table = consensus(pd.concat(cells))
    agreed = set(table[table["consensus"]]["layer"])
    assert 8 in agreed and 9 in agreed
    assert 2 not in agreed


def test_summary_table_best_value_and_layer() -> None:
    metrics, _ = _tables("umap", "silhouette:category", _bump(11) * 0.3)
    table = summary_table({"disease silhouette": metrics})
    row = table.iloc[0]
    assert row["layer"] == 11 and row["value"] == 0.3 and row["ci_low"] == 0.25


def test_map_figure_draws_selected_and_consensus_cells(tmp_path: Path) -> None:
    cells = []
    for domain in ("age", "disease"):
        for method, centre in [("patching", 8), ("saliency", 8)]:
            metrics, reps = _tables(method, "v", _bump(centre), domain=domain)
            cells.append(curve_intervals(curve_from_tables(metrics, reps, "v", "percentile"), RuleParams())[1])
    cells = pd.concat(cells)
    agree = consensus(cells)
    drawn = draw_map(cells, agree, tmp_path / "map.png", tmp_path / "map.pdf", "m")
    assert drawn["selected_cells"] == int(cells["selected"].sum())
    assert drawn["consensus_cells"] == int(agree["consensus"].sum()) > 0
    assert (tmp_path / "map.png").stat().st_size > 1000 and (tmp_path / "map.pdf").exists()
    relative = draw_map(cells, agree, tmp_path / "rel.png", tmp_path / "rel.pdf", "m", x="depth")
    assert relative == drawn


def test_map_settings_merge_partial_overrides_and_reject_unknown_keys() -> None:
    settings = MapSettings.from_dict({"metrics": {"ablation": ["logprob_drop"]}, "sigma": 2.0})
    assert settings.metrics["ablation"] == ["logprob_drop"] and settings.metrics["patching"] == ["transfer_last"]
    assert settings.rule_params().sigma == 2.0
    assert settings.candidates("umap", "age") == (["r2"], "best_ci")
    assert settings.candidates("umap", "drugs") == (["silhouette:mechanism"], "rise")
    assert settings.candidates("patching", "dosage") == (["transfer_last"], "percentile")
    with pytest.raises(ValueError, match="unknown setting"):
        MapSettings.from_dict({"sigmaa": 1})


def test_ablation_curve_uses_the_judge_only_when_it_scored() -> None:
    kl, kl_reps = _tables("ablation", "kl", _bump(3))
    judge, judge_reps = _tables("ablation", "judge_score", _bump(12) * 9 + 1)
    settings = MapSettings()
    both = map_curve(pd.concat([kl, judge]), pd.concat([kl_reps, judge_reps]), "ablation", "disease", settings)
    assert both.metric == "judge_score" and int(np.argmax(both.values)) == 12
    skipped = judge.assign(value=np.nan, ci_low=np.nan, ci_high=np.nan)  # no key: every score missing
    fallback = map_curve(pd.concat([kl, skipped]), pd.concat([kl_reps, judge_reps]), "ablation", "disease", settings)
    assert fallback.metric == "kl" and int(fallback.layers[np.argmax(fallback.values)]) == 3
    # Only decoder layers are mapped: the embedding row (-1) is dropped, from the replicates too.
    assert fallback.layers.min() == 0 and fallback.replicates.shape == (100, len(LAYERS) - 1)
    assert (
        map_curve(
            skipped,
            judge_reps,
            "ablation",
            "disease",
            MapSettings.from_dict({"metrics": {"ablation": ["judge_score"]}}),
        )
        is None
    )


def test_table1_from_metric_tables_and_markdown() -> None:
    age_a, _ = _tables("umap", "r2", _bump(4) * 0.9, domain="age", model="a")
    age_b, _ = _tables("umap", "r2", _bump(9) * 0.7, domain="age", model="b")
    p_last, _ = _tables("patching", "P_last", np.linspace(0, 1, len(LAYERS)), domain="dosage", model="a")
    transfer, _ = _tables("patching", "transfer_last", _bump(6) * 0.4, domain="dosage", model="a")
    dosage = pd.concat([p_last, transfer])
    curves = concept_curves({("age", "umap"): pd.concat([age_a, age_b]), ("dosage", "patching"): dosage})
    study = "dosage patching max P_last (study's measure, ≥ 1 by identity)"
    assert list(curves) == ["age R²", "dosage patching peak transfer", study]
    table = summary_table(curves)
    best = table.set_index(["concept", "model"])
    assert best.loc[("age R²", "a"), "layer"] == 4 and best.loc[("age R²", "b"), "layer"] == 9
    assert best.loc[("age R²", "b"), "value"] == pytest.approx(0.7)
    assert best.loc[("dosage patching peak transfer", "a"), "layer"] == 6
    assert best.loc[(study, "a"), "layer"] == 15
    text = markdown_table(table)
    assert text.splitlines()[0] == "| concept | a | b |"
    assert "| age R² | 0.90 [0.85, 0.95] (L4) | 0.70 [0.65, 0.75] (L9) |" in text
    assert "| dosage patching peak transfer | 0.40 [0.35, 0.45] (L6) | n/a |" in text
    assert f"| {study} | 1.00 [0.95, 1.05] (L15) | n/a |" in text


def test_cross_model_and_summary_figures_draw_every_model(tmp_path: Path) -> None:
    cells = []
    for model, n_layers in (("deep", 16), ("shallow", 8)):
        layers = np.arange(n_layers)
        for method, centre in [("patching", 0.5), ("saliency", 0.5), ("umap", 0.2)]:
            curve = np.exp(-0.5 * ((layers / n_layers - centre) * n_layers / 1.5) ** 2)
            metrics = pd.DataFrame(
                dict(model=model, domain="disease", method=method, layer=layers, metric="v", value=curve)
                | dict(ci_low=curve - 0.05, ci_high=curve + 0.05, n=10)
            )
            cells.append(curve_intervals(curve_from_tables(metrics, None, "v", "percentile"), RuleParams())[1])
    cells = pd.concat(cells)
    agree = consensus(cells)
    drawn = draw_cross_model(cells, agree, tmp_path / "x.png", tmp_path / "x.pdf")
    for model in ("deep", "shallow"):
        mine = cells[cells["model"] == model]
        assert drawn[model]["selected_cells"] == int(mine["selected"].sum()) > 0
        assert drawn[model]["consensus_cells"] == int(agree[agree["model"] == model]["consensus"].sum()) > 0
    # On relative depth both models' consensus sits around the middle.
    for model in ("deep", "shallow"):
        mine = cells[(cells["model"] == model) & cells["selected"] & (cells["method"] == "patching")]
        assert 0.3 <= mine["depth"].mean() <= 0.6
    table = pd.DataFrame(
        dict(model=["deep", "shallow", "deep"], concept=["c1", "c1", "c2"], value=[0.5, np.nan, 0.2])
        | dict(ci_low=[0.4, np.nan, 0.1], ci_high=[0.6, np.nan, 0.3], layer=[3, np.nan, 5])
    )
    assert summary_figure(table, tmp_path / "t.png", tmp_path / "t.pdf") == 2
    for name in ("x", "t"):
        assert (tmp_path / f"{name}.png").stat().st_size > 2000 and (tmp_path / f"{name}.pdf").exists()


def test_map_of_a_model_without_finite_curves_is_drawn_empty(tmp_path: Path) -> None:
    from kmap.maps.curves import read_cells

    empty = tmp_path / "empty.parquet"
    pd.DataFrame(columns=["model", "layer"]).to_parquet(empty)
    cells = read_cells([str(empty)])
    assert cells.empty and str(cells["layer"].dtype) == "int64"
    drawn = draw_map(cells, consensus(cells), tmp_path / "m.png", tmp_path / "m.pdf", "m")
    assert drawn == {"selected_cells": 0, "consensus_cells": 0} and (tmp_path / "m.png").exists()


def test_table1_shows_the_study_beside_this_run_for_the_same_models(tmp_path: Path) -> None:
    from kmap.maps.figures import summary_figure
    from kmap.maps.table1 import read_study, with_study

    study = read_study(REPO / "config" / "study_table1.csv")
    # Every published number of the method specification, for the five study models and six concepts.
    assert len(study) == 30 and set(study["study_model"]) == {
        "Llama-3.3-70B",
        "Gemma-3-27B",
        "MedGemma-27B",
        "Qwen-32B",
        "GPT-OSS-120B",
    }
    age_a, _ = _tables("umap", "r2", _bump(4) * 0.9, domain="age", model="llama")
    age_b, _ = _tables("umap", "r2", _bump(9) * 0.7, domain="age", model="mine")
    table = summary_table(concept_curves({("age", "umap"): pd.concat([age_a, age_b])}))
    sources = {"llama": "meta-llama/Llama-3.3-70B-Instruct", "mine": "org/unpublished"}
    both = with_study(table, study, sources).set_index("model")
    assert both.loc["llama", "study_value"] == 1.0 and both.loc["llama", "study_layer"] == 3
    assert both.loc["llama", "study_model"] == "Llama-3.3-70B" and pd.isna(both.loc["mine", "study_value"])
    assert both.loc["llama", "value"] == pytest.approx(0.9)  # this run's value is untouched
    text = markdown_table(both.reset_index())
    assert "| age R² | this run 0.90 [0.85, 0.95] (L4); study 1.00 (L3) | 0.70 [0.65, 0.75] (L9) |" in text
    assert "*study*: the published value" in text
    assert summary_figure(both.reset_index(), tmp_path / "t.png", tmp_path / "t.pdf") == 2
    # No configured model in the study: the table is this run's alone.
    alone = with_study(table, study, {"llama": "", "mine": "org/unpublished"})
    assert alone["study_value"].isna().all() and "study" not in markdown_table(alone)
    broken = tmp_path / "study.csv"
    broken.write_text("study_model,concept,value\nx,age R²,1\n")
    with pytest.raises(ValueError, match=r"study.csv: missing column\(s\) \['sources', 'layer'\]"):
        read_study(broken)


def test_contrast_with_other_domains_finds_a_planted_middle_layer() -> None:
    """Saliency dominated by layer 0 in every domain (as measured on the demo and on real models): raw, the
    percentile rule marks the first layers everywhere. One domain has extra mass at layer 8; contrasted with the
    mean share of the other domains, its map row finds layer 8 and drops the shared first layers."""
    from kmap.maps.curves import domain_curve

    base = np.where(LAYERS >= 0, 10 * np.exp(-np.clip(LAYERS, 0, None) / 1.5) + 0.5, np.nan)
    tables = []
    for domain, scale in (("age", 1.0), ("symptoms", 3.0), ("disease", 0.5), ("drugs", 2.0)):
        curve = scale * (base + (3 * _bump(8) if domain == "drugs" else 0))
        tables.append(_tables("saliency", "saliency_combined", curve, domain=domain))
    metrics = pd.concat([t[0] for t in tables], ignore_index=True)
    replicates = pd.concat([t[1] for t in tables], ignore_index=True)
    raw = MapSettings.from_dict({"contrast": {"saliency": "none"}})
    for domain in ("age", "drugs"):
        intervals, _ = curve_intervals(domain_curve(metrics, replicates, "saliency", domain, raw), raw.rule_params())
        assert len(intervals) == 1 and intervals.iloc[0]["start"] == 0 and intervals.iloc[0]["end"] <= 3
    settings = MapSettings()  # contrast "others" by default for saliency and ablation
    curve = domain_curve(metrics, replicates, "saliency", "drugs", settings)
    assert curve.contrast == "others (3 domains)"
    # Shares: scale-free, so the symptoms domain's 3x larger gradients do not dominate the control.
    share = lambda c: c[LAYERS >= 0] / np.nansum(np.abs(c[LAYERS >= 0]))  # noqa: E731
    control = np.mean([share(s * base) for s in (1.0, 3.0, 0.5)], axis=0)
    np.testing.assert_allclose(curve.values, share(2.0 * (base + 3 * _bump(8))) - control, atol=1e-12)
    intervals, cells = curve_intervals(curve, settings.rule_params())
    chosen = {layer for row in intervals.itertuples() for layer in range(row.start, row.end + 1)}
    assert 8 in chosen and 0 not in chosen and 1 not in chosen, intervals
    # The cells keep the raw curve beside the contrasted one.
    drugs = metrics[(metrics["domain"] == "drugs") & (metrics["layer"] >= 0)]["value"].to_numpy()
    np.testing.assert_allclose(cells["raw"], drugs)
    assert (cells["contrast"] == "others (3 domains)").all() and intervals["contrast"].iloc[0] == "others (3 domains)"
    assert curve.replicates.shape == (100, 16) and np.isfinite(curve.replicates).all()
    # A control without replicates (its replicate table missing) contributes its values to every replicate.
    without_disease = replicates[replicates["domain"] != "disease"]
    mixed = domain_curve(metrics, without_disease, "saliency", "drugs", settings)
    np.testing.assert_allclose(mixed.values, curve.values, atol=1e-12)
    assert mixed.replicates.shape == (100, 16) and np.isfinite(mixed.replicates).all()
    # A domain alone has nothing to be contrasted with: its raw curve stands.
    alone = domain_curve(metrics[metrics["domain"] == "age"], replicates, "saliency", "age", settings)
    assert alone.contrast == "none" and alone.raw is None
