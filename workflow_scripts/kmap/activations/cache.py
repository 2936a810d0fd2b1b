"""The activation cache's files: written by rule activations (``kmap.activations.extract`` measures), read by
every geometry metric instead of rerunning the model; no model code here, so the CPU rules reading the cache
never depend on it.

The cache for a (model, domain) is one safetensors file holding a [n_layers + 1, n_prompts, hidden] tensor
(layer -1: the embeddings), a Parquet table of the prompts (ids and labels, row-aligned with the tensor), and
a provenance JSON.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from kmap.core.io import atomic_output, write_json_atomic
from kmap.core.provenance import KEY, to_json
from kmap.core.settings import schema_field
from kmap.core.tables import EMBEDDINGS, write_frame

log = logging.getLogger(__name__)

STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class NonFiniteActivations(ValueError):
    """Activations contain NaN or inf (e.g. float16 overflow); never cached, never averaged."""


@dataclass(frozen=True)
class ActivationSettings:
    position: str = schema_field("activations", "position")
    dtype: str = schema_field("activations", "dtype")
    batch_size: int = schema_field("activations", "batch_size")

    def __post_init__(self) -> None:
        if self.position not in ("last", "concept_mean"):
            raise ValueError(f"activations.position must be 'last' or 'concept_mean', not {self.position!r}")
        if self.dtype not in STORAGE_DTYPES:
            raise ValueError(f"activations.dtype must be one of {sorted(STORAGE_DTYPES)}, not {self.dtype!r}")


def check_finite(acts: Tensor, prompt_ids: Sequence[str]) -> None:
    bad = ~torch.isfinite(acts)
    if not bad.any():
        return
    layer_rows = bad.any(dim=2)
    details = []
    for position in torch.nonzero(layer_rows.any(dim=1)).flatten().tolist():
        rows = torch.nonzero(layer_rows[position]).flatten().tolist()
        names = ", ".join(prompt_ids[r] for r in rows[:5]) + (" …" if len(rows) > 5 else "")
        details.append(f"layer {position + EMBEDDINGS}: {len(rows)} prompts ({names})")
    raise NonFiniteActivations(
        "non-finite activations (NaN/inf), not cached: " + "; ".join(details) + ". If the model ran in "
        "float16, set its dtype to bfloat16 or float32 in the config."
    )


def write_cache(
    acts: Tensor,
    table: pd.DataFrame,
    provenance: dict[str, Any],
    tensor_path: str | Path,
    table_path: str | Path,
    provenance_path: str | Path,
    dtype: str = "float32",
) -> None:
    """Write the three cache files, each atomically (a killed job leaves no file a reader would trust)."""
    if len(table) != acts.shape[1]:
        raise ValueError(f"{len(table)} table rows for {acts.shape[1]} activation rows")
    check_finite(acts, table["id"].astype(str).tolist())
    layers = torch.arange(EMBEDDINGS, acts.shape[0] + EMBEDDINGS, dtype=torch.int64)
    metadata = {KEY: to_json(provenance)}
    tensors = {"activations": acts.to(STORAGE_DTYPES[dtype]).contiguous(), "layers": layers}
    with atomic_output(tensor_path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    write_frame(table, table_path, provenance)
    write_json_atomic(provenance_path, provenance)


@dataclass(frozen=True)
class ActivationCache:
    acts: np.ndarray  # [n_layers + 1, n_prompts, hidden], float32
    layers: np.ndarray  # layer index of each first-axis entry, starting at -1 (embeddings)
    table: pd.DataFrame
    provenance: dict[str, Any]

    def layer(self, layer: int) -> np.ndarray:
        return self.acts[layer - int(self.layers[0])]


def read_cache(tensor_path: str | Path, table_path: str | Path) -> ActivationCache:
    with safe_open(str(tensor_path), framework="pt") as handle:
        acts = handle.get_tensor("activations").float().numpy()
        layers = handle.get_tensor("layers").numpy()
        provenance = json.loads((handle.metadata() or {}).get(KEY, "{}"))
    table = pd.read_parquet(table_path)
    if len(table) != acts.shape[1]:
        raise ValueError(f"{table_path}: {len(table)} rows but {tensor_path} holds {acts.shape[1]} prompts")
    return ActivationCache(acts=acts, layers=layers, table=table, provenance=provenance)


class StaleCacheError(RuntimeError):
    """A cache built from other inputs than the ones its reader is given."""


def check_cache(cache: ActivationCache, tensor_path: str | Path, prompts_path: str | Path) -> None:
    """Refuse a cache whose provenance does not match the prompt file it is read with (copied or touched
    into place, or built by another kmap version before provenance was recorded)."""
    from kmap.core.io import file_sha256

    recorded = cache.provenance.get("prompt_sha256")
    current = file_sha256(prompts_path)
    fix = f"rebuild it: snakemake --forcerun activations {tensor_path}"
    if recorded is None:
        raise StaleCacheError(f"{tensor_path}: no provenance (prompt_sha256 missing); {fix}")
    if recorded != current:
        raise StaleCacheError(
            f"{tensor_path}: built from a prompt file with sha256 {recorded[:12]}…, but {prompts_path} now has "
            f"{current[:12]}…; {fix}"
        )
