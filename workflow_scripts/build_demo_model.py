"""Snakemake entry: train the demo model offline (also runnable by hand, see --help)."""

import argparse
from pathlib import Path

from kmap.demo_train import DemoParams, train_demo_model
from kmap.knowledge import load_knowledge
from kmap.runner import setup


def main(knowledge: str, out: str, results: str, overrides: dict, log_path: str | None, threads: int) -> None:
    log = setup(log_path, threads)
    params = DemoParams.from_dict({"torch_threads": threads, **overrides})
    metrics = train_demo_model(load_knowledge(knowledge), params, out, results)
    log.info(
        "demo model: held-out diagnosis accuracy %.3f in %.0f s",
        metrics["diagnosis_accuracy"],
        metrics["wall_seconds"],
    )


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    main(
        sm.input.knowledge,
        sm.output.model,
        str(Path(sm.output.metrics).parent),
        dict(sm.params.demo),
        sm.log[0],
        sm.threads,
    )
elif __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--knowledge", default="prompts/knowledge.yaml")
    parser.add_argument("--out", default="results/models/demo")
    parser.add_argument("--results", default="results/demo/demo")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    main(args.knowledge, args.out, args.results, {}, None, args.threads)
