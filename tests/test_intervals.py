"""Interval selection on hand-made curves with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from kmap.maps.intervals import Interval, RuleParams, select, selected_mask, smooth, stability

LAYERS = np.arange(20)
NO_SMOOTH = RuleParams(sigma=0.0)


def bump(center: float, width: float = 1.5, height: float = 1.0) -> np.ndarray:
    return height * np.exp(-0.5 * ((LAYERS - center) / width) ** 2)


def test_smooth_preserves_constants_and_mean() -> None:
    np.testing.assert_allclose(smooth(np.full(10, 3.0), 1.0), 3.0)
    spike = np.zeros(21)
    spike[10] = 1.0
    smoothed = smooth(spike, 1.0)
    assert smoothed.sum() == pytest.approx(1.0, abs=1e-6)
    assert smoothed[10] == pytest.approx(1 / np.sqrt(2 * np.pi), rel=0.02)


def test_smooth_ignores_nans() -> None:
    values = np.array([1.0, 1.0, np.nan, 1.0, 1.0])
    np.testing.assert_allclose(smooth(values, 1.0), 1.0)


def test_single_peak_percentile() -> None:
    intervals = select("percentile", LAYERS, bump(10), NO_SMOOTH)
    assert len(intervals) == 1
    # 75th percentile of 20 layers: exactly 5 layers lie above it, centred on the peak.
    assert (intervals[0].start, intervals[0].end) == (8, 12)


def test_two_peaks_both_found_in_layer_order() -> None:
    curve = bump(4) + 0.8 * bump(15)
    intervals = select("percentile", LAYERS, curve, NO_SMOOTH)
    assert [(i.start <= 4 <= i.end) for i in intervals] == [True, False]
    assert intervals[1].start <= 15 <= intervals[1].end
    assert intervals[0].score > intervals[1].score


def test_segment_cap_keeps_largest_areas() -> None:
    curve = np.zeros(40)
    for centre, height in [(3, 1.0), (11, 3.0), (19, 2.0), (27, 4.0), (35, 0.5)]:
        curve[centre - 1 : centre + 2] = height
    params = RuleParams(sigma=0.0, percentile=50.0, max_segments=3)
    intervals = select("percentile", np.arange(40), curve, params)
    assert [(i.start, i.end) for i in intervals] == [(10, 12), (18, 20), (26, 28)]


def test_minimum_length_drops_single_layer_spikes() -> None:
    curve = np.zeros(20)
    curve[5] = 1.0  # one layer only
    curve[12:15] = 0.5
    intervals = select("percentile", LAYERS, curve, RuleParams(sigma=0.0, percentile=50.0, min_length=2))
    assert [(i.start, i.end) for i in intervals] == [(12, 14)]


def test_flat_curve_selects_nothing() -> None:
    for rule in ("percentile", "rise"):
        assert select(rule, LAYERS, np.full(20, 0.3)) == []


def test_plateau_selected_whole() -> None:
    curve = np.zeros(20)
    curve[6:14] = 1.0
    intervals = select("percentile", LAYERS, curve, NO_SMOOTH)
    assert [(i.start, i.end) for i in intervals] == [(6, 13)]


def test_noisy_curve_smoothing_recovers_peak() -> None:
    rng = np.random.default_rng(0)
    curve = bump(10, width=2.0) + rng.normal(0, 0.15, size=20)
    raw = select("percentile", LAYERS, curve, NO_SMOOTH)
    smoothed = select("percentile", LAYERS, curve, RuleParams(sigma=1.0))
    assert len(smoothed) == 1 and smoothed[0].start <= 10 <= smoothed[0].end
    assert len(raw) >= len(smoothed)


def test_steepest_rise_window() -> None:
    curve = np.concatenate([np.zeros(8), np.linspace(0, 1, 4), np.ones(8)])  # rises over layers 8..11
    intervals = select("rise", LAYERS, curve, RuleParams(sigma=0.0, window=3))
    assert len(intervals) == 1
    assert intervals[0].end - intervals[0].start == 2
    assert 8 <= intervals[0].start <= 9
    assert intervals[0].score == pytest.approx(2 / 3)


def test_ties_resolved_to_earlier_layer() -> None:
    curve = np.array([0, 1, 0, 1, 0, 0], dtype=float)  # two identical rises
    assert select("rise", np.arange(6), curve, RuleParams(sigma=0.0, window=2))[0] == Interval(0, 1, 1.0)
    twin = np.array([0, 1, 1, 0, 1, 1, 0, 0], dtype=float)
    intervals = select("percentile", np.arange(8), twin, RuleParams(sigma=0.0, percentile=50, max_segments=1))
    assert [(i.start, i.end) for i in intervals] == [(1, 2)]


def test_decreasing_curve_has_no_rise() -> None:
    assert select("rise", LAYERS, np.linspace(1, 0, 20)) == []


def test_best_ci_rule() -> None:
    values = np.array([0.1, 0.5, 0.95, 0.97, 0.96, 0.6, 0.94])
    low = values - 0.02
    intervals = select("best_ci", np.arange(7), values, ci_low=low)
    assert [(i.start, i.end) for i in intervals] == [(2, 4)]
    assert selected_mask(np.arange(7), intervals).tolist() == [False, False, True, True, True, False, False]


def test_embedding_layer_index_kept() -> None:
    layers = np.arange(-1, 19)
    intervals = select("percentile", layers, bump(10), NO_SMOOTH)
    assert (intervals[0].start, intervals[0].end) == (7, 11)


def test_unknown_rule() -> None:
    with pytest.raises(ValueError, match="unknown interval rule"):
        select("median", LAYERS, bump(3))


def test_stability_sharp_peak_vs_flat() -> None:
    rng = np.random.default_rng(1)
    peak = bump(10, width=1.0, height=1.0) + rng.normal(0, 0.03, size=(200, 20))
    freq = stability("percentile", LAYERS, peak)
    assert freq[10] > 0.95
    assert freq[:5].max() < 0.05
    flat = rng.normal(0, 0.03, size=(200, 20))
    flat_freq = stability("percentile", LAYERS, flat)
    # A flat curve's layers are each picked less often than the 25 % a percentile rule would imply.
    assert flat_freq.max() < 0.5 and flat_freq.mean() < 0.25


def test_combined_rules_give_the_union() -> None:
    # A sigmoid rising around layer 6 and saturating: the percentile rule takes the top plateau, the rise
    # rule the steepest 3-layer window; "percentile+rise" reports both, in layer order.
    curve = 1 / (1 + np.exp(-(LAYERS - 6.0)))
    top = select("percentile", LAYERS, curve, NO_SMOOTH)
    rise = select("rise", LAYERS, curve, NO_SMOOTH)
    both = select("percentile+rise", LAYERS, curve, NO_SMOOTH)
    assert rise == [Interval(5, 7, pytest.approx(curve[7] - curve[5]))]
    assert top[0].start > 7
    assert both == rise + top
    mask = selected_mask(LAYERS, both)
    assert mask.tolist() == (selected_mask(LAYERS, rise) | selected_mask(LAYERS, top)).tolist()
    with pytest.raises(ValueError, match="joined by"):
        select("percentile+peak", LAYERS, curve)
