"""Patching pairs as one model's tokenizer sees them. No model is needed, so the pre-flight prepares them with the
tokenizer alone, exactly as the patching job does.

Per pair: the clean and corrupted token ids as the prompt format renders them, and the answer and foil tokens
compared at the answer position, or the reason the pair cannot be used with this tokenizer (counted, never
dropped silently). Multi-token answers, as ``multi_token_answers`` allows (default ``first_token``): two words
are compared at their first tokens when those differ (the token a model must choose first); two numbers at their
first differing token, the tokens both share (the space every study tokenizer writes before a number, the "1"
of 10 / 15) appended to both prompts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd

from kmap.core.prompt_format import RAW, PromptFormat


@dataclass(frozen=True)
class PreparedPair:
    id: str
    clean: tuple[int, ...]  # token ids, special tokens included, shared answer prefix appended
    corrupted: tuple[int, ...]
    answer: int  # r
    foil: int  # r'
    answer_mode: str  # "single" | "first_differing"
    clean_text: str = ""  # the clean prompt as written: pairs sharing it form one bootstrap cluster

    @property
    def concept(self) -> tuple[int, ...]:
        """Positions where the clean and corrupted tokens differ."""
        return tuple(i for i, (a, b) in enumerate(zip(self.clean, self.corrupted, strict=True)) if a != b)


def _is_number(text: str) -> bool:
    return text.strip().replace(".", "", 1).isdigit()


def prepare_pair(tokenizer: Any, row: pd.Series, mode: str, fmt: PromptFormat = RAW) -> PreparedPair | str:
    """The pair's token ids and answer tokens as ``fmt`` formats the prompts, or the reason it is excluded for
    this tokenizer."""
    clean = fmt.ids(tokenizer, row["clean"])
    corrupted = fmt.ids(tokenizer, row["corrupted"])
    if len(clean) != len(corrupted):
        return "unequal_length"
    if clean == corrupted:
        return "identical_tokens"
    answer = fmt.continuation(tokenizer, row["clean"], str(row["clean_answer"]))
    foil = fmt.continuation(tokenizer, row["clean"], str(row["corrupted_answer"]))
    single = len(answer) == 1 and len(foil) == 1
    numbers = _is_number(str(row["clean_answer"])) and _is_number(str(row["corrupted_answer"]))
    if not single and (mode == "exclude" or (mode == "numbers" and not numbers)):
        return "answer_not_single_token"
    shared = 0
    while shared < min(len(answer), len(foil)) and answer[shared] == foil[shared]:
        shared += 1
    if shared == min(len(answer), len(foil)):
        return "answers_share_tokens"  # one answer's tokens are a prefix of the other's: no token to compare
    if shared and mode == "first_token" and not numbers:
        return "answers_share_first_token"  # "chronic kidney …" vs "chronic obstructive …": no first choice
    prefix = answer[:shared]
    return PreparedPair(
        id=str(row["id"]),
        clean=tuple(clean + prefix),
        corrupted=tuple(corrupted + prefix),
        answer=int(answer[shared]),
        foil=int(foil[shared]),
        answer_mode="single" if single else "first_differing",
        clean_text=str(row["clean"]),
    )


def prepare_pairs(
    tokenizer: Any, frame: pd.DataFrame, mode: str, fmt: PromptFormat = RAW
) -> tuple[list[PreparedPair], dict[str, str]]:
    """Usable pairs and {pair id: exclusion reason} for the rest (never dropped silently)."""
    kept: list[PreparedPair] = []
    excluded: dict[str, str] = {}
    for _, row in frame.iterrows():
        prepared = prepare_pair(tokenizer, row, mode, fmt)
        if isinstance(prepared, str):
            excluded[str(row["id"])] = prepared
        else:
            kept.append(prepared)
    return kept, excluded
