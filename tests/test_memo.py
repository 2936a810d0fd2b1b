"""The parse's memo (kmap.core.memo): a result is reused only for the same file contents, code and settings;
errors are never remembered; a damaged store only costs computing again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kmap.core import memo
from kmap.core.memo import memo_file, remembered
from kmap.data.prompt_check import checked_prompts, prompt_files
from kmap.data.prompts import PromptSetError, validate_all
from kmap.maps.known_metrics import map_metric_problems
from tests.workflow import REPO

CODE = [REPO / "workflow_scripts" / "kmap" / "maps" / "known_metrics.py"]


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMAP_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "parse_memo.json"


def test_reused_only_for_the_same_content_code_and_settings(tmp_path: Path, store: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("a")
    calls: list[str] = []

    def compute() -> dict:
        calls.append(data.read_text())
        return {"value": data.read_text(), "pair": (1, 2)}

    first = remembered("check", [data], CODE, compute, settings={"k": 1})
    assert first == {"value": "a", "pair": [1, 2]} and calls == ["a"]  # as JSON gives it, computed or not
    assert memo_file() == store and store.is_file()
    assert remembered("check", [data], CODE, compute, settings={"k": 1}) == first and calls == ["a"]

    data.write_text("b")  # new content: computed again
    assert remembered("check", [data], CODE, compute, settings={"k": 1})["value"] == "b" and calls == ["a", "b"]
    remembered("check", [data], CODE, compute, settings={"k": 2})  # new settings
    remembered("other", [data], CODE, compute, settings={"k": 2})  # another check
    assert len(calls) == 4
    # Another code file is another code version: computed again.
    remembered("other", [data], [REPO / "workflow_scripts" / "kmap" / "data" / "prompts.py"], compute, {"k": 2})
    assert len(calls) == 5

    # A missing file is part of the key, never an error of the memo itself.
    data.unlink()
    with pytest.raises(FileNotFoundError):
        remembered("check", [data], CODE, compute, settings={"k": 1})


def test_errors_are_never_remembered_and_a_damaged_store_is_recomputed(tmp_path: Path, store: Path) -> None:
    data = tmp_path / "data.txt"
    data.write_text("a")
    calls = []

    def failing() -> None:
        calls.append(1)
        raise ValueError("bad input")

    for _ in range(2):
        with pytest.raises(ValueError, match="bad input"):
            remembered("check", [data], CODE, failing)
    assert len(calls) == 2 and not store.exists()

    remembered("check", [data], CODE, lambda: 1)
    for damaged in ("{not json", json.dumps({"format": "other", "results": {}}), json.dumps([1])):
        store.write_text(damaged)
        assert remembered("check", [data], CODE, lambda: calls.append(1) or 1) == 1
    assert len(calls) == 5
    stored = json.loads(store.read_text())
    assert stored["format"] == memo.MEMO_FORMAT and list(stored["results"].values()) == [1]


def test_off_keeps_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMAP_CACHE", "off")
    calls = []
    for _ in range(2):
        remembered("check", [], CODE, lambda: calls.append(1) or 1)
    assert memo_file() is None and len(calls) == 2


def test_prompt_check_as_the_parse_runs_it(tmp_path: Path, store: Path) -> None:
    """The parse's prompt check (rules/common.smk): remembered, it equals the direct computation; an edit that
    breaks a prompt file fails at the next parse although the valid folder was remembered."""
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    domains = ["age", "disease"]
    settings = {"metrics": {}, "umap_metrics": {"age": "r2", "disease": "silhouette:nope"}}

    direct = map_metric_problems(settings, validate_all(prompts, domains))
    assert len(direct) == 1 and "map.umap_metrics.disease" in direct[0]
    assert checked_prompts(prompts, domains, settings) == direct
    assert len(json.loads(store.read_text())["results"]) == 1
    assert checked_prompts(prompts, domains, settings) == direct
    assert len(json.loads(store.read_text())["results"]) == 1  # the same entry, read back

    # Every file the check reads is part of the key: the memo cannot hide an edit.
    read: set[str] = set()
    original = Path.read_bytes, Path.read_text

    def spy_bytes(self: Path) -> bytes:
        read.add(str(self))
        return original[0](self)

    def spy_text(self: Path, *args, **kwargs) -> str:
        read.add(str(self))
        return original[1](self, *args, **kwargs)

    from kmap.data import prompts as prompts_module

    prompts_module._knowledge.cache_clear()  # read again, not from this process's memory
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "read_bytes", spy_bytes)
        patch.setattr(Path, "read_text", spy_text)
        import pandas as pd

        read_csv = pd.read_csv
        patch.setattr(pd, "read_csv", lambda path, *a, **k: read.add(str(path)) or read_csv(path, *a, **k))
        validate_all(prompts, domains)
    seen = {p for p in read if p.startswith(str(prompts))}
    assert seen == {str(p) for p in prompt_files(prompts, domains)}, seen

    pairs = prompts / "pairs" / "disease.csv"
    lines = pairs.read_text().splitlines()
    header = lines[0].split(",")
    row = lines[1].split(",")
    row[header.index("corrupted_answer")] = row[header.index("clean_answer")]
    pairs.write_text("\n".join([lines[0], ",".join(row), *lines[2:]]) + "\n")
    with pytest.raises(PromptSetError, match="equals clean_answer"):
        checked_prompts(prompts, domains, settings)
