"""Geometry metrics recover planted signals, agree with scikit-learn, and guard against leakage."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import Ridge
from sklearn.metrics import silhouette_score
from sklearn.model_selection import GroupKFold

from kmap.core.stats import bootstrap_indices, percentile_ci, replicate
from kmap.methods.umap.geometry import (
    age_discontinuity,
    collapse_flags,
    effective_rank,
    group_folds,
    grouped_cv_r2,
    local_anisotropy,
    pairwise,
    ridge_predict,
    silhouette,
    silhouette_from_distances,
    stage_trajectory,
)

RNG = np.random.default_rng(0)


def clusters(n_per: int = 40, k: int = 4, d: int = 10, sep: float = 8.0) -> tuple[np.ndarray, np.ndarray]:
    centres = RNG.normal(0, sep, size=(k, d))
    labels = np.repeat(np.arange(k), n_per)
    return centres[labels] + RNG.normal(0, 1, size=(len(labels), d)), labels


def test_silhouette_matches_sklearn() -> None:
    points, labels = clusters(sep=2.0)
    assert silhouette(points, labels) == pytest.approx(silhouette_score(points, labels), abs=1e-10)
    assert silhouette(points, labels, "cosine") == pytest.approx(
        silhouette_score(points, labels, metric="cosine"), abs=1e-10
    )


def test_silhouette_singleton_label_scores_zero_like_sklearn() -> None:
    points, labels = clusters(n_per=5, k=3)
    labels[0] = 99
    assert silhouette(points, labels) == pytest.approx(silhouette_score(points, labels), abs=1e-10)


def test_planted_clusters_and_shuffled_labels() -> None:
    points, labels = clusters()
    assert silhouette(points, labels) > 0.5
    points, labels = clusters(n_per=250)
    shuffled = RNG.permutation(labels)
    assert abs(silhouette(points, shuffled)) < 0.05


def test_single_label_is_nan() -> None:
    points, _ = clusters()
    assert np.isnan(silhouette(points, np.zeros(len(points))))


def test_age_line_r2_and_anisotropy() -> None:
    ages = np.repeat(np.arange(101), 4)
    direction = RNG.normal(size=30)
    line = np.outer(ages / 100, direction) * 5 + RNG.normal(0, 0.05, size=(len(ages), 30))
    assert grouped_cv_r2(line, ages, ages) > 0.9
    assert local_anisotropy(line, k=20).mean() > 0.8
    noise = RNG.normal(size=(len(ages), 30))
    assert grouped_cv_r2(noise, ages, ages) < 0.1
    assert local_anisotropy(noise, k=20).mean() < 0.5


def test_grouped_cv_blocks_leakage_of_repeated_ages() -> None:
    """A random embedding per age, repeated for every prompt of that age: ungrouped CV would memorise it."""
    ages = np.repeat(np.arange(101), 6)
    per_age = RNG.normal(size=(101, 200))
    points = per_age[ages] + RNG.normal(0, 0.01, size=(len(ages), 200))
    assert grouped_cv_r2(points, ages, ages) <= 0.1
    # Ungrouped (each row its own group, rows shuffled): copies of an age sit on both sides of a fold.
    ungrouped = grouped_cv_r2(points, ages, RNG.permutation(len(ages)))
    assert ungrouped > 0.5  # the leak the grouping prevents


@pytest.mark.parametrize(("n", "d"), [(120, 30), (15, 128), (40, 2)])  # primal, dual (d > n), low-d branches
def test_ridge_equals_scikit_learn(n: int, d: int) -> None:
    rng = np.random.default_rng(n + d)
    train, test = rng.normal(2.0, 3.0, size=(n, d)), rng.normal(2.0, 3.0, size=(25, d))
    target = train @ rng.normal(size=d) + rng.normal(0, 5, size=n) + 40
    for alpha in (1.0, 0.01, 30.0):
        expected = Ridge(alpha=alpha).fit(train, target).predict(test)
        np.testing.assert_allclose(ridge_predict(train, target, test, alpha), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("seed", range(6))
def test_group_folds_equal_scikit_learn(seed: int) -> None:
    """Random group sizes with many ties, string and integer labels, 2-7 folds: the same test sets as GroupKFold."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 5, size=int(rng.integers(8, 40)))
    groups = np.repeat(rng.permutation(len(sizes)) * 7, sizes)[rng.permutation(sizes.sum())]
    for labels in (groups, groups.astype(str)):
        for folds in range(2, 8):
            fold = group_folds(labels, folds)
            expected = [test for _, test in GroupKFold(n_splits=folds).split(labels, labels, labels)]
            assert [np.flatnonzero(fold == f).tolist() for f in range(folds)] == [t.tolist() for t in expected]


