"""The metric names each method writes for a domain, so the map's metric settings are checked at parse time: a typo
in ``map.metrics`` or ``map.umap_metrics`` would otherwise drop a method's row from every map, with a warning in one
job log only. ``tests/test_workflow.py`` checks these names against the tables of a real run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from kmap.methods.ablation.settings import PAIR_METRICS
from kmap.methods.patching.settings import VARIANTS
from kmap.methods.saliency.settings import METRICS as SALIENCY_METRICS

JUDGE_METRIC = "judge_score"
PATCHING_AGGREGATES = ("P", "P_median")
PATCHING_TRANSFER = "transfer_last"
TEMPLATE = "template"


def umap_metrics(domain: str, group_labels: Sequence[str], frame: pd.DataFrame) -> set[str]:
    """Method 1's metric names for one domain's prompt set (silhouettes per grouping label, within templates, on
    raw activations and pooled; age's R² per gender and anisotropy; collapse measures)."""
    names = {"spread", "effective_rank"}
    for label in group_labels:
        names |= {f"silhouette:{label}", f"silhouette_raw:{label}", f"silhouette_pooled:{label}"}
    if TEMPLATE in frame and frame[TEMPLATE].nunique() > 1:
        names.add(f"silhouette_pooled:{TEMPLATE}")
    if domain == "age":
        names |= {"r2", "r2_pooled", "anisotropy"}
        if "gender" in frame:
            names |= {f"r2:{g}" for g in frame["gender"].astype(str).unique()}
    return names


def method_metrics(method: str) -> set[str]:
    """The metric names of saliency, ablation and patching (the same for every domain)."""
    return {
        "saliency": set(SALIENCY_METRICS),
        "ablation": {*PAIR_METRICS, JUDGE_METRIC},
        "patching": {f"{a}_{v}" for a in PATCHING_AGGREGATES for v in VARIANTS} | {PATCHING_TRANSFER},
    }[method]


def map_metric_problems(map_settings: Mapping[str, Any], prompt_sets: Mapping[str, Any]) -> list[str]:
    """Every map metric setting naming a metric its method never writes, with the names it does write."""
    problems = []
    for method, candidates in map_settings["metrics"].items():
        known = method_metrics(method)
        for i, name in enumerate(candidates):
            if name not in known:
                problems.append(
                    f"map.metrics.{method}.{i}: {name!r} is not a metric {method} writes; use one of: "
                    f"{', '.join(sorted(known))}"
                )
    for domain, name in map_settings["umap_metrics"].items():
        if domain not in prompt_sets:
            continue  # a domain this config does not run
        prompts = prompt_sets[domain]
        known = umap_metrics(domain, prompts.group_labels, prompts.frame)
        if name not in known:
            problems.append(
                f"map.umap_metrics.{domain}: {name!r} is not a metric umap writes for {domain}; use one of: "
                f"{', '.join(sorted(known))}"
            )
    return problems
