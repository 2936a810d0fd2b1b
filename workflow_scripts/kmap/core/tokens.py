"""Tokens of an expected continuation (patching answers, saliency targets) as the model would see them."""

from __future__ import annotations

from typing import Any


def continuation(
    tokenizer: Any, prompt: str, answer: str, joiner: str = " ", add_special_tokens: bool = True
) -> list[int]:
    """Tokens of ``joiner + answer`` as they follow ``prompt`` (a space: as inside a sentence).

    Taken from the tokenization of the whole text where the prompt's tokens are a prefix of it (a tokenizer
    may merge across the boundary, or mark word starts differently at the start of a text); otherwise the
    tokens of ``joiner + answer`` on their own. ``add_special_tokens`` is False for text that already holds
    them (a chat template's output).
    """
    base = tokenizer(prompt, add_special_tokens=add_special_tokens)["input_ids"]
    full = tokenizer(f"{prompt}{joiner}{answer}", add_special_tokens=add_special_tokens)["input_ids"]
    if full[: len(base)] == base and len(full) > len(base):
        return list(full[len(base) :])
    return list(tokenizer(f"{joiner}{answer}", add_special_tokens=False)["input_ids"])
