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

import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from kmap.core.batches import pad_batch
from kmap.core.hooks import RowLayers, identity_rows
from kmap.core.models import LoadedModel, full_kv_cache
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.methods.ablation.settings import INTACT, PAIR_METRICS, AblationSettings
from kmap.methods.ablation.sharing import intact_rows_once

Progress = Callable[[int, int], None]


@dataclass
class AblationRun:
    responses: pd.DataFrame  # one row per (prompt, layer); layer -1 = intact
    generated_tokens: int  # every response token, intact and ablated
    decoded_tokens: int  # those that decoding steps produced (the rest came from the scoring pass)
    generate_seconds: float  # seconds in decoding steps
    greedy_mismatches: int  # intact positions whose teacher-forced argmax differs from the generated token

    @property
    def tokens_per_second(self) -> float:
        """Decoded tokens per second of decoding."""
        return self.decoded_tokens / self.generate_seconds if self.generate_seconds > 0 else float("nan")


def stop_ids(loaded: LoadedModel) -> frozenset[int]:
    """EOS ids: the generation config's (instruct models list several), else the tokenizer's."""
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = loaded.tokenizer.eos_token_id
    ids = configured if isinstance(configured, list | tuple) else [configured]
    return frozenset(int(i) for i in ids if i is not None)


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


def response_positions(
    prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad: int = 0
) -> tuple[Tensor, ...]:
    """Right-padded prompt+response ids, attention mask, and for each response token the position that
    predicts it, its id and a validity mask ([B, N] each, N = longest response)."""
    ids, mask = pad_batch([list(p) + list(r) for p, r in zip(prompts, responses, strict=True)], pad)
    n = max(1, max(len(r) for r in responses))
    where = torch.zeros((len(prompts), n), dtype=torch.long)
    targets = torch.zeros_like(where)
    valid = torch.zeros((len(prompts), n), dtype=torch.bool)
    for b, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        k = len(response)
        where[b, :k] = torch.arange(len(prompt) - 1, len(prompt) - 1 + k)
        targets[b, :k] = torch.tensor(list(response), dtype=torch.long)
        valid[b, :k] = True
    return ids, mask, where, targets, valid


def teacher_forced(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], cache: Any = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Log-softmax next-token distributions at the response positions: ([B, N, V] float32, targets, valid).

    Only the response positions reach the LM head (``logits_to_keep``), so the vocabulary-sized tensor is
    [B, N, V] rather than [B, T, V]. With ``cache`` (an empty ``DynamicCache``) the forward fills it with every
    position's keys and values (right-padded, as the forward ran).
    """
    pad = loaded.tokenizer.pad_token_id
    ids, mask, where, targets, valid = response_positions(prompts, responses, pad if pad is not None else 0)
    device = loaded.device
    with torch.inference_mode():
        out = loaded.model(
            input_ids=ids.to(device),
            attention_mask=mask.to(device),
            logits_to_keep=where.to(device),
            cache=cache,
            use_cache=cache is not None,
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


def pair_metrics(intact: list[int], ablated: list[int], kl: float, drop: float, stop: frozenset[int]) -> dict:
    """The judge-free metrics of one (prompt, ablated layer) from its responses and divergences."""
    return dict(
        kl=float(kl),
        logprob_drop=float(drop),
        token_overlap=token_overlap(intact, ablated, stop),
        identical=float(intact == ablated),
    )


def responses_frame(
    records: list[dict], prompt_ids: Sequence[str], texts: Sequence[str], tokenizer: Any
) -> pd.DataFrame:
    """The responses table: the records with each prompt's text and each response decoded."""
    frame = pd.DataFrame.from_records(records)
    prompt_text = dict(zip(prompt_ids, texts, strict=True))
    frame.insert(1, "prompt", frame["prompt_id"].map(prompt_text))
    frame.insert(3, "response", [tokenizer.decode(t, skip_special_tokens=True) for t in frame["tokens"]])
    return frame


@dataclass
class Scored:
    """Intact responses and their teacher-forced distributions."""

    responses: list[list[int]]
    logprobs: Tensor  # [B, N, V]
    targets: Tensor  # [B, N]
    valid: Tensor  # [B, N]


