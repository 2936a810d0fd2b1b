"""Method 1 figures: 2-d UMAP panels of selected layers."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from kmap.core.figures import save


def panel_layers(layers: np.ndarray, count: int) -> list[int]:
    """``count`` layers spread evenly from the embeddings to the last layer."""
    picks = np.unique(np.linspace(0, len(layers) - 1, min(count, len(layers))).round().astype(int))
    return [int(layers[i]) for i in picks]


def umap_panels(
    coords: pd.DataFrame,
    colour_by: str,
    layers: list[int],
    out_png: str | Path,
    out_pdf: str | Path,
    title: str,
    split_by: str | None = None,
    trajectory_by: str | None = None,
) -> int:
    """2-d UMAP of selected layers, coloured by a label (a colour scale when numeric); ``split_by`` gives one
    row per value (age: one row per gender); ``trajectory_by`` draws lines through ordered stage centroids per
    group (progression). Returns the number of panels drawn."""
    splits = sorted(coords[split_by].unique()) if split_by else [None]
    fig, axes = plt.subplots(len(splits), len(layers), figsize=(2.6 * len(layers), 2.6 * len(splits)), squeeze=False)
    numeric = pd.api.types.is_numeric_dtype(coords[colour_by])
    categories = sorted(coords[colour_by].astype(str).unique())
    cmap = plt.get_cmap("viridis" if numeric else "tab20")
    for r, split in enumerate(splits):
        for c, layer in enumerate(layers):
            ax = axes[r, c]
            part = coords[coords["layer"] == layer]
            if split is not None:
                part = part[part[split_by] == split]
            if numeric:
                scatter = ax.scatter(part["x"], part["y"], c=part[colour_by], cmap=cmap, s=6)
            else:
                colours = [cmap(categories.index(v) % 20) for v in part[colour_by].astype(str)]
                ax.scatter(part["x"], part["y"], c=colours, s=6)
            if trajectory_by:
                for _, group in part.groupby(trajectory_by):
                    centres = group.groupby(colour_by)[["x", "y"]].mean().sort_index()
                    ax.plot(centres["x"], centres["y"], "-o", color="black", lw=0.8, ms=2)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(f"{'emb' if layer == -1 else f'layer {layer}'}" + (f" · {split}" if split else ""), fontsize=8)
    if numeric:
        fig.colorbar(scatter, ax=axes, shrink=0.6, label=colour_by)
    elif len(categories) <= 20:
        handles = [plt.Line2D([], [], marker="o", ls="", color=cmap(i % 20), label=v) for i, v in enumerate(categories)]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    fig.suptitle(title)
    save(fig, out_png, out_pdf)
    return len(splits) * len(layers)
