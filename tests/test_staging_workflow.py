"""Staged weights end to end: rule stage_weights downloads a gated hub model from a local hub (the real
huggingface_hub code, HF_ENDPOINT), then the pre-flight and the GPU job read the snapshot with the hub gone, and
their outputs record the hub id and the commit that `main` resolved to."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kmap.activations.cache import read_cache
from kmap.core.provenance import read_provenance
from kmap.data.knowledge import load_knowledge, vocabulary
from kmap.offline.tiny import build_tiny_model
from tests.hub_server import repo_from_folder, serve_hub
from tests.workflow import REPO, copy_workflow, job_counts, local_env, snakemake, write_config

HUB_ID = "kmap-test/tiny-llama"
TOKEN = "hf_kmapTestToken0123456789"


def _config(revision: str) -> dict:
    return {
        "models": {
            "hub-llama": {
                "kind": "hf",
                "source": HUB_ID,
                "revision": revision,
                "gated": True,
                "n_layers": 2,
                "dtype": "float32",
                "methods": [],
            }
        },
        "domains": ["disease"],
    }


def test_staged_snapshot_is_read_offline_and_recorded(tmp_path: Path) -> None:
    folder = tmp_path / "tiny"
    build_tiny_model(
        "llama", vocabulary(load_knowledge(REPO / "prompts" / "knowledge.yaml")), folder, n_layers=2, hidden_size=32
    )
    decoy = {"pytorch_model.bin": b"\x80\x02 a pickle staging must never fetch"}
    repo = repo_from_folder(folder, extra_files=decoy, gated=True)
    commit = repo["branches"]["main"]
    work = copy_workflow(tmp_path / "wf")
    write_config(work, _config("main"))
    base = {k: v for k, v in local_env().items() if not k.startswith(("HF_", "HUGGING_FACE"))}
    env = {**base, "HF_HOME": str(tmp_path / "hf_home"), "HF_TOKEN": TOKEN}
    manifest_path = work / "weights" / "hub-llama" / "snapshot.json"

    with serve_hub({HUB_ID: repo}, token=TOKEN) as hub:
        env["HF_ENDPOINT"] = hub.url
        snakemake(work, str(manifest_path.relative_to(work)), "--configfile", "config/test.yaml", env=env)
        fetched = hub.files_fetched()
    manifest = json.loads(manifest_path.read_text())
    assert manifest["repo_id"] == HUB_ID and manifest["revision"] == "main" and manifest["commit"] == commit
    assert "pytorch_model.bin" not in fetched and any(name.endswith(".safetensors") for name in fetched)
    staged = work / "weights" / "hub-llama" / "files"
    for name, data in repo["files"].items():
        if name != "pytorch_model.bin":
            assert (staged / name).read_bytes() == data, name
    # The token never reaches an output or a log.
    for path in [*work.rglob("*.json"), *work.rglob("*.log")]:
        assert TOKEN not in path.read_text(errors="ignore"), path

    # The hub is gone (and the endpoint dead): the parse plans from the staged config, the pre-flight and the
    # GPU job read the snapshot offline.
    target = "results/activations/hub-llama/disease.safetensors"
    offline = {**env, "KMAP_ALLOW_CPU": "1"}
    snakemake(work, target, "--configfile", "config/test.yaml", env=offline)
    record = read_provenance(work / target)
    assert record["model"]["source"] == HUB_ID and record["model"]["resolved_revision"] == commit
    assert record["model"]["staged"] == "weights/hub-llama/files"  # relative to the working directory
    cache = read_cache(work / target, work / "results/activations/hub-llama/disease.prompts.parquet")
    assert cache.acts.shape[0] == 3 and cache.acts.shape[2] == 32  # embeddings + 2 layers, hidden 32
    assert read_provenance(work / "results/preflight/hub-llama/disease.prompts.csv")["model"]["source"] == HUB_ID

    # Nothing stale: pinning another revision restages, and everything that read the old snapshot reruns.
    write_config(work, _config("v2"), "v2.yaml")
    planned = job_counts(snakemake(work, "-n", target, "--configfile", "config/v2.yaml", env=offline).stdout)
    assert planned == {"stage_weights": 1, "preflight": 1, "activations": 1}
    # A missing revision fails at staging with the fix (the hub is back, without a v2).
    with serve_hub({HUB_ID: repo}, token=TOKEN) as hub:
        failed = snakemake(
            work, target, "--configfile", "config/v2.yaml", env={**offline, "HF_ENDPOINT": hub.url}, check=False
        )
    log = (work / "results/logs/stage_weights/hub-llama.log").read_text()
    assert failed.returncode != 0 and "v2" in log and "models.hub-llama.revision" in log
    assert os.path.exists(work / target)  # only the job that failed lost its output; no GPU job started
