"""Fault injection on the real workflow: jobs killed mid-write (SIGKILL, and Ctrl-C: SIGINT to the process group)
in the GPU stage (activations) and the CPU stage (umap), and stale inputs; each followed by the rerun a user
would type.

Jobs are held just before renaming one chosen output into place (``KMAP_FAULT_PAUSE_S`` with
``KMAP_FAULT_PAUSE_MATCH``, see ``kmap.core.io.atomic_output``), so the kill lands mid-write deterministically:
the outputs written before it are final, the chosen one exists only as a hidden ``.partial`` temporary.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kmap.activations.cache import read_cache
from tests.workflow import copy_workflow, job_counts, local_env, snakemake, write_config

CONFIG = {
    "models": {"tiny-llama": {"kind": "tiny", "architecture": "llama", "dtype": "float32", "methods": ["umap"]}},
    "domains": ["disease"],
    "tiny": {"n_layers": 2, "hidden_size": 32},
    "bootstrap": {"n": 20},
    "umap": {"n_epochs": 30},
}
ACTIVATIONS = "results/activations/tiny-llama/disease"
UMAP = "results/umap/tiny-llama/disease"


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    work = copy_workflow(tmp_path / "wf")
    write_config(work, CONFIG)
    return work


def _held_run(work: Path, target: str, match: str) -> subprocess.Popen:
    """Snakemake building ``target`` in its own process group, held before renaming the output ``match``."""
    env = local_env(KMAP_FAULT_PAUSE_S="600", KMAP_FAULT_PAUSE_MATCH=match)
    command = [sys.executable, "-m", "snakemake", target, "--cores", "1", "--configfile", "config/test.yaml"]
    log = open(work / "held.log", "w")  # noqa: SIM115 - closed with the process
    # SIGINT as in a terminal: a process that starts with SIGINT ignored (inherited, e.g. from a test runner whose
    # libraries set SIG_IGN) never gets KeyboardInterrupt, and Ctrl-C would then do nothing.
    return subprocess.Popen(
        command,
        cwd=work,
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # noqa: PLW1509 - no threads started yet
    )


def _wait_for_partial(work: Path, output: str, timeout: float = 300) -> Path:
    final = work / output
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(final.parent.glob(f".{final.name}.*.partial"))
        if found and any(p.iterdir() for p in found):
            return found[0]
        time.sleep(0.5)
    raise AssertionError(f"no temporary of {output} appeared:\n{(work / 'held.log').read_text()[-3000:]}")


def _kill(proc: subprocess.Popen, sig: signal.Signals) -> signal.Signals:
    """Send ``sig`` to the run's process group; what actually ended it (SIGKILL when it outlived two minutes, as a
    user would kill a run that ignores Ctrl-C)."""
    os.killpg(proc.pid, sig)
    try:
        proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        return signal.SIGKILL
    return sig


def _visible(directory: Path) -> list[str]:
    """What a reader globbing the directory sees (temporaries are hidden dot-files)."""
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))


def _plan(work: Path, *extra: str) -> dict[str, int]:
    result = snakemake(work, "-n", "--configfile", "config/test.yaml", *extra)
    return job_counts(result.stdout)


def _after_kill(work: Path, sig: signal.Signals) -> tuple[str, ...]:
    """What a user types after the kill. Ctrl-C or SIGTERM: nothing (Snakemake cleaned up). SIGKILL: Snakemake's lock is
    left behind, so a run refuses, naming --unlock; after it, a plain run redoes the incomplete job (the workflow
    profile sets rerun-incomplete: kmap's outputs are renamed into place only when complete)."""
    if sig in (signal.SIGTERM, signal.SIGINT):  # scancel, Ctrl-C: Snakemake shuts down and cleans up
        return ()
    locked = snakemake(work, "--configfile", "config/test.yaml", check=False)
    assert locked.returncode != 0 and "--unlock" in locked.stdout + locked.stderr
    snakemake(work, "--unlock", "--configfile", "config/test.yaml")
    return ()


def _target_plan(work: Path, target: str, *extra: str) -> dict[str, int]:
    return job_counts(snakemake(work, "-n", target, "--configfile", "config/test.yaml", *extra).stdout)


# The GPU stage is killed by SIGKILL (a node lost, a job past its time limit) and by Ctrl-C (SIGINT to the whole
# foreground process group, as a terminal sends it); the CPU stage by Ctrl-C. SIGTERM (scancel) takes Snakemake's
# same shutdown path as SIGINT; every signal on every stage would cost CI several more minutes.
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "ctrl-c"])
def test_gpu_stage_killed_mid_write_reruns_exactly_that_job(work: Path, sig: signal.Signals) -> None:
    snakemake(work, "results/models/tiny-llama", "--configfile", "config/test.yaml")
    # The tensor is renamed first; hold the job before its prompt table is, then kill it.
    proc = _held_run(work, f"{ACTIVATIONS}.safetensors", "disease.prompts.parquet")
    _wait_for_partial(work, f"{ACTIVATIONS}.prompts.parquet")
    sig = _kill(proc, sig)
    folder = work / ACTIVATIONS.rsplit("/", 1)[0]
    # No reader sees a half-written file: the table's final name was never created.
    assert "disease.prompts.parquet" not in _visible(folder)
    # The tensor renamed before the kill may stay (complete in itself); the job is incomplete, so it is redone.
    extra = _after_kill(work, sig)
    # The whole workflow's plan holds this job once; the target's plan this job only.
    assert _plan(work, *extra)["activations"] == 1
    assert _target_plan(work, f"{ACTIVATIONS}.safetensors", *extra) == {"activations": 1}
    snakemake(work, f"{ACTIVATIONS}.safetensors", "--configfile", "config/test.yaml", *extra)
    cache = read_cache(f"{work / ACTIVATIONS}.safetensors", f"{work / ACTIVATIONS}.prompts.parquet")
    assert cache.acts.shape[0] == 3 and cache.provenance["domain"] == "disease"
    assert not list(folder.glob(".*.partial"))  # the rerun removed the killed attempt's temporary
    assert _target_plan(work, f"{ACTIVATIONS}.safetensors") == {}


