"""Atomic output: a failure mid-write leaves neither the target nor debris; success replaces in one step."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmap.core import io
from kmap.core.io import atomic_output, stable_hash, write_json_atomic, write_shared_text


def test_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_failure_keeps_previous_version(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    write_json_atomic(target, {"v": 1})
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_text("{")
        raise RuntimeError
    assert target.read_text().strip().startswith("{\n") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_directory_output_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_output(target, directory=True) as tmp:
        (tmp / "a").write_text("1")
    with atomic_output(target, directory=True) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_hashes_are_stable_and_sensitive() -> None:
    assert stable_hash({"a": 1, "b": [1, 2]}) == stable_hash({"b": [1, 2], "a": 1})
    assert stable_hash({"a": 1}) != stable_hash({"a": 2})


def test_leftovers_of_a_killed_write_are_removed_by_the_next(tmp_path: Path) -> None:
    final = tmp_path / "out[1].parquet"
    leftover = tmp_path / ".out[1].parquet.abc123.partial"
    leftover.mkdir()
    (leftover / "out[1].parquet").write_text("half")
    other = tmp_path / ".other.parquet.abc123.partial"
    other.mkdir()
    with atomic_output(final) as tmp:
        tmp.write_text("whole")
    assert final.read_text() == "whole"
    assert not leftover.exists() and other.exists()  # only this output's leftovers


def test_shared_file_is_replaced_whole_or_left_as_it_was(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Caches several processes write: a reader sees one whole version; a failed write keeps the old one, says
    so, and leaves no temporary file (the next process computes again)."""
    path = tmp_path / "cache" / "store.json"
    assert write_shared_text(path, "first") and path.read_text() == "first"
    assert write_shared_text(path, "second") and path.read_text() == "second"

    def full_disk(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(io.os, "replace", full_disk)
    assert write_shared_text(path, "third") is False
    assert path.read_text() == "second" and sorted(p.name for p in path.parent.iterdir()) == ["store.json"]
    monkeypatch.undo()
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    assert write_shared_text(blocked / "store.json", "x") is False  # its folder cannot be made
