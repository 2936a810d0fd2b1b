"""Rule saliency_summary (CPU): method 2, mean saliency per layer with bootstrap CIs, and its figure."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.figures import curve_figure
from kmap.core.job import Job
from kmap.core.tables import REPLICATE_COLUMNS
from kmap.methods.saliency.summary import run_from_table, summarise

CAPTION = (
    "Mean |∂loss/∂w| over each layer's attention and MLP parameters (combined: parameter-weighted), "
    "loss = −log p(target | prompt); mixture-of-experts MLPs average over the routed experts only. "
    "Bands: 95 % bootstrap CIs over prompts."
)


def main(job: Job) -> None:
    out, bootstrap = job.smk.output, job.params["bootstrap"]
    run = run_from_table(pd.read_parquet(job.smk.input.raw))
    metrics, replicates = summarise(run, job.model, job.domain, bootstrap["n"], bootstrap["seed"])
    job.write_table(metrics, out.metrics)
    job.write_table(replicates, out.replicates, REPLICATE_COLUMNS)
    curve_figure(metrics, out.curves_png, out.curves_pdf, f"{job.model} · {job.domain}: saliency", CAPTION)
    job.log.info("saliency summary %s: %d metric rows", job.label, len(metrics))


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
