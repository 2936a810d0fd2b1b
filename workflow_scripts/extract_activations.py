"""Snakemake entry: cache residual-stream activations for one (model, domain)."""

from kmap.activations import ActivationSettings, extract, settings_dict, write_cache
from kmap.io import file_sha256, provenance
from kmap.models import ModelSpec, describe_devices
from kmap.prompts import load_prompt_set
from kmap.runner import load_for_job, progress_logger, setup

sm = snakemake  # type: ignore[name-defined]  # noqa: F821 - injected by Snakemake
log = setup(sm.log[0], sm.threads)
spec = ModelSpec(**sm.params.model)
# On a retry (e.g. after CUDA out-of-memory) the batch_size resource is halved; values do not depend on it.
settings = ActivationSettings(**{**sm.params.settings, "batch_size": sm.resources.batch_size})
prompts = load_prompt_set(sm.wildcards.domain, sm.params.prompts_dir)
loaded = load_for_job(sm, log, spec)
frame = prompts.frame
acts, n_tokens = extract(
    loaded,
    frame["text"].tolist(),
    settings,
    concepts=frame["concept"].tolist() if "concept" in frame else None,
    progress=progress_logger(log, f"{spec.name}/{sm.wildcards.domain}"),
)
table = frame.assign(n_tokens=n_tokens)
record = provenance(
    model=spec.provenance(),
    domain=sm.wildcards.domain,
    prompt_file=str(sm.input.prompts),
    prompt_sha256=file_sha256(sm.input.prompts),
    settings=settings_dict(settings),
    code_version=sm.params.code,
    n_layers=loaded.n_layers,
    hidden_size=loaded.hidden_size,
    n_prompts=len(frame),
    load_seconds=round(loaded.load_seconds, 2),
    devices=describe_devices(),
)
write_cache(acts, table, record, sm.output.tensor, sm.output.table, sm.output.provenance, settings.dtype)
log.info("wrote %s: %s", sm.output.tensor, tuple(acts.shape))
