"""Activation extraction (rule activations): one forward per batch records the embedding output (layer -1) and
every decoder layer's output at the concept position of each prompt."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from kmap.activations.cache import ActivationSettings
from kmap.core.hooks import capture, gather_rows, last_token_index, masked_mean
from kmap.core.models import LoadedModel, encode
from kmap.core.prompt_format import RAW, PromptFormat
from kmap.core.tables import EMBEDDINGS


def concept_mask(
    offsets: Tensor,
    attention_mask: Tensor,
    texts: Sequence[str],
    concepts: Sequence[str],
    starts: Sequence[int] | None = None,
) -> Tensor:
    """Tokens whose character span overlaps the first occurrence of each row's concept at or after the row's
    ``starts`` offset (where the prompt begins inside a chat-formatted text): [B, T] bool.

    Falls back to the last real token where the concept is not found, so a row is never empty.
    """
    mask = torch.zeros(attention_mask.shape, dtype=torch.bool)
    last = last_token_index(attention_mask)
    starts = starts if starts is not None else [0] * len(texts)
    for row, (text, concept, begin) in enumerate(zip(texts, concepts, starts, strict=True)):
        start = text.lower().find(concept.lower(), begin) if concept else -1
        if start >= 0:
            end = start + len(concept)
            spans = offsets[row]
            overlap = (spans[:, 0] < end) & (spans[:, 1] > start) & (spans[:, 1] > spans[:, 0])
            mask[row] = overlap & attention_mask[row].bool().cpu()
        if not mask[row].any():
            mask[row, last[row]] = True
    return mask


def _reducer(
    batch: dict[str, Tensor],
    texts: Sequence[str],
    concepts: Sequence[str] | None,
    position: str,
    starts: Sequence[int],
):
    if position == "last":
        index = last_token_index(batch["attention_mask"])
        return lambda hidden: gather_rows(hidden, index).float()
    if concepts is None:
        raise ValueError("activations.position 'concept_mean' needs a concept per prompt")
    mask = concept_mask(batch["offset_mapping"].cpu(), batch["attention_mask"].cpu(), texts, concepts, starts)
    return lambda hidden: masked_mean(hidden, mask).float()


def extract(
    loaded: LoadedModel,
    texts: Sequence[str],
    settings: ActivationSettings,
    concepts: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    fmt: PromptFormat = RAW,
) -> tuple[Tensor, np.ndarray]:
    """Activations [n_layers + 1, n_prompts, hidden] (float32, on CPU) and token counts per prompt, each prompt
    formatted by ``fmt`` (a resolved format; raw by default)."""
    layers = loaded.parts.layers
    n_layers = len(layers)
    out = torch.empty((n_layers + 1, len(texts), loaded.hidden_size), dtype=torch.float32)
    n_tokens = np.zeros(len(texts), dtype=np.int64)
    for start in range(0, len(texts), settings.batch_size):
        stop = min(start + settings.batch_size, len(texts))
        rendered = [fmt.render(loaded.tokenizer, text) for text in texts[start:stop]]
        chunk = [text for text, _ in rendered]
        batch = encode(loaded.tokenizer, chunk, loaded.device, add_special_tokens=fmt.add_special_tokens)
        chunk_concepts = concepts[start:stop] if concepts is not None else None
        reduce = _reducer(batch, chunk, chunk_concepts, settings.position, [offset for _, offset in rendered])
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        with torch.inference_mode(), capture(layers, reduce) as captured:
            # The base model skips the LM head: its logits are not needed here.
            loaded.parts.base(**inputs, use_cache=False)
        for index, value in captured.items():
            out[index - EMBEDDINGS, start:stop] = value.cpu()
        n_tokens[start:stop] = batch["attention_mask"].sum(dim=1).cpu().numpy()
        if progress is not None:
            progress(stop, len(texts))
    return out, n_tokens
