"""Rule patching (GPU): method 4, clean/corrupted runs and the exact layer sweep of one (model, domain):
per-pair logit differences and the position-by-position heatmap pairs."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from kmap.core.job import Job
from kmap.core.models import load_for_job, prompt_format_for_job
from kmap.data.prompts import load_pairs
from kmap.methods.patching.run import run_patching
from kmap.methods.patching.settings import PatchingSettings, exclusion_note


def main(job: Job) -> None:
    # On a retry (e.g. after CUDA out-of-memory) batch_size is halved; the values do not depend on it.
    settings = PatchingSettings(**job.section("settings", batch_size=job.smk.resources.batch_size))
    pairs = load_pairs(job.domain, job.params["prompts_dir"])
    loaded = load_for_job(job)
    run = run_patching(loaded, pairs.frame, settings, job.progress("pairs"), prompt_format_for_job(job, loaded))
    job.log.info("%s: %s", job.label, exclusion_note(run.pairs) or "every pair used")
    for frame, path in ((run.pairs, job.smk.output.pairs), (run.heatmap, job.smk.output.heatmap)):
        job.write_frame(frame.assign(model=job.model, domain=job.domain), path)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
