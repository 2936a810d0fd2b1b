"""The workflow on a real SLURM controller (single node, fake GPU GRES), compared with a local run.

Needs Debian's slurm-wlm and munge and root (`.ci/run` installs them); skipped where `slurmctld` is absent.
The controller (`.ci/slurm.sh`) has one node in two partitions, gpu and cpu, with the node feature fakegpu80: the
test config routes jobs there (cluster.gpu_partition / cpu_partition / gpu_constraint), and the test checks what
SLURM recorded for each job (CPUs, GPUs, partition, memory, time limit, constraint) against the workflow's plan.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
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
    # Left in /etc/slurm, the CI controller's slurm.conf would make every later Snakemake start on this machine
    # wait 9 s (the SLURM plugin's `scontrol show config` call, for a controller that no longer runs).
    conf = Path("/etc/slurm/slurm.conf")
    assert not (conf.exists() and "ClusterName=kmapci" in conf.read_text()), f"slurm.sh stop left {conf}"


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
        # The partitions and node feature of .ci/slurm.sh (the local run ignores them: resources only).
        "cluster": {"gpu_partition": "gpu", "cpu_partition": "cpu", "gpu_constraint": "fakegpu80"},
    }


def _slurm_profile(work: Path) -> Path:
    profile = yaml.safe_load((work / "profiles" / "slurm" / "config.yaml").read_text())
    profile.update(
        {
            "slurm-no-account": True,  # the CI controller has no accounts
            "latency-wait": 5,
            "slurm-init-seconds-before-status-checks": 1,
            "jobs": 4,
            # The CI node has 2 CPUs: a job asking more (UMAP and the GPU jobs of hf models ask 8) would pend
            # forever. A site with small nodes caps every rule's threads the same way.
            "max-threads": 2,
        }
    )
    # No partition here: the config's cluster section routes every job (its default-resources pass through).
    target = work / "profiles" / "ci-slurm"
    target.mkdir()
    (target / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return target


# What squeue shows of a job: the sbatch options the plugin derived from the job's threads and resources.
SQUEUE_FIELDS = ("JobID", "Partition", "NumCPUs", "tres-per-job", "MinMemory", "TimeLimit", "Feature")


def _planned_jobs(output: str) -> dict[tuple[str, str], dict[str, str]]:
    """The jobs of a dry run by (rule, wildcard values joined by '_': the folder of the SLURM plugin's job log),
    each with its threads (1 where Snakemake prints none) and resources as Snakemake printed them."""
    jobs: dict[tuple[str, str], dict[str, str]] = {}
    job: dict[str, str] | None = None
    for line in output.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\w+):", line):
            job = {"rule": match[1], "wildcards": "", "threads": "1"}
        elif job is not None:
            key, _, value = line.strip().partition(": ")
            if key == "wildcards":
                values = (item.split("=", 1)[1] for item in value.split(", "))
                job["wildcards"] = "_".join(values).replace("/", "_")
            elif key == "threads":
                job["threads"] = value
            elif key == "resources":  # the last of the job's lines used here
                job.update(item.split("=", 1) for item in value.split(", "))
                jobs[job["rule"], job["wildcards"]] = job
                job = None
    return jobs


def _recorded_jobs() -> tuple[dict[str, dict[str, str]], str]:
    """SQUEUE_FIELDS of every job the controller remembers (MinJobAge keeps finished jobs for 10 minutes), by id;
    and squeue's listing."""
    listed = subprocess.run(
        ["squeue", "-t", "all", "-h", "-O", ",".join(f"{field}:40" for field in SQUEUE_FIELDS)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [row for row in (line.split() for line in listed.splitlines()) if len(row) == len(SQUEUE_FIELDS)]
    return {row[0]: dict(zip(SQUEUE_FIELDS, row, strict=True)) for row in rows}, listed


def _mib(memory: str) -> float:
    """squeue's memory (4000M, 16G) in MiB, the unit of sbatch --mem (and so of mem_mb)."""
    number, unit = re.fullmatch(r"([\d.]+)([KMGT])", memory).groups()
    return float(number) * {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2}[unit]


def _minutes(limit: str) -> float:
    """squeue's time limit ([days-][hours:]minutes:seconds) in minutes, the unit of the runtime resource."""
    days, _, clock = limit.rpartition("-")
    seconds = 0
    for part in clock.split(":"):
        seconds = 60 * seconds + int(part)
    return int(days or 0) * 24 * 60 + seconds / 60


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
    arguments = ("--profile", str(profile), "--configfile", "config/test.yaml")
    # The workflow's own plan for each job: a dry run of the same config and profile prints threads (after the
    # profile's max-threads) and resources.
    dry = snakemake(cluster, "-n", *arguments)
    plan = _planned_jobs(dry.stdout + dry.stderr)
    # The local run of the same config, for comparison, runs meanwhile: the SLURM run mostly waits on the queue.
    local = copy_workflow(tmp_path / "local")
    write_config(local, _config(model_dir))
    with ThreadPoolExecutor(1) as pool:
        local_run = pool.submit(snakemake, local, "--configfile", "config/test.yaml", fork=False)
        result = snakemake(cluster, *arguments, timeout=1500, env=dict(os.environ))
        recorded, listed = _recorded_jobs()  # at once: MinJobAge keeps finished jobs for 10 minutes only
        local_run.result()
    output = result.stdout + result.stderr
    # Describing the GPUs differently changes the plan's memory split, a resource and never a rerun trigger: with
    # every result in place nothing is planned.
    write_config(local, {**_config(model_dir), "gpu": {"memory_gib": 141}}, "bigger.yaml")
    assert job_counts(snakemake(local, "-n", "--configfile", "config/bigger.yaml").stdout) == {}

    # Jobs went through SLURM: job ids in the plugin's logs (slurm_logs/rule_<rule>/<wildcards>/<id>.log) and in
    # squeue's memory of finished jobs.
    logs = cluster / ".snakemake" / "slurm_logs"
    jobs: dict[tuple[str, str], list[str]] = {}
    for log in logs.rglob("*.log"):
        rule, *wildcards = log.parent.relative_to(logs).parts
        jobs.setdefault((rule.removeprefix("rule_"), "/".join(wildcards)), []).append(log.stem)
    job_ids = {job_id for ids in jobs.values() for job_id in ids}
    assert len(job_ids) >= 3, output[-3000:]
    assert job_ids <= set(recorded), listed
    # Every job got from SLURM what the workflow planned: CPUs = threads, the planned GPUs as a GRES (none for a
    # job without), the routed partition, memory = mem_mb, time limit = runtime, the GPU constraint for GPU jobs.
    for (rule, wildcards), ids in jobs.items():
        assert (rule, wildcards) in plan, (rule, wildcards, sorted(plan))
        planned = plan[rule, wildcards]
        gpus = int(planned.get("gpu", 0))
        expected = {
            "Partition": planned["slurm_partition"],
            "NumCPUs": planned["threads"],
            "tres-per-job": f"gres:gpu:{gpus}" if gpus else "N/A",
            "MinMemory": float(planned["mem_mb"]),
            "TimeLimit": float(planned["runtime"]),
            "Feature": planned.get("constraint", "(null)"),
        }
        for job_id in ids:
            got = recorded[job_id]
            got = {**got, "MinMemory": _mib(got["MinMemory"]), "TimeLimit": _minutes(got["TimeLimit"])}
            assert {field: got[field] for field in expected} == expected, (rule, wildcards, listed)

    # One job of each kind, as the site would see it. A GPU job (kind hf): the planned GPU, on the GPU partition
    # with the GPU constraint, its plan's CPUs capped to the node's 2 by max-threads.
    def job_of(rule: str, wildcards: str) -> dict[str, str]:  # its last attempt, should a job have been retried
        assert jobs.get((rule, wildcards)), (rule, wildcards, sorted(jobs))
        return recorded[max(jobs[rule, wildcards], key=int)]

    def fields(job: dict[str, str]) -> tuple:
        return (job["Partition"], job["NumCPUs"], job["tres-per-job"], job["Feature"])

    for rule in ("activations", "patching"):
        assert fields(job_of(rule, "local-llama_disease")) == ("gpu", "2", "gres:gpu:1", "fakegpu80"), listed
    # The GPU rule's job of a model planned on CPU (tiny): no GPU, the CPU partition, no constraint, one CPU.
    assert fields(job_of("activations", "tiny-qwen3_disease")) == ("cpu", "1", "N/A", "(null)"), listed
    # CPU rules: the CPU partition, no GPU, no constraint; UMAP of an hf model asks 8 threads, capped to 2. Memory
    # and time limit are the rules' own numbers.
    umap = job_of("umap", "local-llama_disease")
    assert fields(umap) == ("cpu", "2", "N/A", "(null)"), listed
    assert (_mib(umap["MinMemory"]), _minutes(umap["TimeLimit"])) == (4000, 60), listed
    summary = job_of("patching_summary", "local-llama_disease")
    assert fields(summary) == ("cpu", "1", "N/A", "(null)"), listed
    assert (_mib(summary["MinMemory"]), _minutes(summary["TimeLimit"])) == (2000, 10), listed
    for rule in ("tiny_model", "preflight"):
        assert [key for key in jobs if key[0] == rule], (rule, sorted(jobs))
    for (rule, _), ids in jobs.items():
        if rule in ("tiny_model", "preflight", "umap", "patching_summary"):
            assert all(recorded[i]["tres-per-job"] == "N/A" and recorded[i]["Partition"] == "cpu" for i in ids), rule
    # The aggregation rules are local rules: they ran where Snakemake ran, without a SLURM job.
    for rule in ("intervals", "knowledge_map", "cross_model", "cost_plan"):
        assert not [key for key in jobs if key[0] == rule], rule
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
