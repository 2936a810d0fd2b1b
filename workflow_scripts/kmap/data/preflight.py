"""Pre-flight of one (model, domain), on the CPU with the tokenizer only: what every GPU job of that model will
see, checked before any GPU is requested.

One row per prompt and per patching pair, as each method formats it (``prompt_format``): its token count against
the model's context length, and for pairs whether the model's tokenizer can use them and why not. A prompt that
does not fit the context (with ablation's new tokens), or a domain with fewer usable pairs than
``patching.min_pairs``, is an error naming model, domain and counts; a pair the tokenizer cannot use is a counted
exclusion, as in the patching job itself (the same ``prepare_pair``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from kmap.core.prompt_format import PromptFormat
from kmap.methods.patching.pairs import prepare_pair

USABLE = "usable"
FITS = "fits"
TOO_LONG = "too_long"
COLUMNS = ["kind", "id", "method", "format", "n_tokens", "limit", "status", "answer", "foil"]


class PreflightError(ValueError):
    pass


def prompt_rows(
    tokenizer: Any, frame: pd.DataFrame, method: str, fmt: PromptFormat, limit: int | None
) -> list[dict[str, Any]]:
    """Token count of each formatted prompt and whether it fits ``limit`` tokens (None: no known limit)."""
    rows = []
    for prompt_id, text in zip(frame["id"].astype(str), frame["text"], strict=True):
        n = len(fmt.ids(tokenizer, text))
        status = TOO_LONG if limit is not None and n > limit else FITS
        rows.append(
            dict(kind="prompt", id=prompt_id, method=method, format=fmt.mode, n_tokens=n, limit=limit, status=status)
        )
    return rows


def pair_rows(tokenizer: Any, pairs: pd.DataFrame, mode: str, fmt: PromptFormat, limit: int | None) -> list[dict]:
    """Each pair as the patching job prepares it: usable with its answer and foil tokens, or the reason not."""
    rows = []
    for _, row in pairs.iterrows():
        prepared = prepare_pair(tokenizer, row, mode, fmt)
        base = dict(kind="pair", id=str(row["id"]), method="patching", format=fmt.mode, limit=limit)
        if isinstance(prepared, str):
            n = len(fmt.ids(tokenizer, row["clean"]))
            rows.append(dict(base, n_tokens=n, status=prepared))
            continue
        status = TOO_LONG if limit is not None and len(prepared.clean) > limit else USABLE
        answer, foil = (tokenizer.convert_ids_to_tokens([t])[0] for t in (prepared.answer, prepared.foil))
        rows.append(dict(base, n_tokens=len(prepared.clean), status=status, answer=answer, foil=foil))
    return rows


def preflight_table(
    tokenizer: Any,
    prompts: pd.DataFrame | None,
    pairs: pd.DataFrame | None,
    formats: Mapping[str, PromptFormat],
    context: int | None,
    new_tokens: Mapping[str, int],
    multi_token_answers: str,
) -> pd.DataFrame:
    """Rows for the prompts of every method in ``formats`` (a method generating ``new_tokens[method]`` tokens
    needs room for them) and, when ``formats`` has patching, for every pair."""
    rows: list[dict[str, Any]] = []
    for method, fmt in formats.items():
        limit = None if context is None else context - new_tokens.get(method, 0)
        if method == "patching":
            if pairs is not None:
                rows += pair_rows(tokenizer, pairs, multi_token_answers, fmt, None if context is None else context - 1)
        elif prompts is not None:
            rows += prompt_rows(tokenizer, prompts, method, fmt, limit)
    return pd.DataFrame(rows, columns=COLUMNS)


def problems(table: pd.DataFrame, model: str, domain: str, min_pairs: int) -> list[str]:
    """What stops this (model, domain) before any GPU job: prompts over the context, too few usable pairs."""
    found = []
    long = table[(table["kind"] == "prompt") & (table["status"] == TOO_LONG)]
    for method, rows in long.groupby("method"):
        ids = ", ".join(rows["id"].head(5))
        found.append(
            f"{model}/{domain}: {len(rows)} prompt(s) exceed the context for {method} "
            f"(limit {int(rows['limit'].iloc[0])} tokens; e.g. {ids}); shorten them or drop {method} for this model"
        )
    pairs = table[table["kind"] == "pair"]
    if len(pairs):
        usable = int((pairs["status"] == USABLE).sum())
        if usable < min_pairs:
            reasons = ", ".join(f"{n} {r}" for r, n in pairs["status"].value_counts().sort_index().items())
            found.append(
                f"{model}/{domain}: only {usable} of {len(pairs)} patching pairs are usable with this model's "
                f"tokenizer ({reasons}); patching.min_pairs is {min_pairs}: add pairs to prompts/pairs/{domain}.csv, "
                "lower patching.min_pairs, or drop patching for this model"
            )
    return found


def summary(table: pd.DataFrame) -> dict[str, Any]:
    """Counts for the log and the provenance: prompts per method and status, pairs per status."""
    counts = table.groupby(["kind", "method", "status"]).size()
    return {"/".join(key): int(n) for key, n in counts.items()}
