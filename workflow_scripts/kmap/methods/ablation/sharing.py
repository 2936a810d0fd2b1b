"""Ablated rows of one prompt share the layers below their ablated one.

Every ablated-layer variant of a prompt runs the layers below its ablated layer exactly as the intact model does.
In a batch holding several variants of each prompt, ``intact_rows_once`` computes each layer once per prompt for
the variants still intact there and only the variants already ablated below on their own: about half the layer
computations of a teacher-forced pass over all variants (an L-layer model: (L - 1) / 2L of them are saved).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from kmap.core.hooks import RowLayers, _hidden_in, _hidden_out, _replace_out


def _take(value: Any, rows: Tensor, batch: int) -> Any:
    """``value`` with batch rows ``rows`` kept: tensors of two or more dimensions whose first is the batch
    (hidden states, 4-d masks, per-row rotary tables), inside tuples, lists and dicts too; everything else
    (a cache, 1-d cache positions, tables shared by all rows) as it is."""
    if isinstance(value, Tensor):
        return value.index_select(0, rows.to(value.device)) if value.dim() >= 2 and value.shape[0] == batch else value
    if isinstance(value, tuple | list):
        return type(value)(_take(v, rows, batch) for v in value)
    if isinstance(value, dict):
        return {k: _take(v, rows, batch) for k, v in value.items()}
    return value


def _shared_plan(layer_of: Tensor, groups: Tensor, index: int) -> tuple[Tensor, Tensor] | None:
    """Rows to compute at layer ``index`` and, per batch row, which of them holds its output; None when every
    row must be computed. A row ablating a layer below ``index`` has left its group's intact state; every other
    row of a group is still in it, so the group's first such row computes for all of them."""
    batch = len(layer_of)
    own = (layer_of >= 0) & (layer_of < index)
    key = torch.where(own, -1 - torch.arange(batch), groups.long())
    unique, inverse = torch.unique(key, return_inverse=True)
    if len(unique) == batch:
        return None
    first = torch.full((len(unique),), batch, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(batch), reduce="amin"
    )
    order = torch.argsort(first)
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    return first[order], rank[inverse]


@contextlib.contextmanager
def intact_rows_once(layers: nn.ModuleList, rows: RowLayers, groups: Tensor) -> Iterator[None]:
    """With :func:`identity_rows`: rows of one group (the same tokens, e.g. all ablated-layer variants of a prompt)
    run each layer below their ablated one exactly as the intact model does, so at each layer the rows still intact
    are computed once per group and shared; only rows whose ablated layer lies below are computed on their own.
    The layer's KV-cache entries are shared the same way. For a forward from an empty cache (a layer that already
    holds positions is run for every row). Values equal running every row, to float precision.
    """
    saved = {i: layer.__dict__.get("forward") for i, layer in enumerate(layers)}
    plans: dict[int, tuple[Tensor, Tensor] | None] = {}

    def wrap(index: int, layer: nn.Module) -> Callable[..., Any]:
        original = layer.forward  # the class method, or a wrapper accelerate set

        def forward(*args: Any, **kwargs: Any) -> Any:
            hidden = _hidden_in(args, kwargs)
            if index not in plans:
                plans[index] = _shared_plan(rows.layers, groups, index)
            plan = plans[index]
            cache = kwargs.get("cache")
            slot = getattr(getattr(layer, "self_attn", None), "layer_idx", index)
            filled = cache is not None and len(cache.layers) > slot and cache.layers[slot].get_seq_length() > 0
            if plan is None or filled or len(rows.layers) != hidden.shape[0]:
                return original(*args, **kwargs)
            computed, spread = plan
            batch = hidden.shape[0]
            output = original(*_take(args, computed, batch), **_take(kwargs, computed, batch))
            produced = _hidden_out(output)  # on the layer's device, which may not be its input's
            out = _replace_out(output, produced.index_select(0, spread.to(produced.device)))
            if cache is not None and len(cache.layers) > slot:
                entry = cache.layers[slot]
                entry.keys = entry.keys.index_select(0, spread.to(entry.keys.device))
                entry.values = entry.values.index_select(0, spread.to(entry.values.device))
            return out

        return forward

    try:
        for index, layer in enumerate(layers):
            layer.forward = wrap(index, layer)
        yield
    finally:
        for index, forward in saved.items():
            if forward is None:
                del layers[index].forward
            else:
                layers[index].forward = forward
