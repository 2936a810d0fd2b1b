"""Rule patching_summary (CPU): method 4, P per layer with bootstrap CIs and the figures."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.figures import curve_figure
from kmap.core.job import Job
from kmap.core.provenance import read_provenance
from kmap.core.tables import REPLICATE_COLUMNS
from kmap.methods.patching.settings import exclusion_note
from kmap.methods.patching.summary import heatmap_figure, summarise

CAPTION = (
    "P = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted), LD = logit(clean answer) − logit(corrupted "
    "answer) at the answer position. P_*: ratio of mean differences; P_median_*: median of per-pair P. last: "
    "the answer position patched; concept: the positions where the prompts differ. transfer_last: the rise of "
    "P_last from the layer below. Layer -1 (emb): the embeddings. Bands: 95 % bootstrap CIs resampling clean "
    "prompts, each with all its pairs."
)


def main(job: Job) -> None:
    out, model, domain, bootstrap = job.smk.output, job.model, job.domain, job.params["bootstrap"]
    pairs = pd.read_parquet(job.smk.input.pairs)
    n_layers = int(read_provenance(job.smk.input.pairs)["n_layers"])
    metrics, replicates = summarise(pairs, model, domain, n_layers, bootstrap["n"], bootstrap["seed"])
    job.write_table(metrics, out.metrics)
    job.write_table(replicates, out.replicates, REPLICATE_COLUMNS)
    note = exclusion_note(pairs)
    title = f"{model} · {domain}: activation patching"
    curve_figure(metrics, out.curves_png, out.curves_pdf, title, CAPTION + (f" {note}." if note else ""))
    heatmap = pd.read_parquet(job.smk.input.heatmap)
    heatmap_figure(heatmap, out.heatmap_png, out.heatmap_pdf, f"{title}, one position at a time")
    job.log.info("patching summary %s: %d metric rows", job.label, len(metrics))


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
