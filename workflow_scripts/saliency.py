"""Rule saliency (GPU): method 2, per-prompt weight-gradient saliency of one (model, domain)."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import dataclasses
import time

from kmap.core.job import Job
from kmap.core.models import load_for_job, prompt_format_for_job
from kmap.data.prompts import load_prompt_set
from kmap.methods.saliency.measure import describe, run_saliency
from kmap.methods.saliency.settings import SaliencySettings


def main(job: Job) -> None:
    # On a retry (e.g. after CUDA out-of-memory) batch_size is halved; the values do not depend on it.
    settings = SaliencySettings(**job.section("settings", batch_size=job.smk.resources.batch_size))
    frame = load_prompt_set(job.domain, job.params["prompts_dir"]).frame
    # Weight gradients need real weights: quantized checkpoints are loaded dequantized (the GPU plan's
    # gradient stage budgets for that).
    loaded = load_for_job(job, dataclasses.replace(job.spec(), quantization="none"), stage="gradient")
    measured = describe(loaded)
    job.log.info("measured parameters of layer 0: %s", measured)
    started = time.perf_counter()
    run = run_saliency(loaded, frame, settings, job.progress("prompts"), prompt_format_for_job(job, loaded))
    seconds = time.perf_counter() - started
    job.log.info(
        "%d prompts in %.1f s (%.2f prompts/s, %s)",
        len(run.ids),
        seconds,
        len(run.ids) / max(seconds, 1e-9),
        f"{run.batch_size} per backward" if run.batch_size > 1 else "one per backward",
    )
    job.note(
        measured_layer0=measured, seconds=round(seconds, 2), n_prompts=len(run.ids), prompts_per_backward=run.batch_size
    )
    job.write_frame(run.table(), job.smk.output.raw)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
