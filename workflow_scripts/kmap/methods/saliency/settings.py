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

    def __post_init__(self) -> None:
        if self.max_prompts < 0:
            raise ValueError("saliency.max_prompts must be >= 0 (0: all prompts)")


@dataclass
class SaliencyRun:
    ids: list[str]
    sums: np.ndarray  # [n_prompts, n_layers, 2] |grad| sums (attention, mlp)
    counts: np.ndarray  # [n_prompts, n_layers, 2] parameters averaged over
    losses: np.ndarray  # [n_prompts]

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

    @classmethod
    def from_table(cls, table: pd.DataFrame) -> SaliencyRun:
        """The run back from its raw table (prompts in the order written)."""
        ids = list(dict.fromkeys(table["id"].astype(str)))
        n_layers = table["layer"].nunique()
        expected = np.tile(np.arange(n_layers), len(ids))
        if len(table) != len(expected) or not (table["layer"].to_numpy() == expected).all():
            raise ValueError("saliency table: expected every layer of every prompt, in prompt order")

        def grid(prefix: str) -> np.ndarray:
            columns = [table[f"{prefix}_{part}"].to_numpy(float) for part in PARTS]
            return np.stack(columns, axis=-1).reshape(len(ids), n_layers, len(PARTS))

        losses = table["loss"].to_numpy(float)[::n_layers]
        return cls(ids, grid("sum"), grid("count"), losses)

    def per_prompt(self) -> dict[str, np.ndarray]:
        """Per-prompt saliency [n_prompts, n_layers] for each metric."""
        return {
            "saliency_attention": self.sums[..., 0] / self.counts[..., 0],
            "saliency_mlp": self.sums[..., 1] / self.counts[..., 1],
            "saliency_combined": self.sums.sum(axis=-1) / self.counts.sum(axis=-1),
        }
