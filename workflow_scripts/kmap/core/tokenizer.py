"""A model's tokenizer and context length, without its weights (all the pre-flight needs)."""

from __future__ import annotations

from typing import Any

from kmap.core.spec import ModelSpec


def load_tokenizer(spec: ModelSpec) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(
        spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    # Right padding keeps every prompt's positions and causal context identical to an unbatched run.
    tokenizer.padding_side = "right"
    return tokenizer


def context_length(spec: ModelSpec) -> int | None:
    """The model's context window from its config (the text model's, for multimodal configs); None if unstated."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    value = getattr(text, "max_position_embeddings", None)
    return int(value) if value else None
