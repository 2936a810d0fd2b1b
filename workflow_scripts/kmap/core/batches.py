"""Padded batches of token id lists, shared by the GPU methods (torch only, never imported at parse)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_batch(sequences: Sequence[Sequence[int]], pad_id: int, side: str = "right") -> tuple[Tensor, Tensor]:
    """Ids [B, T] and attention mask [B, T] of ``sequences`` padded with ``pad_id`` to the longest: on the right
    for analysis forwards (real tokens keep positions 0..n-1), on the left for decoding (every row ends at the last
    column, where the next token goes)."""
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', not {side!r}")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        if not seq:
            continue
        span = slice(0, len(seq)) if side == "right" else slice(width - len(seq), width)
        ids[row, span] = torch.tensor(list(seq), dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
