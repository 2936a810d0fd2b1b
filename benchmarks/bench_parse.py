"""Wall time of the study's dry run, which every SLURM job repeats as its Snakefile parse.

    python benchmarks/bench_parse.py [--repeats 5]

Runs ``snakemake -n --configfile config/paper.yaml`` (871 jobs planned, no GPU, no weights) ``repeats`` times
from the repository root and prints each wall time and the median, plus whether the parse imported torch.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    command = [sys.executable, "-m", "snakemake", "-n", "--configfile", "config/paper.yaml", "--quiet"]
    times = []
    for _ in range(args.repeats):
        started = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - started)
    print("dry run (s):", " ".join(f"{t:.2f}" for t in times), f"median {statistics.median(times):.2f}")
    probe = (
        "import sys; sys.path.append('workflow_scripts');"
        "import kmap.core.config, kmap.core.gpu_plan, kmap.core.provenance, kmap.data.prompts, kmap.maps.table1,"
        "kmap.methods.ablation.settings, kmap.methods.ablation.judge; print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True, capture_output=True, text=True)
    print("parse imports torch:", out.stdout.strip())


if __name__ == "__main__":
    main()
