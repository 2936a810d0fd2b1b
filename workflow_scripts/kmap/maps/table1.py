"""Table 1: per model and concept, the best value of the concept's main metric with its CI and layer."""

from __future__ import annotations

from collections.abc import Mapping

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
    for concept, part in table.groupby("concept", sort=False):
        cells = []
        for model in models:
            row = part[part["model"] == model]
            if row.empty or not np.isfinite(row["value"].iloc[0]):
                cells.append("n/a")
                continue
            r = row.iloc[0]
            cells.append(f"{r['value']:.2f} [{r['ci_low']:.2f}, {r['ci_high']:.2f}] (L{int(r['layer'])})")
        lines.append(f"| {concept} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
