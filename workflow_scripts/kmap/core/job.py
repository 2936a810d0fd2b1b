"""The job harness every entry script uses: one ``Job`` per Snakemake job.

It sends logging (and stderr) to the rule's log file, caps threads, and writes every output atomically with
the job's provenance: model id and resolved revision, prompt-set hash, the settings that shaped it (the rule's
params), code version, and what the job's inputs carried (so a summary names the model its numbers came from).
GPU jobs load their model with ``kmap.core.models.load_for_job``, kept out of this module so that CPU jobs'
code versions never depend on model loading.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sys
from collections.abc import Callable, Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from kmap.core.io import atomic_output, file_sha256, write_json_atomic, write_text_atomic
from kmap.core.provenance import DIRECTORY_FILE, read_provenance, record, sidecar, to_json
from kmap.core.tables import METRIC_COLUMNS, write_frame, write_table

# The job this process runs (one per entry-script process), read by kmap.core.figures.
CURRENT: Job | None = None
# Params that locate things rather than shape values: kept out of the recorded settings.
NOT_SETTINGS = ("code", "model", "prompts_dir", "cache_dir", "retry")
# Inputs whose content is the prompt set (hashed into every record).
PROMPT_INPUTS = ("prompts", "pairs", "knowledge")
# Facts carried over from inputs' provenance.
UPSTREAM_KEYS = ("rule", "domain", "model", "prompt_sha256", "settings", "n_layers", "code_version")


def setup_logging(log_path: str | Path | None, threads: int = 1) -> logging.Logger:
    """Send logging (and stderr, where tqdm and warnings go) to the rule's log file; cap torch threads."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_path:
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        stream = open(log_path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - lives for the job
        sys.stderr = stream
        handlers = [logging.StreamHandler(stream)]
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    if "torch" in sys.modules:  # CPU jobs never import torch just to cap its threads
        sys.modules["torch"].set_num_threads(max(1, int(threads)))
    return logging.getLogger("kmap")


def progress_logger(log: logging.Logger, label: str, every: int = 10) -> Callable[[int, int], None]:
    """A progress callback logging ``done/total`` at most ``every`` times (readable in a log file)."""
    state = {"next": 0}

    def report(done: int, total: int) -> None:
        if done >= state["next"] or done == total:
            log.info("%s: %d/%d (%.0f%%)", label, done, total, 100 * done / max(total, 1))
            state["next"] = done + max(1, total // every)

    return report


class Job:
    """The running Snakemake job (``snakemake`` object), with kmap's outputs, model loading and provenance."""

    def __init__(self, smk: Any) -> None:
        self.smk = smk
        self.log = setup_logging(smk.log[0] if len(smk.log) else None, smk.threads)
        self.wildcards: dict[str, str] = dict(_items(smk.wildcards))
        global CURRENT
        CURRENT = self  # figures saved during this job embed its provenance (kmap.core.figures)
        if self._inputs("weights"):
            # A staged hub snapshot (rule stage_weights) is read offline: a compute node never asks the hub.
            # Set before anything imports huggingface_hub, which reads it once.
            os.environ["HF_HUB_OFFLINE"] = "1"

    # --- what the job is --------------------------------------------------------------------------------

    @property
    def params(self) -> dict[str, Any]:
        return dict(_items(self.smk.params))

    @property
    def model(self) -> str:
        return self.wildcards["model"]

    @property
    def domain(self) -> str:
        return self.wildcards["domain"]

    @property
    def label(self) -> str:
        return "/".join(self.wildcards.values()) or self.rule

    @property
    def rule(self) -> str:
        return str(getattr(self.smk, "rule", "job"))

    def section(self, name: str, **override: Any) -> dict[str, Any]:
        """A settings section from the rule's params, with job-side values (a retry's batch size) on top."""
        return {**self.params.get(name, {}), **override}

    def spec(self) -> Any:
        """The model as this job loads it: a hub model from its staged snapshot, checked complete."""
        from kmap.core.spec import ModelSpec

        spec = ModelSpec(**self.params["model"])
        staged = self._staged
        # An absolute path: a local checkpoint to every check (is_local), never mistaken for a hub id.
        return dataclasses.replace(spec, source=str(staged[0].resolve()), revision=None) if staged else spec

    @cached_property
    def _staged(self) -> tuple[Path, dict[str, Any]] | None:
        """The staged snapshot's files folder and manifest, when the job reads one (input ``weights``)."""
        manifest = self._inputs("weights")
        if not manifest:
            return None
        from kmap.core.staging import check_staged, read_manifest

        return check_staged(Path(manifest[0])), read_manifest(Path(manifest[0]))

    def model_record(self) -> dict[str, Any]:
        """The model's provenance: the hub id and the commit staging resolved its revision to."""
        from kmap.core.spec import ModelSpec

        if not self._staged:
            return self.spec().provenance()
        files, manifest = self._staged
        record = dataclasses.asdict(ModelSpec(**self.params["model"]))
        record["resolved_revision"] = manifest["commit"]
        record["staged"] = str(files)
        return record

    def progress(self, what: str) -> Callable[[int, int], None]:
        return progress_logger(self.log, f"{self.rule} {self.label} {what}")

    # --- provenance -------------------------------------------------------------------------------------

    @cached_property
    def provenance(self) -> dict[str, Any]:
        """The record every output of this job carries; ``note`` adds run facts to it."""
        params = self.params
        fields: dict[str, Any] = {
            "rule": self.rule,
            **self.wildcards,
            "settings": {k: v for k, v in params.items() if k not in NOT_SETTINGS},
            "code_version": params.get("code"),
        }
        upstream = self._upstream()
        built = [(key, name) for key, name in self.wildcards.items() if key in ("demo_model", "tiny_model")]
        if "model" in params:
            fields["model"] = self.model_record()
        elif built:  # the job builds this model: no revision to resolve yet
            fields["model"] = {"name": built[0][1], "kind": built[0][0].split("_")[0], "resolved_revision": None}
        elif upstream:
            models = {to_json(u.get("model")): u.get("model") for u in upstream.values()}
            if len(models) == 1:
                fields["model"] = next(iter(models.values()))
            else:
                fields["models"] = sorted(models)
        prompts = {name: file_sha256(path) for name in PROMPT_INPUTS for path in self._inputs(name)}
        if prompts:
            fields["prompt_sha256"] = prompts if len(prompts) > 1 else next(iter(prompts.values()))
        elif upstream and (merged := _merged_hashes(upstream.values())):
            fields["prompt_sha256"] = merged
        if upstream:
            fields["upstream"] = upstream
        return record(**fields)

    def note(self, **facts: Any) -> None:
        """Add run facts (load time, devices, tokens/s) to the record of every output written afterwards."""
        self.provenance.update(facts)

    def part_provenance(self, inputs: list[str], **facts: Any) -> dict[str, Any]:
        """The record of an output made from part of the job's inputs (one domain of a per-model job): the job's
        record with the upstream and prompt-set hash of those inputs only, plus the output's own facts."""
        out = dict(self.provenance)
        wanted = {str(path) for path in inputs}
        upstream = {path: carried for path, carried in out.get("upstream", {}).items() if path in wanted}
        out["upstream"] = upstream
        merged = _merged_hashes(upstream.values())
        if merged is None:
            out.pop("prompt_sha256", None)
        else:
            out["prompt_sha256"] = merged
        out.update(facts)
        return out

    def _inputs(self, name: str) -> list[str]:
        value = getattr(self.smk.input, name, None)
        if value is None:
            return []
        return [str(value)] if isinstance(value, str) else [str(v) for v in value]

    def _upstream(self) -> dict[str, dict[str, Any]]:
        found = {}
        for _, value in _items(self.smk.input):
            for path in [value] if isinstance(value, str) else list(value):
                if Path(path).suffix in (".parquet", ".safetensors") and Path(path).is_file():
                    carried = read_provenance(path)
                    if carried:
                        found[str(path)] = {k: carried[k] for k in UPSTREAM_KEYS if k in carried}
        return found

    # --- outputs ----------------------------------------------------------------------------------------

    def write_table(self, frame: pd.DataFrame, path: str | Path, columns: tuple[str, ...] = METRIC_COLUMNS) -> None:
        write_table(frame, path, columns, self.provenance)

    def write_frame(self, frame: pd.DataFrame, path: str | Path, provenance: dict[str, Any] | None = None) -> None:
        write_frame(frame, path, self.provenance if provenance is None else provenance)

    def write_text(self, path: str | Path, text: str) -> None:
        write_json_atomic(sidecar(path), self.provenance)
        write_text_atomic(path, text)

    @contextlib.contextmanager
    def directory(self, path: str | Path) -> Iterator[Path]:
        """An output directory built in a temporary one, with ``kmap_provenance.json`` inside."""
        with atomic_output(path, directory=True) as tmp:
            yield tmp
            write_json_atomic(tmp / DIRECTORY_FILE, self.provenance)


def _merged_hashes(records: Any) -> str | dict[str, str] | None:
    """The prompt-set hash of a summary: the one its inputs share, else one per domain."""
    hashes: dict[str, str] = {}
    for carried in records:
        value = carried.get("prompt_sha256")
        if isinstance(value, dict):
            hashes.update(value)
        elif value:
            hashes[str(carried.get("domain", "?"))] = value
    if not hashes:
        return None
    return next(iter(hashes.values())) if len(set(hashes.values())) == 1 else hashes


def _items(named: Any) -> list[tuple[str, Any]]:
    """Name-value pairs of a Snakemake named list (or of a plain namespace standing in for one in tests)."""
    if hasattr(named, "items"):
        return list(named.items())
    return list(vars(named).items())
