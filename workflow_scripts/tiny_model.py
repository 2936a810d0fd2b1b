"""Rule tiny_model (CPU): one tiny random-init model (coverage of an architecture, not science)."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from kmap.core.job import Job
from kmap.data.knowledge import load_knowledge, vocabulary
from kmap.offline.tiny import build_tiny_model


def main(job: Job) -> None:
    words = vocabulary(load_knowledge(job.smk.input.knowledge))
    architecture = job.params["architecture"]
    with job.directory(job.smk.output.model) as tmp:
        build_tiny_model(architecture, words, tmp, **job.params["shape"])
    job.log.info("built tiny %s model in %s", architecture, job.smk.output.model)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
