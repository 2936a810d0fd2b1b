"""From metric tables to a model's knowledge map: which curve each (domain, method) contributes, its
intervals and their bootstrap stability, and the Domain × Layer grid with consensus cells.

A *map curve* is one metric of one method on one domain (``MapCurve``). Which metric stands for a method is
configuration (``map.metrics``): the first candidate present in the method's table is used, so the judge
score can stand for ablation when a judge ran and the judge-free KL otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kmap.intervals import RuleParams, select, selected_mask, stability

INTERVAL_COLUMNS = ("model", "domain", "method", "metric", "rule", "start", "end", "score", "n_layers")
CELL_COLUMNS = (
    "model",
    "domain",
    "method",
    "metric",
    "layer",
    "depth",
    "value",
    "smoothed",
    "selected",
    "stability",
)


@dataclass(frozen=True)
class MapCurve:
    model: str
    domain: str
    method: str
    metric: str
    rule: str
    layers: np.ndarray
    values: np.ndarray
    ci_low: np.ndarray
    replicates: np.ndarray | None  # [B, n_layers] or None


def choose_metric(available: Sequence[str], candidates: Sequence[str]) -> str | None:
    """First candidate present (exact name, or a name starting with ``candidate:`` for labelled variants)."""
    for candidate in candidates:
        if candidate in available:
            return candidate
    return None


def curve_from_tables(metrics: pd.DataFrame, replicates: pd.DataFrame | None, metric: str, rule: str) -> MapCurve:
    """One curve from a method's tidy tables (all rows of one model, domain and method)."""
    rows = metrics[metrics["metric"] == metric].sort_values("layer")
    if rows.empty:
        raise ValueError(f"metric {metric!r} not in table")
    first = rows.iloc[0]
    layers = rows["layer"].to_numpy()
    reps = None
    if replicates is not None and not replicates.empty:
        wide = replicates[replicates["metric"] == metric].pivot(index="replicate", columns="layer", values="value")
        if not wide.empty:
            reps = wide.reindex(columns=layers).to_numpy(dtype=float)
    return MapCurve(
        model=str(first["model"]),
        domain=str(first["domain"]),
        method=str(first["method"]),
        metric=metric,
        rule=rule,
        layers=layers,
        values=rows["value"].to_numpy(dtype=float),
        ci_low=rows["ci_low"].to_numpy(dtype=float),
        replicates=reps,
    )


def curve_intervals(curve: MapCurve, params: RuleParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interval rows, per-layer cell rows) for one curve."""
    from kmap.intervals import smooth

    intervals = select(curve.rule, curve.layers, curve.values, params, ci_low=curve.ci_low)
    n_layers = int(np.sum(curve.layers >= 0))
    interval_rows = pd.DataFrame(
        [
            (
                curve.model,
                curve.domain,
                curve.method,
                curve.metric,
                curve.rule,
                i.start,
                i.end,
                i.score,
                n_layers,
            )
            for i in intervals
        ],
        columns=list(INTERVAL_COLUMNS),
    )
    stable = (
        stability(curve.rule, curve.layers, curve.replicates, params)
        if curve.replicates is not None
        else np.full(len(curve.layers), np.nan)
    )
    smoothed = curve.values if curve.rule == "best_ci" else smooth(curve.values, params.sigma)
    cells = pd.DataFrame(
        {
            "model": curve.model,
            "domain": curve.domain,
            "method": curve.method,
            "metric": curve.metric,
            "layer": curve.layers,
            "depth": curve.layers / max(n_layers, 1),
            "value": curve.values,
            "smoothed": smoothed,
            "selected": selected_mask(curve.layers, intervals),
            "stability": stable,
        }
    )
    return interval_rows, cells


def consensus(cells: pd.DataFrame, min_methods: int = 2) -> pd.DataFrame:
    """Per (model, domain, layer): how many methods select the layer, and whether that makes consensus."""
    chosen = cells[cells["selected"]]
    counts = chosen.groupby(["model", "domain", "layer"])["method"].nunique().rename("n_methods").reset_index()
    counts["consensus"] = counts["n_methods"] >= min_methods
    return counts


def summary_table(best_of: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The study's Table 1: per (model, concept), the best value of its main metric with CI and layer.

    ``best_of`` maps a concept name (e.g. "symptoms silhouette") to the rows of its metric curve(s).
    """
    rows = []
    for concept, frame in best_of.items():
        for model, curve in frame.groupby("model"):
            finite = curve[np.isfinite(curve["value"])]
            if finite.empty:
                rows.append((model, concept, np.nan, np.nan, np.nan, np.nan))
                continue
            best = finite.loc[finite["value"].idxmax()]
            rows.append((model, concept, best["value"], best["ci_low"], best["ci_high"], int(best["layer"])))
    return pd.DataFrame(rows, columns=["model", "concept", "value", "ci_low", "ci_high", "layer"])
