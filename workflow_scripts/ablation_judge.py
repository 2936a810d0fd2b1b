"""Snakemake entry: layer ablation, judge side (CPU, network only): LLM-judge scores of response pairs.

Without the API key the judge is skipped (one log line, every pair recorded with status ``skipped``, empty
metric tables) and the job still succeeds; the key is not an input, so adding it later reruns nothing by
itself: run ``snakemake --forcerun ablation_judge`` (cached answers are reused, so only new pairs cost).
"""

import logging

import pandas as pd

from kmap.io import atomic_output, file_sha256, provenance, write_json_atomic
from kmap.judge import JudgeSettings, run_judge, summarise_verdicts
from kmap.plotting import curve_figure
from kmap.runner import progress_logger, setup
from kmap.tables import REPLICATE_COLUMNS, write_table

sm = snakemake
log = setup(sm.log[0], sm.threads)
# One line per HTTP request would drown the log (and say nothing the status table does not).
for name in ("httpx", "httpcore", "openai"):
    logging.getLogger(name).setLevel(logging.WARNING)
model, domain = sm.wildcards.model, sm.wildcards.domain
# Score-changing settings come from params (rerun triggers); transport ones (concurrency, timeouts,
# retries) straight from the config, so tuning them never reruns the judge.
settings = JudgeSettings.from_dict({**sm.config.get("judge", {}), **sm.params.judge})
cache = f"{sm.params.cache_dir}/{model}/{domain}.jsonl"
run = run_judge(
    pd.read_parquet(sm.input.responses),
    settings,
    cache,
    model,
    domain,
    progress=progress_logger(log, f"judge {model}/{domain} pairs"),
)
with atomic_output(sm.output.judge) as tmp:
    run.table.to_parquet(tmp, index=False)
metrics, replicates = summarise_verdicts(
    run.table, model, domain, sm.params.bootstrap["n"], sm.params.bootstrap["seed"]
)
write_table(metrics, sm.output.metrics)
write_table(replicates, sm.output.replicates, REPLICATE_COLUMNS)
caption = (
    f"Judge skipped ({run.skipped_reason}); the map uses the judge-free metrics."
    if run.skipped_reason
    else f"Degradation judged by {settings.model} from 1 (no change) to 10 (gibberish); missing scores "
    "(malformed or failed) left out. Bands: 95 % bootstrap CIs over prompts."
)
curve_figure(metrics, sm.output.curves_png, sm.output.curves_pdf, f"{model} · {domain}: ablation, LLM judge", caption)
write_json_atomic(
    sm.output.provenance,
    provenance(
        domain=domain,
        model=model,
        responses_sha256=file_sha256(sm.input.responses),
        judge=settings.record(),
        skipped=run.skipped_reason,
        requests_sent=run.requests_sent,
        status_counts=run.status_counts,
        cache=cache,
        bootstrap=sm.params.bootstrap,
        code_version=sm.params.code,
    ),
)
log.info("judge %s/%s: %s, %d requests sent", model, domain, run.status_counts, run.requests_sent)
