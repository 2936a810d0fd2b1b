"""Method 2 settings and its raw measurement (per prompt and layer), shared by the GPU job and the summary."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kmap.core.settings import schema_field

METHOD = "saliency"
PARTS = ("attention", "mlp")
METRICS = ("saliency_attention", "saliency_mlp", "saliency_combined")


@dataclass(frozen=True)
class SaliencySettings:
    max_prompts: int = schema_field(
        "saliency", "max_prompts"
    )  # 0: every prompt; else this many, spread evenly over the set (large models)
    batch_size: int = schema_field("saliency", "batch_size")  # prompts per backward; never changes values

    def __post_init__(self) -> None:
        if self.max_prompts < 0:
            raise ValueError("saliency.max_prompts must be >= 0 (0: all prompts)")
        if self.batch_size < 1:
            raise ValueError("saliency.batch_size must be >= 1")


@dataclass
class SaliencyRun:
    ids: list[str]
    sums: np.ndarray  # [n_prompts, n_layers, 2] |grad| sums (attention, mlp)
    counts: np.ndarray  # [n_prompts, n_layers, 2] parameters averaged over
    losses: np.ndarray  # [n_prompts]
    batch_size: int = 1  # prompts per backward (1 where the model's weights allow no batching)

    def table(self) -> pd.DataFrame:
        """The raw measurement, one row per (prompt, layer): |grad| sums and parameter counts per part."""
        n_prompts, n_layers, _ = self.sums.shape
        return pd.DataFrame(
            {
                "id": np.repeat(self.ids, n_layers),
                "layer": np.tile(np.arange(n_layers), n_prompts),
                **{f"sum_{part}": self.sums[..., k].ravel() for k, part in enumerate(PARTS)},
                **{f"count_{part}": self.counts[..., k].ravel() for k, part in enumerate(PARTS)},
                "loss": np.repeat(self.losses, n_layers),
            }
        )
