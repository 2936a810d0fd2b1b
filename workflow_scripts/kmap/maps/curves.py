"""From metric tables to a model's knowledge map: which curve each (domain, method) contributes, its
intervals and their bootstrap stability, and the Domain × Layer grid with consensus cells.

A *map curve* is one metric of one method on one domain (``MapCurve``). Which metric stands for a method is
configuration (``map.metrics``): the first candidate present in the method's table is used, so the judge
score can stand for ablation when a judge ran and the judge-free KL otherwise.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kmap.core.settings import default, known_keys, schema_field
from kmap.maps.intervals import RuleParams, select, selected_mask, smooth, stability

INTERVAL_COLUMNS = ("model", "domain", "method", "metric", "contrast", "rule", "start", "end", "score", "n_layers")
CELL_COLUMNS = (
    "model",
    "domain",
    "method",
    "metric",
    "layer",
    "depth",
    "value",
    "raw",
    "contrast",
    "smoothed",
    "selected",
    "stability",
)


CELL_DTYPES = {
    "model": "string",
    "domain": "string",
    "method": "string",
    "metric": "string",
    "layer": "int64",
    "depth": "float64",
    "value": "float64",
    "raw": "float64",
    "contrast": "string",
    "smoothed": "float64",
    "selected": "bool",
    "stability": "float64",
}


def read_cells(paths: Sequence[str]) -> pd.DataFrame:
    """The cell tables of several curves as one typed frame (curves without a usable metric wrote none)."""
    frames = [frame for frame in (pd.read_parquet(path) for path in paths) if not frame.empty]
    if not frames:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in CELL_DTYPES.items()})
    return pd.concat(frames, ignore_index=True).astype(CELL_DTYPES)


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
    raw: np.ndarray | None = None  # the method's own values where ``values`` is a contrast; else None
    contrast: str = "none"  # what was subtracted: "none", or "others (k domains)"
    note: str = ""  # why an earlier candidate metric does not stand for the method (e.g. an unusable judge)


# The metric standing for each method on the map (first candidate with a finite value wins), and for UMAP the
# label each domain's silhouette groups by; age uses R² with the best-CI rule.
# Which metric stands for each method on the map, and its interval rule (defaults in config/schema.yaml).
DEFAULT_METRICS: dict[str, list[str]] = default("map", "metrics")
DEFAULT_RULES: dict[str, str] = default("map", "rules")
DEFAULT_UMAP_METRICS: dict[str, str] = default("map", "umap_metrics")
DEFAULT_CONTRAST: dict[str, str] = default("map", "contrast")


# Table 1 of the study: concept -> (domain, method, metric).
@dataclass(frozen=True)
class MapSettings:
    """config['map']: smoothing and interval rules, consensus, and which metric stands for each method."""

    sigma: float = schema_field("map", "sigma")
    window: int = schema_field("map", "window")
    percentile: float = schema_field("map", "percentile")
    min_length: int = schema_field("map", "min_length")
    max_segments: int = schema_field("map", "max_segments")
    consensus_methods: int = schema_field("map", "consensus_methods")
    metrics: dict[str, list[str]] = schema_field("map", "metrics")
    rules: dict[str, str] = schema_field("map", "rules")
    umap_metrics: dict[str, str] = schema_field("map", "umap_metrics")
    contrast: dict[str, str] = schema_field("map", "contrast")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> MapSettings:
        values = known_keys(cls, values, "map")
        # Partial metric maps override the defaults key by key.
        values["metrics"] = {**DEFAULT_METRICS, **values.get("metrics", {})}
        values["umap_metrics"] = {**DEFAULT_UMAP_METRICS, **values.get("umap_metrics", {})}
        values["rules"] = {**DEFAULT_RULES, **values.get("rules", {})}
        values["contrast"] = {**DEFAULT_CONTRAST, **values.get("contrast", {})}
        return cls(**values)

    def rule_params(self) -> RuleParams:
        return RuleParams(self.sigma, self.window, self.percentile, self.min_length, self.max_segments)

    def candidates(self, method: str, domain: str) -> tuple[list[str], str]:
        """(metric candidates, interval rule) of a method's curve on a domain."""
        if method == "umap":
            metric = self.umap_metrics[domain]
            return [metric], "best_ci" if metric.startswith("r2") else "rise"
        return list(self.metrics[method]), self.rules[method]


def choose_metric(available: Sequence[str], candidates: Sequence[str]) -> str | None:
    """First candidate present (exact name, or a name starting with ``candidate:`` for labelled variants)."""
    for candidate in candidates:
        if candidate in available:
            return candidate
    return None


def finite_metrics(metrics: pd.DataFrame) -> list[str]:
    """Metrics of a table with at least one finite value (a skipped judge's all-NaN score does not count)."""
    finite = metrics[np.isfinite(metrics["value"].to_numpy(dtype=float))]
    return list(dict.fromkeys(finite["metric"]))


