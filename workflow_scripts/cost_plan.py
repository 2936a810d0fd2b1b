"""Rule cost_plan (local): the study's planned jobs, GPUs and GPU-hours per model and GPU rule, as a table."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.cost import COLUMNS
from kmap.core.job import Job


def main(job: Job) -> None:
    frame = pd.DataFrame(job.params["rows"], columns=list(COLUMNS))
    job.write_text(job.smk.output.table, frame.to_csv(index=False))
    total = frame[(frame["model"] == "all") & (frame["rule"] == "all")]
    job.log.info("planned GPU-hours: %s", total["gpu_hours"].iloc[0] if len(total) else 0)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
