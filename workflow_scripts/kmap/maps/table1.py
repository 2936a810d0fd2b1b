"""Table 1: per model and concept, the best value of the concept's main metric with its CI and layer."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

DEFAULT_CONCEPTS: dict[str, tuple[str, str, str]] = {
    "age R²": ("age", "umap", "r2"),
    "symptoms silhouette": ("symptoms", "umap", "silhouette:system"),
    "disease silhouette": ("disease", "umap", "silhouette:category"),
    "drugs silhouette (mechanism)": ("drugs", "umap", "silhouette:mechanism"),
    "drugs silhouette (specialty)": ("drugs", "umap", "silhouette:specialty"),
    # The largest share of the answer one layer moves into the answer position (docs/methods.md). The study's
    # "patching efficiency", the maximum of P_last over all layers, is at least 1 for any model (the final
    # layer gives 1 by identity): kept below it as the study-comparable row, labelled so.
    "dosage patching peak transfer": ("dosage", "patching", "transfer_last"),
    "dosage patching max P_last (study's measure, ≥ 1 by identity)": ("dosage", "patching", "P_last"),
}


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


STUDY_COLUMNS = ("study_model", "sources", "concept", "value", "layer")


def read_study(path: str | Path) -> pd.DataFrame:
    """The study's published Table 1 (``config/study_table1.csv``): a row per (study model, concept), ``sources``
    the hub ids (';'-separated) under which a configured model counts as that study model."""
    study = pd.read_csv(path)
    missing = [c for c in STUDY_COLUMNS if c not in study]
    if missing:
        raise ValueError(f"{path}: missing column(s) {missing}; the header must be {list(STUDY_COLUMNS)}")
    bad = ~np.isfinite(pd.to_numeric(study["value"], errors="coerce"))
    if bad.any():
        raise ValueError(f"{path}: row {int(np.flatnonzero(bad)[0]) + 2}, column 'value': not a number")
    return study


def with_study(table: pd.DataFrame, study: pd.DataFrame, sources: Mapping[str, str]) -> pd.DataFrame:
    """Table 1 with the study's value and layer beside this run's (``study_model``, ``study_value``,
    ``study_layer``) for models whose hub id (``sources``: model -> hub id) is among a study row's sources; NaN
    for the others and for concepts the study did not report."""
    by_source = {
        (source.strip().lower(), row.concept): row
        for row in study.itertuples(index=False)
        for source in str(row.sources).split(";")
    }
    extra = []
    for model, concept in zip(table["model"], table["concept"], strict=True):
        row = by_source.get((str(sources.get(model, "")).lower(), concept))
        extra.append(
            (row.study_model, float(row.value), float(row.layer)) if row is not None else (None, np.nan, np.nan)
        )
    out = table.copy()
    out["study_model"] = pd.Series([e[0] for e in extra], index=table.index, dtype="string")
    out["study_value"] = [e[1] for e in extra]
    out["study_layer"] = pd.Series([e[2] for e in extra], index=table.index).astype("Int64")
    return out


def concept_curves(
    tables: Mapping[tuple[str, str], pd.DataFrame], concepts: Mapping[str, tuple[str, str, str]] = DEFAULT_CONCEPTS
) -> dict[str, pd.DataFrame]:
    """Rows of each concept's metric (decoder layers) from metric tables keyed by (domain, method); every
    model's rows of that table are kept together. Concepts whose table is not there are left out."""
    out = {}
    for concept, (domain, method, metric) in concepts.items():
        table = tables.get((domain, method))
        if table is not None:
            out[concept] = table[(table["metric"] == metric) & (table["layer"] >= 0)]
    return out


def markdown_table(table: pd.DataFrame) -> str:
    """Table 1 in Markdown: a row per concept, a column per model, 'value [ci_low, ci_high] (Lk)' cells."""
    models = list(dict.fromkeys(table["model"]))
    lines = ["| concept | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    study = "study_value" in table and table["study_value"].notna().any()
    for concept, part in table.groupby("concept", sort=False):
        cells = []
        for model in models:
            row = part[part["model"] == model]
            if row.empty:
                cells.append("n/a")
                continue
            r = row.iloc[0]
            cell = "n/a"
            if np.isfinite(r["value"]):
                cell = f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (L{int(r['layer'])})"
            if study and pd.notna(r["study_value"]):
                cell = f"this run {cell}; study {r['study_value']:.2f} (L{int(r['study_layer'])})"
            cells.append(cell)
        lines.append(f"| {concept} | " + " | ".join(cells) + " |")
    if study:
        lines += [
            "",
            "*this run*: value [95 % CI] (best layer); *study*: the published value and layer for the same model.",
        ]
    return "\n".join(lines) + "\n"