class Clock:
    """Seconds spent decoding and the tokens decoded, so tokens/s measures decoding and not the scoring passes."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.tokens = 0

    def add(self, seconds: float, tokens: int) -> None:
        self.seconds += seconds
        self.tokens += tokens


def greedy_decode(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    stop: frozenset[int],
    rows: RowLayers | None = None,
) -> list[list[int]]:
    """Greedy responses for a batch of tokenised prompts, KV cache on, each cut after its first stop token.

    ``rows`` names the layer each row ablates (:func:`kmap.core.hooks.identity_rows`), so one batch can hold
    every ablated-layer variant of several prompts. A row leaves the batch (and its KV cache) as soon as it
    emits a stop token, so finished rows cost nothing further. The same greedy tokens as ``model.generate``
    with the same padding: positions count real tokens only, padding is masked.
    """
    pad = loaded.tokenizer.pad_token_id
    ids, mask = pad_batch(prompts, pad if pad is not None else 0, side="left")
    # Left padding: a row's first real token is position 0 (padding gets a harmless 1, as in generate).
    positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    out: list[list[int]] = [[] for _ in prompts]
    continue_decoding(loaded, ids, mask, positions, None, out, max_new_tokens, stop, rows)
    return out


def continue_decoding(
    loaded: LoadedModel,
    step_ids: Tensor,
    mask: Tensor,
    positions: Tensor,
    cache: Any,
    out: list[list[int]],
    max_new_tokens: int,
    stop: frozenset[int],
    rows: RowLayers | None = None,
) -> None:
    """Greedy decoding from a left-padded state, appending each row's tokens to ``out[b]`` until it emits a stop
    token or holds ``max_new_tokens``: ``step_ids`` [B, S] are fed at ``positions`` [B, S] with ``mask`` [B, T]
    covering ``cache``'s T − S positions and theirs (``cache`` None: a fresh start, S = T)."""
    device = loaded.device
    step_ids, mask, positions = step_ids.to(device), mask.to(device), positions.to(device)
    last = positions[:, -1:]
    active = torch.arange(len(out))  # original row of each row still decoding
    stop_ids_ = torch.tensor(sorted(stop), dtype=torch.long)
    with torch.inference_mode():
        while True:
            result = loaded.model(
                input_ids=step_ids,
                attention_mask=mask,
                position_ids=positions,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            )
            cache = result.cache
            token = result.logits[:, -1].argmax(dim=-1).cpu()
            for row, value in zip(active.tolist(), token.tolist(), strict=True):
                out[row].append(value)
            room = torch.tensor([len(out[row]) < max_new_tokens for row in active.tolist()])
            running = ~torch.isin(token, stop_ids_) & room
            if not bool(running.any()):
                return
            if not bool(running.all()):
                keep = running.nonzero().squeeze(1)
                cache.batch_select_indices(keep)  # CPU indices work for caches on any device
                active, token = active[keep], token[keep]
                mask, last = mask[keep.to(device)], last[keep.to(device)]
                if rows is not None:
                    rows.select(keep)
            mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=1)
            last = last + 1
            positions = last
            step_ids = token.view(-1, 1).to(device)


def decode_rows(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    layers: Sequence[int],
    max_new_tokens: int,
    stop: frozenset[int],
) -> list[list[int]]:
    """Greedy responses, row ``b`` decoding ``prompts[b]`` with layer ``layers[b]`` ablated (-1: intact)."""
    rows = RowLayers(torch.tensor(list(layers)))
    shared = groups(prompts, [()] * len(prompts))  # the prompt's forward (the first step) is shared
    with identity_rows(loaded.parts.layers, rows), intact_rows_once(loaded.parts.layers, rows, shared):
        return greedy_decode(loaded, prompts, max_new_tokens, stop, rows)


def score_rows(
    loaded: LoadedModel, prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], layers: Sequence[int]
) -> tuple[Tensor, Tensor, Tensor]:
    """Teacher-forced log-softmax distributions at the response positions, row ``b`` with layer ``layers[b]``
    ablated (-1: intact): ([B, N, V], targets, valid) as :func:`teacher_forced` gives them."""
    rows = RowLayers(torch.tensor(list(layers)))
    with (
        identity_rows(loaded.parts.layers, rows),
        intact_rows_once(loaded.parts.layers, rows, groups(prompts, responses)),
    ):
        return teacher_forced(loaded, prompts, responses)


