"""Rule preflight (CPU, tokenizer only): what the GPU methods reading one file of one (model, domain) will feed the
model: the prompt set's token lengths against the context as each method formats it, or the patching pairs the
tokenizer can use and their answer tokens; fails before any GPU."""

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
    spec = job.spec()
    tokenizer = load_tokenizer(spec)
    # Each GPU method reading this file, in the format it will use (a chat format without a template fails here).
    formats = {method: PromptFormat.from_param(p).resolve(tokenizer) for method, p in job.params["formats"].items()}
    pairs_file = job.wildcards["data"] == "pairs"
    prompts = None if pairs_file else load_prompt_set(job.domain, job.params["prompts_dir"]).frame
    pairs = load_pairs(job.domain, job.params["prompts_dir"]).frame if pairs_file else None
    context = context_length(spec)
    table = preflight_table(
        tokenizer, prompts, pairs, formats, context, job.params["new_tokens"], job.params["multi_token_answers"]
    )
    counts = summary(table)
    modes = {method: fmt.mode for method, fmt in formats.items()}
    # Not a rerun trigger (the GPU jobs' inputs and settings are): recorded, so the table says what checked it.
    job.note(code_version=code_version(Path(__file__)), context_length=context, preflight=counts, prompt_format=modes)
    job.log.info("%s: formats %s, context %s; %s", job.label, modes, context, counts)
    # Read from the config, not a param: changing the threshold must not rerun GPU jobs that already passed it.
    min_pairs = int(job.smk.config["patching"]["min_pairs"])
    found = problems(table, job.model, job.domain, min_pairs)
    if found:
        # Raised before anything is written: the GPU job waiting for this table never starts.
        raise PreflightError("pre-flight failed:\n" + "\n".join(f"  - {p}" for p in found))
    job.write_frame(table.assign(model=job.model, domain=job.domain), job.smk.output.table)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
