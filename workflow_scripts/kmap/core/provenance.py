"""Provenance: what made an output, and the code version that decides when a rule reruns.

Every file a job writes carries a provenance record (model id and resolved revision, prompt-set hash, the
settings that shaped it, code version): in the Parquet schema metadata, a PNG text chunk, the PDF metadata,
the safetensors header or a JSON's ``provenance`` key, all under ``KEY``; a CSV, Markdown file or model
directory gets a ``<name>.provenance.json`` sidecar (a directory: ``kmap_provenance.json`` inside).
``read_provenance`` reads any of them back.

``code_version`` hashes an entry script plus every kmap module it imports, transitively (found by parsing
imports, never by importing: the Snakefile parse stays free of torch). Rules record it in their params, so
editing any module a rule's script reaches reruns that rule, and editing anything else does not.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kmap
from kmap.core.io import cache_root, write_shared_text

KEY = "kmap_provenance"
SIDECAR_SUFFIX = ".provenance.json"
DIRECTORY_FILE = "kmap_provenance.json"
PACKAGE_DIR = Path(kmap.__file__).resolve().parent


def record(**fields: Any) -> dict[str, Any]:
    """A provenance record: the caller's fields plus kmap's version, git commit, Python and a UTC timestamp."""
    out: dict[str, Any] = dict(fields)
    out.setdefault("kmap_version", kmap.__version__)
    out.setdefault("git", git_describe())
    out.setdefault("python", platform.python_version())
    out.setdefault("created_utc", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    return out


def to_json(obj: Any) -> str:
    """Canonical JSON (ASCII, sorted keys) as embedded in files."""
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, default=str)


@functools.cache
def git_describe() -> str | None:
    """The repository commit, if kmap runs from a git checkout (recorded, never required)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(PACKAGE_DIR), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


# --- code version: the import closure of an entry script ----------------------------------------------------


# Modules that decide where a job runs, never what it computes: outside every code version, so that editing
# them reruns nothing.
EXECUTION_ONLY = frozenset({"core/warm.py"})