@pytest.mark.parametrize("sig", [signal.SIGINT], ids=["ctrl-c"])
def test_cpu_stage_killed_mid_write_reruns_exactly_that_job(work: Path, sig: signal.Signals) -> None:
    snakemake(work, f"{ACTIVATIONS}.safetensors", "--configfile", "config/test.yaml")
    before = (work / f"{ACTIVATIONS}.safetensors").stat().st_mtime_ns
    # metrics and replicates are renamed before coords: hold the coords, then kill.
    proc = _held_run(work, f"{UMAP}.panels.png", "disease.coords.parquet")
    _wait_for_partial(work, f"{UMAP}.coords.parquet")
    sig = _kill(proc, sig)
    assert "disease.coords.parquet" not in _visible(work / UMAP.rsplit("/", 1)[0])
    extra = _after_kill(work, sig)
    plan = _plan(work, *extra)
    assert plan["umap"] == 1 and "activations" not in plan  # the cache it reads is kept
    assert _target_plan(work, f"{UMAP}.panels.png", *extra) == {"umap": 1}
    snakemake(work, f"{UMAP}.panels.png", "--configfile", "config/test.yaml", *extra)
    assert (work / f"{ACTIVATIONS}.safetensors").stat().st_mtime_ns == before
    assert (work / f"{UMAP}.coords.parquet").stat().st_size > 0
    assert _target_plan(work, f"{UMAP}.panels.png") == {}


def test_stale_inputs_rerun_dependents_and_say_why(work: Path) -> None:
    snakemake(work, "--configfile", "config/test.yaml")
    assert _plan(work) == {}
    # A code change in the activation module reruns the cache and everything downstream, with the reason.
    module = work / "workflow_scripts" / "kmap" / "activations" / "cache.py"
    source = module.read_text()
    module.write_text(source + "\n# a change\n")
    result = snakemake(work, "-n", "--configfile", "config/test.yaml")
    assert job_counts(result.stdout)["activations"] == 1 and "Params have changed" in result.stdout
    module.write_text(source)
    assert _plan(work) == {}
    # A model setting (the tiny model's seed) rebuilds the model, then its cache and metrics.
    write_config(work, {**CONFIG, "tiny": {**CONFIG["tiny"], "seed": 1}}, "seed.yaml")
    result = snakemake(work, "-n", "--configfile", "config/seed.yaml")
    counts = job_counts(result.stdout)
    assert counts["tiny_model"] == 1 and counts["activations"] == 1 and counts["umap"] == 1
    assert "Params have changed" in result.stdout
    # A prompt edit hidden from Snakemake (--touch marks every output up to date): the cache's reader still
    # refuses it, naming the file and the fix, instead of mapping the old prompts under the new labels.
    prompts = work / "prompts" / "disease.csv"
    prompts.write_text(prompts.read_text().replace("is a disease of the", "is an illness of the", 1))
    snakemake(work, "--configfile", "config/test.yaml", "--touch")
    assert _plan(work) == {}
    failed = snakemake(
        work, f"{UMAP}.panels.png", "--configfile", "config/test.yaml", "--forcerun", "umap", check=False
    )
    log = (work / "results/logs/umap/tiny-llama/disease.log").read_text()
    assert failed.returncode != 0 and "StaleCacheError" in log and "snakemake --forcerun activations" in log
