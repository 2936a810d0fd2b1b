"""Snakemake entry: layer ablation, generation side (GPU): responses and judge-free metrics per layer."""

from kmap.ablation import AblationSettings, run_ablation, summarise
from kmap.io import atomic_output, file_sha256, provenance, write_json_atomic
from kmap.models import ModelSpec, describe_devices
from kmap.plotting import curve_figure
from kmap.prompts import load_prompt_set
from kmap.runner import load_for_job, progress_logger, setup
from kmap.tables import REPLICATE_COLUMNS, write_table

sm = snakemake
log = setup(sm.log[0], sm.threads)
model, domain = sm.wildcards.model, sm.wildcards.domain
spec = ModelSpec(**sm.params.model)
# On a retry (e.g. after CUDA out-of-memory) the batch_size resource is halved; values do not depend on it.
settings = AblationSettings(**{**sm.params.settings, "batch_size": sm.resources.batch_size})
frame = load_prompt_set(domain, sm.params.prompts_dir).frame
loaded = load_for_job(sm, log, spec)
run = run_ablation(
    loaded,
    frame["id"].tolist(),
    frame["text"].tolist(),
    settings,
    progress=progress_logger(log, f"ablation {model}/{domain} prompts"),
)
log.info(
    "generated %d tokens in %.1f s (%.1f tokens/s); greedy mismatches %d",
    run.generated_tokens,
    run.generate_seconds,
    run.tokens_per_second,
    run.greedy_mismatches,
)
responses = run.responses.assign(model=model, domain=domain)
with atomic_output(sm.output.responses) as tmp:
    responses.to_parquet(tmp, index=False)
metrics, replicates = summarise(
    responses, model, domain, n_boot=sm.params.bootstrap["n"], seed=sm.params.bootstrap["seed"]
)
write_table(metrics, sm.output.metrics)
write_table(replicates, sm.output.replicates, REPLICATE_COLUMNS)
curve_figure(
    metrics,
    sm.output.curves_png,
    sm.output.curves_pdf,
    f"{model} · {domain}: layer ablation (judge-free)",
    "Each layer replaced by the identity in turn. kl: KL(intact ‖ ablated) per token over the intact "
    "response; logprob_drop: intact minus ablated log-probability per token; token_overlap: bag-of-tokens F1 "
    "of the two greedy responses; identical: share of unchanged responses. Bands: 95 % bootstrap CIs over "
    "prompts.",
)
write_json_atomic(
    sm.output.provenance,
    provenance(
        model=spec.provenance(),
        domain=domain,
        prompt_file=str(sm.input.prompts),
        prompt_sha256=file_sha256(sm.input.prompts),
        settings={**sm.params.settings, "batch_size": settings.batch_size},
        bootstrap=sm.params.bootstrap,
        code_version=sm.params.code,
        n_layers=loaded.n_layers,
        n_prompts=len(frame),
        generated_tokens=run.generated_tokens,
        generate_seconds=round(run.generate_seconds, 2),
        tokens_per_second=round(run.tokens_per_second, 1),
        greedy_mismatches=run.greedy_mismatches,
        load_seconds=round(loaded.load_seconds, 2),
        devices=describe_devices(),
    ),
)
log.info("ablation %s/%s done: %d responses", model, domain, len(responses))
