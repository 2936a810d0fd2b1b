"""The tests' Snakemake fork server (``tests/snakefork.py``) behaves as a fresh ``python -m snakemake``: the same
exit status and messages, the caller's folder and environment, and a timeout that stops the whole run."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from tests.workflow import local_env, snakemake

SNAKEFILE = """
rule all:
    input: "env.txt"

rule env:
    output: "env.txt"
    shell: "echo $KMAP_FORK_PROBE > {output}"

rule hold:
    output: "held.txt"
    shell: "echo $$ > pid.txt; sleep 120; touch {output}"
"""


@pytest.fixture()
def work(tmp_path: Path) -> Path:
    (tmp_path / "Snakefile").write_text(SNAKEFILE)
    return tmp_path


def test_forked_call_matches_a_fresh_process(work: Path) -> None:
    forked = snakemake(work, "-n", "missing_target", check=False)
    fresh = snakemake(work, "-n", "missing_target", check=False, fork=False)
    assert forked.returncode == fresh.returncode == 1
    assert "MissingRuleException" in forked.stdout + forked.stderr
    assert (forked.stdout + forked.stderr).count("missing_target") == (fresh.stdout + fresh.stderr).count(
        "missing_target"
    )
    # The caller's folder and environment: the job sees the variable, the output lands in work.
    snakemake(work, env=local_env(KMAP_FORK_PROBE="probe-value"))
    assert (work / "env.txt").read_text().strip() == "probe-value"


def test_timeout_kills_the_run_and_its_jobs(work: Path) -> None:
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        snakemake(work, "held.txt", timeout=8)
    assert time.monotonic() - start < 60
    pid = int((work / "pid.txt").read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    # The server still serves.
    assert snakemake(work, "-n", "held.txt").returncode == 0
