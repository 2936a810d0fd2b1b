"""Knowledge-map figures: the Domain × Layer map of one model, the cross-model map on relative depth, and
the summary (Table 1) figure. Each drawing function returns counts of what it drew, so tests check the
content from the data behind it rather than by pixels."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.patches import Patch, Rectangle  # noqa: E402

from kmap.core.figures import save  # noqa: E402

METHOD_COLOURS = {"umap": "#1b9e77", "saliency": "#d95f02", "ablation": "#7570b3", "patching": "#e7298a"}
METHOD_ORDER = ("umap", "saliency", "ablation", "patching")


def _cell_width(cells: pd.DataFrame, x: str) -> float:
    """One layer on the x axis: 1 in layers, 1/L in relative depth."""
    if x == "layer":
        return 1.0
    values = np.unique(cells[x].to_numpy(dtype=float))
    return float(np.min(np.diff(values))) if len(values) > 1 else 1.0


def _draw(ax: plt.Axes, cells: pd.DataFrame, consensus: pd.DataFrame, domains: list[str], x: str) -> dict[str, int]:
    """Each domain a row split into one band per method; a selected cell is filled in the method's colour,
    its opacity the bootstrap stability (1 where unknown); consensus layers get a black outline."""
    methods = [m for m in METHOD_ORDER if m in set(cells["method"])]
    n_bands = max(len(methods), 1)
    width = _cell_width(cells, x)
    drawn = {"selected_cells": 0, "consensus_cells": 0}
    position = dict(zip(cells["layer"], cells[x], strict=False))
    for row, domain in enumerate(domains):
        for band, method in enumerate(methods):
            part = cells[(cells["domain"] == domain) & (cells["method"] == method) & cells["selected"]]
            for _, cell in part.iterrows():
                alpha = 1.0 if not np.isfinite(cell["stability"]) else max(0.15, float(cell["stability"]))
                corner = (cell[x] - width / 2, row + band / n_bands)
                ax.add_patch(Rectangle(corner, width, 1 / n_bands, color=METHOD_COLOURS[method], alpha=alpha, lw=0))
                drawn["selected_cells"] += 1
        agree = consensus[(consensus["domain"] == domain) & consensus["consensus"]]
        for layer in agree["layer"]:
            corner = (position[layer] - width / 2, row)
            ax.add_patch(Rectangle(corner, width, 1, fill=False, edgecolor="black", lw=1.2))
            drawn["consensus_cells"] += 1
    ax.set_xlim(cells[x].min() - width / 2, cells[x].max() + width / 2)
    ax.set_ylim(len(domains), 0)
    ax.set_yticks(np.arange(len(domains)) + 0.5, domains)
    for row in range(1, len(domains)):
        ax.axhline(row, color="0.85", lw=0.6)
    if x == "layer":
        layers = np.sort(cells["layer"].unique())
        ax.set_xticks(layers[:: max(1, len(layers) // 16)])
    ax.grid(axis="x", alpha=0.3)
    return drawn


def _legend(ax: plt.Axes, methods: list[str]) -> None:
    handles = [Patch(color=METHOD_COLOURS[m], label=m) for m in METHOD_ORDER if m in methods]
    handles.append(Patch(fill=False, edgecolor="black", label="consensus (≥ 2 methods)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False, fontsize=8)


def draw_map(
    cells: pd.DataFrame,
    consensus: pd.DataFrame,
    png: str | Path,
    pdf: str | Path,
    title: str,
    x: str = "layer",
    notes: Sequence[str] = (),
) -> dict[str, int]:
    """One model's Domain × Layer map (``x``: "layer" or "depth"), with ``notes`` printed under it."""
    domains = list(dict.fromkeys(cells["domain"]))
    fig, ax = plt.subplots(figsize=(max(6, 0.12 * cells["layer"].nunique() + 3), 0.7 * len(domains) + 1.5))
    if cells.empty:  # no method produced a finite curve: say so instead of failing the job
        ax.text(0.5, 0.5, "no method produced a finite metric curve", ha="center", va="center")
        ax.set_axis_off()
        ax.set_title(title)
        save(fig, png, pdf)
        return {"selected_cells": 0, "consensus_cells": 0}
    drawn = _draw(ax, cells, consensus, domains, x)
    ax.set_xlabel("layer" if x == "layer" else "relative depth (layer / L)")
    ax.set_title(title)
    _legend(ax, list(set(cells["method"])))
    if notes:
        text = "\n".join(textwrap.fill(f"Note: {n}", 140) for n in notes)
        fig.text(0.01, 0.0, text, ha="left", va="top", fontsize=7, wrap=True)
    save(fig, png, pdf)
    return drawn