def test_grouped_cv_r2_equals_scikit_learn_ridge_and_group_folds() -> None:
    """The age R² against an independent computation: scikit-learn's Ridge in scikit-learn's grouped folds."""
    ages = np.repeat(np.arange(0, 100, 3), 5).astype(float)
    points = np.outer(ages, RNG.normal(size=30)) / 50 + RNG.normal(size=(len(ages), 30))
    predicted = np.empty_like(ages)
    for train, test in GroupKFold(n_splits=5).split(points, ages, ages):
        predicted[test] = Ridge(alpha=1.0).fit(points[train], ages[train]).predict(points[test])
    expected = 1 - np.sum((ages - predicted) ** 2) / np.sum((ages - ages.mean()) ** 2)
    assert 0.3 < expected < 1
    assert grouped_cv_r2(points, ages, ages) == pytest.approx(expected, abs=1e-12)


def test_planted_jump_between_17_and_18() -> None:
    ages = np.repeat(np.arange(101), 2)
    points = np.stack([ages / 10.0, np.zeros_like(ages, dtype=float)], axis=1)
    points[ages >= 18, 1] += 5.0
    points += RNG.normal(0, 0.01, size=points.shape)
    jump = age_discontinuity(points, ages)
    assert (jump.low_age, jump.high_age) == (17, 18)
    assert jump.z > 5


def test_circular_and_straight_stage_paths() -> None:
    stages = np.repeat(np.arange(1, 6), 10)
    angle = (stages - 1) / 4 * 2 * np.pi * 0.85  # last stage comes back near the first
    circle = np.stack([np.cos(angle), np.sin(angle)], axis=1) + RNG.normal(0, 0.01, size=(50, 2))
    straight = np.stack([stages, np.zeros(50)], axis=1) + RNG.normal(0, 0.01, size=(50, 2))
    assert stage_trajectory(circle, stages).circular
    line = stage_trajectory(straight, stages)
    assert not line.circular and line.monotonicity == pytest.approx(1.0)


def test_collapsed_layer_flagged() -> None:
    spreads = np.array([1.0, 1.1, 0.9, 0.2, 1.0, 1.05])
    relative, flagged = collapse_flags(spreads)
    assert flagged.tolist() == [False, False, False, True, False, False]
    assert relative[3] == pytest.approx(0.2)
    assert effective_rank(RNG.normal(size=(200, 10))) > 8
    assert effective_rank(np.outer(RNG.normal(size=200), RNG.normal(size=10))) < 1.5


def test_bootstrap_ci_contains_estimate_and_shrinks() -> None:
    widths = []
    for n_per in (10, 80):
        points, labels = clusters(n_per=n_per, sep=1.5)
        estimate = silhouette(points, labels)
        distances = pairwise(points)
        reps = replicate(
            lambda rows, d=distances, y=labels: silhouette_from_distances(d, y, np.bincount(rows, minlength=len(y))),
            bootstrap_indices(len(labels), 100),
        )
        low, high = percentile_ci(reps)
        assert low <= estimate <= high
        widths.append(high - low)
    assert widths[1] < widths[0]


def test_weighted_silhouette_equals_explicit_duplicates_without_self_pairs() -> None:
    points, labels = clusters(n_per=6, k=3, sep=1.0)
    weights = np.array([1, 2, 0, 1, 3, 1] * 3)
    value = silhouette_from_distances(pairwise(points), labels, weights)
    # Independent computation: expand the copies, and score each copy excluding its own twins.
    rows = np.repeat(np.arange(len(points)), weights)
    d = pairwise(points)[np.ix_(rows, rows)]
    same_origin = rows[:, None] == rows[None, :]
    scores = []
    for i, origin in enumerate(rows):
        mine = (labels[rows] == labels[origin]) & ~same_origin[i]
        a = d[i, mine].mean() if mine.any() else np.nan
        b = min(d[i, labels[rows] == other].mean() for other in set(labels[rows]) - {labels[origin]})
        scores.append(0.0 if not mine.any() else (b - a) / max(a, b))
    assert value == pytest.approx(np.mean(scores), abs=1e-12)
