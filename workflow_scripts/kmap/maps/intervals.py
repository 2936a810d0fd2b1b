"""Layer-interval selection for the knowledge map (spec section 5).

A metric curve over layers is smoothed with a Gaussian (sigma in layers), then one of three rules picks the
layers where the knowledge sits:

- ``rise``: the window of ``window`` consecutive layers over which the smoothed curve rises most
  (silhouette: where label structure forms). No interval when the curve never rises.
- ``best_ci``: the layers whose raw value lies within the confidence interval of the best layer (age R²).
- ``percentile``: layers whose smoothed value is strictly above the q-th percentile, merged into contiguous
  segments of at least ``min_length`` layers, at most ``max_segments`` kept, largest area above the
  threshold first (saliency, ablation, patching). A flat curve has nothing strictly above its percentile.

Rules combine with ``+`` (``percentile+rise``: the union of both, used for patching, where the spec adds the
window of steepest rise of the last-position curve to the study's percentile rule).

Ties are resolved towards the earlier layer, so selection is deterministic. ``stability`` reruns a rule on
bootstrap replicate curves and reports how often each layer is selected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter1d

RULES = ("rise", "best_ci", "percentile")


@dataclass(frozen=True)
class Interval:
    start: int  # first layer (inclusive)
    end: int  # last layer (inclusive)
    score: float  # rise, best value, or area above the threshold

    def layers(self) -> range:
        return range(self.start, self.end + 1)


@dataclass(frozen=True)
class RuleParams:
    sigma: float = 1.0
    window: int = 3
    percentile: float = 75.0
    min_length: int = 2
    max_segments: int = 3


def smooth(values: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing that ignores NaNs (normalised convolution); edges reflect the nearest value."""
    values = np.asarray(values, dtype=float)
    if sigma <= 0:
        return values.copy()
    finite = np.isfinite(values)
    if not finite.any():
        return values.copy()
    weights = gaussian_filter1d(finite.astype(float), sigma, mode="nearest")
    sums = gaussian_filter1d(np.where(finite, values, 0.0), sigma, mode="nearest")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weights > 1e-12, sums / weights, np.nan)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) positions of each run of True."""
    runs, start = [], None
    for i, flag in enumerate(mask):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i - 1))
            start = None
    if start is not None:
        runs.append((start, len(mask) - 1))
    return runs


def steepest_rise(layers: np.ndarray, smoothed: np.ndarray, window: int) -> list[Interval]:
    if len(smoothed) < window or window < 2:
        return []
    rises = smoothed[window - 1 :] - smoothed[: len(smoothed) - window + 1]
    if not np.isfinite(rises).any():
        return []
    best = int(np.nanargmax(rises))  # first maximum: earliest window wins ties
    if not rises[best] > 1e-12:
        return []
    return [Interval(int(layers[best]), int(layers[best + window - 1]), float(rises[best]))]


def within_best_ci(layers: np.ndarray, values: np.ndarray, ci_low: np.ndarray) -> list[Interval]:
    """Contiguous runs of layers whose value reaches the lower CI bound of the best layer."""
    if not np.isfinite(values).any():
        return []
    best = int(np.nanargmax(values))
    floor = ci_low[best] if np.isfinite(ci_low[best]) else values[best]
    mask = np.isfinite(values) & (values >= floor)
    return [Interval(int(layers[a]), int(layers[b]), float(np.nanmax(values[a : b + 1]))) for a, b in _runs(mask)]


def above_percentile(layers: np.ndarray, smoothed: np.ndarray, params: RuleParams) -> list[Interval]:
    finite = np.isfinite(smoothed)
    if not finite.any():
        return []
    threshold = np.percentile(smoothed[finite], params.percentile)
    eps = 1e-12 * max(1.0, abs(threshold))
    mask = finite & (smoothed > threshold + eps)
    if not mask.any() and np.nanmax(smoothed) > np.nanmin(smoothed) + eps:
        # A plateau wider than the top quarter sits exactly at the percentile: select the plateau.
        mask = finite & (smoothed >= threshold - eps)
    segments = [
        Interval(int(layers[a]), int(layers[b]), float(np.sum(smoothed[a : b + 1] - threshold)))
        for a, b in _runs(mask)
        if b - a + 1 >= params.min_length
    ]
    # Largest area first; the stable sort keeps earlier segments ahead on ties. Report in layer order.
    kept = sorted(segments, key=lambda s: -s.score)[: params.max_segments]
    return sorted(kept, key=lambda s: s.start)


def select(
    rule: str,
    layers: np.ndarray,
    values: np.ndarray,
    params: RuleParams = RuleParams(),
    ci_low: np.ndarray | None = None,
) -> list[Interval]:
    """Apply ``rule`` to one curve (layers ascending)."""
    if "+" in rule:
        parts = [select(part, layers, values, params, ci_low) for part in rule.split("+")]
        return sorted((i for found in parts for i in found), key=lambda i: (i.start, i.end))
    layers = np.asarray(layers)
    values = np.asarray(values, dtype=float)
    if rule == "rise":
        return steepest_rise(layers, smooth(values, params.sigma), params.window)
    if rule == "best_ci":
        low = np.full_like(values, np.nan) if ci_low is None else np.asarray(ci_low, dtype=float)
        return within_best_ci(layers, values, low)
    if rule == "percentile":
        return above_percentile(layers, smooth(values, params.sigma), params)
    raise ValueError(f"unknown interval rule {rule!r}; use one of {RULES}, or several joined by '+'")


def selected_mask(layers: np.ndarray, intervals: list[Interval]) -> np.ndarray:
    layers = np.asarray(layers)
    mask = np.zeros(len(layers), dtype=bool)
    for interval in intervals:
        mask |= (layers >= interval.start) & (layers <= interval.end)
    return mask


def stability(rule: str, layers: np.ndarray, replicates: np.ndarray, params: RuleParams = RuleParams()) -> np.ndarray:
    """Fraction of bootstrap replicate curves ([B, n_layers]) in which each layer is selected.

    ``best_ci`` has no per-replicate CI; on a replicate it selects that replicate's best layer run within
    the spread of the replicates at their best layer (the 2.5th percentile of the replicate maxima).
    """
    replicates = np.asarray(replicates, dtype=float)
    counts = np.zeros(replicates.shape[1])
    if rule == "best_ci":
        floor = np.nanpercentile(np.nanmax(replicates, axis=1), 2.5)
        for curve in replicates:
            counts += selected_mask(layers, within_best_ci(layers, curve, np.full_like(curve, floor)))
    else:
        for curve in replicates:
            counts += selected_mask(layers, select(rule, layers, curve, params))
    return counts / max(len(replicates), 1)