def draw_cross_model(
    cells: pd.DataFrame, consensus: pd.DataFrame, png: str | Path, pdf: str | Path
) -> dict[str, dict[str, int]]:
    """Every model's map stacked on relative depth l/L (shared axis), so models of different depth line up."""
    models = list(dict.fromkeys(cells["model"]))
    domains = list(dict.fromkeys(cells["domain"]))
    fig, axes = plt.subplots(
        len(models), 1, figsize=(9, (0.55 * len(domains) + 0.8) * len(models) + 0.6), sharex=True, squeeze=False
    )
    drawn = {}
    for ax, model in zip(axes[:, 0], models, strict=True):
        mine = cells[cells["model"] == model]
        drawn[model] = _draw(ax, mine, consensus[consensus["model"] == model], domains, "depth")
        ax.set_title(f"{model} ({int(mine['layer'].max()) + 1} layers)", fontsize=9, loc="left")
    axes[-1, 0].set_xlim(-0.02, 1.0)
    axes[-1, 0].set_xlabel("relative depth (layer / L)")
    _legend(axes[0, 0], list(set(cells["method"])))
    fig.suptitle("Knowledge maps across models")
    fig.tight_layout()
    save(fig, png, pdf)
    return drawn


def summary_figure(table: pd.DataFrame, png: str | Path, pdf: str | Path) -> int:
    """Table 1 as a figure: one panel per concept, a bar per model with its 95 % CI, the best layer on top.
    Returns the number of bars drawn (finite values)."""
    concepts = list(dict.fromkeys(table["concept"]))
    cols = min(3, max(1, len(concepts)))
    rows = int(np.ceil(len(concepts) / cols)) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 2.8 * rows), squeeze=False)
    bars = 0
    for ax, concept in zip(axes.flat, concepts, strict=False):
        part = table[table["concept"] == concept].reset_index(drop=True)
        finite = part[np.isfinite(part["value"].to_numpy(dtype=float))]
        errors = np.vstack([finite["value"] - finite["ci_low"], finite["ci_high"] - finite["value"]]).clip(min=0)
        ax.bar(finite.index, finite["value"], yerr=errors, capsize=3, color="#4c72b0", label="this run")
        for index, row in finite.iterrows():
            ax.annotate(f"L{int(row['layer'])}", (index, row["value"]), ha="center", va="bottom", fontsize=7)
        bars += len(finite)
        if "study_value" in part and part["study_value"].notna().any():
            published = part[part["study_value"].notna()]
            ax.scatter(published.index, published["study_value"], marker="D", color="black", zorder=3, label="study")
            ax.legend(fontsize=7, frameon=False)
        ax.set_xticks(part.index, part["model"], rotation=30, ha="right", fontsize=8)
        ax.set_title(concept, fontsize=9)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.grid(axis="y", alpha=0.3)
    for ax in list(axes.flat)[len(concepts) :]:
        ax.axis("off")
    fig.suptitle("Best layer per concept (bars: this run, 95 % bootstrap CI, label: layer; diamonds: study)")
    fig.tight_layout()
    save(fig, png, pdf)
    return bars
