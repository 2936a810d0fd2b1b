"""Knowledge map assembly from fixture metric tables: intervals, stability, consensus, summary, figure."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kmap.intervals import RuleParams
from kmap.knowledge_map import choose_metric, consensus, curve_from_tables, curve_intervals, summary_table
from kmap.map_figure import draw_map

LAYERS = np.arange(-1, 16)


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
