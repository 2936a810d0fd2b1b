"""What the Snakefile parse derives from files, remembered between processes by the files' content.

Every dry run and every SLURM job parses the Snakefile again; a check whose inputs did not change need not run
again. ``remembered`` keys a result by the content of the files it reads, the code version of the code that
computes it and any settings it takes, so an entry is never stale: an edited file, module or setting is a new
key. Only results are kept, never errors: a failing check runs (and fails, naming the fix) at every parse.
Stored in ``$KMAP_CACHE/parse_memo.json`` (``KMAP_CACHE=off``: not kept).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kmap.core.io import cache_root, file_sha256, stable_hash, write_shared_text
from kmap.core.provenance import code_version

MEMO_FORMAT = f"kmap-memo-1-py{sys.version_info.major}.{sys.version_info.minor}"
MEMO_ENTRIES = 200


def memo_file() -> Path | None:
    root = cache_root()
    return None if root is None else root / "parse_memo.json"


def _content(path: Path) -> str | None:
    try:
        return file_sha256(path)
    except OSError:  # missing or unreadable: part of the key, so the check runs and says what is wrong
        return None


def memo_key(name: str, files: Iterable[Path], code: Iterable[Path], settings: Any) -> str:
    """The digest of everything a result depends on: each file's path and content, each code file's version (its
    import closure), the settings (JSON)."""
    parts = {
        "name": name,
        "files": [[str(path), _content(Path(path))] for path in files],
        "code": [code_version(path) for path in code],
        "settings": settings,
    }
    return stable_hash(parts)


def _load(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        loaded = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # absent or damaged: computed again
    results = loaded.get("results") if isinstance(loaded, dict) and loaded.get("format") == MEMO_FORMAT else None
    return results if isinstance(results, dict) else {}


def _save(path: Path, results: dict[str, Any]) -> None:
    kept = dict(list(results.items())[-MEMO_ENTRIES:])  # the newest: insertion order
    write_shared_text(path, json.dumps({"format": MEMO_FORMAT, "results": kept}))


def remembered(
    name: str, files: Iterable[Path], code: Iterable[Path], compute: Callable[[], Any], settings: Any = None
) -> Any:
    """``compute()`` (a JSON value), or the value an earlier process computed from the same ``files`` (by
    content), ``code`` (files whose import closure holds the computation; by code version) and ``settings``.
    The value comes back as JSON gives it (lists, not tuples) whether computed or remembered."""
    key = memo_key(name, files, code, settings)
    path = memo_file()
    results = _load(path)
    if key in results:
        return results[key]
    value = json.loads(json.dumps(compute()))
    if path is not None:
        results[key] = value
        _save(path, results)
    return value
