"""Layer ablation: greedy responses with one decoder layer replaced by the identity, and judge-free metrics.

For each batch of prompts the intact model generates once; then, one layer at a time, the ablated model
generates its own response and is teacher-forced through the *intact* response, so both next-token
distributions are compared at the same positions. Per (prompt, ablated layer):

- ``kl``: mean over the intact response tokens of KL(p_intact ‖ p_ablated) of the next-token distributions
  (nats per token).
- ``logprob_drop``: mean per token of log p_intact(r_t) − log p_ablated(r_t) over the intact response r.
- ``token_overlap``: F1 of the two responses' token multisets (stop tokens excluded), the bag-of-tokens F1
  of SQuAD: 2·|A ∩ B| / (|A| + |B|); 1 when both are empty. Insensitive to a shifted but otherwise intact
  continuation, which a position-by-position match would score as 0.
- ``identical``: 1 when the ablated response equals the intact one token for token, else 0.

Higher ``kl`` and ``logprob_drop`` and lower ``token_overlap`` and ``identical`` mean more degradation.
A response is the generated tokens up to and including the first stop (EOS) token, at most
``max_new_tokens``; the stop token is scored (stopping is one of the model's decisions).

In the responses table, layer -1 marks the intact responses (no layer ablated); metric tables only have the
ablated layers 0..L-1. Generation pads on the left (a batched ``generate`` needs the prompts to end at the
same column); teacher forcing pads on the right like every other forward in kmap.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kmap.core.hooks import identity
from kmap.core.models import LoadedModel
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.methods.ablation.settings import INTACT, PAIR_METRICS, AblationSettings

Progress = Callable[[int, int], None]


@dataclass
class AblationRun:
    responses: pd.DataFrame  # one row per (prompt, layer); layer -1 = intact
    generated_tokens: int
    generate_seconds: float
    greedy_mismatches: int  # intact positions whose teacher-forced argmax differs from the generated token

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.generate_seconds if self.generate_seconds > 0 else float("nan")


def stop_ids(loaded: LoadedModel) -> frozenset[int]:
    """EOS ids: the generation config's (instruct models list several), else the tokenizer's."""
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = loaded.tokenizer.eos_token_id
    ids = configured if isinstance(configured, list | tuple) else [configured]
    return frozenset(int(i) for i in ids if i is not None)


@contextlib.contextmanager
def left_padding(tokenizer: Any) -> Iterator[Any]:
    """Pad on the left for generation only; the tokenizer's own side is restored even on error."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        yield tokenizer
    finally:
        tokenizer.padding_side = side


def tokenize_prompts(tokenizer: Any, texts: Sequence[str], fmt: PromptFormat = RAW) -> list[list[int]]:
    """Unpadded token ids per prompt as ``fmt`` formats it (raw: the special tokens of every other kmap forward)."""
    return [fmt.ids(tokenizer, text) for text in texts]


def trim_at_stop(tokens: Sequence[int], stop: frozenset[int]) -> list[int]:
    """Tokens up to and including the first stop token (the rest is padding)."""
    out: list[int] = []
    for token in tokens:
        out.append(int(token))
        if token in stop:
            break
    return out


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


