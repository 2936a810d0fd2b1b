"""Shared set-up for the Snakemake entry scripts: logging to the rule's log file, thread limits."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import torch


def setup(log_path: str | Path | None, threads: int = 1) -> logging.Logger:
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
    torch.set_num_threads(max(1, int(threads)))
    return logging.getLogger("kmap")


def progress_logger(log: logging.Logger, label: str, every: int = 10) -> Any:
    """A progress callback logging ``done/total`` at most ``every`` times (readable in a log file)."""
    state = {"next": 0}

    def report(done: int, total: int) -> None:
        if done >= state["next"] or done == total:
            log.info("%s: %d/%d (%.0f%%)", label, done, total, 100 * done / max(total, 1))
            state["next"] = done + max(1, total // every)

    return report


def load_for_job(job: Any, log: logging.Logger, spec: Any = None) -> Any:
    """The model of a GPU job: log the devices it got, fail fast with fewer GPUs than planned, load with the
    plan's ``max_memory`` split and log the load time. ``spec`` defaults to the job's ``params.model``."""
    from kmap.models import ModelSpec, describe_devices, load_model, require_devices

    log.info("devices: %s", describe_devices())
    require_devices(int(job.resources.gpu))
    loaded = load_model(spec or ModelSpec(**job.params.model), max_memory=job.params.max_memory or None)
    log.info("model %s loaded in %.1f s", loaded.spec.name, loaded.load_seconds)
    return loaded
