"""Method 3 summaries (CPU): mean per layer with bootstrap CIs of the judge-free metrics and the judge's
scores, from the raw per-(prompt, layer) tables the generation and judge jobs write."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kmap.core.stats import bootstrap_indices, mean_with_ci, percentile_ci
from kmap.core.tables import METRIC_COLUMNS, REPLICATE_COLUMNS
from kmap.methods.ablation.settings import INTACT, METHOD, PAIR_METRICS


def layer_matrix(responses: pd.DataFrame, metric: str) -> tuple[np.ndarray, list[int]]:
    """[n_prompts, n_layers] values of one per-pair metric (prompts in first-seen order) and the layers."""
    ablated = responses[responses["layer"] != INTACT]
    table = ablated.pivot(index="prompt_id", columns="layer", values=metric)
    order = list(dict.fromkeys(ablated["prompt_id"]))
    table = table.loc[order].sort_index(axis=1)
    return table.to_numpy(dtype=float), [int(c) for c in table.columns]


def summarise(
    responses: pd.DataFrame,
    model: str,
    domain: str,
    metrics: Sequence[str] = PAIR_METRICS,
    n_boot: int = 200,
    seed: int = 0,
    method: str = METHOD,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Mean over prompts per (layer, metric) with 95 % bootstrap CIs; one index matrix for every layer and
    metric, so replicate b of each curve comes from the same resampled prompts. NaN values (a judge's missing
    scores) are left out of each mean; ``n`` counts the values used."""
    rows, reps = [], []
    indices: np.ndarray | None = None
    for metric in metrics:
        values, layers = layer_matrix(responses, metric)
        if indices is None:
            indices = bootstrap_indices(values.shape[0], n_boot, seed)
        for j, layer in enumerate(layers):
            value, low, high, replicates, n, note = _nan_mean_with_ci(values[:, j], indices)
            rows.append(dict(layer=layer, metric=metric, value=value, ci_low=low, ci_high=high, n=n, note=note))
            reps.extend(dict(layer=layer, metric=metric, replicate=b, value=v) for b, v in enumerate(replicates))
    keys = dict(model=model, domain=domain, method=method)
    return pd.DataFrame(rows).assign(**keys), pd.DataFrame(reps).assign(**keys)


def _nan_mean_with_ci(values: np.ndarray, indices: np.ndarray) -> tuple[float, float, float, np.ndarray, int, str]:
    finite = np.isfinite(values)
    if finite.all():
        return (*mean_with_ci(values, indices), len(values), "")
    n = int(finite.sum())
    note = f"{len(values) - n} of {len(values)} values missing"
    if n == 0:
        return np.nan, np.nan, np.nan, np.full(len(indices), np.nan), 0, note
    sampled = values[indices]
    kept = np.isfinite(sampled)
    with np.errstate(invalid="ignore", divide="ignore"):
        replicates = np.where(kept, sampled, 0).sum(axis=1) / kept.sum(axis=1)
    low, high = percentile_ci(replicates)
    return float(values[finite].mean()), low, high, replicates, n, note


def verdict_counts(table: pd.DataFrame) -> dict[str, int]:
    """Verdicts per status (ok, identical, malformed, failed, skipped), zeros included."""
    counts = table["status"].value_counts()
    return {status: int(counts.get(status, 0)) for status in ("ok", "identical", "malformed", "failed", "skipped")}


def judge_usable(counts: dict[str, int], min_ok_share: float) -> tuple[bool, str]:
    """Whether a domain's verdicts can stand as a judge score, and the note saying why (with every count)."""
    judged = counts["ok"] + counts["malformed"] + counts["failed"]
    summary = ", ".join(f"{counts[k]} {k}" for k in ("ok", "identical", "malformed", "failed") if counts[k])
    if judged and counts["ok"] < min_ok_share * judged:
        return False, (
            f"judge unusable: {counts['ok']} of {judged} judged pairs scored ({summary}; judge.min_ok_share "
            f"{min_ok_share:g}); no judge score, the map uses the judge-free metrics"
        )
    return True, f"verdicts: {summary}"


def summarise_verdicts(
    table: pd.DataFrame, model: str, domain: str, n_boot: int = 200, seed: int = 0, min_ok_share: float = 0.8
) -> tuple[pd.DataFrame, pd.DataFrame, str]:
    """Mean judge score per layer with bootstrap CIs over prompts (missing scores left out, counted in
    ``note``), and a note with the verdict counts. Empty tables when the judge was skipped; NaN scores (every
    row saying why) when too few pairs got a valid score: token-identical pairs alone score 1.0 without a
    request, so a broken judge would otherwise draw a flat "no change" curve. Either way the map falls back to
    a judge-free metric."""
    if (table["status"] == "skipped").all():
        empty = pd.DataFrame(columns=list(METRIC_COLUMNS)), pd.DataFrame(columns=list(REPLICATE_COLUMNS))
        return (*empty, "judge skipped")
    usable, note = judge_usable(verdict_counts(table), min_ok_share)
    scores = table.rename(columns={"score": "judge_score"})
    if not usable:
        scores = scores.assign(judge_score=np.nan)
    metrics, replicates = summarise(scores, model, domain, metrics=("judge_score",), n_boot=n_boot, seed=seed)
    joined = [f"{note}; {row}" if row else note for row in metrics["note"].fillna("")]
    if not usable:
        joined = [note] * len(metrics)
    return metrics.assign(note=joined), replicates, note
