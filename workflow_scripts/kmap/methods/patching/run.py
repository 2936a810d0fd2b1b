"""Activation patching over a pair set: the sweep driver, per-pair tables, aggregates with CIs, figures.

Per used pair and layer, P = (LD_patched − LD_corrupted) / (LD_clean − LD_corrupted), for two position sets:
``last`` (the answer position) and ``concept`` (where the clean and corrupted tokens differ). Aggregates per
(variant, layer), each with a 95 % bootstrap CI over pairs (one index matrix for every layer and metric):

- ``P_<variant>``: ratio of mean differences, mean(LD_patched − LD_corrupted) / mean(LD_clean − LD_corrupted);
- ``P_median_<variant>``: median of per-pair P (robust to pairs whose denominator is small).

Values outside [0, 1] are kept (overshoot is real). Layer -1 is the embedding output: there ``concept``
patching is the clean prompt (P = 1) and ``last`` changes nothing (the last tokens are equal, P = 0), so the
curves start from their two extremes; at the last layer they end at the opposite ones (the sweep takes these
from the clean and corrupted runs, ``kmap.methods.patching.sweep.known_lds``). Pairs are excluded, and counted,
when the tokenizer gives unequal lengths or unusable answers (``patching.prepare_pair``) or when
|LD_clean − LD_corrupted| < ``min_gap``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kmap.core.models import LoadedModel
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.core.tables import EMBEDDINGS
from kmap.methods.patching.pairs import PreparedPair, prepare_pairs
from kmap.methods.patching.settings import (
    BEYOND_MAX_PAIRS,
    NON_FINITE,
    SMALL_GAP,
    USED,
    VARIANTS,
    PatchingSettings,
)
from kmap.methods.patching.sweep import PairRuns, run_pairs, sweep

log = logging.getLogger(__name__)


Progress = Callable[[int, int], None]


@dataclass
class PatchingRun:
    # One row per (used pair, variant, layer) and one per excluded pair (variant and layer empty).
    pairs: pd.DataFrame
    heatmap: pd.DataFrame  # one row per (heatmap pair, layer, position)
    n_layers: int


def spread(pairs: list[PreparedPair], limit: int) -> tuple[list[PreparedPair], list[PreparedPair]]:
    """At most ``limit`` of the usable pairs (0: all), evenly spaced over the pool so that every part of it (each
    concept's partners are listed together) is represented; the rest, in pool order."""
    if limit <= 0 or len(pairs) <= limit:
        return pairs, []
    keep = set(np.linspace(0, len(pairs) - 1, limit).round().astype(int).tolist())
    return [p for i, p in enumerate(pairs) if i in keep], [p for i, p in enumerate(pairs) if i not in keep]


def heatmap_ids(pairs: list[PreparedPair], count: int) -> set[str]:
    """``count`` pairs spread evenly over the set (deterministic)."""
    if count <= 0 or not pairs:
        return set()
    picks = np.unique(np.linspace(0, len(pairs) - 1, min(count, len(pairs))).round().astype(int))
    return {pairs[i].id for i in picks}


def patch_jobs(runs: PairRuns, used: list[int], heat: list[int]) -> tuple[Tensor, Tensor, list[tuple]]:
    """Patched copies of one batch: each used row × variant, then each heatmap row × single position.

    Returns rows [J], masks [J, T] and a label per copy: (variant, row, -1) or ("position", row, position).
    """
    device = runs.attention_mask.device
    variant_masks = {"last": runs.last_mask(), "concept": runs.concept_mask()}
    rows, masks, labels = [], [], []
    for variant in VARIANTS:
        for row in used:
            rows.append(row)
            masks.append(variant_masks[variant][row])
            labels.append((variant, row, -1))
    width = runs.attention_mask.shape[1]
    for row in heat:
        for position in range(int(runs.attention_mask[row].sum())):
            rows.append(row)
            masks.append(torch.arange(width, device=device) == position)
            labels.append(("position", row, position))
    if not rows:
        return torch.empty(0, dtype=torch.long, device=device), torch.empty((0, width), dtype=torch.bool), []
    return torch.tensor(rows, device=device), torch.stack(masks), labels


def non_finite_layers(lds: np.ndarray, labels: list[tuple]) -> dict[int, list[int]]:
    """Batch rows with a non-finite patched LD in any of their copies, and at which layers (-1: embeddings)."""
    found: dict[int, set[int]] = {}
    for j, (_, row, _) in enumerate(labels):
        bad = np.flatnonzero(~np.isfinite(lds[:, j]))
        if bad.size:
            found.setdefault(row, set()).update(int(i) + EMBEDDINGS for i in bad)
    return {row: sorted(layers) for row, layers in found.items()}


def pair_record(pair: PreparedPair, runs: PairRuns, row: int, tokenizer: Any) -> dict[str, Any]:
    return dict(
        id=pair.id,
        clean_prompt=pair.clean_text,
        answer_mode=pair.answer_mode,
        answer_token=tokenizer.decode([pair.answer]),
        foil_token=tokenizer.decode([pair.foil]),
        n_tokens=len(pair.clean),
        concept_positions=",".join(map(str, pair.concept)),
        ld_clean=float(runs.ld_clean[row]),
        ld_corrupted=float(runs.ld_corrupted[row]),
    )


def batch_records(
    batch: list[PreparedPair],
    runs: PairRuns,
    excluded: dict[int, str],
    labels: list[tuple],
    lds: np.ndarray,
    tokenizer: Any,
) -> tuple[list[dict], list[dict]]:
    """Pair and heatmap rows of a batch from its sweep (``lds`` [n_layers + 1, J]; row 0: layer -1);
    ``excluded`` gives the status of each batch row that is not used."""
    base = [pair_record(pair, runs, row, tokenizer) for row, pair in enumerate(batch)]
    pairs = [dict(base[row], status=status) for row, status in sorted(excluded.items())]
    heat = []
    for j, (kind, row, position) in enumerate(labels):
        for index, ld in enumerate(lds[:, j]):
            record = dict(base[row], layer=index + EMBEDDINGS, ld_patched=float(ld))
            if kind == "position":
                token, corrupted = (
                    tokenizer.decode([ids[position]]) for ids in (batch[row].clean, batch[row].corrupted)
                )
                heat.append(dict(record, position=position, token=token, corrupted_token=corrupted))
            else:
                pairs.append(dict(record, status=USED, variant=kind))
    return pairs, heat


def run_patching(
    loaded: LoadedModel,
    frame: pd.DataFrame,
    settings: PatchingSettings,
    progress: Progress | None = None,
    fmt: PromptFormat = RAW,
) -> PatchingRun:
    """Clean and corrupted runs once per pair (prompts formatted by ``fmt``), then the exact fast sweep, batch by
    batch of pairs."""
    prepared, excluded = prepare_pairs(loaded.tokenizer, frame, settings.multi_token_answers, fmt)
    prepared, spare = spread(prepared, settings.max_pairs)
    excluded |= dict.fromkeys((pair.id for pair in spare), BEYOND_MAX_PAIRS)
    heat_ids = heatmap_ids(prepared, settings.heatmap_pairs)
    pair_rows: list[dict] = [dict(id=pid, status=reason) for pid, reason in excluded.items()]
    heat_rows: list[dict] = []
    for start in range(0, len(prepared), settings.batch_size):
        batch = prepared[start : start + settings.batch_size]
        runs = run_pairs(loaded, batch)
        finite = (torch.isfinite(runs.ld_clean) & torch.isfinite(runs.ld_corrupted)).tolist()
        gap = (runs.ld_clean - runs.ld_corrupted).abs()
        used = [row for row in torch.nonzero(gap >= settings.min_gap).flatten().tolist() if finite[row]]
        heat = [row for row in used if batch[row].id in heat_ids]
        rows, masks, labels = patch_jobs(runs, used, heat)
        lds = sweep(runs, loaded, rows, masks, settings.batch_size, settings.reuse_positions).cpu().numpy()
        overflow = non_finite_layers(lds, labels)
        for row, layers in overflow.items():
            log.warning("patching: pair %s: non-finite patched LD at layers %s; excluded", batch[row].id, layers)
        reasons = {row: NON_FINITE for row in range(len(batch)) if not finite[row] or row in overflow}
        reasons |= {row: SMALL_GAP for row in range(len(batch)) if row not in used and row not in reasons}
        keep = [j for j, label in enumerate(labels) if label[1] not in reasons]
        new_pairs, new_heat = batch_records(
            batch, runs, reasons, [labels[j] for j in keep], lds[:, keep], loaded.tokenizer
        )
        pair_rows += new_pairs
        heat_rows += new_heat
        if progress is not None:
            progress(min(start + settings.batch_size, len(prepared)), len(prepared))
    pairs = with_p(pair_rows)
    if "variant" not in pairs:
        pairs["variant"] = pd.Series(pd.NA, index=pairs.index, dtype="string")
    return PatchingRun(pairs=pairs, heatmap=with_p(heat_rows), n_layers=loaded.n_layers)


def with_p(records: list[dict]) -> pd.DataFrame:
    """A table of the records with the per-copy normalised logit difference P (NaN where not swept)."""
    table = pd.DataFrame.from_records(records)
    for column in ("layer", "ld_clean", "ld_corrupted", "ld_patched"):
        if column not in table:
            table[column] = np.nan
    table["layer"] = table["layer"].astype("Int64")
    table["p"] = (table["ld_patched"] - table["ld_corrupted"]) / (table["ld_clean"] - table["ld_corrupted"])
    return table
