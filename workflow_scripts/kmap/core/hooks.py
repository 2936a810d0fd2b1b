"""Interventions on decoder layers: capture, identity-replace, overwrite at positions.

All three are context managers over forward hooks, so the model is unchanged after the ``with`` block even
when the body raises. Layer outputs are the residual stream after the block; index ``-1`` means the
embedding output (the input of layer 0). transformers 5 decoder layers return a tensor; a tuple return (some
remote-code models) is handled by rewriting its first element.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Iterator, Mapping

import torch
from torch import Tensor, nn

from kmap.core.tables import EMBEDDINGS

Reduce = Callable[[Tensor], Tensor]


def _hidden_in(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _hidden_out(output: Tensor | tuple) -> Tensor:
    return output if isinstance(output, Tensor) else output[0]


def _replace_out(output: Tensor | tuple, hidden: Tensor) -> Tensor | tuple:
    return hidden if isinstance(output, Tensor) else (hidden, *output[1:])


def last_token_index(attention_mask: Tensor) -> Tensor:
    """Index of the last real token per row of a right-padded batch."""
    return attention_mask.long().sum(dim=1) - 1


def gather_rows(hidden: Tensor, index: Tensor) -> Tensor:
    """hidden[b, index[b]] for each row b: [B, T, d] -> [B, d]."""
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), index.to(hidden.device)]


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of hidden over the positions where mask is true, per row: [B, T, d] -> [B, d]."""
    weights = mask.to(hidden.device, hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)


@contextlib.contextmanager
def capture(
    layers: nn.ModuleList,
    reduce: Reduce,
    which: Iterable[int] | None = None,
    *,
    detach: bool = True,
) -> Iterator[dict[int, Tensor]]:
    """Record ``reduce(output)`` of the chosen layers (default: embeddings and every layer).

    The dict is filled during the forward pass; with several forwards inside the block, later ones
    overwrite earlier ones, so callers copy out after each forward.
    """
    chosen = list(range(EMBEDDINGS, len(layers))) if which is None else list(which)
    store: dict[int, Tensor] = {}
    handles = []

    def keep(index: int, hidden: Tensor) -> None:
        value = reduce(hidden)
        store[index] = value.detach() if detach else value

    for index in chosen:
        if index == EMBEDDINGS:

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
                keep(EMBEDDINGS, _hidden_in(args, kwargs))

            handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def hook(module: nn.Module, args: tuple, output: Tensor | tuple, index: int = index) -> None:
                keep(index, _hidden_out(output))

            handles.append(layers[index].register_forward_hook(hook))
    try:
        yield store
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def identity(layers: nn.ModuleList, which: Iterable[int]) -> Iterator[None]:
    """Replace each chosen layer by the identity: its output equals its input.

    The block still runs (its KV-cache entries stay well-formed during generation); only its contribution to
    the residual stream is removed.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor | tuple) -> Tensor | tuple:
        return _replace_out(output, _hidden_in(args, kwargs))

    handles = [layers[i].register_forward_hook(hook, with_kwargs=True) for i in which]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


class RowLayers:
    """Which layer each batch row ablates (``-1``: none), for :func:`identity_rows`; ``select`` follows the
    batch when finished rows leave it, so the hooks always see the current rows."""

    def __init__(self, layers: Tensor) -> None:
        self.set(layers)

    def set(self, layers: Tensor) -> None:
        self.layers = layers.long().cpu()
        self._masks: dict[tuple[int, torch.device], Tensor | None] = {}

    def select(self, keep: Tensor) -> None:
        self.set(self.layers[keep.cpu()])

    def mask(self, layer: int, device: torch.device) -> Tensor | None:
        """[rows, 1, 1] boolean mask of the rows ablating ``layer`` on ``device``; None when no row does."""
        key = (layer, device)
        if key not in self._masks:
            hit = self.layers == layer
            self._masks[key] = hit.to(device).view(-1, 1, 1) if bool(hit.any()) else None
        return self._masks[key]


@contextlib.contextmanager
def identity_rows(layers: nn.ModuleList, rows: RowLayers) -> Iterator[None]:
    """Per batch row, replace the layer ``rows`` names for it by the identity (rows naming ``-1`` run intact).

    Each row gets exactly what :func:`identity` gives a batch of its own: the chosen layer's output is its
    input for that row, every other row keeps the layer's output. So all ablated-layer variants of a prompt
    can decode in one batch.
    """

    def hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor | tuple, index: int) -> Tensor | tuple:
        hidden = _hidden_out(output)
        mask = rows.mask(index, hidden.device)
        if mask is None:
            return output
        return _replace_out(output, torch.where(mask, _hidden_in(args, kwargs), hidden))

    handles = [
        layer.register_forward_hook(functools.partial(hook, index=index), with_kwargs=True)
        for index, layer in enumerate(layers)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextlib.contextmanager
def overwrite(layers: nn.ModuleList, patches: Mapping[int, tuple[Tensor, Tensor]]) -> Iterator[None]:
    """Overwrite layer outputs where a mask is true: ``patches[layer] = (mask [B, T], values [B, T, d])``.

    Index ``-1`` overwrites the embedding output. Positions outside the mask keep the model's own values.
    """
    handles = []
    for index, (mask, values) in patches.items():

        def mix(hidden: Tensor, mask: Tensor = mask, values: Tensor = values) -> Tensor:
            keep = mask.to(hidden.device).unsqueeze(-1)
            return torch.where(keep, values.to(hidden.device, hidden.dtype), hidden)

        if index == EMBEDDINGS:

            def pre_hook(module: nn.Module, args: tuple, kwargs: dict, mix: Reduce = mix) -> tuple:
                if args:
                    return (mix(args[0]), *args[1:]), kwargs
                return args, {**kwargs, "hidden_states": mix(kwargs["hidden_states"])}

            handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:

            def hook(module: nn.Module, args: tuple, output: Tensor | tuple, mix: Reduce = mix) -> Tensor | tuple:
                return _replace_out(output, mix(_hidden_out(output)))

            handles.append(layers[index].register_forward_hook(hook))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
