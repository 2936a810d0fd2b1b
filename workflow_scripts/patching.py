"""Snakemake entry: activation patching for one (model, domain)."""

from kmap.io import atomic_output
from kmap.patching import PatchingSettings
from kmap.patching_report import exclusion_note, heatmap_figure, run_patching, summarise
from kmap.plotting import curve_figure
from kmap.prompts import load_pairs
from kmap.runner import load_for_job, progress_logger, setup
from kmap.tables import REPLICATE_COLUMNS, write_table

CAPTION = (
    "P = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted), LD = logit(clean answer) − logit(corrupted "
    "answer) at the answer position. P_*: ratio of mean differences; P_median_*: median of per-pair P. last: "
    "the answer position patched; concept: the positions where the prompts differ. Layer -1 (emb): the "
    "embeddings. Bands: 95 % bootstrap CIs over pairs."
)


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0], sm.threads)
    model, domain = sm.wildcards.model, sm.wildcards.domain
    # On a retry (e.g. after CUDA out-of-memory) batch_size is halved; the values do not depend on it.
    settings = PatchingSettings(**{**sm.params.settings, "batch_size": sm.resources.batch_size})
    pairs = load_pairs(domain, sm.params.prompts_dir)
    loaded = load_for_job(sm, log)
    run = run_patching(loaded, pairs.frame, settings, progress_logger(log, f"patching {model}/{domain} pairs"))
    note = exclusion_note(run.pairs)
    log.info("%s/%s: %s", model, domain, note or "every pair used")
    bootstrap = sm.params.bootstrap
    metrics, replicates = summarise(run.pairs, model, domain, run.n_layers, bootstrap["n"], bootstrap["seed"])
    write_table(metrics, sm.output.metrics)
    write_table(replicates, sm.output.replicates, REPLICATE_COLUMNS)
    for frame, path in ((run.pairs, sm.output.pairs), (run.heatmap, sm.output.heatmap)):
        with atomic_output(path) as tmp:
            frame.assign(model=model, domain=domain).to_parquet(tmp, index=False)
    title = f"{model} · {domain}: activation patching"
    caption = CAPTION + (f" {note}." if note else "")
    curve_figure(metrics, sm.output.curves_png, sm.output.curves_pdf, title, caption)
    heatmap_figure(run.heatmap, sm.output.heatmap_png, sm.output.heatmap_pdf, f"{title}, one position at a time")
    log.info("patching %s/%s done: %d metric rows", model, domain, len(metrics))


if __name__ == "__main__":
    main()
