"""Rule ablation_judge (CPU, network only): method 3, LLM-judge scores of (intact, ablated) response pairs.

Without the API key the judge is skipped (one log line, every pair recorded with status ``skipped``) and the
job still succeeds; the key is not an input, so adding it later reruns nothing by itself: run
``snakemake --forcerun ablation_judge`` (cached answers are reused, so only new pairs cost).
"""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import logging
import os
import time

import pandas as pd

from kmap.core.io import write_text_atomic
from kmap.core.job import Job
from kmap.methods.ablation.judge import JudgeSettings, cache_file, retry_file, run_judge


def main(job: Job) -> None:
    # One line per HTTP request would drown the log (and say nothing the status table does not).
    for name in ("httpx", "httpcore", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # Score-changing settings come from params (rerun triggers); transport ones (concurrency, timeouts,
    # retries) straight from the config, so tuning them never reruns the judge.
    settings = JudgeSettings.from_dict({**job.smk.config.get("judge", {}), **job.params["judge"]})
    cache = str(cache_file(job.params["cache_dir"], job.model, job.domain))
    responses = pd.read_parquet(job.smk.input.responses)
    run = run_judge(responses, settings, cache, job.model, job.domain, progress=job.progress("pairs"))
    job.note(
        judge=settings.record(),
        skipped=run.skipped_reason,
        requests_sent=run.requests_sent,
        status_counts=run.status_counts,
        cache=cache,
    )
    job.write_frame(run.table, job.smk.output.judge)
    job.log.info("judge %s: %s, %d requests sent", job.label, run.status_counts, run.requests_sent)
    failed = run.status_counts.get("failed", 0)
    if failed:
        # A new retry token (the rule's param `retry`): the next run reruns this job, sending the failed pairs.
        token = retry_file(job.params["cache_dir"], job.model, job.domain)
        write_text_atomic(token, f"{time.time_ns()}-{os.getpid()}\n")
        job.log.warning(
            "judge %s: %d pair(s) failed (%s); the next `snakemake` run retries them, answers already received "
            "are reused",
            job.label,
            failed,
            run.skipped_reason or "see the reason column",
        )


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
