"""Staging hub snapshots (kmap.core.staging) with the real huggingface_hub download code against a local hub.

How the endpoint reaches huggingface_hub: it reads HF_ENDPOINT once, at import (``constants.ENDPOINT`` and the
``/resolve`` URL template), and conftest has imported it long before these tests. ``stage_snapshot`` therefore
reads HF_ENDPOINT at call time and passes it explicitly (``HfApi(endpoint=)``, ``snapshot_download(endpoint=)``);
the tests set HF_ENDPOINT to the local hub and point the import-time constants at a second, empty "trap" hub
that must see no request at all: anything that fell back to the default endpoint would show there (and no
test can reach the real hub). Likewise HF_HUB_OFFLINE (set by conftest, read at import) is switched off in
``constants`` for these tests, and HF_HOME with the cache paths derived from it point into tmp_path.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kmap.core import staging
from kmap.core.staging import StagingError, check_staged, hub_token, read_manifest, stage_snapshot, write_manifest
from tests.hub_server import HubServer, fake_commit_sha, git_blob_sha1, repo_from_folder, serve_hub

REPO = "org/tiny"
TOKEN = "hf_test_secret_token_8c1f"  # the gated repo's accepted token
OTHER_TOKEN = "hf_test_other_token_27ad"  # a valid-looking token without access
STORED_TOKEN = "hf_test_stored_login_token_5e0b"  # in HF_HOME/token, as `hf auth login` leaves it
DECOYS = {
    "pytorch_model.bin": b"\x80\x02pickled weights decoy",
    "original/consolidated.00.pth": b"\x80\x02pickled consolidated decoy",
    "original/model.safetensors": b"original-layout weights decoy",
    "original/params.json": b"{}",
    "README.md": b"# tiny\n",
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
}
WORDS = [
    "<pad>",
    "<bos>",
    "<eos>",
    "<unk>",
    *["the", "patient", "has", "fever", "cough", "chest", "pain", "likely", "pneumonia", "angina", "a", "with"],
]
TEXT = "the patient with chest pain likely has angina"


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny Llama saved with safetensors, its tokenizer and chat template, plus decoys staging must skip; and
    the model's logits on TEXT."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = tmp_path_factory.mktemp("tiny_llama")
    backend = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", bos_token="<bos>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = "{% for message in messages %}{{ message['content'] }} {% endfor %}"
    torch.manual_seed(0)
    config = tf.LlamaConfig(
        vocab_size=64,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = tf.LlamaForCausalLM(config).eval()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    ids = tokenizer(TEXT, return_tensors="pt").input_ids
    with torch.inference_mode():
        logits = model(ids).logits
    saved = sorted(p.name for p in folder.iterdir())
    assert {"model.safetensors", "config.json", "tokenizer.json", "chat_template.jinja"} <= set(saved), saved
    return {"repo": repo_from_folder(folder, extra_files=DECOYS), "ids": ids, "logits": logits, "saved": saved}


@pytest.fixture
def hub_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """Online mode, HF_HOME in tmp_path, no token in the environment; yields the trap hub (see the docstring)."""
    from huggingface_hub import constants

    for var in (
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_OIDC_RESOURCE",
        "HF_ENDPOINT",
    ):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "hf_home"
    home.mkdir()
    (home / "token").write_text(STORED_TOKEN)  # a CLI login that staging must not use (hub_token: environment only)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    # Telemetry off: building the user agent would otherwise fetch an "agent harnesses" registry, once a day,
    # from the import-time endpoint (a huggingface_hub 2.x feature), i.e. a request to the trap.
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    with serve_hub({}) as trap:
        monkeypatch.setattr(constants, "ENDPOINT", trap.url)
        monkeypatch.setattr(
            constants, "HUGGINGFACE_CO_URL_TEMPLATE", trap.url + "/{repo_id}/resolve/{revision}/{filename}"
        )
        yield trap
        assert trap.requests == [], "a request went to huggingface_hub's default endpoint instead of HF_ENDPOINT"


@pytest.fixture
def hub(hub_env: HubServer, tiny_repo: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    with serve_hub({REPO: tiny_repo["repo"]}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        yield server


def _expected_files(files: dict[str, bytes]) -> set[str]:
    return set(files) - set(DECOYS)


def _served(server: HubServer) -> list[str]:
    return [request["file"] for request in server.requests if request["file"] is not None]


def test_stage_tiny_model_and_load_it_offline(hub: HubServer, tiny_repo: dict[str, Any], tmp_path: Path) -> None:
    files = tiny_repo["repo"]["files"]
    commit = tiny_repo["repo"]["branches"]["main"]
    dest = tmp_path / "weights" / "tiny"  # parents do not exist yet

    manifest = stage_snapshot("tiny", REPO, "main", dest, token=None)

    assert manifest["commit"] == commit and len(commit) == 40
    assert (manifest["name"], manifest["repo_id"], manifest["revision"]) == ("tiny", REPO, "main")
    assert manifest["endpoint"] == hub.url
    expected = _expected_files(files)
    assert expected == set(tiny_repo["saved"]) and "model.safetensors" in expected
    assert {entry["path"] for entry in manifest["files"]} == expected
    by_path = {entry["path"]: entry for entry in manifest["files"]}
    weights = files["model.safetensors"]
    assert by_path["model.safetensors"] == {
        "path": "model.safetensors",
        "size": len(weights),
        "sha256": hashlib.sha256(weights).hexdigest(),
        "blob_id": by_path["model.safetensors"]["blob_id"],
    }
    assert by_path["config.json"]["sha256"] is None
    assert by_path["config.json"]["blob_id"] == git_blob_sha1(files["config.json"])
    assert manifest["total_bytes"] == sum(len(files[p]) for p in expected)
    assert manifest["huggingface_hub"] and manifest["staged_at"].endswith("+00:00")

    folder = dest / "files"
    for path in expected:
        assert (folder / path).read_bytes() == files[path], path
    on_disk = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts}
    assert on_disk == expected
    served = _served(hub)
    assert not [f for f in served if f.endswith((".bin", ".pth")) or f.startswith("original/") or f in DECOYS]
    assert hub.files_fetched() == {path: len(files[path]) for path in expected}  # each file once, whole
    assert not [r for r in hub.requests if "xet" in r["path"].lower()]
    assert not [r for r in hub.requests if r["auth"]]  # no token sent, not even the stored login

    manifest_path = dest / "manifest.json"
    write_manifest(manifest, manifest_path)
    assert read_manifest(manifest_path) == manifest
    assert check_staged(manifest_path) == folder

    # The GPU job's view: a fresh process, offline, loading the plain folder.
    out = tmp_path / "logits.pt"
    script = (
        "import sys, torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        "folder, out = sys.argv[1], sys.argv[2]\n"
        "tok = AutoTokenizer.from_pretrained(folder)\n"
        "model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()\n"
        f"ids = tok({TEXT!r}, return_tensors='pt').input_ids\n"
        "with torch.inference_mode():\n"
        "    torch.save({'ids': ids, 'logits': model(ids).logits}, out)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_ENDPOINT")
    subprocess.run([sys.executable, "-c", script, str(folder), str(out)], env=env, check=True, timeout=120)
    import torch

    loaded = torch.load(out)
    assert torch.equal(loaded["ids"], tiny_repo["ids"])
    assert torch.equal(loaded["logits"], tiny_repo["logits"])


def test_restage_after_branch_moved_removes_stale_file_and_keeps_weights(
    hub: HubServer, tiny_repo: dict[str, Any], tmp_path: Path
) -> None:
    files = tiny_repo["repo"]["files"]
    dest = tmp_path / "tiny"
    first = stage_snapshot("tiny", REPO, "main", dest, token=None)
    folder = dest / "files"
    assert (folder / "generation_config.json").is_file()
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"a shard of some older revision")
    (folder / "old" / "sub").mkdir(parents=True)
    (folder / "old" / "sub" / "notes.txt").write_text("stale")
    downloads = folder / ".cache" / "huggingface" / "download"
    (downloads / "model.safetensors.0123abcd.incomplete").write_bytes(b"a killed run's partial download")
    kept_metadata = sorted(p.name for p in downloads.glob("*.metadata"))
    assert "model.safetensors.metadata" in kept_metadata

    newer = {path: data for path, data in files.items() if path != "generation_config.json"}
    new_commit = hub.push(REPO, newer)
    assert new_commit != first["commit"]
    mark = len(hub.requests)
    second = stage_snapshot("tiny", REPO, "main", dest, token=None)

    assert second["commit"] == new_commit
    assert {entry["path"] for entry in second["files"]} == _expected_files(newer)
    assert not (folder / "generation_config.json").exists()
    assert not (folder / "model-00001-of-00002.safetensors").exists()
    assert not (folder / "old").exists()  # emptied folders go too
    assert not (downloads / "model.safetensors.0123abcd.incomplete").exists()
    assert (downloads / "model.safetensors.metadata").is_file()  # huggingface_hub's metadata stays
    assert (folder / "model.safetensors").read_bytes() == files["model.safetensors"]
    # Unchanged files at the new commit: a HEAD each to compare ETags, no content.
    assert hub.files_fetched(mark) == {}
    assert {r["file"] for r in hub.requests[mark:] if r["method"] == "HEAD"} == _expected_files(newer)

    mark = len(hub.requests)
    third = stage_snapshot("tiny", REPO, "main", dest, token=None)
    assert third["commit"] == new_commit and third["files"] == second["files"]
    assert _served(hub)[mark:] == []  # same commit, files complete: not even a HEAD
    assert sum(r["bytes"] for r in hub.requests[mark:] if (r["file"] or "").endswith(".safetensors")) == 0


def test_branch_moving_during_staging_keeps_the_resolved_commit(
    hub: HubServer, tiny_repo: dict[str, Any], tmp_path: Path
) -> None:
    files = tiny_repo["repo"]["files"]
    retrained = {**files, "model.safetensors": files["model.safetensors"][:-8] + b"retrain!"}
    pushed: list[str] = []

    def push_once(record: dict[str, Any]) -> None:  # right after staging resolved the branch
        if "/api/models/" in record["path"] and not pushed:
            pushed.append(hub.push(REPO, retrained))

    hub.after_request = push_once
    manifest = stage_snapshot("tiny", REPO, "main", tmp_path / "tiny", token=None)
    assert pushed and manifest["commit"] == tiny_repo["repo"]["branches"]["main"] != pushed[0]
    assert (tmp_path / "tiny" / "files" / "model.safetensors").read_bytes() == files["model.safetensors"]


def test_revision_may_be_a_tag_or_a_commit(
    hub_env: HubServer, tiny_repo: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = {**tiny_repo["repo"], "tags": {"v1.0": tiny_repo["repo"]["branches"]["main"]}}
    commit = repo["branches"]["main"]
    with serve_hub({REPO: repo}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        by_tag = stage_snapshot("tiny", REPO, "v1.0", tmp_path / "tag", token=None)
        by_commit = stage_snapshot("tiny", REPO, commit, tmp_path / "commit", token=None)
    assert by_tag["commit"] == by_commit["commit"] == commit
    assert (by_tag["revision"], by_commit["revision"]) == ("v1.0", commit)
    assert (tmp_path / "commit" / "files" / "model.safetensors").read_bytes() == repo["files"]["model.safetensors"]


def test_gated_repo_needs_the_token(
    hub_env: HubServer,
    tiny_repo: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo = {**tiny_repo["repo"], "gated": True}
    with serve_hub({"org/gated": repo}, token=TOKEN) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        assert hub_token() is None
        with pytest.raises(StagingError) as no_token:
            stage_snapshot("medgated", "org/gated", "main", tmp_path / "a", token=hub_token())
        assert _served(server) == []  # refused before any file request

        with pytest.raises(StagingError) as wrong_token:  # a token without access: refused by the hub itself
            stage_snapshot("medgated", "org/gated", "main", tmp_path / "b", token=OTHER_TOKEN)
        assert [r["status"] for r in server.requests if r["file"]] and all(
            r["status"] == 403 for r in server.requests if r["file"]
        )

        monkeypatch.setenv("HF_TOKEN", TOKEN)
        assert hub_token() == TOKEN
        manifest = stage_snapshot("medgated", "org/gated", "main", tmp_path / "c", token=hub_token())
        write_manifest(manifest, tmp_path / "c" / "manifest.json")

    for error in (no_token.value, wrong_token.value):
        message = str(error)
        assert "gated" in message and "HF_TOKEN" in message, message
        assert "https://huggingface.co/org/gated" in message and "medgated" in message, message
    assert "no HF_TOKEN is set" in str(no_token.value)
    assert "has no access" in str(wrong_token.value)
    assert manifest["commit"] == repo["branches"]["main"]
    assert (tmp_path / "c" / "files" / "model.safetensors").read_bytes() == repo["files"]["model.safetensors"]
    assert all(r["auth"] for r in server.requests if r["file"] and r["status"] == 200)
    captured = capfd.readouterr()
    for secret in (TOKEN, OTHER_TOKEN):
        assert secret not in str(no_token.value) + repr(no_token.value) + str(wrong_token.value) + repr(
            wrong_token.value
        )
        assert secret not in json.dumps(manifest) and secret not in (tmp_path / "c" / "manifest.json").read_text()
        assert secret not in captured.out + captured.err + caplog.text


def test_unknown_revision_and_unknown_repo(hub: HubServer, tmp_path: Path) -> None:
    with pytest.raises(StagingError) as revision:
        stage_snapshot("tiny", REPO, "no-such-branch", tmp_path / "a", token=None)
    message = str(revision.value)
    assert "'no-such-branch'" in message and "models.tiny.revision" in message and REPO in message, message

    with pytest.raises(StagingError) as repo:
        stage_snapshot("ghost", "org/no-such-model", "main", tmp_path / "b", token=None)
    message = str(repo.value)
    assert "models.ghost.source" in message and "org/no-such-model" in message and "HF_TOKEN" in message, message
    assert _served(hub) == [] and not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_no_safetensors_is_refused(hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"config.json": b"{}", "pytorch_model.bin": b"\x80\x02pickle", "tokenizer.json": b"{}"}
    with serve_hub({"org/pickled": {"files": files, "branches": {"main": fake_commit_sha(files)}}}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        with pytest.raises(StagingError, match="safetensors only") as error:
            stage_snapshot("old", "org/pickled", "main", tmp_path / "old", token=None)
    assert "pytorch_model.bin" in str(error.value) and "models.old" in str(error.value)
    assert _served(server) == []


def test_full_disk_fails_before_downloading(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Usage = namedtuple("Usage", "total used free")
    free = {"bytes": int(1.5 * staging.GIB)}
    asked: list[Path] = []

    def disk_usage(path: Any) -> Usage:
        asked.append(Path(path))
        return Usage(100 * staging.GIB, 100 * staging.GIB - free["bytes"], free["bytes"])

    monkeypatch.setattr(staging.shutil, "disk_usage", disk_usage)
    dest = tmp_path / "weights" / "tiny"
    with pytest.raises(StagingError) as error:
        stage_snapshot("tiny", REPO, "main", dest, token=None, min_free_margin_gib=2.0)
    message = str(error.value)
    assert "GiB" in message and "1.50 GiB free" in message and "needs 2.00 GiB" in message, message
    assert str(dest / "files") in message and "staging.dir" in message and "'tiny'" in message
    assert asked == [tmp_path]  # the nearest existing parent of a folder not created yet
    assert _served(hub) == []  # not a single file requested

    # Files already staged need no space: a restage on a full disk passes unless the margin is not left.
    free["bytes"] = 100 * staging.GIB
    stage_snapshot("tiny", REPO, "main", dest, token=None)
    free["bytes"] = 1
    assert stage_snapshot("tiny", REPO, "main", dest, token=None, min_free_margin_gib=0)["files"]
    with pytest.raises(StagingError, match=r"0\.00 GiB of files still to download \+ 2 GiB margin"):
        stage_snapshot("tiny", REPO, "main", dest, token=None)


def test_hub_token_comes_from_the_environment_only(hub_env: HubServer, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_token() is None  # despite the stored login in HF_HOME
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", OTHER_TOKEN)
    assert hub_token() == OTHER_TOKEN
    monkeypatch.setenv("HF_TOKEN", f" {TOKEN}\n")
    assert hub_token() == TOKEN
    monkeypatch.setenv("HF_TOKEN", "  ")
    assert hub_token() == OTHER_TOKEN


def test_disk_full_during_download(hub: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", full)
    with pytest.raises(StagingError, match="filled up") as error:
        stage_snapshot("tiny", REPO, "main", tmp_path / "t", token=None)
    assert "staging.dir" in str(error.value) and "tiny" in str(error.value)


def test_unreachable_hub_and_offline_mode(hub_env: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with serve_hub({}) as closed:
        url = closed.url
    monkeypatch.setenv("HF_ENDPOINT", url)  # nothing listens there any more
    with pytest.raises(StagingError, match="needs the internet") as error:
        stage_snapshot("tiny", REPO, "main", tmp_path / "t", token=None)
    assert "HF_ENDPOINT" in str(error.value) and REPO in str(error.value)

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(StagingError, match="HF_HUB_OFFLINE"):
        stage_snapshot("tiny", REPO, "main", tmp_path / "t", token=None)


def test_check_staged_names_missing_or_truncated_files(
    hub: HubServer, tiny_repo: dict[str, Any], tmp_path: Path
) -> None:
    dest = tmp_path / "tiny"
    manifest_path = dest / "manifest.json"
    write_manifest(stage_snapshot("tiny", REPO, "main", dest, token=None), manifest_path)
    assert check_staged(manifest_path) == dest / "files"

    (dest / "files" / "tokenizer.json").unlink()
    with pytest.raises(StagingError) as missing:
        check_staged(manifest_path)
    assert "tokenizer.json (missing)" in str(missing.value)
    assert "snakemake --forcerun stage_weights" in str(missing.value) and "'tiny'" in str(missing.value)

    weights = dest / "files" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(StagingError, match=r"model\.safetensors \(100 bytes, expected \d+\)"):
        check_staged(manifest_path)

    # The fix the message names works: a rerun fetches exactly the damaged and missing files again (huggingface_hub
    # alone would keep the truncated one, its metadata saying it is complete for this commit).
    mark = len(hub.requests)
    write_manifest(stage_snapshot("tiny", REPO, "main", dest, token=None), manifest_path)
    assert check_staged(manifest_path) == dest / "files"
    assert weights.read_bytes() == tiny_repo["repo"]["files"]["model.safetensors"]
    assert set(hub.files_fetched(mark)) == {"model.safetensors", "tokenizer.json"}

    manifest_path.write_text("{not json")
    with pytest.raises(StagingError, match="--forcerun stage_weights"):
        check_staged(manifest_path)
