"""The parse's check of the prompt folder: every configured domain's prompt set and pairs valid, and every map
metric one its method writes for them; remembered by content (``kmap.core.memo``), so an unchanged folder is read
once, not at every parse (the dry run's and each SLURM job's), and an invalid one fails every time.

A module of its own, imported by the Snakefile only: no entry script imports it, so editing it reruns no job.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kmap.core.memo import remembered
from kmap.data.prompts import validate_all
from kmap.maps.known_metrics import map_metric_problems


def prompt_files(prompts_dir: str | Path, domains: list[str]) -> list[Path]:
    """Every file ``validate_all`` reads: the schema, the knowledge base, each domain's prompt set and pairs."""
    prompts_dir = Path(prompts_dir)
    files = [prompts_dir / "schema.yaml", prompts_dir / "knowledge.yaml"]
    for domain in domains:
        files += [prompts_dir / f"{domain}.csv", prompts_dir / "pairs" / f"{domain}.csv"]
    return files


def checked_prompts(prompts_dir: str | Path, domains: list[str], map_settings: Mapping[str, Any]) -> list[str]:
    """``validate_all`` (raising on the first problem, naming file, row, column and fix), then the map metric
    settings naming a metric no method writes for these prompt sets (``map_metric_problems``). Remembered by the
    prompt files' content, the code of this module's import closure and the settings."""
    domains = list(domains)
    return remembered(
        "prompts",
        prompt_files(prompts_dir, domains),
        [Path(__file__)],
        lambda: map_metric_problems(map_settings, validate_all(prompts_dir, domains)),
        settings={"domains": domains, "map": map_settings},
    )
