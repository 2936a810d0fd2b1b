"""Method 4 summary (CPU): P per layer (ratio of means and median of per-pair P) with bootstrap CIs, and the
figures, from the raw per-pair table the patching job writes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kmap.core.stats import cluster_bootstrap_indices, percentile_ci
from kmap.core.tables import EMBEDDINGS
from kmap.methods.patching.settings import METHOD, USED, VARIANTS, exclusion_note

# --- aggregates ------------------------------------------------------------------------------------------


def variant_matrices(pairs: pd.DataFrame, variant: str, layers: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """LD_patched − LD_corrupted [n_pairs, n_layers] and LD_clean − LD_corrupted [n_pairs] of used pairs, each
    pair oriented by the sign of its denominator.

    A pair whose clean prompt prefers the foil has a negative denominator; both of its differences are negated,
    which leaves its own P unchanged but keeps it from cancelling the others in the ratio of means (mean(den)
    would otherwise drift toward 0 and P blow up)."""
    part = pairs[(pairs["status"] == USED) & (pairs["variant"] == variant)]
    patched = part.pivot(index="id", columns="layer", values="ld_patched").reindex(columns=layers)
    first = part.drop_duplicates("id").set_index("id").loc[patched.index]
    corrupted = first["ld_corrupted"].to_numpy(dtype=float)
    numerator = patched.to_numpy(dtype=float) - corrupted[:, None]
    denominator = first["ld_clean"].to_numpy(dtype=float) - corrupted
    sign = np.where(denominator < 0, -1.0, 1.0)
    return numerator * sign[:, None], denominator * sign


def used_clusters(pairs: pd.DataFrame) -> list[str]:
    """The bootstrap cluster of each used pair, in the row order of ``variant_matrices`` (pair id): its clean
    prompt, which several pairs (the clean concept against several partners) share."""
    used = pairs[pairs["status"] == USED].drop_duplicates("id").set_index("id").sort_index()
    return used["clean_prompt"].astype(str).tolist()


def ratio_of_means(
    numerator: np.ndarray, denominator: np.ndarray, indices: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Value [n_layers] and bootstrap replicates [B, n_layers] of mean(numerator) / mean(denominator)."""
    value = numerator.mean(axis=0) / denominator.mean()
    replicates = np.stack([numerator[rows].mean(axis=0) / denominator[rows].mean() for rows in indices])
    return value, replicates


