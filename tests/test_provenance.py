"""Provenance in every kind of output, and rerun triggers derived from each entry script's import closure."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from kmap.core import figures
from kmap.core.provenance import EXECUTION_ONLY, code_version, import_closure, read_provenance, sidecar
from kmap.core.tables import write_frame, write_table

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(p for p in (REPO / "workflow_scripts").glob("*.py"))
PACKAGE = REPO / "workflow_scripts" / "kmap"
RECORD = {"model": {"name": "m", "resolved_revision": "sha256:ab"}, "prompt_sha256": "f" * 64, "note": "ü (x) \\"}


def test_every_output_kind_carries_its_record(tmp_path: Path) -> None:
    frame = pd.DataFrame({"layer": [0, 1], "value": [0.5, 0.25]})
    write_frame(frame, tmp_path / "t.parquet", RECORD)
    write_frame(frame, tmp_path / "t.csv", RECORD)
    metrics = frame.assign(model="m", domain="d", method="umap", metric="x", ci_low=0.0, ci_high=1.0, n=2)
    write_table(metrics, tmp_path / "m.parquet", provenance=RECORD)
    figures.configure({"dpi": 40}, RECORD)
    try:
        fig, ax = plt.subplots()
        ax.plot([0, 1])
        figures.save(fig, tmp_path / "f.png", tmp_path / "f.pdf")
    finally:
        figures.configure({"dpi": 150}, None)
    for name in ("t.parquet", "t.csv", "m.parquet", "f.png", "f.pdf"):
        assert read_provenance(tmp_path / name) == RECORD, name
    assert sidecar(tmp_path / "t.csv").is_file()
    # The data are untouched by the metadata.
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "t.parquet"), frame)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "t.csv"), frame)
    assert read_provenance(tmp_path / "nothing.txt") is None


def _closure(script: Path) -> set[str]:
    return {str(p.relative_to(PACKAGE)) for p in import_closure(script, PACKAGE)}


def test_closure_covers_every_module_the_script_imports() -> None:
    """The static closure holds every kmap module a script really imports (checked by importing each script
    in a fresh set of kmap modules, in one process)."""
    code = (
        f"import json, runpy, sys; sys.path.append({str(REPO / 'workflow_scripts')!r}); found = {{}}\n"
        f"for script in {[str(s) for s in SCRIPTS]!r}:\n"
        "    for name in [n for n in sys.modules if n == 'kmap' or n.startswith('kmap.')]: del sys.modules[name]\n"
        "    runpy.run_path(script, run_name='not_main')\n"
        "    found[script] = [m.__file__ for n, m in sys.modules.items() if n == 'kmap' or n.startswith('kmap.')]\n"
        "print(json.dumps(found))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for script, files in json.loads(out).items():
        imported = {str(Path(f).relative_to(PACKAGE)) for f in files}
        closure = _closure(Path(script))
        assert imported and imported <= closure, (script, sorted(imported - closure))


def test_closures_separate_measurement_from_summary() -> None:
    """Summaries never reach model code, and GPU jobs never reach the statistics they no longer compute."""
    by_name = {script.stem: _closure(script) for script in SCRIPTS}
    for name in ("saliency_summary", "ablation_summary", "patching_summary", "intervals", "knowledge_map"):
        assert "core/models.py" not in by_name[name], name
    for name in ("saliency", "ablation_generate", "patching", "activations"):
        assert "core/models.py" in by_name[name] and "core/stats.py" not in by_name[name], name
    assert "methods/patching/sweep.py" in by_name["patching"]
    assert "methods/patching/summary.py" in by_name["patching_summary"]


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    dest = tmp_path / "workflow_scripts"
    shutil.copytree(REPO / "workflow_scripts", dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def test_editing_a_module_changes_exactly_the_versions_of_scripts_reaching_it(copy: Path) -> None:
    package = copy / "kmap"
    scripts = sorted(copy.glob("*.py"))
    before = {s.name: code_version(s, package) for s in scripts}
    closures = {s.name: set(import_closure(s, package)) for s in scripts}
    for module in sorted(package.rglob("*.py")):
        original = module.read_bytes()
        module.write_bytes(original + b"\n# edited\n")
        try:
            changed = {s.name for s in scripts if code_version(s, package) != before[s.name]}
        finally:
            module.write_bytes(original)
        # Execution-only modules (where a job runs, not what it computes) change no version.
        reaching = {name for name, closure in closures.items() if module in closure}
        assert changed == (set() if module.relative_to(package).as_posix() in EXECUTION_ONLY else reaching), module
    # Unrelated to every script: no version changes.
    (package / "unused.py").write_text("x = 1\n")
    assert {s.name: code_version(s, package) for s in scripts} == before


def test_resaving_a_script_unchanged_keeps_its_version(copy: Path) -> None:
    script = copy / "patching.py"
    before = code_version(script, copy / "kmap")
    script.write_bytes(script.read_bytes())
    assert code_version(script, copy / "kmap") == before
    script.write_text(script.read_text() + "\n# edited\n")
    assert code_version(script, copy / "kmap") != before


def test_import_cache_is_keyed_by_content(copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parsed imports persist between processes, keyed by each file's content: what a cache entry says is what
    the closure follows, an edited file is parsed again, and a broken cache file only costs a re-parse."""
    import hashlib

    from kmap.core import provenance

    def fresh_process(cache_root: str) -> None:
        monkeypatch.setenv("KMAP_CACHE", cache_root)
        monkeypatch.setattr(provenance, "_CACHE_STATE", {"entries": None, "dirty": False})

    package, script = copy / "kmap", copy / "saliency_summary.py"
    fresh_process("off")
    expected_version, expected = code_version(script, package), set(import_closure(script, package))

    fresh_process(str(tmp_path / "cache"))
    assert code_version(script, package) == expected_version
    stored = json.loads((tmp_path / "cache" / "code_imports.json").read_text())
    assert stored["format"] == provenance.IMPORT_CACHE_FORMAT
    for source in [script, *expected]:
        key = hashlib.sha256(source.read_bytes()).hexdigest()
        assert stored["imports"][key] == sorted(provenance._parse_imports(str(source), 0, 0)), source

    # An entry claiming the script imports kmap.core.models is followed: the cache is read, not re-parsed.
    key = hashlib.sha256(script.read_bytes()).hexdigest()
    stored["imports"][key] = [*stored["imports"][key], "kmap.core.models"]
    (tmp_path / "cache" / "code_imports.json").write_text(json.dumps(stored))
    fresh_process(str(tmp_path / "cache"))
    assert package / "core" / "models.py" in import_closure(script, package)
    # Edited content has a new key: parsed again, the stale claim gone.
    script.write_text(script.read_text() + "\n# edited\n")
    assert set(import_closure(script, package)) == expected
    # A malformed entry (not a list of kmap modules) is parsed again, never followed.
    edited = hashlib.sha256(script.read_bytes()).hexdigest()
    stored["imports"][edited] = "kmap.core.models"
    (tmp_path / "cache" / "code_imports.json").write_text(json.dumps(stored))
    fresh_process(str(tmp_path / "cache"))
    assert set(import_closure(script, package)) == expected

    (tmp_path / "cache" / "code_imports.json").write_text("{not json")
    script.write_text(script.read_text().removesuffix("\n# edited\n"))
    fresh_process(str(tmp_path / "cache"))
    assert code_version(script, package) == expected_version
