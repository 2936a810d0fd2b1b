"""Saliency of a batch of prompts in one forward and backward: every prompt's own |grad| sums, exactly.

Per-prompt saliency needs each prompt's own weight gradient, so a plain batched backward (which sums the
gradients over the batch) cannot give it. Here autograd computes only the gradients of activations, batched;
no weight requires a gradient. Each module that owns measured weights records its input in the forward, and
when the gradient of its output arrives in the backward, each prompt's weight gradient is formed from that
prompt's rows alone (``dL/dW_b = sum_t g_bt x_bt^T`` for a linear layer) and reduced to its |grad| sum at once.
The prompts of a batch never interact (causal attention, per-token norms, right padding after every prompt's
last token), so this is the per-prompt value, to float precision, in a fraction of the calls.

Owners handled: ``nn.Linear`` itself (weight and bias) and parameter-only leaf modules called on one tensor (the
RMSNorms of Qwen3's and Gemma's query/key heads), whose per-prompt gradients come from ``torch.func``. A model
with any other owner (GPT-OSS: attention sinks on the attention module itself, stacked experts) is not
``supported``; the caller measures it one prompt at a time.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from kmap.core.batches import pad_batch
from kmap.core.models import LoadedModel
from kmap.methods.saliency.settings import PARTS

# At most this many elements of per-prompt weight gradients exist at once (a 70B model's 8192 x 28672 MLP
# matrix: one prompt at a time, as in a batch of one; the demo's matrices: the whole batch in one product).
GRADIENT_ELEMENTS = 2**28


@dataclass
class Owner:
    """A module owning measured parameters directly, and where each prompt's |grad| sums go."""

    module: nn.Module
    slot: int  # row of the accumulator: layer * len(PARTS) + part
    kind: str  # "linear" or "leaf"


def is_leaf_owner(module: nn.Module) -> bool:
    """A norm-like leaf: parameters of its own, no children (RMSNorm, LayerNorm)."""
    return not any(True for _ in module.children()) and ("Norm" in type(module).__name__)


def owners(loaded: LoadedModel) -> list[Owner] | None:
    """The modules owning every measured parameter, or None when one is owned by a module this path does not
    handle (the caller then measures one prompt at a time)."""
    out = []
    for layer in range(loaded.n_layers):
        for column, part in enumerate(PARTS):
            root = loaded.parts.attention(layer) if part == "attention" else loaded.parts.mlp(layer)
            for module in root.modules():
                if not any(True for _ in module.parameters(recurse=False)):
                    continue
                if type(module) is nn.Linear:  # exactly x W^T + b (a subclass may compute otherwise)
                    kind = "linear"
                elif is_leaf_owner(module):
                    kind = "leaf"
                else:
                    return None
                out.append(Owner(module, layer * len(PARTS) + column, kind))
    return out