def median_ratio(
    numerator: np.ndarray, denominator: np.ndarray, indices: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Value and replicates of the median over pairs of per-pair P = numerator / denominator."""
    per_pair = numerator / denominator[:, None]
    return np.median(per_pair, axis=0), np.stack([np.median(per_pair[rows], axis=0) for rows in indices])


AGGREGATES = {"P": ratio_of_means, "P_median": median_ratio}
TRANSFER = "transfer_last"


def _rows(metric: str, layers: list[int], values: np.ndarray, replicates: np.ndarray, n: int, note: str):
    rows, reps = [], []
    for j, layer in enumerate(layers):
        low, high = percentile_ci(replicates[:, j])
        rows.append(dict(layer=layer, metric=metric, value=values[j], ci_low=low, ci_high=high, n=n, note=note))
        reps += [dict(layer=layer, metric=metric, replicate=b, value=v) for b, v in enumerate(replicates[:, j])]
    return rows, reps


def summarise(
    pairs: pd.DataFrame, model: str, domain: str, n_layers: int, n_boot: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Metric rows (value, CI, n, note) and bootstrap replicates per (metric, layer -1..n_layers-1).

    CIs resample clean prompts (clusters) and take their pairs together; one draw serves every layer, variant
    and metric. ``transfer_last`` is the rise of ``P_last`` from the layer below (layers 0..L-1): the share of
    the answer that layer moves into the answer position. Unlike ``P_last``, whose final layer is 1 by identity,
    it is free to differ between models (Table 1 and the map use it)."""
    layers = list(range(EMBEDDINGS, n_layers))
    note = exclusion_note(pairs)
    n_used = int((pairs.drop_duplicates("id")["status"] == USED).sum())
    if not n_used:
        metrics = [f"{name}_{variant}" for variant in VARIANTS for name in AGGREGATES] + [TRANSFER]
        rows = [
            dict(layer=layer, metric=m, value=np.nan, n=0, note=note or "no pairs") for m in metrics for layer in layers
        ]
        return _frames(rows, [], model, domain)
    clusters = used_clusters(pairs)
    indices = cluster_bootstrap_indices(clusters, n_boot, seed)
    note = "; ".join(filter(None, [note, f"CIs over {len(set(clusters))} clean prompts"]))
    rows, reps = [], []
    curves = {}
    for variant in VARIANTS:
        numerator, denominator = variant_matrices(pairs, variant, layers)
        for name, aggregate in AGGREGATES.items():
            values, replicates = aggregate(numerator, denominator, indices)
            curves[f"{name}_{variant}"] = values, replicates
            new_rows, new_reps = _rows(f"{name}_{variant}", layers, values, replicates, n_used, note)
            rows += new_rows
            reps += new_reps
    values, replicates = curves["P_last"]
    # Layer -1 has no layer below: NaN there keeps the table rectangular.
    nan = np.full((len(replicates), 1), np.nan)
    transfer = np.concatenate([[np.nan], np.diff(values)]), np.concatenate([nan, np.diff(replicates, axis=1)], axis=1)
    new_rows, new_reps = _rows(TRANSFER, layers, *transfer, n_used, note)
    return _frames(rows + new_rows, reps + new_reps, model, domain)


def _frames(rows: list[dict], reps: list[dict], model: str, domain: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    keys = dict(model=model, domain=domain, method=METHOD)
    metrics = pd.DataFrame(rows).assign(**keys)
    for column in ("ci_low", "ci_high"):
        if column not in metrics:
            metrics[column] = np.nan
    replicates = pd.DataFrame(reps, columns=["layer", "metric", "replicate", "value"]).assign(**keys)
    return metrics, replicates


# --- figures ---------------------------------------------------------------------------------------------


def heatmap_figure(heatmap: pd.DataFrame, out_png: str | Path, out_pdf: str | Path, title: str) -> int:
    """Layer × position P for each heatmap pair (tokens on the x axis, clean/corrupted where they differ).

    Returns the number of panels drawn (a placeholder panel says so when no pair qualified).
    """
    import matplotlib.pyplot as plt

    from kmap.core.figures import save

    ids = list(dict.fromkeys(heatmap["id"])) if not heatmap.empty else []
    cols = min(3, max(1, len(ids)))
    rows = max(1, int(np.ceil(len(ids) / cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 3.4 * rows), squeeze=False)
    image = None
    for ax, pair_id in zip(axes.flat, ids, strict=False):
        part = heatmap[heatmap["id"] == pair_id]
        grid = part.pivot(index="layer", columns="position", values="p").sort_index()
        image = ax.imshow(grid.to_numpy(float), origin="lower", aspect="auto", cmap="viridis", vmin=0, vmax=1)
        tokens = part.drop_duplicates("position").sort_values("position")
        labels = [a if a == b else f"{a}/{b}" for a, b in zip(tokens["token"], tokens["corrupted_token"], strict=True)]
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(grid.index)), ["emb" if layer == EMBEDDINGS else str(layer) for layer in grid.index])
        ax.tick_params(axis="y", labelsize=6)
        ax.set_title(pair_id, fontsize=8)
        ax.set_ylabel("layer", fontsize=7)
    for ax in list(axes.flat)[len(ids) :]:
        ax.axis("off")
    if image is not None:
        fig.colorbar(image, ax=axes, shrink=0.7, extend="both", label="P (one position patched)")
    else:
        axes[0, 0].text(0.5, 0.5, "no pair passed the filters", ha="center", va="center")
    fig.suptitle(title)
    save(fig, out_png, out_pdf)
    return len(ids)
