"""The per-layer ablation loop: the oracle the batched run is tested against, and the benchmark baseline.

One ``model.generate`` per ablated layer over a batch of prompts (every row ablates the same layer), then one
teacher-forced pass per layer: what ``ablation_generate`` ran before all variants of a prompt decoded together.
Not used by the workflow.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from kmap.core.hooks import identity
from kmap.core.models import LoadedModel
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.methods.ablation.generate import (
    AblationRun,
    Clock,
    Scored,
    _record,
    divergence,
    greedy_mismatches,
    pair_metrics,
    responses_frame,
    stop_ids,
    teacher_forced,
    tokenize_prompts,
    trim_at_stop,
)
from kmap.methods.ablation.settings import INTACT, AblationSettings


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[Any]:
    """Pad on the left for generation only; the tokenizer's own side is restored even on error."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def generate(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], max_new_tokens: int, stop: frozenset[int]
) -> list[list[int]]:
    """Greedy responses (KV cache on) for a batch of tokenised prompts, each cut after its first stop."""
    from transformers import GenerationConfig

    tokenizer = loaded.tokenizer
    with left_padding(tokenizer):
        batch = tokenizer.pad({"input_ids": [list(p) for p in prompts]}, padding=True, return_tensors="pt")
    # An explicit config, so a checkpoint's sampling defaults (temperature, top_p) never apply.
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=sorted(stop),
        pad_token_id=tokenizer.pad_token_id,
        use_cache=True,
    )
    with torch.inference_mode():
        out = loaded.model.generate(
            input_ids=batch["input_ids"].to(loaded.device),
            attention_mask=batch["attention_mask"].to(loaded.device),
            generation_config=config,
        )
    new = out[:, batch["input_ids"].shape[1] :].tolist()
    return [trim_at_stop(row, stop) for row in new]


def timed_generate(
    loaded: LoadedModel, prompts: list[list[int]], max_new: int, stop: frozenset[int], clock: Clock
) -> list[list[int]]:
    start = time.perf_counter()
    out = generate(loaded, prompts, max_new, stop)
    clock.add(time.perf_counter() - start, sum(len(tokens) for tokens in out))
    return out


def intact_batch(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int, clock: Clock) -> Scored:
    responses = timed_generate(loaded, prompts, max_new_tokens, stop_ids(loaded), clock)
    return Scored(responses, *teacher_forced(loaded, prompts, responses))


def ablate(
    loaded: LoadedModel,
    prompts: list[list[int]],
    intact: Scored,
    which: Sequence[int],
    max_new_tokens: int,
    clock: Clock,
) -> tuple[list[list[int]], np.ndarray, np.ndarray]:
    """Responses with the ``which`` layers identity-replaced, and per prompt KL and log-prob drop on the
    intact responses. ``which`` empty ablates nothing (KL exactly 0)."""
    with identity(loaded.parts.layers, which):
        responses = timed_generate(loaded, prompts, max_new_tokens, stop_ids(loaded), clock)
        logprobs, _, _ = teacher_forced(loaded, prompts, intact.responses)
    kl, drop = divergence(intact.logprobs, logprobs, intact.targets, intact.valid)
    return responses, kl, drop


def run_ablation_per_layer(
    loaded: LoadedModel,
    prompt_ids: Sequence[str],
    texts: Sequence[str],
    settings: AblationSettings,
    fmt: PromptFormat = RAW,
) -> AblationRun:
    """The same table as :func:`kmap.methods.ablation.generate.run_ablation`, one layer per generation
    (``settings.batch_size`` prompts per batch)."""
    layers = settings.chosen_layers(loaded.n_layers)
    tokenized = tokenize_prompts(loaded.tokenizer, texts, fmt)
    stop = stop_ids(loaded)
    clock = Clock()
    records: list[dict] = []
    mismatches = 0
    for start in range(0, len(texts), settings.batch_size):
        ids = list(prompt_ids[start : start + settings.batch_size])
        prompts = tokenized[start : start + settings.batch_size]
        intact = intact_batch(loaded, prompts, settings.max_new_tokens, clock)
        mismatches += greedy_mismatches(intact.logprobs, intact.targets, intact.valid)
        records += [_record(pid, INTACT, tokens, stop) for pid, tokens in zip(ids, intact.responses, strict=True)]
        for layer in layers:
            ablated, kl, drop = ablate(loaded, prompts, intact, [layer], settings.max_new_tokens, clock)
            for b, pid in enumerate(ids):
                metrics = pair_metrics(intact.responses[b], ablated[b], kl[b], drop[b], stop)
                records.append(_record(pid, layer, ablated[b], stop, **metrics))
    frame = responses_frame(records, prompt_ids, texts, loaded.tokenizer)
    return AblationRun(frame, clock.tokens, clock.tokens, clock.seconds, mismatches)  # every token decoded
