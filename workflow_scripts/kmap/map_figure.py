"""The Domain × Layer knowledge map figure (per model) and the cross-model map on relative depth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from kmap.io import atomic_output  # noqa: E402

METHOD_COLOURS = {"umap": "#1b9e77", "saliency": "#d95f02", "ablation": "#7570b3", "patching": "#e7298a"}
METHOD_ORDER = ("umap", "saliency", "ablation", "patching")


def _save(fig: plt.Figure, png: str | Path, pdf: str | Path) -> None:
    for path in (png, pdf):
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=Path(path).suffix.lstrip("."), dpi=150, bbox_inches="tight")
    plt.close(fig)


def draw_map(
    cells: pd.DataFrame,
    consensus: pd.DataFrame,
    png: str | Path,
    pdf: str | Path,
    title: str,
    x: str = "layer",
) -> dict[str, int]:
    """Each domain is a row split into one band per method; a cell is filled in the method's colour where
    the layer is selected, its opacity the bootstrap stability (1 where unknown). Consensus layers (≥ 2
    methods) get a black outline across the row. Returns counts of what was drawn, for tests."""
    domains = list(dict.fromkeys(cells["domain"]))
    methods = [m for m in METHOD_ORDER if m in set(cells["method"])]
    n_bands = max(len(methods), 1)
    width = 1.0 if x == "layer" else float(np.min(np.diff(np.unique(cells[x])))) if cells[x].nunique() > 1 else 1.0
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * cells["layer"].nunique() + 3), 0.7 * len(domains) + 1.5))
    drawn = {"selected_cells": 0, "consensus_cells": 0}
    for row, domain in enumerate(domains):
        for band, method in enumerate(methods):
            part = cells[(cells["domain"] == domain) & (cells["method"] == method) & cells["selected"]]
            for _, cell in part.iterrows():
                alpha = 1.0 if not np.isfinite(cell["stability"]) else max(0.15, float(cell["stability"]))
                y = row + band / n_bands
                ax.add_patch(
                    Rectangle(
                        (cell[x] - width / 2, y),
                        width,
                        1 / n_bands,
                        color=METHOD_COLOURS[method],
                        alpha=alpha,
                    )
                )
                drawn["selected_cells"] += 1
        agree = consensus[(consensus["domain"] == domain) & consensus["consensus"]]
        for _, cell in agree.iterrows():
            position = cell["layer"] if x == "layer" else cells.loc[cells["layer"] == cell["layer"], x].iloc[0]
            ax.add_patch(Rectangle((position - width / 2, row), width, 1, fill=False, edgecolor="black", lw=1.2))
            drawn["consensus_cells"] += 1
    low, high = cells[x].min() - width / 2, cells[x].max() + width / 2
    ax.set_xlim(low, high)
    ax.set_ylim(len(domains), 0)
    ax.set_yticks(np.arange(len(domains)) + 0.5, domains)
    ax.set_xlabel("layer" if x == "layer" else "relative depth (layer / L)")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.3)
    handles = [Patch(color=METHOD_COLOURS[m], label=m) for m in methods]
    handles.append(Patch(fill=False, edgecolor="black", label="consensus (≥ 2 methods)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    _save(fig, png, pdf)
    return drawn
