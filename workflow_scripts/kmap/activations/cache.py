"""The activation cache: residual-stream activations at the concept position, every layer, one pass.

One forward per batch records the embedding output (layer -1) and every decoder layer's output at the
concept position of each prompt. The cache for a (model, domain) is one safetensors file holding a
[n_layers + 1, n_prompts, hidden] tensor, a Parquet table of the prompts (ids and labels, row-aligned with the
tensor), and a provenance JSON; every metric reads it instead of rerunning the model.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from kmap.core.hooks import capture, gather_rows, last_token_index, masked_mean
from kmap.core.io import atomic_output, write_json_atomic
from kmap.core.models import LoadedModel, encode
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


def concept_mask(offsets: Tensor, attention_mask: Tensor, texts: Sequence[str], concepts: Sequence[str]) -> Tensor:
    """Tokens whose character span overlaps the first occurrence of each row's concept: [B, T] bool.

    Falls back to the last real token where the concept is not found, so a row is never empty.
    """
    mask = torch.zeros(attention_mask.shape, dtype=torch.bool)
    last = last_token_index(attention_mask)
    for row, (text, concept) in enumerate(zip(texts, concepts, strict=True)):
        start = text.lower().find(concept.lower()) if concept else -1
        if start >= 0:
            end = start + len(concept)
            spans = offsets[row]
            overlap = (spans[:, 0] < end) & (spans[:, 1] > start) & (spans[:, 1] > spans[:, 0])
            mask[row] = overlap & attention_mask[row].bool().cpu()
        if not mask[row].any():
            mask[row, last[row]] = True
    return mask


def _reducer(batch: dict[str, Tensor], texts: Sequence[str], concepts: Sequence[str] | None, position: str):
    if position == "last":
        index = last_token_index(batch["attention_mask"])
        return lambda hidden: gather_rows(hidden, index).float()
    if concepts is None:
        raise ValueError("activations.position 'concept_mean' needs a concept per prompt")
    mask = concept_mask(batch["offset_mapping"].cpu(), batch["attention_mask"].cpu(), texts, concepts)
    return lambda hidden: masked_mean(hidden, mask).float()


def extract(
    loaded: LoadedModel,
    texts: Sequence[str],
    settings: ActivationSettings,
    concepts: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[Tensor, np.ndarray]:
    """Activations [n_layers + 1, n_prompts, hidden] (float32, on CPU) and token counts per prompt."""
    layers = loaded.parts.layers
    n_layers = len(layers)
    out = torch.empty((n_layers + 1, len(texts), loaded.hidden_size), dtype=torch.float32)
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), settings.batch_size):
        stop = min(start + settings.batch_size, len(texts))
        chunk = list(texts[start:stop])
        batch = encode(loaded.tokenizer, chunk, loaded.device)
        reduce = _reducer(batch, chunk, concepts[start:stop] if concepts is not None else None, settings.position)
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.inference_mode(), capture(layers, reduce) as captured:
            # The base model skips the LM head: its logits are not needed here.
            loaded.parts.base(**inputs, use_cache=False)
        for index, value in captured.items():
            out[index - EMBEDDINGS, start:stop] = value.cpu()
        n_tokens[start:stop] = batch["attention_mask"].sum(dim=1).cpu().numpy()
        if progress is not None:
            progress(stop, len(texts))
    return out, n_tokens


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
