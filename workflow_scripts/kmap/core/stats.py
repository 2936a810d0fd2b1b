"""Bootstrap confidence intervals shared by every metric.

Replicates resample prompts with replacement. One index matrix is drawn per (model, domain, method) and used
for every layer, so replicate b of the whole layer curve comes from one resampled prompt set: interval
stability (the knowledge map) reruns the layer selection on these coherent replicate curves.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence

import numpy as np

from kmap.core.settings import default

DEFAULT_BOOTSTRAP: int = default("bootstrap", "n")


def bootstrap_indices(n: int, n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0) -> np.ndarray:
    """[n_boot, n] row indices drawn with replacement (seeded, so reruns give identical CIs)."""
    if n < 1:
        raise ValueError("bootstrap needs at least one item")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def cluster_bootstrap_indices(
    clusters: Sequence[Hashable], n_boot: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> list[np.ndarray]:
    """Replicates that resample clusters with replacement and take each drawn cluster's rows together.

    ``clusters[i]`` is row i's cluster (patching: the clean prompt several pairs share, whose pairs are not
    independent). Per replicate, the row indices of the drawn clusters, a cluster drawn twice contributing its
    rows twice. Clusters are numbered in order of first appearance, so with one row per cluster this equals
    ``bootstrap_indices`` over the rows, draw for draw."""
    number: dict[Hashable, int] = {}
    codes = np.array([number.setdefault(c, len(number)) for c in clusters], dtype=int)
    members = [np.flatnonzero(codes == k) for k in range(len(number))]
    return [np.concatenate([members[k] for k in draw]) for draw in bootstrap_indices(len(members), n_boot, seed)]


def replicate(statistic: Callable[[np.ndarray], float], indices: np.ndarray) -> np.ndarray:
    """statistic(rows) for each replicate's row indices; NaN where the statistic is undefined."""
    values = np.empty(len(indices))
    for b, rows in enumerate(indices):
        try:
            values[b] = statistic(rows)
        except (ValueError, ZeroDivisionError, FloatingPointError):
            values[b] = np.nan
    return values


def percentile_ci(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of the finite replicates; (nan, nan) when fewer than two are finite."""
    finite = replicates[np.isfinite(replicates)]
    if finite.size < 2:
        return float("nan"), float("nan")
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(finite, [tail, 100 - tail])
    return float(low), float(high)


def mean_with_ci(
    values: np.ndarray, indices: np.ndarray, level: float = 0.95
) -> tuple[float, float, float, np.ndarray]:
    """Mean of per-prompt values with its bootstrap CI and replicates (vectorised)."""
    values = np.asarray(values, dtype=float)
    replicates = values[indices].mean(axis=1)
    low, high = percentile_ci(replicates, level)
    return float(values.mean()), low, high, replicates