class Scratch:
    """One reusable buffer per (device, dtype) for the per-prompt weight gradients: allocating a fresh one for
    every product cost as much as the product itself on the CPU (new pages for each)."""

    def __init__(self) -> None:
        self.buffers: dict[tuple[torch.device, torch.dtype], Tensor] = {}

    def __call__(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        key, size = (like.device, like.dtype), int(np.prod(shape))
        buffer = self.buffers.get(key)
        if buffer is None or buffer.numel() < size:
            buffer = self.buffers[key] = torch.empty(size, device=like.device, dtype=like.dtype)
        return buffer[:size].view(shape)


def linear_sums(x: Tensor, g: Tensor, module: nn.Linear, scratch: Scratch | None = None) -> Tensor:
    """Per-prompt sum |dL/dW| + sum |dL/db| of a linear layer from its input x [B, ..., in] and output
    gradient g [B, ..., out]: [B] float32."""
    batch = x.shape[0]
    x = x.reshape(batch, -1, x.shape[-1])
    g = g.reshape(batch, -1, g.shape[-1]).to(x.dtype)
    chunk = max(1, GRADIENT_ELEMENTS // module.weight.numel())
    scratch = scratch or Scratch()
    parts = []
    for start in range(0, batch, chunk):
        rows = slice(start, start + chunk)
        out = scratch((len(range(batch)[rows]), g.shape[-1], x.shape[-1]), x)
        weight_grad = torch.bmm(g[rows].transpose(1, 2), x[rows], out=out)
        parts.append(weight_grad.abs_().sum(dim=(1, 2), dtype=torch.float32))
    total = torch.cat(parts)
    if module.bias is not None:
        total = total + g.sum(dim=1).abs().sum(dim=-1, dtype=torch.float32)
    return total


def leaf_sums(x: Tensor, g: Tensor, module: nn.Module) -> Tensor:
    """Per-prompt sum |dL/dp| over a leaf module's own parameters, by ``torch.func`` (vmap over prompts)."""
    params = {name: p.detach() for name, p in module.named_parameters(recurse=False)}

    def pulled(p: dict[str, Tensor], xb: Tensor, gb: Tensor) -> Tensor:
        out = torch.func.functional_call(module, p, (xb.unsqueeze(0),))
        return (out * gb.unsqueeze(0).to(out.dtype)).sum()

    grads = torch.func.vmap(torch.func.grad(pulled), in_dims=(None, 0, 0))(params, x, g)
    return sum(grad.abs().reshape(len(x), -1).sum(dim=1, dtype=torch.float32) for grad in grads.values())


@contextlib.contextmanager
def recording(loaded: LoadedModel, found: list[Owner], totals: list[Tensor | None]) -> Iterator[None]:
    """Hooks that add each prompt's |grad| sums into ``totals[slot]`` ([B] float32) during the backward, and
    make the embeddings' output the leaf the backward starts from. Removed on exit, also after an error."""
    inside = False  # torch.func calls a leaf module again; its hook must not record that call
    scratch = Scratch()

    def hook_for(owner: Owner):
        def forward_hook(module: nn.Module, args: tuple, kwargs: dict, output: Tensor) -> None:
            nonlocal inside
            if inside or not output.requires_grad:
                return
            inputs = [*args, *kwargs.values()]
            if len(inputs) != 1 or not isinstance(inputs[0], Tensor):
                raise TypeError(f"{type(module).__name__}: batched saliency expects one tensor input")
            x = inputs[0]

            def backward(g: Tensor) -> None:
                nonlocal inside
                inside = True
                try:
                    linear = owner.kind == "linear"
                    value = linear_sums(x, g, module, scratch) if linear else leaf_sums(x, g, module)
                finally:
                    inside = False
                current = totals[owner.slot]
                totals[owner.slot] = value if current is None else current + value.to(current.device)

            output.register_hook(backward)

        return forward_hook

    def leaf(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        return output.detach().requires_grad_(True)

    handles = [loaded.parts.embed.register_forward_hook(leaf)]
    try:
        for owner in found:
            handles.append(owner.module.register_forward_hook(hook_for(owner), with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()


def batch_saliency(
    loaded: LoadedModel, found: list[Owner], prompts: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> tuple[np.ndarray, np.ndarray]:
    """|grad| sums [B, n_layers, 2] and losses [B] of a batch of prompts, each as if alone (right-padded)."""
    lengths = [len(p) for p in prompts]
    pad = loaded.tokenizer.pad_token_id or 0  # masked, and after every prompt's last token
    ids, mask = pad_batch([list(p) + list(t) for p, t in zip(prompts, targets, strict=True)], pad)
    ids, mask = ids.to(loaded.device), mask.to(loaded.device)
    width = ids.shape[1]
    keep = width - min(lengths) + 1  # logits from the earliest position that predicts a target token
    totals: list[Tensor | None] = [None] * (loaded.n_layers * len(PARTS))
    with recording(loaded, found, totals), torch.enable_grad():
        logits = loaded.model(input_ids=ids, attention_mask=mask, use_cache=False, logits_to_keep=keep).logits
        losses = []
        for row, (length, target) in enumerate(zip(lengths, targets, strict=True)):
            first = length - 1 - (width - keep)
            predicted = logits[row, first : first + len(target)].float()
            labels = torch.tensor(list(target), device=predicted.device)
            losses.append(torch.nn.functional.cross_entropy(predicted, labels))
        loss = torch.stack(losses)  # all on the LM head's device
        loss.sum().backward()
    sums = np.zeros((len(prompts), loaded.n_layers * len(PARTS)))
    for slot, value in enumerate(totals):
        if value is not None:
            sums[:, slot] = value.detach().cpu().numpy()
    return sums.reshape(len(prompts), loaded.n_layers, len(PARTS)), loss.detach().cpu().numpy()