def groups(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> Tensor:
    """Rows fed the same tokens (a prompt and its intact response) share a group id."""
    ids: dict[tuple[tuple[int, ...], tuple[int, ...]], int] = {}
    return torch.tensor(
        [ids.setdefault((tuple(p), tuple(r)), len(ids)) for p, r in zip(prompts, responses, strict=True)]
    )


def left_aligned(cache: Any, keep: Tensor, lengths: Tensor) -> tuple[Any, Tensor]:
    """Rows ``keep`` of a right-padded cache, each with its first ``lengths[j]`` positions, laid out left-padded
    as greedy decoding holds them (gaps between positions unchanged, so sliding windows see what they would);
    and the attention mask of that layout [J, max length]."""
    width = int(lengths.max())
    source = torch.arange(width)[None, :] - (width - lengths)[:, None]
    mask = (source >= 0).long()
    source = source.clamp_min(0)  # padding columns copy position 0; the mask hides them
    aligned = full_kv_cache()
    for index, layer in enumerate(cache.layers):
        picked = []
        for tensor in (layer.keys, layer.values):
            where = source.to(tensor.device)[:, None, :, None].expand(-1, tensor.shape[1], -1, tensor.shape[3])
            picked.append(tensor[keep.to(tensor.device)].gather(2, where))
        aligned.update(*picked, index)
    return aligned, mask


def score_and_respond(
    loaded: LoadedModel,
    prompts: Sequence[Sequence[int]],
    intact: Sequence[Sequence[int]],
    layers: Sequence[int],
    max_new_tokens: int,
    stop: frozenset[int],
    clock: Clock,
    read_from_pass: bool = True,
) -> tuple[Tensor, list[list[int]]]:
    """Row ``b`` with layer ``layers[b]`` ablated: its teacher-forced log-softmax through its prompt's intact
    response ``intact[b]`` ([B, N, V], as :func:`score_rows`), and its own greedy response.

    Greedy decoding of the ablated row feeds exactly the tokens the teacher-forced pass feeds until the first
    position where its argmax differs from the intact token, so up to there its tokens are the pass's argmaxes;
    from there it continues decoding from the pass's own keys and values. A row that never differs gives the
    intact response. Only the continuation decodes (timed by ``clock``).

    That holds where the pass and decoding compute the same logits to far below the gap between the two best
    tokens: in float32. In bfloat16 or float16 ties are common and the two computations differ in the low bits,
    so a tie could read as a difference; ``read_from_pass=False`` then decodes every row from its prompt.
    """
    if not read_from_pass:
        start = time.perf_counter()
        out = decode_rows(loaded, prompts, layers, max_new_tokens, stop)
        clock.add(time.perf_counter() - start, sum(len(tokens) for tokens in out))
        return score_rows(loaded, prompts, intact, layers)[0], out
    rows = RowLayers(torch.tensor(list(layers)))
    cache = full_kv_cache()
    with identity_rows(loaded.parts.layers, rows):
        with intact_rows_once(loaded.parts.layers, rows, groups(prompts, intact)):
            logprobs, targets, _ = teacher_forced(loaded, prompts, intact, cache)
        greedy, targets = logprobs.argmax(dim=-1).cpu(), targets.cpu()
        out: list[list[int]] = []
        todo: list[int] = []
        for b, response in enumerate(intact):
            n = len(response)
            differs = (greedy[b, :n] != targets[b, :n]).nonzero()
            if len(differs) == 0:
                out.append(list(response))
                continue
            k = int(differs[0, 0])
            out.append([*response[:k], int(greedy[b, k])])
            if out[-1][-1] not in stop and len(out[-1]) < max_new_tokens:
                todo.append(b)
        if todo:
            start = time.perf_counter()
            before = sum(len(out[b]) for b in todo)
            keep = torch.tensor(todo)
            # The cache holds the prompt and the agreed prefix; the differing token is fed next.
            held = torch.tensor([len(prompts[b]) + len(out[b]) - 1 for b in todo])
            aligned, mask = left_aligned(cache, keep, held)
            del cache  # the rows that decode on hold a copy; the logits stay
            rows.select(keep)
            step = torch.tensor([[out[b][-1]] for b in todo])
            mask = torch.cat([mask, mask.new_ones((len(todo), 1))], dim=1)
            continued = [out[b] for b in todo]  # the same lists: decoding appends to them
            continue_decoding(loaded, step, mask, held.view(-1, 1), aligned, continued, max_new_tokens, stop, rows)
            clock.add(time.perf_counter() - start, sum(len(out[b]) for b in todo) - before)
    return logprobs, out


@dataclass
class Row:
    """One decoded variant: a prompt (its index) with one layer ablated (``INTACT``: none)."""

    prompt: int
    layer: int


def chunks(items: Sequence[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield list(items[start : start + size])


def run_ablation(
    loaded: LoadedModel,
    prompt_ids: Sequence[str],
    texts: Sequence[str],
    settings: AblationSettings,
    progress: Progress | None = None,
    fmt: PromptFormat = RAW,
) -> AblationRun:
    """Every prompt, formatted by ``fmt``, intact and with each chosen layer ablated; responses decoded to text.

    The intact responses decode first, ``settings.batch_size`` prompts at a time. Then every (prompt, ablated
    layer) variant is a row, ``batch_size`` rows at a time, prompt by prompt: each row is teacher-forced through
    its prompt's intact response, and its own greedy response decodes only from where it leaves the intact one
    (:func:`score_and_respond`; float32 models only, others decode every row).
    """
    layers = settings.chosen_layers(loaded.n_layers)
    tokenized = tokenize_prompts(loaded.tokenizer, texts, fmt)
    stop = stop_ids(loaded)
    rows = [Row(p, layer) for p in range(len(texts)) for layer in (INTACT, *layers)]
    total = len(texts) + len(rows)  # intact responses decoded, then every row scored
    read_from_pass = loaded.model.dtype == torch.float32  # see score_and_respond
    clock = Clock()
    responses: dict[tuple[int, int], list[int]] = {}
    for chunk in chunks(range(len(texts)), settings.batch_size):
        start = time.perf_counter()
        out = greedy_decode(loaded, [tokenized[p] for p in chunk], settings.max_new_tokens, stop)
        clock.add(time.perf_counter() - start, sum(len(tokens) for tokens in out))
        responses.update({(p, INTACT): tokens for p, tokens in zip(chunk, out, strict=True)})
        if progress:
            progress(len(responses), total)

    records = {(p, INTACT): _record(prompt_ids[p], INTACT, responses[(p, INTACT)], stop) for p in range(len(texts))}
    mismatches = 0
    intact: dict[int, Scored] = {}  # teacher-forced intact distributions of the prompts in flight
    done = len(texts)
    for chunk in chunks(rows, settings.batch_size):
        missing = sorted({r.prompt for r in chunk} - intact.keys())
        if missing:
            scored = score_rows(
                loaded,
                [tokenized[p] for p in missing],
                [responses[(p, INTACT)] for p in missing],
                [INTACT] * len(missing),
            )
            for i, p in enumerate(missing):
                intact[p] = Scored(responses[(p, INTACT)], *(part[i : i + 1] for part in scored))
                mismatches += greedy_mismatches(intact[p].logprobs, intact[p].targets, intact[p].valid)
        ablated = [r for r in chunk if r.layer != INTACT]
        if ablated:
            logprobs, own = score_and_respond(
                loaded,
                [tokenized[r.prompt] for r in ablated],
                [responses[(r.prompt, INTACT)] for r in ablated],
                [r.layer for r in ablated],
                settings.max_new_tokens,
                stop,
                clock,
                read_from_pass,
            )
            for i, r in enumerate(ablated):
                base = intact[r.prompt]
                n = base.logprobs.shape[1]  # the prompt's own response length (the batch may be wider)
                kl, drop = divergence(base.logprobs, logprobs[i : i + 1, :n], base.targets, base.valid)
                responses[(r.prompt, r.layer)] = tokens = own[i]
                metrics = pair_metrics(base.responses, tokens, kl[0], drop[0], stop)
                records[(r.prompt, r.layer)] = _record(prompt_ids[r.prompt], r.layer, tokens, stop, **metrics)
        # Prompts whose last row was scored are done; keep only the last prompt of the chunk (it may continue).
        last = chunk[-1].prompt
        intact = {p: v for p, v in intact.items() if p == last}
        done += len(chunk)
        if progress:
            progress(done, total)

    frame = responses_frame([records[(r.prompt, r.layer)] for r in rows], prompt_ids, texts, loaded.tokenizer)
    return AblationRun(frame, int(frame["n_tokens"].sum()), clock.tokens, clock.seconds, mismatches)
