"""The geometry runner on synthetic activation caches with planted structure, and its figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kmap.activations.cache import ActivationCache
from kmap.core.figures import curve_figure
from kmap.methods.umap.embedding import UmapParams, embed, exact_neighbours
from kmap.methods.umap.figures import panel_layers, umap_panels
from kmap.methods.umap.measure import run_geometry

PARAMS = UmapParams(n_epochs=100, panel_layers=3)


def _cache(table: pd.DataFrame, layers: list[np.ndarray]) -> ActivationCache:
    return ActivationCache(
        acts=np.stack(layers).astype(np.float32),
        layers=np.arange(-1, len(layers) - 1),
        table=table,
        provenance={},
    )


@pytest.fixture(scope="module")
def clustered() -> tuple[ActivationCache, pd.DataFrame]:
    rng = np.random.default_rng(0)
    labels = np.repeat(["cardiovascular", "respiratory", "renal"], 40)
    table = pd.DataFrame({"id": [f"p{i}" for i in range(120)], "system": labels})
    centres = {name: rng.normal(0, 6, size=32) for name in np.unique(labels)}
    noise = rng.normal(size=(120, 32))
    planted = np.stack([centres[y] for y in labels]) + rng.normal(size=(120, 32))
    cache = _cache(table, [noise, planted])
    return cache, run_geometry(cache, "m", "symptoms", ("system",), PARAMS, n_boot=50).metrics


def _value(metrics: pd.DataFrame, layer: int, metric: str) -> pd.Series:
    return metrics[(metrics["layer"] == layer) & (metrics["metric"] == metric)].iloc[0]


def test_planted_layer_separates_noise_layer_does_not(clustered) -> None:
    _, metrics = clustered
    planted, noise = _value(metrics, 0, "silhouette:system"), _value(metrics, -1, "silhouette:system")
    assert planted["value"] > 0.5 and abs(noise["value"]) < 0.1
    assert planted["ci_low"] <= planted["value"] <= planted["ci_high"]
    raw = _value(metrics, 0, "silhouette_raw:system")
    assert raw["value"] > 0.3  # the structure is in the activations, not made by UMAP
    assert set(metrics.columns) >= {"model", "domain", "method", "layer", "metric", "value", "ci_low", "ci_high", "n"}


def test_row_order_changes_results_only_within_umap_noise(clustered) -> None:
    cache, metrics = clustered
    order = np.random.default_rng(1).permutation(len(cache.table))
    shuffled = _cache(cache.table.iloc[order].reset_index(drop=True), [layer[order] for layer in cache.acts])
    again = run_geometry(shuffled, "m", "symptoms", ("system",), PARAMS, n_boot=20).metrics
    for layer in (-1, 0):
        a, b = _value(metrics, layer, "silhouette:system"), _value(again, layer, "silhouette:system")
        assert abs(a["value"] - b["value"]) < 0.05
        # Raw-activation silhouette does not involve UMAP: identical up to float error.
        assert _value(metrics, layer, "silhouette_raw:system")["value"] == pytest.approx(
            _value(again, layer, "silhouette_raw:system")["value"], abs=1e-9
        )


def test_embedding_is_deterministic() -> None:
    points = np.random.default_rng(2).normal(size=(60, 16))
    first, second = embed(points, PARAMS), embed(points, PARAMS)
    np.testing.assert_array_equal(first[30], second[30])
    assert first[30].shape == (60, 30) and first[2].shape == (60, 2)


def test_embedding_of_repeated_rows_is_deterministic() -> None:
    """A layer whose prompts share their pooled token (the embeddings): a few distinct rows, each repeated many
    times. Spectral initialisation of such a graph changed from call to call (repeated Laplacian eigenvalues);
    the layout must not."""
    distinct = np.random.default_rng(3).normal(size=(3, 16))
    points = distinct[np.arange(240) % 3]
    runs = [embed(points, PARAMS) for _ in range(3)]
    for run in runs[1:]:
        for dim in (30, 2):
            np.testing.assert_array_equal(run[dim], runs[0][dim])


def test_exact_neighbours_match_an_independent_search_and_break_ties_by_row() -> None:
    from sklearn.neighbors import NearestNeighbors

    rng = np.random.default_rng(3)
    points = rng.normal(size=(80, 12)).astype(np.float32)
    index, dist = exact_neighbours(points, 15)
    ref_dist, ref_index = NearestNeighbors(n_neighbors=15, algorithm="brute").fit(points).kneighbors(points)
    np.testing.assert_array_equal(index, ref_index)
    np.testing.assert_allclose(dist, ref_dist, atol=1e-5)
    assert (index[:, 0] == np.arange(80)).all() and (dist[:, 0] == 0).all()
    # Coinciding points (prompts sharing their last token at the embedding layer): ties go by row, so the
    # graph, and with it the embedding, is the same on every run.
    tied = np.repeat(points[:4], 5, axis=0)
    index, dist = exact_neighbours(tied, 5)
    np.testing.assert_array_equal(index[0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(index[7], [5, 6, 7, 8, 9])


def test_umap_layout_kernels_are_cached_on_disk() -> None:
    """umap-learn compiles its layout kernels without numba's disk cache (about a minute in every new UMAP
    process); kmap turns the cache on before the first layout."""
    import umap.layouts
    from numba.core.caching import FunctionCache

    embed(np.random.default_rng(4).normal(size=(30, 8)), PARAMS, dims=(2,))
    kernel = umap.layouts._nb_optimize_layout_euclidean_single_epoch
    assert kernel.signatures and isinstance(kernel._cache, FunctionCache)


def test_age_domain_metrics_and_findings() -> None:
    rng = np.random.default_rng(3)
    ages = np.tile(np.arange(101), 2)
    genders = np.repeat(["male", "female"], 101)
    table = pd.DataFrame({"id": [f"a{i}" for i in range(202)], "age": ages, "gender": genders})
    line = np.outer(ages / 100.0, rng.normal(size=24)) * 8 + rng.normal(0, 0.05, size=(202, 24))
    line[ages >= 18] += 3 * rng.normal(size=24)  # a planted minor/adult break
    cache = _cache(table, [rng.normal(size=(202, 24)), line])
    result = run_geometry(cache, "m", "age", ("gender",), PARAMS, n_boot=20)
    assert _value(result.metrics, 0, "r2")["value"] > 0.8
    assert _value(result.metrics, -1, "r2")["value"] < 0.2
    assert {"r2:male", "r2:female", "anisotropy"} <= set(result.metrics["metric"])
    jump = result.findings[(result.findings["layer"] == 0) & (result.findings["finding"] == "age_discontinuity")]
    assert jump.set_index("key").loc["low_age", "value"] == 17
    assert not result.replicates.empty


def test_too_few_prompts_per_label_is_nan_with_reason() -> None:
    table = pd.DataFrame({"id": ["a", "b", "c", "d", "e", "f"], "system": ["x", "y", "z", "w", "v", "u"]})
    points = np.random.default_rng(4).normal(size=(6, 8))
    metrics = run_geometry(
        _cache(table, [points, points]), "m", "symptoms", ("system",), UmapParams(n_epochs=20, n_neighbors=3), n_boot=10
    ).metrics
    row = _value(metrics, 0, "silhouette:system")
    assert np.isnan(row["value"]) and "fewer than 2 labels" in row["note"]


def test_figures_from_tables(clustered, tmp_path: Path) -> None:
    cache, metrics = clustered
    panels = curve_figure(metrics, tmp_path / "c.png", tmp_path / "c.pdf", "t", "caption")
    assert panels == metrics["metric"].nunique()
    coords = pd.DataFrame(
        {
            "layer": np.repeat([-1, 0], 4),
            "x": np.arange(8.0),
            "y": np.arange(8.0),
            "system": ["a", "b"] * 4,
            "age": np.arange(8),
            "gender": ["m", "f"] * 4,
        }
    )
    assert umap_panels(coords, "system", [-1, 0], tmp_path / "p.png", tmp_path / "p.pdf", "t") == 2
    assert umap_panels(coords, "age", [-1, 0], tmp_path / "a.png", tmp_path / "a.pdf", "t", split_by="gender") == 4
    assert panel_layers(np.arange(-1, 40), 6) == [-1, 7, 15, 23, 31, 39]
    for name in ("c", "p", "a"):
        assert (tmp_path / f"{name}.png").stat().st_size > 2000 and (tmp_path / f"{name}.pdf").exists()


def test_parallel_layers_equal_sequential(clustered) -> None:
    from kmap.methods.umap.embedding import embed_layers

    cache, _ = clustered
    stacked = np.concatenate([cache.acts, cache.acts[:1]])  # three layers, so the pool is used
    sequential = embed_layers(stacked, PARAMS, (30, 2), workers=1)
    parallel = embed_layers(stacked, PARAMS, (30, 2), workers=2)
    for a, b in zip(sequential, parallel, strict=True):
        np.testing.assert_array_equal(a[30], b[30])
        np.testing.assert_array_equal(a[2], b[2])


def test_silhouette_ci_contains_estimate_with_many_small_labels() -> None:
    """60 labels of 3 prompts, weakly clustered (like the drug mechanisms): recomputing the silhouette on
    resamples is biased low (its interval misses the estimate); resampling per-prompt values is not."""
    from kmap.core.stats import bootstrap_indices, percentile_ci
    from kmap.methods.umap.geometry import pairwise, silhouette_from_distances

    rng = np.random.default_rng(0)
    labels = np.repeat([f"class{i}" for i in range(60)], 3)
    points = np.repeat(rng.normal(0, 0.6, size=(60, 16)), 3, axis=0) + rng.normal(size=(180, 16))
    table = pd.DataFrame({"id": [f"p{i}" for i in range(180)], "mechanism": labels})
    cache = _cache(table, [points, points])
    metrics = run_geometry(cache, "m", "drugs", ("mechanism",), UmapParams(n_epochs=30), n_boot=100).metrics
    raw = _value(metrics, 0, "silhouette_raw:mechanism")
    assert raw["ci_low"] <= raw["value"] <= raw["ci_high"]
    # The naive bootstrap on the same data is the biased one this guards against.
    distances = pairwise(points, "cosine")
    naive = [
        silhouette_from_distances(distances, labels, np.bincount(rows, minlength=180))
        for rows in bootstrap_indices(180, 100, 0)
    ]
    low, high = percentile_ci(np.array(naive))
    assert high < raw["value"]


def test_silhouette_ci_shrinks_with_more_prompts() -> None:
    rng = np.random.default_rng(1)
    widths = []
    for per_label in (10, 80):
        labels = np.repeat(["a", "b", "c"], per_label)
        points = np.repeat(rng.normal(0, 1.5, size=(3, 8)), per_label, axis=0) + rng.normal(size=(3 * per_label, 8))
        table = pd.DataFrame({"id": [f"p{i}" for i in range(len(labels))], "system": labels})
        metrics = run_geometry(_cache(table, [points]), "m", "symptoms", ("system",), PARAMS, n_boot=100).metrics
        row = _value(metrics, -1, "silhouette_raw:system")
        assert row["ci_low"] <= row["value"] <= row["ci_high"]
        widths.append(row["ci_high"] - row["ci_low"])
    assert widths[1] < 0.6 * widths[0]


def _template_confound(seed: int = 0) -> tuple[ActivationCache, pd.DataFrame]:
    """Three templates far apart (as real prompt frames are) and, within each, four mechanisms that separate:
    pooled over templates the activations cluster by template, not mechanism."""
    rng = np.random.default_rng(seed)
    rows = [(t, m) for t in range(3) for m in range(4) for _ in range(8)]
    templates, mechanisms = np.array([r[0] for r in rows]), np.array([r[1] for r in rows])
    frame_dirs, concept_dirs = rng.normal(0, 12, size=(3, 24)), rng.normal(0, 3, size=(4, 24))
    planted = frame_dirs[templates] + concept_dirs[mechanisms] + rng.normal(0, 0.5, size=(len(rows), 24))
    table = pd.DataFrame(
        {"id": [f"p{i}" for i in range(len(rows))], "mechanism": mechanisms.astype(str), "template": templates}
    )
    return _cache(table, [rng.normal(size=planted.shape), planted]), planted


def test_template_confound_is_removed_within_templates() -> None:
    from sklearn.metrics import silhouette_score

    cache, _ = _template_confound()
    planted = cache.acts[1].astype(np.float64)  # as stored (float32)
    metrics = run_geometry(cache, "m", "drugs", ("mechanism",), PARAMS, n_boot=50).metrics
    table = cache.table
    # The controlled raw silhouette is the size-weighted mean of scikit-learn's silhouette per template.
    per_template = [
        (
            silhouette_score(
                planted[table["template"] == t], table["mechanism"][table["template"] == t], metric="cosine"
            ),
            32,
        )
        for t in range(3)
    ]
    expected = sum(v * n for v, n in per_template) / sum(n for _, n in per_template)
    assert _value(metrics, 0, "silhouette_raw:mechanism")["value"] == pytest.approx(expected, abs=1e-9)
    controlled, pooled = _value(metrics, 0, "silhouette:mechanism"), _value(metrics, 0, "silhouette_pooled:mechanism")
    assert controlled["value"] > 0.8 and controlled["value"] > pooled["value"] + 0.5, (controlled, pooled)
    assert controlled["note"] == "within 3 of 3 templates, weighted by prompts" and controlled["n"] == 96
    # The confound itself, as a diagnostic: prompts cluster by template where the frames are planted only.
    assert _value(metrics, 0, "silhouette_pooled:template")["value"] > 0.1
    assert abs(_value(metrics, -1, "silhouette_pooled:template")["value"]) < 0.05
    # Without a template column the same prompts are one template: controlled and pooled coincide.
    plain = _cache(table.drop(columns="template"), list(cache.acts))
    again = run_geometry(plain, "m", "drugs", ("mechanism",), PARAMS, n_boot=50).metrics
    assert _value(again, 0, "silhouette:mechanism")["value"] == pytest.approx(pooled["value"], abs=1e-12)
    assert "silhouette_pooled:template" not in set(again["metric"])


def test_age_r2_within_templates_removes_a_template_offset() -> None:
    """Age on one axis, a template offset along the same axis that does not follow age: pooled R² suffers,
    within-template R² is the size-weighted mean of each template's own grouped R²."""
    from kmap.methods.umap.geometry import grouped_cv_r2, within_group_r2

    rng = np.random.default_rng(4)
    ages = np.tile(np.arange(20, 80), 3).astype(float)
    templates = np.repeat([0, 1, 2], 60)
    points = np.column_stack([ages / 60 + np.array([0.0, 3.0, -3.0])[templates], rng.normal(0, 0.01, size=(180, 3))])
    within = within_group_r2(points, ages, templates, 5, 1e-3)
    parts = [
        grouped_cv_r2(points[templates == t], ages[templates == t], ages[templates == t], 5, 1e-3) for t in range(3)
    ]
    assert within == pytest.approx(np.mean(parts), abs=1e-12) and within > 0.99
    assert grouped_cv_r2(points, ages, ages, 5, 1e-3) < 0.5
