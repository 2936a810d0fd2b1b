"""Weight-gradient saliency: how strongly each layer's weights move the loss of the expected continuation.

Per prompt, loss = −log p(target | prompt), the mean over the target's tokens (" " + target as the tokenizer
splits it after the prompt), each prompt with its own gradient (its own value for the bootstrap): batches
of prompts whose per-prompt gradients are formed in the backward (``kmap.methods.saliency.batched``) where
the model allows it, else one backward per prompt in which only the measured parameters require gradients.
Per layer:

- ``saliency_attention``: mean |∂loss/∂w| over every parameter of the attention module (weights, biases, and
  what else lives there: Gemma's q/k norms, GPT-OSS's sinks);
- ``saliency_mlp``: the same over the MLP module;
- ``saliency_combined``: both together, i.e. the parameter-weighted mean.

One prompt per backward: each parameter's gradient is consumed as soon as it is accumulated (a
post-accumulate-grad hook adds its |grad| sum to its layer's accumulator and frees it), so gradient memory
stays at one tensor.

Mixture of experts (*ours*): an MLP with an ``experts`` child storing all experts in stacked tensors
(GPT-OSS, Qwen3-MoE in transformers 5) averages its expert parameters over the experts the router selected
for at least one of the prompt's tokens; the router itself counts as dense MLP weights. The routed experts
are read from the ``router_indices`` / ``top_k_index`` argument the MLP passes to its experts (a forward
pre-hook), i.e. the decision the forward actually used. Unrouted experts have exactly zero gradient, so this
changes the divisor only: the mean is over weights that took part.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from kmap.core.models import LoadedModel
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.methods.saliency import batched
from kmap.methods.saliency.settings import PARTS, SaliencyRun, SaliencySettings

Progress = Callable[[int, int], None]


@dataclass
class Measured:
    """The parameters of one (layer, part) and where their |grad| sums go."""

    layer: int
    part: str
    dense: list[nn.Parameter]
    experts: list[nn.Parameter] = field(default_factory=list)  # stacked, leading dim = expert
    routed: Tensor | None = None  # expert ids used by the current prompt
    total: Tensor | None = None  # running |grad| sum (on the parameters' device)

    def dense_count(self) -> int:
        return sum(p.numel() for p in self.dense)

    def count(self) -> int:
        """Parameters the mean is over: dense ones plus the routed experts' slices."""
        routed = 0 if self.routed is None else len(self.routed)
        return self.dense_count() + sum(routed * p[0].numel() for p in self.experts)


def experts_of(mlp: nn.Module) -> nn.Module | None:
    """The stacked-experts child of a mixture-of-experts MLP, or None for a dense MLP."""
    experts = getattr(mlp, "experts", None)
    return experts if experts is not None and hasattr(experts, "num_experts") else None


def measured_parameters(loaded: LoadedModel) -> list[Measured]:
    out = []
    for layer in range(loaded.n_layers):
        for part in PARTS:
            module = loaded.parts.attention(layer) if part == "attention" else loaded.parts.mlp(layer)
            experts = experts_of(module) if part == "mlp" else None
            stacked = [
                p for p in (experts.parameters() if experts is not None else []) if p.shape[0] == experts.num_experts
            ]
            ids = {id(p) for p in stacked}
            dense = [p for p in module.parameters() if id(p) not in ids]
            out.append(Measured(layer, part, dense, stacked))
    return out


def routed_ids(args: tuple, kwargs: dict) -> Tensor:
    """Expert ids among the experts module's inputs: its only integer tensor (top-k indices per token)."""
    for value in (*args, *kwargs.values()):
        if isinstance(value, Tensor) and not value.is_floating_point():
            return torch.unique(value)
    raise ValueError("no integer router indices among the experts module's inputs")


def refuse_quantized(measured: list[Measured]) -> None:
    """Weight gradients need floating-point weights: stop on any other, naming layer and part."""
    for target in measured:
        for param in (*target.dense, *target.experts):
            if not param.is_floating_point():
                raise TypeError(
                    f"layer {target.layer} {target.part}: {param.dtype} weights have no gradient; "
                    "saliency needs dequantized weights (load the model with quantization 'none')"
                )


