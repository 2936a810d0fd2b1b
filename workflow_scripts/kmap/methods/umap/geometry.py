"""Representation-geometry metrics (spec section 1), each a small pure function of an embedding and labels.

Bootstrap CIs resample prompts (rows) of an already-fitted embedding: refitting UMAP for each of 200
replicates per layer is unaffordable, so the CIs cover prompt sampling, not UMAP's own randomness (which the
fixed seed and row shuffle pin down).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
from scipy.spatial.distance import cdist
from scipy.stats import spearmanr


def pairwise(points: np.ndarray, metric: str = "euclidean") -> np.ndarray:
    return cdist(points, points, metric=metric)


def silhouette_values(
    distances: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point silhouettes s(i) = (b - a) / max(a, b) and the points' weights (zero-weight points get s = 0).

    A point alone in its label scores 0 (as scikit-learn). ``weights`` are multiplicities (a resample as counts
    per original point): copies of a point are never its own neighbours, so duplicates do not fake tight
    clusters. Raises ValueError when fewer than two labels have weight."""
    labels = np.asarray(labels)
    w_all = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    present = w_all > 0
    names, codes = np.unique(labels[present], return_inverse=True)
    if len(names) < 2:
        raise ValueError("silhouette needs at least two labels")
    distances = distances[np.ix_(present, present)]
    w = w_all[present]
    onehot = np.eye(len(names))[codes] * w[:, None]  # [n, k], weighted
    sums = distances @ onehot  # weighted distance from each point to each label (own copies add 0)
    counts = onehot.sum(axis=0)
    rows = np.arange(len(codes))
    own_count = counts[codes] - w  # other points of the same label, excluding every copy of the point
    with np.errstate(invalid="ignore", divide="ignore"):
        a = sums[rows, codes] / own_count
        means = sums / counts
    means[rows, codes] = np.inf
    b = means.min(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (b - a) / np.maximum(a, b)
    s[own_count <= 0] = 0.0
    s[~np.isfinite(s)] = 0.0
    values = np.zeros(len(labels))
    values[present] = s
    return values, w_all


def silhouette_from_distances(distances: np.ndarray, labels: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean silhouette (weighted by ``weights``, see ``silhouette_values``); NaN with fewer than two labels."""
    try:
        s, w = silhouette_values(distances, labels, weights)
    except ValueError:
        return float("nan")
    return float(np.sum(w * s) / np.sum(w))


def within_group_silhouettes(
    distances: np.ndarray, labels: np.ndarray, groups: np.ndarray, min_per_label: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Per-point silhouettes computed among the points of the same group only (a prompt template), and each
    point's weight: 1 where it counts, 0 where its label has fewer than ``min_per_label`` points in its group or
    its group has fewer than two such labels. The weighted mean of the points' values is the mean of the
    groups' silhouettes weighted by the points they keep; with one group it is the plain silhouette."""
    labels, groups = np.asarray(labels), np.asarray(groups)
    values, weights = np.zeros(len(labels)), np.zeros(len(labels))
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        names, counts = np.unique(labels[members], return_counts=True)
        kept = np.isin(labels[members], names[counts >= min_per_label])
        if len(np.unique(labels[members][kept])) < 2:
            continue
        s, _ = silhouette_values(distances[np.ix_(members, members)], labels[members], kept.astype(float))
        values[members], weights[members] = s, kept
    return values, weights


def within_group_r2(
    points: np.ndarray, target: np.ndarray, groups: np.ndarray, folds: int = 5, alpha: float = 1.0
) -> float:
    """Grouped cross-validated R² (folds grouped by ``target``) within each group (a prompt template), averaged
    over the groups weighted by their size; groups where R² is undefined are left out. NaN when none is."""
    values, sizes = [], []
    for group in np.unique(groups):
        members = np.flatnonzero(groups == group)
        value = grouped_cv_r2(points[members], target[members], target[members], folds, alpha)
        if np.isfinite(value):
            values.append(value)
            sizes.append(len(members))
    return float(np.average(values, weights=sizes)) if values else float("nan")


def silhouette(points: np.ndarray, labels: np.ndarray, metric: str = "euclidean") -> float:
    return silhouette_from_distances(pairwise(points, metric), labels)


def grouped_cv_r2(
    points: np.ndarray, target: np.ndarray, groups: np.ndarray, folds: int = 5, alpha: float = 1.0
) -> float:
    """Out-of-fold R² of a ridge map points -> target, folds grouped so no group straddles train and test."""
    target = np.asarray(target, dtype=float)
    n_groups = len(np.unique(groups))
    if n_groups < 2 or len(target) < 4:
        return float("nan")
    predicted = np.empty_like(target)
    splits = min(folds, n_groups)
    fold = group_folds(groups, splits)
    for index in range(splits):
        test = fold == index
        predicted[test] = ridge_predict(points[~test], target[~test], points[test], alpha)
    residual = np.sum((target - predicted) ** 2)
    total = np.sum((target - target.mean()) ** 2)
    return float(1 - residual / total) if total > 0 else float("nan")


def group_folds(groups: np.ndarray, folds: int) -> np.ndarray:
    """The fold of each sample in scikit-learn's ``GroupKFold(folds)`` (no shuffling): groups by size, largest
    first (among equal sizes, the greater label first), each to the fold with the fewest samples so far (ties: the
    lowest fold). scikit-learn's own loop costs the age R² bootstrap more than the ridge fits."""
    labels, index = np.unique(groups, return_inverse=True)
    sizes = np.bincount(index)
    order = np.argsort(sizes, kind="stable")[::-1]
    load = [0] * folds
    fold_of_group = np.zeros(len(labels), dtype=int)
    for group in order.tolist():
        lightest = min(range(folds), key=load.__getitem__)
        load[lightest] += int(sizes[group])
        fold_of_group[group] = lightest
    return fold_of_group[index]


def ridge_predict(train: np.ndarray, target: np.ndarray, test: np.ndarray, alpha: float) -> np.ndarray:
    """Predictions at ``test`` of ridge regression with an unpenalised intercept fitted on (``train``, ``target``),
    in float64: scikit-learn's ``Ridge(alpha).fit(train, target).predict(test)`` (its Cholesky solver on centred
    data; the dual form where features outnumber samples), without its per-call input validation, which cost
    the age R² bootstrap 20 times the arithmetic."""
    train, test = np.asarray(train, dtype=np.float64), np.asarray(test, dtype=np.float64)
    mean_x, mean_y = train.mean(axis=0), float(np.mean(target))
    x, y = train - mean_x, np.asarray(target, dtype=np.float64) - mean_y
    n, d = x.shape
    if d <= n:
        gram = x.T @ x
        gram.flat[:: d + 1] += alpha
        coef = scipy.linalg.solve(gram, x.T @ y, assume_a="pos")
    else:
        gram = x @ x.T
        gram.flat[:: n + 1] += alpha
        coef = x.T @ scipy.linalg.solve(gram, y, assume_a="pos")
    return (test - mean_x) @ coef + mean_y


def local_anisotropy(points: np.ndarray, k: int = 20) -> np.ndarray:
    """Per point A_i = 1 - λ2/λ1 of the covariance of its k nearest neighbours (itself included)."""
    k = min(k, len(points))
    distances = pairwise(points)
    neighbours = np.argsort(distances, axis=1)[:, :k]
    groups = points[neighbours]  # [n, k, d]
    centred = groups - groups.mean(axis=1, keepdims=True)
    # Singular values of the centred neighbourhood give the covariance eigenvalues (squared), largest first.
    singular = np.linalg.svd(centred, compute_uv=False)
    top = singular[:, 0] ** 2
    second = singular[:, 1] ** 2 if singular.shape[1] > 1 else np.zeros(len(points))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(top > 0, 1 - second / top, 0.0)


@dataclass(frozen=True)
class Discontinuity:
    low_age: int
    high_age: int
    jump: float
    z: float


def age_discontinuity(points: np.ndarray, ages: np.ndarray) -> Discontinuity:
    """Largest distance between centroids of adjacent ages, with its z-score against the other jumps."""
    ages = np.asarray(ages)
    unique = np.unique(ages)
    centroids = np.stack([points[ages == age].mean(axis=0) for age in unique])
    jumps = np.linalg.norm(np.diff(centroids, axis=0), axis=1)
    if len(jumps) < 3:
        return Discontinuity(int(unique[0]), int(unique[-1]), float(jumps.max()), float("nan"))
    best = int(np.argmax(jumps))
    others = np.delete(jumps, best)
    spread = others.std()
    z = (jumps[best] - others.mean()) / spread if spread > 0 else float("inf")
    return Discontinuity(int(unique[best]), int(unique[best + 1]), float(jumps[best]), float(z))


@dataclass(frozen=True)
class Trajectory:
    monotonicity: float  # |Spearman rho| between stage index and position along the centroids' first axis
    circular: bool  # the last stage's nearest other stage is an early one
    nearest_to_last: int
    centroids: np.ndarray  # [n_stages, d], stage order


def stage_trajectory(points: np.ndarray, stages: np.ndarray) -> Trajectory:
    stages = np.asarray(stages)
    order = np.unique(stages)
    centroids = np.stack([points[stages == s].mean(axis=0) for s in order])
    centred = centroids - centroids.mean(axis=0)
    axis = np.linalg.svd(centred, full_matrices=False)[2][0]
    position = centred @ axis
    rho = spearmanr(order, position).statistic if len(order) > 2 else 1.0
    distances = np.linalg.norm(centroids - centroids[-1], axis=1)
    distances[-1] = np.inf
    nearest = int(np.argmin(distances))
    # "Early" = the first half of the stages, never the last stage's own predecessor.
    circular = nearest < len(order) // 2 and nearest != len(order) - 2
    return Trajectory(float(abs(rho)), bool(circular), int(order[nearest]), centroids)


def effective_rank(points: np.ndarray) -> float:
    """exp(entropy) of the normalised singular values of the centred points (Roy & Vetterli)."""
    singular = np.linalg.svd(points - points.mean(axis=0), compute_uv=False)
    p = singular / singular.sum() if singular.sum() > 0 else singular
    p = p[p > 0]
    return float(np.exp(-(p * np.log(p)).sum())) if p.size else 0.0


def mean_pairwise_distance(points: np.ndarray) -> float:
    d = pairwise(points)
    n = len(points)
    return float(d.sum() / (n * (n - 1))) if n > 1 else 0.0


def collapse_flags(spreads: np.ndarray, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Spread of each layer relative to the median layer, and whether it falls below ``threshold``."""
    relative = np.asarray(spreads, dtype=float) / np.median(spreads)
    return relative, relative < threshold
