"""Atomic output and hashing.

Every artifact kmap writes goes through ``atomic_output``: it is built under a temporary sibling name and
renamed into place only when complete, so a killed job never leaves a file a rerun or a reader would trust.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Fault injection for the interruption tests: hold a finished temporary output this many seconds before its
# rename, on paths containing KMAP_FAULT_PAUSE_MATCH (all when unset), so a test can kill the job mid-write.
PAUSE_ENV, PAUSE_MATCH_ENV = "KMAP_FAULT_PAUSE_S", "KMAP_FAULT_PAUSE_MATCH"


def _stale_partials(final: Path) -> list[Path]:
    """Temporary siblings of ``final`` left by a killed job (Snakemake never runs two writers of one output)."""
    return sorted(final.parent.glob(f".{glob.escape(final.name)}.*.partial"))


@contextlib.contextmanager
def atomic_output(path: str | Path, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``, on error remove it.

    The temporary name starts with ``.`` and ends with ``.partial`` so globbing readers skip it; leftovers of
    a killed earlier attempt are removed first.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in _stale_partials(final):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".partial", dir=final.parent))
    target = tmp if directory else tmp / final.name
    try:
        yield target
        pause = float(os.environ.get(PAUSE_ENV, 0) or 0)
        if pause > 0 and os.environ.get(PAUSE_MATCH_ENV, "") in str(final):
            time.sleep(pause)
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(target, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_shared_text(path: str | Path, text: str) -> bool:
    """Replace a file that several processes may write at once (kmap's caches; concurrent SLURM jobs parse at
    once): written under a name of this process and renamed over it, so a reader sees one whole version and the
    last writer wins. Not ``atomic_output``, which clears other writers' temporaries: no output has two writers,
    a cache may. False, leaving nothing behind, on a read-only or full disk (the caller only recomputes)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        return False
    return True


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-serialisable object, independent of key order."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def cache_root() -> Path | None:
    """kmap's cache between runs (trained demo models, parsed imports): ``$KMAP_CACHE``, default
    ``~/.cache/kmap``; None when ``KMAP_CACHE=off``."""
    root = os.environ.get("KMAP_CACHE", str(Path.home() / ".cache" / "kmap"))
    return None if root == "off" else Path(root)


def load_yaml(path: str | Path) -> Any:
    """A YAML file, parsed by libyaml where available (the Snakefile parse reads several on every start)."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(Path(path).read_text(encoding="utf-8"), Loader=loader)  # noqa: S506 - a safe loader
