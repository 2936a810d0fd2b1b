"""Tokens of an expected continuation (patching answers, saliency targets) as the model would see them."""

from __future__ import annotations

from typing import Any


def continuation(tokenizer: Any, prompt: str, answer: str) -> list[int]:
    """Tokens of " " + answer as they follow ``prompt``, as inside a sentence.

    Taken from the tokenization of the whole text where the prompt's tokens are a prefix of it (a tokenizer
    may merge across the boundary, or mark word starts differently at the start of a text); otherwise the
    tokens of " " + answer on their own.
    """
    base = tokenizer(prompt)["input_ids"]
    full = tokenizer(f"{prompt} {answer}")["input_ids"]
    if full[: len(base)] == base and len(full) > len(base):
        return list(full[len(base) :])
    return list(tokenizer(f" {answer}", add_special_tokens=False)["input_ids"])