@contextlib.contextmanager
def gradient_sums(loaded: LoadedModel, measured: list[Measured]) -> Iterator[None]:
    """Gradients on for the measured parameters only, consumed into ``Measured.total`` as they accumulate.

    Every hook and the ``requires_grad`` flags are undone on exit, also after an error.
    """
    refuse_quantized(measured)
    handles = []

    def consume(target: Measured, stacked: bool) -> Callable[[nn.Parameter], None]:
        def hook(param: nn.Parameter) -> None:
            grad = param.grad[target.routed.to(param.grad.device)] if stacked else param.grad
            value = grad.abs().sum(dtype=torch.float32)
            target.total = value if target.total is None else target.total + value.to(target.total.device)
            param.grad = None

        return hook

    try:
        for target in measured:
            for stacked, params in ((False, target.dense), (True, target.experts)):
                for param in params:
                    param.requires_grad_(True)
                    handles.append(param.register_post_accumulate_grad_hook(consume(target, stacked)))
            if target.experts:
                experts = experts_of(loaded.parts.mlp(target.layer))

                def record(module: nn.Module, args: tuple, kwargs: dict, target: Measured = target) -> None:
                    target.routed = routed_ids(args, kwargs)

                handles.append(experts.register_forward_pre_hook(record, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
        for target in measured:
            for param in (*target.dense, *target.experts):
                if param.is_floating_point():
                    param.requires_grad_(False)
                    param.grad = None


def target_loss(loaded: LoadedModel, prompt: Sequence[int], target: Sequence[int]) -> Tensor:
    """Mean over target tokens of −log p(token | prompt and the target tokens before it)."""
    ids = torch.tensor([list(prompt) + list(target)], device=loaded.device)
    # Logits only where target tokens are predicted: the last len(target) + 1 positions minus the final one.
    logits = loaded.model(input_ids=ids, use_cache=False, logits_to_keep=len(target) + 1).logits[0, :-1]
    labels = torch.tensor(list(target), device=logits.device)
    return torch.nn.functional.cross_entropy(logits.float(), labels)


def prompt_saliency(loaded: LoadedModel, measured: list[Measured], prompt: Sequence[int], target: Sequence[int]):
    """|grad| sums and parameter counts per (layer, part) for one prompt ([n_layers, 2] each), and the loss.

    Must run inside ``gradient_sums``.
    """
    for target_params in measured:
        target_params.total, target_params.routed = None, None
    with torch.enable_grad():
        loss = target_loss(loaded, prompt, target)
        loss.backward()
    sums = np.zeros((loaded.n_layers, len(PARTS)))
    counts = np.zeros((loaded.n_layers, len(PARTS)))
    for m in measured:
        column = PARTS.index(m.part)
        sums[m.layer, column] = 0.0 if m.total is None else float(m.total)
        counts[m.layer, column] = m.count()
    return sums, counts, float(loss.detach())


def chosen_rows(n: int, max_prompts: int) -> np.ndarray:
    if max_prompts <= 0 or max_prompts >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max_prompts).round().astype(int))


def run_saliency(
    loaded: LoadedModel,
    frame: pd.DataFrame,
    settings: SaliencySettings,
    progress: Progress | None = None,
    fmt: PromptFormat = RAW,
) -> SaliencyRun:
    """Per-prompt saliency of ``frame`` (columns id, text, target), formatted by ``fmt``: ``settings.batch_size``
    prompts per forward and backward where every measured weight's owner allows it (``batched.owners``), else
    one prompt per backward. Both give each prompt its own gradient."""
    rows = frame.iloc[chosen_rows(len(frame), settings.max_prompts)]
    ids = rows["id"].astype(str).tolist()
    prompts = [fmt.ids(loaded.tokenizer, text) for text in rows["text"]]
    pairs = zip(rows["text"], rows["target"], strict=True)
    targets = [fmt.continuation(loaded.tokenizer, text, target) for text, target in pairs]
    measured = measured_parameters(loaded)
    found = batched.owners(loaded) if settings.batch_size > 1 else None
    sums = np.zeros((len(rows), loaded.n_layers, len(PARTS)))
    counts = np.zeros_like(sums)
    losses = np.zeros(len(rows))
    done = 0
    if found is None:
        with gradient_sums(loaded, measured):
            for row in range(len(rows)):
                sums[row], counts[row], losses[row] = prompt_saliency(loaded, measured, prompts[row], targets[row])
                check_finite(ids[row], sums[row], losses[row])
                done += 1
                if progress is not None:
                    progress(done, len(rows))
    else:
        refuse_quantized(measured)
        dense = np.zeros((loaded.n_layers, len(PARTS)))
        for m in measured:
            dense[m.layer, PARTS.index(m.part)] = m.dense_count()
        # Similar lengths together: less padding (values do not depend on the batches).
        order = sorted(range(len(rows)), key=lambda row: len(prompts[row]) + len(targets[row]))
        for start in range(0, len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            s, loss = batched.batch_saliency(loaded, found, [prompts[r] for r in chunk], [targets[r] for r in chunk])
            for k, row in sorted(enumerate(chunk), key=lambda item: item[1]):
                check_finite(ids[row], s[k], loss[k])
            sums[chunk], counts[chunk], losses[chunk] = s, dense, loss
            done += len(chunk)
            if progress is not None:
                progress(done, len(rows))
    return SaliencyRun(ids, sums, counts, losses, 1 if found is None else settings.batch_size)


def check_finite(prompt_id: str, sums: np.ndarray, loss: float) -> None:
    if not (np.isfinite(loss) and np.isfinite(sums).all()):
        bad = sorted({int(layer) for layer in np.nonzero(~np.isfinite(sums))[0]})
        raise FloatingPointError(
            f"saliency: prompt {prompt_id!r}: non-finite loss ({loss}) or gradients at layers {bad}; "
            "never averaged in. The usual cause is float16 overflow: load the model in bfloat16 or float32"
        )


def describe(loaded: LoadedModel) -> dict[str, Any]:
    """What is measured: parameter counts per part of layer 0, dense and stacked experts (provenance)."""
    measured = [m for m in measured_parameters(loaded) if m.layer == 0]
    return {m.part: {"dense": m.dense_count(), "stacked_experts": sum(p.numel() for p in m.experts)} for m in measured}
