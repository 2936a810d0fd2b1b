"""Wall time of the study's dry run, which every SLURM job repeats as its Snakefile parse.

    python benchmarks/bench_parse.py [--repeats 5]

Runs ``snakemake -n --configfile config/paper.yaml`` (no GPU, no weights) ``repeats`` times from the repository
root, with ``--quiet`` (the plan's summary only) and as typed (every job printed), interleaved, and prints each
wall time and the medians; then the number of jobs, ``snakemake --version`` (Snakemake's own start-up, the floor
of any run) and whether the parse imported torch.

First it times ``scontrol show config``: the SLURM executor plugin runs it as it loads, in every Snakemake command.
Where SLURM's client is installed and configured but no controller answers (a CI machine whose test controller
was stopped with its slurm.conf left in /etc/slurm), it waits about 9 s, and every figure here with it; the
benchmark says so instead of timing that wait.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
DRY_RUN = [*SNAKEMAKE, "-n", "--configfile", "config/paper.yaml"]


def timed(command: list[str]) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(command, cwd=REPO, check=True, capture_output=True, text=True)
    return time.perf_counter() - started, out.stdout


def scontrol_seconds() -> float | None:
    """How long the SLURM plugin's start-up query takes here (None without SLURM's client)."""
    if shutil.which("scontrol") is None:
        return None
    started = time.perf_counter()
    subprocess.run(["scontrol", "show", "config"], capture_output=True, timeout=30, check=False)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    waited = scontrol_seconds()
    print("scontrol show config (s):", "no SLURM client" if waited is None else f"{waited:.2f}")
    if waited is not None and waited > 1:
        sys.exit(
            "scontrol waits for a SLURM controller that does not answer: every Snakemake command here waits as long. "
            "Start the controller, or remove the stale slurm.conf (.ci/slurm.sh stop does), then measure again."
        )
    quiet, plain, version = [], [], []
    stdout = ""
    for _ in range(args.repeats):
        quiet.append(timed([*DRY_RUN, "--quiet"])[0])
        seconds, stdout = timed(DRY_RUN)
        plain.append(seconds)
        version.append(timed([*SNAKEMAKE, "--version"])[0])
    for name, times in (("dry run --quiet", quiet), ("dry run", plain), ("snakemake --version", version)):
        print(f"{name} (s):", " ".join(f"{t:.2f}" for t in times), f"median {statistics.median(times):.2f}")
    total = re.search(r"^total\s+(\d+)", stdout, re.MULTILINE)
    print("jobs:", total.group(1) if total else "?")
    probe = (
        "import sys; sys.path.append('workflow_scripts');"
        "import kmap.core.config, kmap.core.gpu_plan, kmap.core.provenance, kmap.data.prompts, kmap.maps.table1,"
        "kmap.methods.ablation.settings, kmap.methods.ablation.judge; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True)
    print("parse imports torch:", out.stdout.strip())


if __name__ == "__main__":
    main()
