"""Snakemake entry: train the demo model offline (also runnable by hand, see --help)."""

import argparse
from pathlib import Path

from kmap.demo_train import DemoParams, train_demo_model
from kmap.knowledge import load_knowledge
from kmap.runner import setup


def main(knowledge: str, out: str, results: str, overrides: dict, log_path: str | None, threads: int) -> None:
    log = setup(log_path, threads)
    params = DemoParams.from_dict({"torch_threads": threads, **overrides})
    metrics = train_demo_model(load_knowledge(knowledge), params, out, results, log)
    log.info(
        "demo model: held-out diagnosis accuracy %.3f in %.0f s (%.0f s CPU)",
        metrics["diagnosis_accuracy"],
        metrics["wall_seconds"],
        metrics["cpu_seconds"],
    )


def _parse_override(item: str) -> tuple[str, int | float]:
    """``steps=400`` -> ("steps", 400); every DemoParams field is a number."""
    key, value = item.split("=", 1)
    return key, int(value) if value.lstrip("-").isdigit() else float(value)


if "snakemake" in globals():
    sm = snakemake  # noqa: F821
    # The curve and metrics share one results directory (the rule names both for Snakemake's tracking).
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
    parser.add_argument("--out", default="results/models/demo", help="model directory (HF format)")
    parser.add_argument("--results", default="results/demo/demo", help="training curve and metrics")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--log", default=None, help="log file (default: stderr)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="DemoParams overrides")
    args = parser.parse_args()
    overrides = dict(_parse_override(item) for item in args.set)
    main(args.knowledge, args.out, args.results, overrides, args.log, args.threads)
