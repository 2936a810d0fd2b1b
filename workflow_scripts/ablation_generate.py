"""Rule ablation_generate (GPU): method 3, greedy responses with each layer ablated in turn, and the
judge-free per-(prompt, layer) metrics."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from kmap.core.job import Job
from kmap.core.models import load_for_job, prompt_format_for_job
from kmap.data.prompts import load_prompt_set
from kmap.methods.ablation.generate import run_ablation
from kmap.methods.ablation.settings import AblationSettings


def main(job: Job) -> None:
    # On a retry (e.g. after CUDA out-of-memory) the batch_size resource is halved; values do not depend on it.
    settings = AblationSettings(**job.section("settings", batch_size=job.smk.resources.batch_size))
    frame = load_prompt_set(job.domain, job.params["prompts_dir"]).frame
    loaded = load_for_job(job)
    fmt = prompt_format_for_job(job, loaded)
    run = run_ablation(loaded, frame["id"].tolist(), frame["text"].tolist(), settings, job.progress("prompts"), fmt)
    job.log.info(
        "generated %d tokens, %d of them decoded in %.1f s (%.1f tokens/s), the rest read from the scoring pass; "
        "greedy mismatches %d",
        run.generated_tokens,
        run.decoded_tokens,
        run.generate_seconds,
        run.tokens_per_second,
        run.greedy_mismatches,
    )
    job.note(
        n_prompts=len(frame),
        generated_tokens=run.generated_tokens,
        decoded_tokens=run.decoded_tokens,
        generate_seconds=round(run.generate_seconds, 2),
        tokens_per_second=round(run.tokens_per_second, 1),
        greedy_mismatches=run.greedy_mismatches,
    )
    job.write_frame(run.responses.assign(model=job.model, domain=job.domain), job.smk.output.responses)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
