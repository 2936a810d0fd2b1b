"""Activation patching: the exact, fast layer sweep (pairs are prepared in ``kmap.methods.patching.pairs``).

Per pair, the clean and the corrupted prompt run once each (``run_pairs``); both runs' layer outputs and
keys/values are kept. A patched run at layer l is the corrupted run with layer l's output replaced by the clean
one at chosen positions. ``patched_ld`` computes it without recomputing what the patch cannot change:

- layers 0..l are not run: their ``forward`` temporarily returns its input (layers < l) or the prepared
  patched residual (layer l); the base model still builds embeddings, rotary tables and masks (cheap);
- leading positions that the patch leaves as one of the two runs are not run either: in a causal model a
  position whose own and earlier states at layer l are all the corrupted run's (not patched, or equal in both
  runs) keeps the corrupted run's states at every layer above, and one whose states are all the clean run's
  (patched, or equal) keeps the clean run's; that run's keys/values stand in for them (a KV cache), and only
  the suffix after the longer such prefix is computed (``copy_prefixes``);
- copies whose prefix covers the whole prompt, answer position included, are that run and are not run at all
  (``known_lds``); so is every copy at the last layer, since only the answer position's output reaches the
  logits there;
- patched copies of many pairs, positions and position sets go through one forward per layer.

``naive_patched_ld`` is the reference: a full corrupted forward per layer with ``hooks.overwrite``. The two
agree to float precision on every supported architecture (tests/test_patching.py).

LD = logit(r) − logit(r') at the answer position (the last prompt token), r and r' the pair's answer and foil
tokens (``kmap.methods.patching.pairs``).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from kmap.core.batches import pad_batch
from kmap.core.hooks import capture, overwrite
from kmap.core.models import LoadedModel, full_kv_cache
from kmap.core.tables import EMBEDDINGS
from kmap.methods.patching.pairs import PreparedPair

# --- clean and corrupted runs ----------------------------------------------------------------------------


@dataclass
class PairRuns:
    """A batch of pairs, right-padded, with everything the patched runs reuse (on the model's devices)."""

    pairs: list[PreparedPair]
    clean_ids: Tensor  # [B, T]
    corrupted_ids: Tensor
    attention_mask: Tensor  # [B, T]; clean and corrupted have equal lengths
    answer_pos: Tensor  # [B]
    answer: Tensor  # [B]
    foil: Tensor
    clean_resid: dict[int, Tensor]  # per layer (-1: embeddings), [B, T, d]
    corrupted_resid: dict[int, Tensor]
    clean_kv: list[tuple[Tensor, Tensor]]  # per layer, keys and values [B, heads, T, head_dim]
    corrupted_kv: list[tuple[Tensor, Tensor]]
    ld_clean: Tensor  # [B], float32
    ld_corrupted: Tensor

    def concept_mask(self) -> Tensor:
        return (self.clean_ids != self.corrupted_ids) & self.attention_mask.bool()

    def first_difference(self) -> Tensor:
        """[B]: each pair's first differing position; before it both runs are equal at every layer."""
        return _first_true(self.concept_mask(), torch.full_like(self.answer_pos, self.attention_mask.shape[1]))

    def last_mask(self) -> Tensor:
        mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        mask[torch.arange(len(mask)), self.answer_pos] = True
        return mask


def on(tensor: Tensor, rows: Tensor) -> Tensor:
    """``tensor[rows]`` where it lives: a model split over devices keeps each layer's tensors on that layer's
    device, while batch indices live with the embeddings."""
    return tensor[rows.to(tensor.device)]


def pad_right(sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    ids, mask = pad_batch(sequences, pad_id)
    return ids.to(device), mask.to(device)


def answer_ld(logits: Tensor, rows: Tensor, answer: Tensor, foil: Tensor) -> Tensor:
    """logit(r) − logit(r') at each row's answer position: logits [B, T, V], rows [B] -> [B] float32."""
    picked = logits[torch.arange(len(rows), device=logits.device), rows.to(logits.device)].float()
    index = torch.arange(len(rows), device=picked.device)
    return picked[index, answer.to(picked.device)] - picked[index, foil.to(picked.device)]


def run_pairs(loaded: LoadedModel, pairs: Sequence[PreparedPair]) -> PairRuns:
    """The clean and the corrupted run of a batch of pairs: both runs' layer outputs and keys/values, LDs."""
    pad = loaded.tokenizer.pad_token_id
    clean_ids, mask = pad_right([p.clean for p in pairs], pad, loaded.device)
    corrupted_ids, _ = pad_right([p.corrupted for p in pairs], pad, loaded.device)
    answer_pos = mask.sum(dim=1) - 1
    answer = torch.tensor([p.answer for p in pairs], device=loaded.device)
    foil = torch.tensor([p.foil for p in pairs], device=loaded.device)
    layers = loaded.parts.layers
    which = range(EMBEDDINGS, len(layers))
    caches = full_kv_cache(), full_kv_cache()
    with torch.inference_mode():
        with capture(layers, lambda h: h, which) as clean_store:
            clean_logits = loaded.model(
                input_ids=clean_ids, attention_mask=mask, cache=caches[0], use_cache=True
            ).logits
        with capture(layers, lambda h: h, which) as corrupted_store:
            corrupted_logits = loaded.model(
                input_ids=corrupted_ids, attention_mask=mask, cache=caches[1], use_cache=True
            ).logits
    clean_kv, corrupted_kv = ([(c.layers[i].keys, c.layers[i].values) for i in range(len(layers))] for c in caches)
    return PairRuns(
        pairs=list(pairs),
        clean_ids=clean_ids,
        corrupted_ids=corrupted_ids,
        attention_mask=mask,
        answer_pos=answer_pos,
        answer=answer,
        foil=foil,
        clean_resid=dict(clean_store),
        corrupted_resid=dict(corrupted_store),
        clean_kv=clean_kv,
        corrupted_kv=corrupted_kv,
        ld_clean=answer_ld(clean_logits, answer_pos, answer, foil),
        ld_corrupted=answer_ld(corrupted_logits, answer_pos, answer, foil),
    )


# --- patched runs ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def start_at(layers: nn.ModuleList, layer: int, residual: Tensor) -> Iterator[None]:
    """Make the model's forward begin after ``layer`` (-1: the embeddings), whose output is ``residual``.

    Layers below return their input unchanged (not computed) and ``layer`` returns ``residual``; the forwards
    are instance attributes shadowing the class method (a wrapper set by accelerate is kept and restored).
    """
    if layer == EMBEDDINGS:

        def feed(module: nn.Module, args: tuple, kwargs: dict) -> tuple:
            if args:
                return (residual, *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": residual}

        handle = layers[0].register_forward_pre_hook(feed, with_kwargs=True)
        try:
            yield
        finally:
            handle.remove()
        return
    saved = {i: layers[i].__dict__.get("forward") for i in range(layer + 1)}

    def skip(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return hidden_states

    def inject(hidden_states: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        return residual

    try:
        for i in range(layer):
            layers[i].forward = skip
        layers[layer].forward = inject
        yield
    finally:
        for i, forward in saved.items():
            if forward is None:
                del layers[i].forward
            else:
                layers[i].forward = forward


def _first_true(mask: Tensor, fallback: Tensor) -> Tensor:
    """Index of the first True per row; ``fallback`` where a row has none (nothing patched)."""
    width = mask.shape[1]
    positions = torch.where(mask, torch.arange(width, device=mask.device), width)
    first = positions.min(dim=1).values
    return torch.where(first == width, fallback.to(first.device), first)


def copy_prefixes(runs: PairRuns, rows: Tensor, masks: Tensor, layer: int) -> tuple[Tensor, Tensor]:
    """Per patched copy at ``layer``: how many leading positions hold one of the two runs' states at every layer
    above, and which run (start [J], from_clean [J] bool); start = the width: every position that matters.

    A position holds the corrupted run's state at ``layer`` when it is not patched or both runs agree there, the
    clean run's when it is patched or both agree. Both runs agree before the pair's first differing token at
    every layer, and at the embeddings (-1) wherever the tokens are equal, since an embedding depends on its
    token (and position) only. In a causal model a prefix that holds one run's states keeps them in every layer
    above. Padding (after the answer position) never matters.
    """
    real = runs.attention_mask[rows].bool()
    masks = masks.to(real.device)
    width = real.shape[1]
    if layer == EMBEDDINGS:
        agree = runs.clean_ids[rows] == runs.corrupted_ids[rows]
    else:
        agree = torch.arange(width, device=real.device) < runs.first_difference()[rows].unsqueeze(1)
    end = torch.full((len(rows),), width, device=real.device)
    clean_until = _first_true(real & ~(masks | agree), end)
    corrupted_until = _first_true(real & masks & ~agree, end)
    from_clean = clean_until > corrupted_until
    return torch.where(from_clean, clean_until, corrupted_until), from_clean


def known_lds(runs: PairRuns, rows: Tensor, masks: Tensor, layer: int, last_layer: int) -> tuple[Tensor, Tensor]:
    """Copies whose patched LD is the clean or the corrupted run's, exactly: (known [J] bool, LD [J] float32).

    - A copy whose prefix of one run's states (``copy_prefixes``) covers the whole prompt is that run: at the
      embeddings a copy whose patched tokens are the clean (or the corrupted) prompt's; at any layer a copy that
      patches every position from the first differing one on, or none of them.
    - At the last layer the logits at the answer position read that position's output alone (final norm and LM
      head act per position), so a copy is the clean run if it patches the answer position, else the corrupted.
    """
    clean, corrupted = on(runs.ld_clean, rows), on(runs.ld_corrupted, rows)
    if layer == last_layer:
        patched_answer = masks[torch.arange(len(rows), device=masks.device), runs.answer_pos[rows].to(masks.device)]
        return torch.ones_like(patched_answer), torch.where(patched_answer.to(clean.device), clean, corrupted)
    start, from_clean = copy_prefixes(runs, rows, masks, layer)
    return start == runs.attention_mask.shape[1], torch.where(from_clean.to(clean.device), clean, corrupted)


@dataclass
class PatchBatch:
    """Patched copies run together: copy j is pair ``rows[j]`` with clean values at ``masks[j]``."""

    rows: Tensor  # [J]
    masks: Tensor  # [J, T]
    start: int  # first recomputed position: positions before it come from a KV cache
    prefix_kv: list[tuple[Tensor, Tensor]]  # per layer, each copy's keys/values of positions < start


def patch_batch(runs: PairRuns, rows: Tensor, masks: Tensor, reuse: bool, layer: int = 0) -> PatchBatch:
    """Gather once per batch of copies patched at ``layer`` (at every layer >= 0 the same) what each of its
    patched runs reuses: every copy's prefix from the run whose states it holds (``copy_prefixes``)."""
    if not reuse or not len(rows):
        return PatchBatch(rows, masks, 0, [])
    starts, from_clean = copy_prefixes(runs, rows, masks, layer)
    first = int(starts.min())
    if first == 0:
        return PatchBatch(rows, masks, 0, [])
    any_clean = bool(from_clean.any())
    prefix = []
    for clean_kv, corrupted_kv in zip(runs.clean_kv, runs.corrupted_kv, strict=True):
        parts = []
        for clean, corrupted in zip(clean_kv, corrupted_kv, strict=True):
            part = on(corrupted, rows)[:, :, :first]
            if any_clean:
                pick = from_clean.to(part.device).view(-1, 1, 1, 1)
                part = torch.where(pick, on(clean, rows)[:, :, :first], part)
            parts.append(part)
        prefix.append((parts[0], parts[1]))
    return PatchBatch(rows, masks, first, prefix)


def _prefix_cache(batch: PatchBatch, layer: int) -> Any:
    """A KV cache holding the copies' prefixes; layers up to ``layer`` are skipped, so theirs is a zero-stride
    placeholder of the right length (the cache's length is read from layer 0)."""
    cache = full_kv_cache()
    for index, (keys, values) in enumerate(batch.prefix_kv):
        if index <= layer:
            keys, values = keys[:, :, :, :1].expand_as(keys), values[:, :, :, :1].expand_as(values)
        cache.update(keys, values, index)
    return cache


def patched_ld(runs: PairRuns, loaded: LoadedModel, layer: int, batch: PatchBatch) -> Tensor:
    """LD of a batch of patched copies at ``layer``, recomputing only layers above it and positions from
    ``batch.start`` on."""
    rows, start = batch.rows, batch.start
    answer_pos = runs.answer_pos[rows]
    clean = on(runs.clean_resid[layer], rows)
    residual = torch.where(batch.masks.unsqueeze(-1).to(clean.device), clean, on(runs.corrupted_resid[layer], rows))
    cache = _prefix_cache(batch, layer) if start > 0 else None
    width = runs.attention_mask.shape[1]
    keep = width - int(answer_pos.min())  # logits only from the earliest answer position on
    with torch.inference_mode(), start_at(loaded.parts.layers, layer, residual[:, start:]):
        logits = loaded.model(
            input_ids=runs.corrupted_ids[rows, start:],
            attention_mask=runs.attention_mask[rows],
            position_ids=torch.arange(start, width, device=rows.device).unsqueeze(0),
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=keep,
        ).logits
    return answer_ld(logits, answer_pos - (width - keep), runs.answer[rows], runs.foil[rows])


def naive_patched_ld(runs: PairRuns, loaded: LoadedModel, layer: int, rows: Tensor, masks: Tensor) -> Tensor:
    """Reference: a full corrupted forward with layer ``layer``'s output overwritten by a hook."""
    with (
        torch.inference_mode(),
        overwrite(loaded.parts.layers, {layer: (masks, on(runs.clean_resid[layer], rows))}),
    ):
        logits = loaded.model(
            input_ids=runs.corrupted_ids[rows], attention_mask=runs.attention_mask[rows], use_cache=False
        ).logits
    return answer_ld(logits, runs.answer_pos[rows], runs.answer[rows], runs.foil[rows])


# A forward's fixed cost (calls, masks, rotary tables, the LM head), in full-width rows of layer compute: what a
# batch split must save to be worth another call.
CALL_OVERHEAD_ROWS = 4


def plan_batches(first: Sequence[int], width: int, batch_size: int) -> list[slice]:
    """Cut copies sorted by their first recomputed position into batches of at most ``batch_size``, minimising the
    positions recomputed: a batch recomputes every row from its earliest first position, so copies patched at
    the last position only (one position each) should not share a batch with copies patched early in the
    prompt. Exact dynamic programming over the sorted order (cost: rows x recomputed width, plus a call)."""
    n = len(first)
    best = [0.0] + [math.inf] * n
    cut = [0] * (n + 1)
    for end in range(1, n + 1):
        for start in range(max(0, end - batch_size), end):
            cost = best[start] + CALL_OVERHEAD_ROWS * width + (end - start) * (width - first[start])
            if cost < best[end]:
                best[end], cut[end] = cost, start
    parts: list[slice] = []
    end = n
    while end > 0:
        parts.append(slice(cut[end], end))
        end = cut[end]
    return parts[::-1]


@dataclass
class SweepPlan:
    """Which patched copies run, and in which batches."""

    known: Tensor  # [n_layers + 1, J] bool: the copy's LD is the clean or the corrupted run's (``known_lds``)
    values: Tensor  # [n_layers + 1, J] float32: those LDs, NaN for the copies that run
    chunks: list[Tensor]  # batches of copy indices, each run at every layer where a copy in it is not known


def plan_sweep(runs: PairRuns, rows: Tensor, masks: Tensor, batch_size: int, reuse: bool = True) -> SweepPlan:
    """Copies whose result the clean or corrupted run gives are not run; the others are ordered by the first
    position they recompute (``copy_prefixes``) and cut into batches recomputing as little as possible. Without
    ``reuse`` (a debugging aid) every copy runs at every layer from position 0."""
    layers = sorted(runs.clean_resid)
    known = torch.zeros((len(layers), len(rows)), dtype=torch.bool, device=rows.device)
    values = torch.full(known.shape, math.nan, dtype=torch.float32, device=rows.device)
    if not reuse:
        return SweepPlan(known, values, list(torch.split(torch.arange(len(rows), device=rows.device), batch_size)))
    for index, layer in enumerate(layers):
        found, value = known_lds(runs, rows, masks, layer, layers[-1])
        known[index] = found.to(known.device)
        values[index] = torch.where(known[index], value.to(values.device), math.nan)
    # A copy's first recomputed position is the same at every decoder layer, and a copy the embeddings need is
    # needed by the layers above too (the embeddings know more), so the batches are planned once.
    pending = torch.nonzero(~known.all(dim=0)).flatten()
    first = copy_prefixes(runs, rows, masks, 0)[0].to(pending.device)[pending]
    order = pending[torch.argsort(first, stable=True)]
    parts = plan_batches(sorted(first.tolist()), runs.attention_mask.shape[1], batch_size)
    return SweepPlan(known, values, [order[part] for part in parts])


def sweep(
    runs: PairRuns,
    loaded: LoadedModel,
    rows: Tensor,
    masks: Tensor,
    batch_size: int,
    reuse: bool = True,
    naive: bool = False,
) -> Tensor:
    """LD of every patched copy (``rows[j]``, ``masks[j]``) at every layer: [n_layers + 1, J] float32, row 0
    being the embeddings (layer -1).

    Copies run as ``plan_sweep`` plans them; ``naive`` runs every copy at every layer as a full forward instead.
    """
    layers = sorted(runs.clean_resid)
    out = torch.empty((len(layers), len(rows)), dtype=torch.float32, device=rows.device)
    if naive:
        for chunk in torch.split(torch.arange(len(rows), device=rows.device), batch_size):
            for index, layer in enumerate(layers):
                out[index, chunk] = naive_patched_ld(runs, loaded, layer, rows[chunk], masks[chunk]).to(out.device)
        return out
    plan = plan_sweep(runs, rows, masks, batch_size, reuse)
    out.copy_(plan.values)
    for chunk in plan.chunks:
        batch = None  # shared by the decoder layers
        for index, layer in enumerate(layers):
            todo = chunk[~plan.known[index, chunk]]
            if not len(todo):
                continue
            if layer != EMBEDDINGS and len(todo) == len(chunk):
                batch = batch if batch is not None else patch_batch(runs, rows[chunk], masks[chunk], reuse)
                part = batch
            else:
                part = patch_batch(runs, rows[todo], masks[todo], reuse, layer)
            out[index, todo] = patched_ld(runs, loaded, layer, part).to(out.device)
    return out