def map_curve(
    metrics: pd.DataFrame, replicates: pd.DataFrame | None, method: str, domain: str, settings: MapSettings
) -> MapCurve | None:
    """The curve a method contributes to a domain's map row (decoder layers only), or None when none of its
    candidate metrics has a finite value."""
    candidates, rule = settings.candidates(method, domain)
    layers = metrics[metrics["layer"] >= 0]
    metric = choose_metric(finite_metrics(layers), candidates)
    if metric is None:
        return None
    reps = None if replicates is None or replicates.empty else replicates[replicates["layer"] >= 0]
    curve = curve_from_tables(layers, reps, metric, rule)
    return dataclasses.replace(curve, note=fallback_note(layers, candidates, metric))


def fallback_note(metrics: pd.DataFrame, candidates: Sequence[str], chosen: str) -> str:
    """What the map says when a preferred metric was computed but has no finite value (the judge score of an
    unusable judge), and which metric stands instead; "" when the first candidate is used or was never made."""
    notes = []
    for candidate in candidates[: list(candidates).index(chosen)]:
        rows = metrics[metrics["metric"] == candidate]
        if rows.empty:
            continue
        reasons = [n for n in dict.fromkeys(rows["note"].fillna("").astype(str)) if n] if "note" in rows else []
        notes.append(f"{candidate} not used ({'; '.join(reasons) or 'no finite value'}): {chosen} instead")
    return "; ".join(notes)


def domain_curve(
    metrics: pd.DataFrame, replicates: pd.DataFrame | None, method: str, domain: str, settings: MapSettings
) -> MapCurve | None:
    """The curve ``domain`` contributes to the map from a method's tables of one model (any number of domains),
    contrasted with the other domains' curves of the same metric when ``map.contrast`` asks for it."""

    def of(table: pd.DataFrame | None, name: str) -> pd.DataFrame | None:
        return None if table is None or table.empty else table[table["domain"] == name]

    curve = map_curve(of(metrics, domain), of(replicates, domain), method, domain, settings)
    if curve is None or settings.contrast.get(method, "none") != "others":
        return curve
    others = []
    for other in sorted(set(metrics["domain"]) - {domain}):
        rows = of(metrics, other)
        rows = rows[(rows["layer"] >= 0) & (rows["metric"] == curve.metric)]
        if np.isfinite(rows["value"].to_numpy(dtype=float)).any():
            reps = of(replicates, other)
            others.append(
                curve_from_tables(rows, None if reps is None else reps[reps["layer"] >= 0], curve.metric, curve.rule)
            )
    return contrast_with_others(curve, others)


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


def shares(values: np.ndarray) -> np.ndarray:
    """Each layer's share of the curve (values over the sum of their magnitudes; rows of a 2-d array each):
    curves of different scale (one domain's losses are larger) become comparable. NaN where the sum is 0."""
    values = np.asarray(values, dtype=float)
    total = np.nansum(np.abs(values), axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, values / total, np.nan)


def contrast_with_others(curve: MapCurve, others: Sequence[MapCurve]) -> MapCurve:
    """The curve's per-layer share minus the mean share of the same model's other domains (same method and
    metric): where this domain puts more of its mass than the others do. What every domain shares (the first
    layers dominate raw saliency and ablation in every domain) cancels. Replicate b is contrasted with the
    controls' replicate b (independent prompt sets); a control without replicates contributes its values."""
    controls = [o for o in others if o.metric == curve.metric and np.array_equal(o.layers, curve.layers)]
    if not controls:
        return curve
    control = np.nanmean([shares(o.values) for o in controls], axis=0)
    reps = None
    if curve.replicates is not None:
        # Broadcast to the curve's replicates, so a control without replicates stacks with those that have them.
        shape = curve.replicates.shape
        control_reps = np.nanmean(
            [np.broadcast_to(shares(o.values if o.replicates is None else o.replicates), shape) for o in controls],
            axis=0,
        )
        reps = shares(curve.replicates) - control_reps
    return dataclasses.replace(
        curve,
        values=shares(curve.values) - control,
        ci_low=np.full(len(curve.layers), np.nan),
        replicates=reps,
        raw=curve.values,
        contrast=f"others ({len(controls)} domains)",
    )


def curve_intervals(curve: MapCurve, params: RuleParams) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(interval rows, per-layer cell rows) for one curve."""
    intervals = select(curve.rule, curve.layers, curve.values, params, ci_low=curve.ci_low)
    n_layers = int(np.sum(curve.layers >= 0))
    interval_rows = pd.DataFrame(
        [
            (
                curve.model,
                curve.domain,
                curve.method,
                curve.metric,
                curve.contrast,
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
            "raw": curve.values if curve.raw is None else curve.raw,
            "contrast": curve.contrast,
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
