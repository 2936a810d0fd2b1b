"""The workflow on a real SLURM controller (single node, fake GPU GRES), compared with a local run.

Needs Debian's slurm-wlm and munge and root (`.ci/run` installs them); skipped where `slurmctld` is absent.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kmap.activations.cache import read_cache
from kmap.offline.tiny import build_tiny_model
from tests.workflow import REPO, copy_workflow, job_counts, local_hf_model, snakemake, write_config

pytestmark = [
    pytest.mark.skipif(shutil.which("slurmctld") is None, reason="SLURM (slurm-wlm) not installed"),
    pytest.mark.xdist_group("slurm"),
]


@pytest.fixture(scope="module")
def slurm():
    subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), "start"], check=True, timeout=300)
    yield
    subprocess.run(["bash", str(REPO / ".ci" / "slurm.sh"), "stop"], check=False, timeout=120)


def _config(model_dir: Path) -> dict:
    return {
        "models": {
            # A local checkpoint as kind hf: planned like a hub model, so its GPU rule asks SLURM for a GPU.
            # One CPU method (umap, then the map rules) and one GPU method (patching) besides activations.
            "local-llama": local_hf_model(model_dir, ["umap", "patching"]),
            "tiny-qwen3": {"kind": "tiny", "architecture": "qwen3", "dtype": "float32", "methods": []},
        },
        "domains": ["disease"],
        "tiny": {"n_layers": 2, "hidden_size": 32},
        "bootstrap": {"n": 20},
        "umap": {"n_epochs": 30},
        # The tiny tokenizer splits answers into several tokens: compare at the first differing one.
        "patching": {"multi_token_answers": "all", "min_gap": 0.0, "heatmap_pairs": 1, "min_pairs": 1},
    }


def _slurm_profile(work: Path) -> Path:
    profile = yaml.safe_load((work / "profiles" / "slurm" / "config.yaml").read_text())
    profile.update(
        {
            "slurm-no-account": True,  # the CI controller has no accounts
            "latency-wait": 5,
            "slurm-init-seconds-before-status-checks": 5,
            "jobs": 4,
        }
    )
    profile["set-threads"] = {"umap": 1}  # the CI node has 2 CPUs; the study profile asks 8 for UMAP
    profile["default-resources"] = {"slurm_partition": "gpu", "runtime": 10, "mem_mb": 1000}
    target = work / "profiles" / "ci-slurm"
    target.mkdir()
    (target / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return target


def test_workflow_runs_through_slurm_like_locally(slurm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The fake GPU is a GRES for the scheduler only; the job itself computes on CPU.
    monkeypatch.setenv("KMAP_ALLOW_CPU", "1")
    words = [line.split(",")[1] for line in (REPO / "prompts" / "disease.csv").read_text().splitlines()[1:]]
    model_dir = tmp_path / "local-llama"
    build_tiny_model(
        "llama", sorted({w for text in words for w in text.split()}), model_dir, n_layers=2, hidden_size=32
    )

    cluster = copy_workflow(tmp_path / "cluster")
    write_config(cluster, _config(model_dir))
    profile = _slurm_profile(cluster)
    result = snakemake(
        cluster, "--profile", str(profile), "--configfile", "config/test.yaml", timeout=1500, env=dict(os.environ)
    )
    output = result.stdout + result.stderr

    local = copy_workflow(tmp_path / "local")
    write_config(local, _config(model_dir))
    snakemake(local, "--configfile", "config/test.yaml")
    # Describing the GPUs differently changes the plan's memory split, a resource and never a rerun trigger: with
    # every result in place nothing is planned.
    write_config(local, {**_config(model_dir), "gpu": {"memory_gib": 141}}, "bigger.yaml")
    assert job_counts(snakemake(local, "-n", "--configfile", "config/bigger.yaml").stdout) == {}

    # Jobs went through SLURM: job ids in the plugin's logs and in squeue's memory of finished jobs.
    job_logs = list((cluster / ".snakemake" / "slurm_logs").rglob("*.log"))
    job_ids = {p.stem for p in job_logs}
    assert len(job_ids) >= 3, output[-3000:]
    listed = subprocess.run(
        ["squeue", "-t", "all", "-h", "-O", "JobID:12,tres-per-job:30"], capture_output=True, text=True
    ).stdout
    gres = dict(line.split() for line in listed.splitlines() if len(line.split()) == 2)
    assert job_ids <= set(gres), listed
    # The GPU rule asked for the model's planned GPU; CPU-only jobs asked for none.
    gpu_jobs = [p.stem for p in job_logs if "/rule_activations/" in str(p) and "local-llama" in str(p)]
    assert gpu_jobs and all("gpu:1" in gres.get(j, "") for j in gpu_jobs), listed
    gpu_jobs = [p.stem for p in job_logs if "/rule_patching/" in str(p)]
    assert gpu_jobs and all("gpu:1" in gres.get(j, "") for j in gpu_jobs), listed
    for rule in ("tiny_model", "preflight", "umap", "patching_summary"):
        cpu_jobs = [p.stem for p in job_logs if f"/rule_{rule}/" in str(p)]
        assert cpu_jobs and all("gpu" not in gres.get(j, "") for j in cpu_jobs), (rule, listed)
    # The aggregation rules are local rules: they ran where Snakemake ran, without a SLURM job.
    for rule in ("intervals", "knowledge_map", "cross_model"):
        assert not [p for p in job_logs if f"/rule_{rule}/" in str(p)], rule
    assert (cluster / "results/summary/table1.csv").exists()

    # Same results as the local run.
    for model in ("local-llama", "tiny-qwen3"):
        a = read_cache(
            *(cluster / f"results/activations/{model}/disease.{ext}" for ext in ("safetensors", "prompts.parquet"))
        )
        b = read_cache(
            *(local / f"results/activations/{model}/disease.{ext}" for ext in ("safetensors", "prompts.parquet"))
        )
        np.testing.assert_array_equal(a.acts, b.acts)
    # The GPU method's results and the map agree too (patching is deterministic; UMAP is seeded).
    for name in ("patching/local-llama/disease.pairs.parquet", "maps/local-llama/map_cells.parquet"):
        a, b = (pd.read_parquet(root / "results" / name) for root in (cluster, local))
        pd.testing.assert_frame_equal(a, b)
