"""Snakemake entry: weight-gradient saliency for one (model, domain)."""

import dataclasses
import time

from kmap.models import ModelSpec
from kmap.plotting import curve_figure
from kmap.prompts import load_prompt_set
from kmap.runner import load_for_job, progress_logger, setup
from kmap.saliency import SaliencySettings, describe, run_saliency, summarise
from kmap.tables import REPLICATE_COLUMNS, write_table

CAPTION = (
    "Mean |∂loss/∂w| over each layer's attention and MLP parameters (combined: parameter-weighted), "
    "loss = −log p(target | prompt); mixture-of-experts MLPs average over the routed experts only. "
    "Bands: 95 % bootstrap CIs over prompts."
)


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0], sm.threads)
    model, domain = sm.wildcards.model, sm.wildcards.domain
    settings = SaliencySettings(**sm.params.settings)
    frame = load_prompt_set(domain, sm.params.prompts_dir).frame
    # Weight gradients need real weights: quantized checkpoints are loaded dequantized (the GPU plan's
    # gradient stage budgets for that).
    spec = dataclasses.replace(ModelSpec(**sm.params.model), quantization="none")
    loaded = load_for_job(sm, log, spec)
    log.info("measured parameters of layer 0: %s", describe(loaded))
    started = time.perf_counter()
    run = run_saliency(loaded, frame, settings, progress_logger(log, f"saliency {model}/{domain} prompts"))
    seconds = time.perf_counter() - started
    log.info("%d prompts in %.1f s (%.2f prompts/s)", len(run.ids), seconds, len(run.ids) / max(seconds, 1e-9))
    bootstrap = sm.params.bootstrap
    metrics, replicates = summarise(run, model, domain, bootstrap["n"], bootstrap["seed"])
    write_table(metrics, sm.output.metrics)
    write_table(replicates, sm.output.replicates, REPLICATE_COLUMNS)
    curve_figure(metrics, sm.output.curves_png, sm.output.curves_pdf, f"{model} · {domain}: saliency", CAPTION)
    log.info("saliency %s/%s done: %d metric rows", model, domain, len(metrics))


if __name__ == "__main__":
    main()
