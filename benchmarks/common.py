"""Shared by the benchmark scripts: a random-init model of a chosen depth and width, and model loading."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow_scripts"))  # after installed packages

from kmap.core.models import LoadedModel, load_model  # noqa: E402
from kmap.core.spec import ModelSpec  # noqa: E402
from kmap.data.knowledge import load_knowledge, vocabulary  # noqa: E402
from kmap.offline.tiny import build_tiny_model  # noqa: E402


def random_model(shape: str, root: Path, arch: str = "llama") -> Path:
    """A random-init ``arch`` model of ``LAYERSxHIDDEN`` (MLP 2 x hidden, 4 heads, 2 KV heads) with the tiny
    models' BPE tokenizer of the knowledge base's words; ``32x3072`` has 2.7 B parameters."""
    layers, hidden = (int(x) for x in shape.lower().split("x"))
    words = vocabulary(load_knowledge(REPO / "prompts" / "knowledge.yaml"))
    out = root / f"random-{arch}-{shape}"
    build_tiny_model(arch, words, out, seed=0, n_layers=layers, hidden_size=hidden)
    return out


def load(source: Path | str, device: str = "cpu", dtype: str = "float32") -> LoadedModel:
    """A model for benchmarking: on the CPU, or whole on one GPU (``cuda``)."""
    spec = ModelSpec(name="bench", kind="hf", source=str(source), dtype=dtype)
    return load_model(spec, device_map=device) if device != "cpu" else load_model(spec)