def module_file(name: str, root: Path = PACKAGE_DIR) -> Path | None:
    """The source file of kmap module ``name`` ("kmap.core.io"), a package's __init__.py, or None."""
    parts = name.split(".")
    if parts[0] != "kmap":
        return None
    base = root.joinpath(*parts[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_modules(path: Path) -> frozenset[str]:
    """kmap modules imported anywhere in ``path`` (top level and inside functions), parsed once per content: the
    parse of every SLURM job and dry run reads them from the import cache (``import_cache_file``)."""
    stat = path.stat()
    key = _file_digest(str(path), stat.st_mtime_ns, stat.st_size).hex()
    cache = _import_cache()
    if key not in cache:
        cache[key] = sorted(_parse_imports(str(path), stat.st_mtime_ns, stat.st_size))
        _CACHE_STATE["dirty"] = True
    return frozenset(cache[key])


def _statements(node: ast.AST) -> Iterator[ast.AST]:
    """Every statement under ``node``, at any depth (function and class bodies, branches, handlers, match cases),
    without visiting expressions: imports are statements, and expressions are most of a module's nodes."""
    for value in ast.iter_fields(node):
        if isinstance(value[1], list):
            for item in value[1]:
                if isinstance(item, ast.stmt | ast.excepthandler | ast.match_case):
                    yield item
                    yield from _statements(item)


@functools.lru_cache(maxsize=512)
def _parse_imports(path: str, mtime_ns: int, size: int) -> frozenset[str]:
    """Parsed once per file version: the Snakefile asks for the closure of every rule's script."""
    found: set[str] = set()
    for node in _statements(ast.parse(Path(path).read_text(encoding="utf-8"), filename=path)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "kmap")
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] != "kmap":
                continue
            found.add(node.module)
            # ``from kmap.core import io`` imports the submodule kmap.core.io
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return frozenset(found)


# Imports by content digest, kept between processes. Keyed by content, so an entry is never stale; a lost or
# unreadable file only costs a re-parse.
IMPORT_CACHE_FORMAT = f"kmap-imports-1-py{sys.version_info.major}.{sys.version_info.minor}"
IMPORT_CACHE_ENTRIES = 1000
_CACHE_STATE: dict[str, Any] = {"entries": None, "dirty": False}


def import_cache_file() -> Path | None:
    """``$KMAP_CACHE/code_imports.json`` (default ``~/.cache/kmap``; ``KMAP_CACHE=off`` keeps it in memory)."""
    root = cache_root()
    return None if root is None else root / "code_imports.json"


def _import_cache() -> dict[str, list[str]]:
    if _CACHE_STATE["entries"] is None:
        entries: dict[str, list[str]] = {}
        path = import_cache_file()
        try:
            loaded = json.loads(path.read_text(encoding="utf-8")) if path is not None else {}
            if loaded.get("format") == IMPORT_CACHE_FORMAT and isinstance(loaded.get("imports"), dict):
                # Only well-formed entries; a damaged one is parsed again, never followed.
                entries = {
                    key: names
                    for key, names in loaded["imports"].items()
                    if isinstance(names, list) and all(isinstance(n, str) and n.startswith("kmap") for n in names)
                }
        except (OSError, ValueError, AttributeError):
            pass  # absent, unreadable or from another format: rebuilt as files are parsed
        _CACHE_STATE["entries"] = entries
    return _CACHE_STATE["entries"]


def _save_import_cache() -> None:
    """Write new entries (``io.write_shared_text``: concurrent SLURM jobs may parse at once; the last writer
    wins); on a read-only or full disk, parse again next time."""
    path = import_cache_file()
    if not _CACHE_STATE["dirty"] or path is None:
        return
    entries = _CACHE_STATE["entries"]
    kept = dict(list(entries.items())[-IMPORT_CACHE_ENTRIES:])  # the newest: insertion order
    if write_shared_text(path, json.dumps({"format": IMPORT_CACHE_FORMAT, "imports": kept})):
        _CACHE_STATE["dirty"] = False


def import_closure(script: str | Path, root: Path = PACKAGE_DIR) -> list[Path]:
    """Every kmap source file ``script`` reaches through imports, with the packages' __init__ files."""
    seen: set[Path] = set()
    found: dict[str, Path | None] = {}  # module name -> file, resolved once per closure
    todo = [Path(script)]
    while todo:
        for name in _imported_modules(todo.pop()):
            parts = name.split(".")
            # Importing a.b.c runs a/__init__ and a/b/__init__ first.
            for depth in range(1, len(parts) + 1):
                prefix = ".".join(parts[:depth])
                if prefix not in found:
                    found[prefix] = module_file(prefix, root)
                source = found[prefix]
                if source is not None and source not in seen:
                    seen.add(source)
                    todo.append(source)
    return sorted(seen)


def code_version(script: str | Path, root: Path = PACKAGE_DIR) -> str:
    """Hash of an entry script and its import closure (paths relative to the package, and contents)."""
    script = Path(script)
    digest = hashlib.sha256(script.read_bytes())
    for source in import_closure(script, root):
        relative = source.relative_to(root).as_posix()
        if relative in EXECUTION_ONLY:
            continue
        stat = source.stat()
        digest.update(relative.encode())
        digest.update(_file_digest(str(source), stat.st_mtime_ns, stat.st_size))
    _save_import_cache()
    return digest.hexdigest()[:16]


@functools.lru_cache(maxsize=512)
def _file_digest(path: str, mtime_ns: int, size: int) -> bytes:
    return hashlib.sha256(Path(path).read_bytes()).digest()


# --- reading provenance back ---------------------------------------------------------------------------------


def sidecar(path: str | Path) -> Path:
    path = Path(path)
    return path / DIRECTORY_FILE if path.is_dir() else path.with_name(path.name + SIDECAR_SUFFIX)


def read_provenance(path: str | Path) -> dict[str, Any] | None:
    """The provenance a file carries (embedded, or in its sidecar), or None."""
    path = Path(path)
    embedded = _embedded(path)
    if embedded is not None:
        return embedded
    side = sidecar(path)
    if side.is_file():
        return json.loads(side.read_text(encoding="utf-8"))
    return None


def _embedded(path: Path) -> dict[str, Any] | None:
    suffix = path.suffix.lower()
    text: str | bytes | None = None
    if path.is_dir():
        return None
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        text = (pq.read_schema(path).metadata or {}).get(KEY.encode())
    elif suffix == ".png":
        from PIL import Image

        with Image.open(path) as image:
            text = getattr(image, "text", {}).get(KEY)
    elif suffix == ".pdf":
        text = _pdf_keywords(path.read_bytes())
    elif suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), "np") as handle:
            text = (handle.metadata() or {}).get(KEY)
    elif suffix == ".json" and not path.name.endswith(SIDECAR_SUFFIX) and path.name != DIRECTORY_FILE:
        obj = json.loads(path.read_text(encoding="utf-8"))
        found = obj.get("provenance") if isinstance(obj, dict) else None
        return found if isinstance(found, dict) else None
    elif path.name.endswith(SIDECAR_SUFFIX) or path.name == DIRECTORY_FILE:
        return json.loads(path.read_text(encoding="utf-8"))
    return json.loads(text) if text else None


def _pdf_keywords(data: bytes) -> str | None:
    """The /Keywords string of a PDF's info dictionary (matplotlib writes it as a literal string)."""
    start = data.find(b"/Keywords (")
    if start < 0:
        return None
    out, i, depth = bytearray(), start + len(b"/Keywords ("), 1
    while i < len(data):
        char = data[i : i + 1]
        if char == b"\\":
            out += data[i + 1 : i + 2]
            i += 2
            continue
        depth += {b"(": 1, b")": -1}.get(char, 0)
        if depth == 0:
            break
        out += char
        i += 1
    return out.decode("latin-1")
