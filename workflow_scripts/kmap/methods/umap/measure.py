"""Method 1 for one (model, domain): UMAP per layer, metrics with bootstrap CIs, findings, 2-d coordinates.

Reads only the activation cache; never loads a model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kmap.activations.cache import ActivationCache
from kmap.core.stats import bootstrap_indices, mean_with_ci, percentile_ci, replicate
from kmap.methods.umap.embedding import UmapParams, embed_layers
from kmap.methods.umap.geometry import (
    age_discontinuity,
    collapse_flags,
    effective_rank,
    local_anisotropy,
    pairwise,
    stage_trajectory,
    within_group_r2,
    within_group_silhouettes,
)

log = logging.getLogger(__name__)

MIN_PER_LABEL = 2  # fewer prompts per label than this make a silhouette meaningless
TEMPLATE = "template"  # optional prompt-set column: geometry is measured within each template


@dataclass
class GeometryResult:
    metrics: pd.DataFrame
    replicates: pd.DataFrame
    coords: pd.DataFrame
    findings: pd.DataFrame


class _Rows:
    """Accumulates tidy rows for one (model, domain)."""

    def __init__(self, model: str, domain: str) -> None:
        self.model, self.domain = model, domain
        self.metrics: list[dict] = []
        self.replicates: list[pd.DataFrame] = []
        self.findings: list[dict] = []

    def metric(self, layer: int, name: str, value: float, reps: np.ndarray | None, n: int, note: str = "") -> None:
        low, high = percentile_ci(reps) if reps is not None else (float("nan"), float("nan"))
        self.metrics.append(
            dict(
                model=self.model,
                domain=self.domain,
                method="umap",
                layer=layer,
                metric=name,
                value=value,
                ci_low=low,
                ci_high=high,
                n=n,
                note=note,
            )
        )
        if reps is not None:
            self.replicates.append(
                pd.DataFrame(
                    dict(
                        model=self.model,
                        domain=self.domain,
                        method="umap",
                        layer=layer,
                        metric=name,
                        replicate=np.arange(len(reps)),
                        value=reps,
                    )
                )
            )

    def finding(self, layer: int, finding: str, key: str, value: float) -> None:
        self.findings.append(
            dict(model=self.model, domain=self.domain, layer=layer, finding=finding, key=key, value=float(value))
        )


def templates_of(table: pd.DataFrame) -> np.ndarray:
    """Each prompt's template (the prompt set's optional ``template`` column; one template without it)."""
    if TEMPLATE in table:
        return table[TEMPLATE].astype(str).to_numpy()
    return np.zeros(len(table), dtype=int)


def _template_note(weights: np.ndarray, templates: np.ndarray) -> str:
    total = len(np.unique(templates))
    if total < 2:
        return ""
    used = len(np.unique(templates[weights > 0]))
    return f"within {used} of {total} templates, weighted by prompts"


def _silhouettes(
    rows: _Rows,
    layer: int,
    distances: dict[str, np.ndarray],
    labels: pd.Series,
    name: str,
    indices: np.ndarray,
    templates: np.ndarray,
    pooled: bool = True,
) -> None:
    """Silhouettes by ``name`` within each template (the map's and Table 1's value), and pooled over templates
    on the embedding (``silhouette_pooled``, a diagnostic: prompts that share a template cluster together)."""
    values = labels.to_numpy()
    variants = [(prefix, matrix, templates) for prefix, matrix in distances.items()]
    if pooled:
        variants.append(("silhouette_pooled", distances["silhouette"], np.zeros(len(values), dtype=int)))
    for prefix, matrix, groups in variants:
        metric = f"{prefix}:{name}"
        # CI: resample the prompts' silhouettes, each computed once against all prompts (of its template).
        # Recomputing the silhouette on each resample is biased downwards when labels are small (b(i) is a
        # minimum over noisy label means): on the demo's 60 drug mechanisms of 3-12 prompts, -0.22 on all
        # prompts but -0.42 on average over resamples, so its percentile interval excluded the estimate.
        per_point, weights = within_group_silhouettes(matrix, values, groups, MIN_PER_LABEL)
        if not weights.any():
            where = " in any template" if len(np.unique(groups)) > 1 else ""
            note = f"fewer than 2 labels with >= {MIN_PER_LABEL} prompts{where}"
            rows.metric(layer, metric, float("nan"), None, 0, note)
            continue
        value = float(np.sum(weights * per_point) / np.sum(weights))
        with np.errstate(invalid="ignore", divide="ignore"):
            reps = (per_point * weights)[indices].sum(axis=1) / weights[indices].sum(axis=1)
        rows.metric(layer, metric, value, reps, int(weights.sum()), _template_note(weights, groups))


def _age_metrics(
    rows: _Rows,
    layer: int,
    z: np.ndarray,
    table: pd.DataFrame,
    params: UmapParams,
    indices: np.ndarray,
    templates: np.ndarray,
) -> None:
    ages = table["age"].to_numpy(dtype=float)
    everyone = np.ones(len(ages), dtype=bool)
    # R² within each template (weighted by size), per gender too; pooled over templates as a diagnostic.
    subsets = {"r2": (everyone, templates)}
    if "gender" in table:
        subsets |= {f"r2:{g}": ((table["gender"] == g).to_numpy(), templates) for g in sorted(table["gender"].unique())}
    subsets["r2_pooled"] = (everyone, np.zeros(len(ages), dtype=int))
    for name, (mask, all_groups) in subsets.items():
        points, target, groups = z[mask], ages[mask], all_groups[mask]

        def statistic(
            sample: np.ndarray, points: np.ndarray = points, target: np.ndarray = target, groups: np.ndarray = groups
        ) -> float:
            return within_group_r2(points[sample], target[sample], groups[sample], params.cv_folds, params.ridge_alpha)

        value = within_group_r2(points, target, groups, params.cv_folds, params.ridge_alpha)
        # Fewer replicates for R²: each is a full grouped cross-validation.
        reps = replicate(statistic, bootstrap_indices(len(target), max(20, len(indices) // 4), params.seed))
        rows.metric(layer, name, value, reps, int(mask.sum()), _template_note(np.ones(len(groups)), groups))
    per_point = local_anisotropy(z, params.k_anisotropy)
    value, _, _, reps = mean_with_ci(per_point, indices)
    rows.metric(layer, "anisotropy", value, reps, len(per_point))
    jump = age_discontinuity(z, table["age"].to_numpy())
    rows.finding(layer, "age_discontinuity", "low_age", jump.low_age)
    rows.finding(layer, "age_discontinuity", "z", jump.z)
    rows.finding(layer, "age_discontinuity", "at_17_18", float((jump.low_age, jump.high_age) == (17, 18)))


def _progression_findings(rows: _Rows, layer: int, z: np.ndarray, table: pd.DataFrame) -> None:
    for disease, part in table.groupby("disease"):
        trajectory = stage_trajectory(z[part.index.to_numpy()], part["stage_index"].to_numpy())
        rows.finding(layer, f"progression:{disease}", "monotonicity", trajectory.monotonicity)
        rows.finding(layer, f"progression:{disease}", "circular", float(trajectory.circular))


def run_geometry(
    cache: ActivationCache,
    model: str,
    domain: str,
    group_labels: tuple[str, ...],
    params: UmapParams,
    n_boot: int = 200,
    boot_seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    workers: int = 1,
) -> GeometryResult:
    table = cache.table.reset_index(drop=True)
    rows = _Rows(model, domain)
    indices = bootstrap_indices(len(table), n_boot, boot_seed)
    templates = templates_of(table)
    coords, spreads = [], []
    embeddings = embed_layers(cache.acts, params, (params.n_components, 2), workers)
    for position, layer in enumerate(cache.layers):
        layer = int(layer)
        raw = cache.acts[position]
        z, flat = embeddings[position][params.n_components], embeddings[position][2]
        distances = {"silhouette": pairwise(z), "silhouette_raw": pairwise(raw, "cosine")}
        for label in group_labels:
            _silhouettes(rows, layer, distances, table[label].astype(str), label, indices, templates)
        if len(np.unique(templates)) > 1:
            # How strongly prompts cluster by template: the confound the within-template values remove.
            one = np.zeros(len(table), dtype=int)
            by_template = {"silhouette_pooled": distances["silhouette"]}
            _silhouettes(rows, layer, by_template, pd.Series(templates), TEMPLATE, indices, one, pooled=False)
        if domain == "age":
            _age_metrics(rows, layer, z, table, params, indices, templates)
        if domain == "progression":
            _progression_findings(rows, layer, z, table)
        # Collapse: scale-free spread (mean cosine distance between prompts) and effective rank of raw activations.
        per_point = distances["silhouette_raw"].sum(axis=1) / max(len(raw) - 1, 1)
        value, _, _, reps = mean_with_ci(per_point, indices)
        rows.metric(layer, "spread", value, reps, len(raw))
        rows.metric(layer, "effective_rank", effective_rank(raw), None, len(raw), "no bootstrap (rank)")
        spreads.append(value)
        coords.append(table.assign(layer=layer, x=flat[:, 0], y=flat[:, 1]).drop(columns=["text"], errors="ignore"))
        if progress is not None:
            progress(position + 1, len(cache.layers))
    relative, flagged = collapse_flags(np.array(spreads), params.collapse_threshold)
    for layer, rel, flag in zip(cache.layers, relative, flagged, strict=True):
        rows.finding(int(layer), "collapse", "relative_spread", rel)
        rows.finding(int(layer), "collapse", "collapsed", float(flag))
    coords_frame = pd.concat(coords, ignore_index=True)
    coords_frame.insert(0, "domain", domain)
    coords_frame.insert(0, "model", model)
    return GeometryResult(
        metrics=pd.DataFrame(rows.metrics),
        replicates=pd.concat(rows.replicates, ignore_index=True) if rows.replicates else pd.DataFrame(),
        coords=coords_frame,
        findings=pd.DataFrame(rows.findings),
    )
