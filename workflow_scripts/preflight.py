"""Rule preflight (CPU, tokenizer only): what one GPU method will feed the model for one (model, domain): token
lengths against the context and, for patching, the usable pairs and their answer tokens; fails before any GPU."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from pathlib import Path

from kmap.core.job import Job
from kmap.core.prompt_format import PromptFormat
from kmap.core.provenance import code_version
from kmap.core.tokenizer import context_length, load_tokenizer
from kmap.data.preflight import PreflightError, preflight_table, problems, summary
from kmap.data.prompts import load_pairs, load_prompt_set


def main(job: Job) -> None:
    method = job.wildcards["method"]
    spec = job.spec()
    tokenizer = load_tokenizer(spec)
    fmt = PromptFormat.from_param(job.params["prompt_format"]).resolve(tokenizer)
    patching = method == "patching"
    prompts = None if patching else load_prompt_set(job.domain, job.params["prompts_dir"]).frame
    pairs = load_pairs(job.domain, job.params["prompts_dir"]).frame if patching else None
    context = context_length(spec)
    table = preflight_table(
        tokenizer,
        prompts,
        pairs,
        {method: fmt},
        context,
        {method: job.params["new_tokens"]},
        job.params["multi_token_answers"],
    )
    counts = summary(table)
    # Not a rerun trigger (the GPU job's inputs and settings are): recorded, so the table says what checked it.
    job.note(
        code_version=code_version(Path(__file__)), context_length=context, preflight=counts, prompt_format=fmt.mode
    )
    job.log.info("%s: %s format, context %s; %s", job.label, fmt.mode, context, counts)
    # Read from the config, not a param: changing the threshold must not rerun GPU jobs that already passed it.
    min_pairs = int(job.smk.config["patching"]["min_pairs"])
    found = problems(table, job.model, job.domain, min_pairs)
    if found:
        # Raised before anything is written: the GPU job waiting for this table never starts.
        raise PreflightError("pre-flight failed:\n" + "\n".join(f"  - {p}" for p in found))
    job.write_frame(table.assign(model=job.model, domain=job.domain), job.smk.output.table)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
