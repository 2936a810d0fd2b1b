"""Rule stage_weights (where the internet is): one pinned hub snapshot per model, read offline by every job."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import json
from pathlib import Path

from kmap.core.job import Job
from kmap.core.staging import hub_token, stage_snapshot


def main(job: Job) -> None:
    manifest_path = Path(job.smk.output.manifest)
    params = job.params
    # The token comes from the environment only and goes nowhere but the hub's Authorization header.
    manifest = stage_snapshot(
        job.wildcards["model"],
        params["source"],
        params["revision"],
        manifest_path.parent,
        hub_token(),
        min_free_margin_gib=params["min_free_gib"],
    )
    job.note(resolved_revision=manifest["commit"], staged_bytes=manifest["total_bytes"])
    job.write_text(manifest_path, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    job.log.info(
        "staged %s@%s (%s) : %d files, %.1f GiB",
        params["source"],
        params["revision"],
        manifest["commit"],
        len(manifest["files"]),
        manifest["total_bytes"] / 2**30,
    )


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
