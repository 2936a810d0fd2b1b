"""The study's cost before submitting: jobs, GPUs and planned GPU-hours per model and GPU rule, from the GPU plans.

Planned hours are the jobs' SLURM time limits (``runtime``), an upper bound a scheduler reserves: load time plus
a compute budget that grows with model size (ablation from its prompt count, layers and tokens to generate).
Pure Python (no pandas, no torch): it runs at parse time for the dry run's summary.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# The GPU rules per method, and the GPU-plan stage each runs under.
GPU_RULES = {
    "activations": ("activations", "forward"),
    "saliency": ("saliency", "gradient"),
    "ablation": ("ablation_generate", "forward"),
    "patching": ("patching", "forward"),
}
COLUMNS = ("model", "rule", "jobs", "gpus_per_job", "gpu_hours", "wall_hours")


@dataclass(frozen=True)
class PlannedJob:
    model: str
    rule: str
    domain: str
    gpus: int
    runtime_min: int


def cost_rows(jobs: Iterable[PlannedJob]) -> list[dict[str, object]]:
    """One row per (model, rule) with any GPU, then one per model ("all") and the study total ("all", "all")."""
    groups: dict[tuple[str, str], list[PlannedJob]] = {}
    for job in jobs:
        if job.gpus > 0:
            groups.setdefault((job.model, job.rule), []).append(job)

    def row(model: str, rule: str, members: list[PlannedJob]) -> dict[str, object]:
        gpus = sorted({j.gpus for j in members})
        return {
            "model": model,
            "rule": rule,
            "jobs": len(members),
            "gpus_per_job": str(gpus[0]) if len(gpus) == 1 else f"{gpus[0]}-{gpus[-1]}",
            "gpu_hours": round(sum(j.gpus * j.runtime_min for j in members) / 60, 1),
            "wall_hours": round(sum(j.runtime_min for j in members) / 60, 1),
        }

    rows = []
    for model in dict.fromkeys(model for model, _ in groups):  # in plan order
        rules = [(key, members) for key, members in groups.items() if key[0] == model]
        rows += [row(model, rule, members) for (_, rule), members in rules]
        rows.append(row(model, "all", [j for _, members in rules for j in members]))
    if rows:
        rows.append(row("all", "all", [j for members in groups.values() for j in members]))
    return rows


def format_rows(rows: list[dict[str, object]]) -> str:
    """A plain-text table for the console."""
    table = [COLUMNS, *[tuple(str(r[c]) for c in COLUMNS) for r in rows]]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]

    def fmt(line: tuple[str, ...]) -> str:
        # Names left-aligned, numbers right-aligned.
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths, strict=True)))

    return "\n".join(fmt(line) for line in table)
