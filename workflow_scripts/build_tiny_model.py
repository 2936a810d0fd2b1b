"""Snakemake entry: build one tiny random-init model (coverage of an architecture, not science)."""

from kmap.io import atomic_output, provenance, write_json_atomic
from kmap.knowledge import load_knowledge, vocabulary
from kmap.runner import setup
from kmap.tiny import build_tiny_model

sm = snakemake  # type: ignore[name-defined]  # noqa: F821 - injected by Snakemake
log = setup(sm.log[0], sm.threads)
words = vocabulary(load_knowledge(sm.input.knowledge))
with atomic_output(sm.output.model, directory=True) as tmp:
    build_tiny_model(sm.params.architecture, words, tmp, **sm.params.shape)
    write_json_atomic(
        tmp / "kmap_provenance.json",
        provenance(kind="tiny", code_version=sm.params.code, architecture=sm.params.architecture, **sm.params.shape),
    )
log.info("built tiny %s model in %s", sm.params.architecture, sm.output.model)
