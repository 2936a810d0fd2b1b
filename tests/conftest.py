"""Shared fixtures: tiny random models of every architecture, built offline once per session."""

from __future__ import annotations

import os
from pathlib import Path

# Tests never reach a model hub: fail fast instead of waiting on network timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest

from kmap.models import LoadedModel, ModelSpec, load_model
from kmap.tiny import ARCHITECTURES, build_tiny_model

REPO = Path(__file__).resolve().parents[1]

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
