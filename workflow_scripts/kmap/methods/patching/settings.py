"""Method 4 settings and the pair statuses of its raw table, shared by the GPU job and the summary."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from kmap.core.settings import schema_field

METHOD = "patching"
VARIANTS = (
    "last",
    "concept",
)  # the patched positions: the answer position, the positions where the prompts differ
MULTI_TOKEN_MODES = ("exclude", "first_token", "numbers", "all")


@dataclass(frozen=True)
class PatchingSettings:
    min_gap: float = schema_field(
        "patching", "min_gap"
    )  # pairs with |LD_clean − LD_corrupted| below this (logits) are excluded
    max_pairs: int = schema_field(
        "patching", "max_pairs"
    )  # usable pairs patched per (model, domain), spread over the pool (0: all)
    min_pairs: int = schema_field(
        "patching", "min_pairs"
    )  # usable pairs a (model, domain) needs; checked by its pre-flight, never by the GPU job
    multi_token_answers: str = schema_field(
        "patching", "multi_token_answers"
    )  # which multi-token answers use their first differing token
    heatmap_pairs: int = schema_field(
        "patching", "heatmap_pairs"
    )  # pairs swept position by position for the layer × position heatmap
    batch_size: int = schema_field(
        "patching", "batch_size"
    )  # pairs per clean/corrupted batch and patched rows per forward (a resource)
    reuse_positions: bool = schema_field(
        "patching", "reuse_positions"
    )  # reuse the clean and corrupted runs' states and keys/values (copy_prefixes, known_lds)

    def __post_init__(self) -> None:
        if self.multi_token_answers not in MULTI_TOKEN_MODES:
            raise ValueError(f"patching.multi_token_answers must be one of {MULTI_TOKEN_MODES}")
        if self.min_gap < 0 or self.batch_size < 1 or self.heatmap_pairs < 0 or self.max_pairs < 0:
            raise ValueError("patching.min_gap, heatmap_pairs and max_pairs must be >= 0 and batch_size >= 1")


USED = "used"
SMALL_GAP = "small_gap"
BEYOND_MAX_PAIRS = "beyond_max_pairs"  # usable, but patching.max_pairs others were spread over the pool first
NON_FINITE = "non_finite"  # an LD overflowed (fp16): the pair is excluded, counted and logged with its layers


def exclusion_note(pairs: pd.DataFrame) -> str:
    """'excluded 3 of 58 pairs: 2 small_gap, 1 unequal_length' (empty when none was excluded)."""
    status = pairs.drop_duplicates("id")["status"]
    dropped = status[status != USED].value_counts().sort_index()
    if dropped.empty:
        return ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in dropped.items())
    return f"excluded {int(dropped.sum())} of {len(status)} pairs: {reasons}"
