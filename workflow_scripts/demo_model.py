"""Rule demo_model (CPU): train the demo model offline, or reuse one trained from the same inputs.

Also runnable by hand: ``python workflow_scripts/demo_model.py --help``.
"""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import argparse
from pathlib import Path

from kmap.core.job import Job
from kmap.offline.demo_train import DemoParams, default_cache_dir, train_demo_model


def main(job: Job) -> None:
    out = job.smk.output
    # The job trains with the threads it was given (the schema default is for runs by hand).
    params = DemoParams.from_dict({**job.params["demo"], "torch_threads": job.smk.threads})
    metrics = train_demo_model(
        job.smk.input.knowledge,
        params,
        out.model,
        Path(out.metrics).parent,  # the curve and metrics share one directory (the rule names each file)
        job.log,
        provenance=job.provenance,
        cache_dir=default_cache_dir(),
    )
    job.log.info("demo model: held-out diagnosis accuracy %.3f", metrics["diagnosis_accuracy"])


def _override(item: str) -> tuple[str, int | float | str]:
    """``steps=400`` -> ("steps", 400); ``architecture=qwen3`` stays a string."""
    key, value = item.split("=", 1)
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


if __name__ == "__main__" and "snakemake" in globals():
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
elif __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--knowledge", default="prompts/knowledge.yaml")
    parser.add_argument("--out", default="results/models/demo", help="model directory (HF format)")
    parser.add_argument("--results", default="results/demo/demo", help="training curve and metrics")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="DemoParams overrides")
    args = parser.parse_args()
    params = DemoParams.from_dict(dict(_override(item) for item in args.set))
    train_demo_model(args.knowledge, params, args.out, args.results, cache_dir=default_cache_dir())