def response_positions(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int = 0
) -> tuple[Tensor, ...]:
    """Right-padded prompt+response ids, attention mask, and for each response token the position that
    predicts it, its id and a validity mask ([B, N] each, N = longest response)."""
    lengths = [len(p) + len(r) for p, r in zip(prompts, responses, strict=True)]
    width = max(lengths)
    n = max(1, max(len(r) for r in responses))
    ids = torch.full((len(prompts), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    where = torch.zeros((len(prompts), n), dtype=torch.long)
    targets = torch.zeros_like(where)
    valid = torch.zeros((len(prompts), n), dtype=torch.bool)
    for b, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        seq = list(prompt) + list(response)
        ids[b, : len(seq)] = torch.tensor(seq)
        mask[b, : len(seq)] = 1
        k = len(response)
        where[b, :k] = torch.arange(len(prompt) - 1, len(prompt) - 1 + k)
        targets[b, :k] = torch.tensor(list(response), dtype=torch.long)
        valid[b, :k] = True
    return ids, mask, where, targets, valid


def teacher_forced(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-softmax next-token distributions at the response positions: ([B, N, V] float32, targets, valid).

    Only the response positions reach the LM head (``logits_to_keep``), so the vocabulary-sized tensor is
    [B, N, V] rather than [B, T, V].
    """
    pad = loaded.tokenizer.pad_token_id
    ids, mask, where, targets, valid = response_positions(prompts, responses, pad if pad is not None else 0)
    device = loaded.device
    with torch.inference_mode():
        out = loaded.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            logits_to_keep=where.to(device),
            use_cache=False,
        )
    # On the LM head's device, which differs from the embeddings' on a model split over GPUs.
    logits = out.logits.float()
    return logits.log_softmax(dim=-1), targets.to(logits.device), valid.to(logits.device)


def divergence(intact: Tensor, ablated: Tensor, targets: Tensor, valid: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Per prompt: mean KL(intact ‖ ablated) per token and mean drop in log p of the intact tokens."""
    kl = (intact.exp() * (intact - ablated)).sum(dim=-1)
    index = targets.unsqueeze(-1)
    drop = (intact.gather(-1, index) - ablated.gather(-1, index)).squeeze(-1)
    weight = valid.float()
    count = weight.sum(dim=1).clamp_min(1)
    return (
        ((kl * weight).sum(dim=1) / count).cpu().numpy(),
        ((drop * weight).sum(dim=1) / count).cpu().numpy(),
    )


def token_overlap(a: Sequence[int], b: Sequence[int], stop: frozenset[int] = frozenset()) -> float:
    """Bag-of-tokens F1 of two responses, stop tokens excluded; 1.0 when both are empty."""
    left = Counter(t for t in a if t not in stop)
    right = Counter(t for t in b if t not in stop)
    total = sum(left.values()) + sum(right.values())
    if total == 0:
        return 1.0
    return 2 * sum((left & right).values()) / total


def greedy_mismatches(intact: Tensor, targets: Tensor, valid: Tensor) -> int:
    """Response positions where the teacher-forced intact argmax is not the generated token (a near-tie or a
    padding effect; expected to be 0 in float32)."""
    return int(((intact.argmax(dim=-1) != targets) & valid).sum())


def _record(prompt_id: str, layer: int, tokens: list[int], stop: frozenset[int], **metrics: float) -> dict:
    return {
        "prompt_id": prompt_id,
        "layer": layer,
        "tokens": tokens,
        "n_tokens": len(tokens),
        "stopped": bool(tokens) and tokens[-1] in stop,
        **{name: metrics.get(name, np.nan) for name in PAIR_METRICS},
    }


class Clock:
    """Seconds spent in ``generate`` only, so tokens/s measures generation and not the scoring passes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0

    def generate(
        self, loaded: LoadedModel, prompts: list[list[int]], max_new: int, stop: frozenset[int]
    ) -> list[list[int]]:
        start = time.perf_counter()
        out = generate(loaded, prompts, max_new, stop)
        self.seconds += time.perf_counter() - start
        self.tokens += sum(len(r) for r in out)
        return out


@dataclass
class Scored:
    """Intact responses and their teacher-forced distributions for one batch."""

    responses: list[list[int]]
    logprobs: Tensor  # [B, N, V]
    targets: Tensor  # [B, N]
    valid: Tensor  # [B, N]


def intact_batch(loaded: LoadedModel, prompts: list[list[int]], max_new_tokens: int, clock: Clock) -> Scored:
    responses = clock.generate(loaded, prompts, max_new_tokens, stop_ids(loaded))
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
        responses = clock.generate(loaded, prompts, max_new_tokens, stop_ids(loaded))
        logprobs, _, _ = teacher_forced(loaded, prompts, intact.responses)
    kl, drop = divergence(intact.logprobs, logprobs, intact.targets, intact.valid)
    return responses, kl, drop


def ablate_batch(
    loaded: LoadedModel,
    prompt_ids: Sequence[str],
    prompts: list[list[int]],
    layers: Sequence[int],
    settings: AblationSettings,
    clock: Clock,
) -> tuple[list[dict], int]:
    """Intact and per-layer ablated responses and metrics for one batch; also the greedy-mismatch count."""
    stop = stop_ids(loaded)
    intact = intact_batch(loaded, prompts, settings.max_new_tokens, clock)
    records = [_record(pid, INTACT, tokens, stop) for pid, tokens in zip(prompt_ids, intact.responses, strict=True)]
    for layer in layers:
        ablated, kl, drop = ablate(loaded, prompts, intact, [layer], settings.max_new_tokens, clock)
        for b, pid in enumerate(prompt_ids):
            base = intact.responses[b]
            metrics = dict(
                kl=float(kl[b]),
                logprob_drop=float(drop[b]),
                token_overlap=token_overlap(base, ablated[b], stop),
                identical=float(base == ablated[b]),
            )
            records.append(_record(pid, layer, ablated[b], stop, **metrics))
    return records, greedy_mismatches(intact.logprobs, intact.targets, intact.valid)


def run_ablation(
    loaded: LoadedModel,
    prompt_ids: Sequence[str],
    texts: Sequence[str],
    settings: AblationSettings,
    progress: Progress | None = None,
    fmt: PromptFormat = RAW,
) -> AblationRun:
    """Every prompt, formatted by ``fmt``, intact and with each chosen layer ablated; responses decoded to text."""
    layers = settings.chosen_layers(loaded.n_layers)
    tokenized = tokenize_prompts(loaded.tokenizer, texts, fmt)
    clock = Clock()
    records: list[dict] = []
    mismatches = 0
    for start in range(0, len(texts), settings.batch_size):
        stop = start + settings.batch_size
        batch_records, batch_mismatches = ablate_batch(
            loaded, list(prompt_ids[start:stop]), tokenized[start:stop], layers, settings, clock
        )
        records.extend(batch_records)
        mismatches += batch_mismatches
        if progress:
            progress(min(stop, len(texts)), len(texts))
    frame = pd.DataFrame.from_records(records)
    prompt_text = dict(zip(prompt_ids, texts, strict=True))
    frame.insert(1, "prompt", frame["prompt_id"].map(prompt_text))
    frame.insert(3, "response", [loaded.tokenizer.decode(t, skip_special_tokens=True) for t in frame["tokens"]])
    return AblationRun(frame, clock.tokens, clock.seconds, mismatches)
