"""Method 2 summary (CPU): mean saliency per layer with bootstrap CIs, from the raw per-prompt table."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kmap.core.stats import bootstrap_indices, mean_with_ci
from kmap.methods.saliency.settings import METHOD, PARTS, SaliencyRun


def run_from_table(table: pd.DataFrame) -> SaliencyRun:
    """The run back from its raw table (prompts in the order written)."""
    ids = list(dict.fromkeys(table["id"].astype(str)))
    n_layers = table["layer"].nunique()
    expected = np.tile(np.arange(n_layers), len(ids))
    if len(table) != len(expected) or not (table["layer"].to_numpy() == expected).all():
        raise ValueError("saliency table: expected every layer of every prompt, in prompt order")

    def grid(prefix: str) -> np.ndarray:
        columns = [table[f"{prefix}_{part}"].to_numpy(float) for part in PARTS]
        return np.stack(columns, axis=-1).reshape(len(ids), n_layers, len(PARTS))

    losses = table["loss"].to_numpy(float)[::n_layers]
    return SaliencyRun(ids, grid("sum"), grid("count"), losses)


def per_prompt(run: SaliencyRun) -> dict[str, np.ndarray]:
    """Per-prompt saliency [n_prompts, n_layers] for each metric."""
    return {
        "saliency_attention": run.sums[..., 0] / run.counts[..., 0],
        "saliency_mlp": run.sums[..., 1] / run.counts[..., 1],
        "saliency_combined": run.sums.sum(axis=-1) / run.counts.sum(axis=-1),
    }


def summarise(
    run: SaliencyRun, model: str, domain: str, n_boot: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean over prompts per (metric, layer) with 95 % bootstrap CIs; one index matrix for every curve."""
    indices = bootstrap_indices(len(run.ids), n_boot, seed)
    rows, reps = [], []
    for metric, values in per_prompt(run).items():
        for layer in range(values.shape[1]):
            value, low, high, replicates = mean_with_ci(values[:, layer], indices)
            rows.append(dict(layer=layer, metric=metric, value=value, ci_low=low, ci_high=high, n=len(run.ids)))
            reps += [dict(layer=layer, metric=metric, replicate=b, value=v) for b, v in enumerate(replicates)]
    keys = dict(model=model, domain=domain, method=METHOD)
    return pd.DataFrame(rows).assign(**keys), pd.DataFrame(reps).assign(**keys)
