"""Shared fixtures, built offline once per session: tiny random models of every architecture, and the
default demo model (trained, about 3 minutes on 2 cores) with a random-init twin."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# kmap is found as Snakemake jobs find it: its folder appended to the path, after installed packages (so an
# entry script named after its rule, such as umap.py, never shadows the library of the same name).
sys.path.append(str(REPO / "workflow_scripts"))

# Tests never reach a model hub: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
# The workflow runs' warm job servers (kmap.core.warm) live in this session's own folder; removing it at the end
# stops them (a server exits once its socket is gone).
WARM_DIR = Path(tempfile.mkdtemp(prefix="kmap-warm-tests-"))
os.environ["KMAP_WARM_DIR"] = str(WARM_DIR)

import pytest

from kmap.core.models import LoadedModel, load_model
from kmap.core.spec import ModelSpec
from kmap.offline.demo_train import DemoParams, default_cache_dir, make_model, train_demo_model
from kmap.offline.tiny import ARCHITECTURES, build_tiny_model

WORDS = [
    "a",
    "year",
    "old",
    "male",
    "female",
    "patient",
    "presents",
    "with",
    "chest",
    "pain",
    "fever",
    "cough",
    "headache",
    "rash",
    "most",
    "likely",
    "has",
    "angina",
    "pneumonia",
    "migraine",
    "eczema",
    "the",
    "dose",
    "of",
    "metformin",
    "is",
    "500",
    "mg",
    "twice",
    "daily",
    "10",
    "20",
    "45",
    "67",
    ".",
    ",",
    ":",
]


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    dirs = {}
    for arch in ARCHITECTURES:
        build_tiny_model(arch, WORDS, root / arch, seed=0, n_layers=3, hidden_size=32)
        dirs[arch] = root / arch
    return dirs


@pytest.fixture(scope="session", params=ARCHITECTURES)
def tiny(request: pytest.FixtureRequest, tiny_dirs: dict[str, Path]) -> LoadedModel:
    arch = request.param
    spec = ModelSpec(name=f"tiny-{arch}", kind="tiny", source=str(tiny_dirs[arch]), dtype="float32")
    return load_model(spec)


def _train_default_demo(root: Path) -> None:
    """The default demo model (config defaults) into ``root/model`` and ``root/results``, from the cache while the
    knowledge base, parameters, training code and libraries are unchanged. Concurrent callers (pytest-xdist
    workers) take a lock, so one trains and the others reuse its model."""
    import fcntl

    knowledge = REPO / "prompts" / "knowledge.yaml"
    cache = default_cache_dir() or root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".train.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        train_demo_model(knowledge, DemoParams(), root / "model", root / "results", cache_dir=cache)


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo model, trained once and reused from the cache (``_train_default_demo``)."""
    root = tmp_path_factory.mktemp("demo")
    _train_default_demo(root)
    return root


@pytest.fixture(scope="session")
def demo(demo_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(name="demo", kind="demo", source=str(demo_dir / "model"), dtype="float32"))


@pytest.fixture(scope="session")
def twin(demo: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The demo architecture and tokenizer with random weights."""
    root = tmp_path_factory.mktemp("twin")
    make_model(DemoParams(seed=1), len(demo.tokenizer), demo.tokenizer).save_pretrained(root, safe_serialization=True)
    demo.tokenizer.save_pretrained(root)
    return load_model(ModelSpec(name="twin", kind="demo", source=str(root), dtype="float32"))


# Heaviest first, so that under pytest-xdist (``-n 2 --dist loadgroup --no-loadscope-reorder``, README.md) the
# long end-to-end tests start at once and the many short ones fill the other worker around them; the SLURM test
# mostly waits for the controller while the other worker computes.
HEAVY_FIRST = ("test_demo.py", "test_slurm.py", "test_workflow.py", "test_faults.py", "test_bad_inputs.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    rank = {name: index for index, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(HEAVY_FIRST)))


# The modules whose tests take the default demo model (fixtures demo_dir, demo, twin).
DEMO_MODULES = ("test_demo.py", "test_ablation.py", "test_patching.py", "test_preflight.py")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist, the controller trains the default demo model into the cache before any worker starts
    (xdist's own sessionstart, which starts them, runs last), where the selection needs it and the cache does not
    hold it. Trained inside a worker it would share the cores with the other workers' tests for minutes."""
    config = session.config
    if not config.pluginmanager.has_plugin("dsession") or config.option.collectonly or default_cache_dir() is None:
        return
    selected = [Path(arg.split("::")[0]).resolve() for arg in config.args] or [REPO / "tests"]
    if any(path.is_dir() or path.name in DEMO_MODULES for path in selected):
        root = Path(tempfile.mkdtemp(prefix="kmap-demo-pretrain-"))
        try:
            _train_default_demo(root)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    shutil.rmtree(WARM_DIR, ignore_errors=True)
