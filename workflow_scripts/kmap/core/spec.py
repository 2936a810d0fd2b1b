"""A configured model, as the workflow plans it: no torch, so the Snakefile parse stays fast."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kmap.core.io import file_sha256

QUANTIZATIONS = ("none", "8bit", "4bit")
DEMO_ARCHITECTURES = ("llama", "qwen3", "gemma3")  # families kmap.offline.demo_train builds


@dataclass(frozen=True)
class ModelSpec:
    """One configured model. ``source`` is a hub id ("org/name") or a local directory."""

    name: str
    kind: str
    source: str
    revision: str | None = None
    dtype: str = "bfloat16"
    quantization: str = "none"
    trust_remote_code: bool = False
    n_layers: int | None = None
    architecture: str | None = None

    @property
    def is_local(self) -> bool:
        return self.kind in ("demo", "tiny") or self.source.startswith(("/", "./", "../", "~"))

    def provenance(self) -> dict[str, Any]:
        record = asdict(self)
        record["resolved_revision"] = resolved_revision(self)
        return record


def resolved_revision(spec: ModelSpec) -> str | None:
    """The exact weights used: the configured revision, or the content hash of a local safetensors index."""
    if not spec.is_local:
        return spec.revision
    root = Path(spec.source).expanduser()
    weights = sorted(root.glob("*.safetensors"))
    if not weights:
        return None
    if len(weights) == 1:
        return "sha256:" + file_sha256(weights[0])[:16]
    index = root / "model.safetensors.index.json"
    return "sha256:" + file_sha256(index)[:16] if index.exists() else None
