"""Method 2 summary (CPU): mean saliency per layer with bootstrap CIs, from the raw per-prompt table."""

from __future__ import annotations

import pandas as pd

from kmap.core.stats import bootstrap_indices, mean_with_ci
from kmap.methods.saliency.settings import METHOD, SaliencyRun


def summarise(
    run: SaliencyRun, model: str, domain: str, n_boot: int = 200, seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean over prompts per (metric, layer) with 95 % bootstrap CIs; one index matrix for every curve."""
    indices = bootstrap_indices(len(run.ids), n_boot, seed)
    rows, reps = [], []
    for metric, values in run.per_prompt().items():
        for layer in range(values.shape[1]):
            value, low, high, replicates = mean_with_ci(values[:, layer], indices)
            rows.append(dict(layer=layer, metric=metric, value=value, ci_low=low, ci_high=high, n=len(run.ids)))
            reps += [dict(layer=layer, metric=metric, replicate=b, value=v) for b, v in enumerate(replicates)]
    keys = dict(model=model, domain=domain, method=METHOD)
    return pd.DataFrame(rows).assign(**keys), pd.DataFrame(reps).assign(**keys)
