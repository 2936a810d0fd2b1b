"""Rule activations (GPU for hub models): cache residual-stream activations of one (model, domain)."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from kmap.activations.cache import ActivationSettings, write_cache
from kmap.activations.extract import extract
from kmap.core.job import Job
from kmap.core.models import load_for_job, prompt_format_for_job
from kmap.data.prompts import load_prompt_set


def main(job: Job) -> None:
    out = job.smk.output
    # On a retry (e.g. after CUDA out-of-memory) the batch_size resource is halved; values do not depend on it.
    settings = ActivationSettings(**job.section("settings", batch_size=job.smk.resources.batch_size))
    frame = load_prompt_set(job.domain, job.params["prompts_dir"]).frame
    loaded = load_for_job(job)
    acts, n_tokens = extract(
        loaded,
        frame["text"].tolist(),
        settings,
        concepts=frame["concept"].tolist() if "concept" in frame else None,
        progress=job.progress("prompts"),
        fmt=prompt_format_for_job(job, loaded),
    )
    job.note(hidden_size=loaded.hidden_size, n_prompts=len(frame))
    write_cache(
        acts, frame.assign(n_tokens=n_tokens), job.provenance, out.tensor, out.table, out.provenance, settings.dtype
    )
    job.log.info("wrote %s: %s", out.tensor, tuple(acts.shape))


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
