"""kmap's token handling on the study models' real tokenizers (Llama 3, Llama 2, Gemma 3, Qwen3, GPT-OSS):
special tokens, answer tokens as they follow a prompt, digit splitting, concept positions and patching pairs."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import pandas as pd
import pytest

from kmap.activations.extract import concept_mask
from kmap.core.models import encode
from kmap.core.prompt_format import PromptFormat, PromptFormatError
from kmap.core.tokens import continuation
from kmap.data.prompts import load_pairs
from kmap.methods.patching.pairs import prepare_pair, prepare_pairs
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
REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("age", "symptoms", "disease", "progression", "drugs", "dosage")
# Clean and corrupted differ in the age only; the answers' first tokens differ.
AGE_PAIR = pd.Series(
    {
        "id": "age",
        "clean": "A 45-year-old man with chest pain most likely has",
        "corrupted": "A 72-year-old man with chest pain most likely has",
        "clean_answer": "angina",
        "corrupted_answer": "myocardial infarction",
    }
)
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
    row = AGE_PAIR
    pair = prepare_pair(tok, row, "all")
    assert not isinstance(pair, str), pair
    clean = tok.decode([pair.clean[i] for i in pair.concept])
    corrupted = tok.decode([pair.corrupted[i] for i in pair.concept])
    assert (clean, corrupted) in (("45", "72"), ("4", "7"))  # digit-splitting tokenizers differ in one digit


@pytest.mark.parametrize("domain", DOMAINS)
def test_at_least_40_usable_pairs_per_domain(family: str, domain: str) -> None:
    """The shipped pair pools survive every study tokenizer (default multi_token_answers: first_token)."""
    kept, excluded = prepare_pairs(real_tokenizer(family), load_pairs(domain, REPO / "prompts").frame, "first_token")
    assert len(kept) >= 40, (len(kept), sorted(set(excluded.values())))
    # Only length mismatches and words sharing their first token are lost; numbers are always comparable.
    assert set(excluded.values()) <= {"unequal_length", "answers_share_first_token"}


# --- prompt formats on the real chat templates ---

CHAT = {"llama3": True, "gemma3": True, "qwen3": True, "llama2": False, "gptoss": False}  # as the npm files ship


def test_auto_format_is_chat_exactly_where_a_template_ships(family: str) -> None:
    tok = real_tokenizer(family)
    assert PromptFormat("auto").resolve(tok).mode == ("chat" if CHAT[family] else "raw")
    assert PromptFormat("raw").resolve(tok).mode == "raw"
    if not CHAT[family]:
        with pytest.raises(PromptFormatError, match="no chat template.*set prompt_format to raw or auto"):
            PromptFormat("chat").resolve(tok)


@pytest.mark.parametrize("family_name", [f for f, chat in CHAT.items() if chat])
def test_chat_format_one_bos_instruction_then_prompt_then_generation_prompt(family_name: str) -> None:
    tok = real_tokenizer(family_name)
    fmt = PromptFormat("chat", "Answer as a physician.")
    text, start = fmt.render(tok, VIGNETTE)
    assert text[start : start + len(VIGNETTE)] == VIGNETTE and text.index("Answer as a physician.") < start
    assert len(text) > start + len(VIGNETTE)  # the assistant turn's header follows the prompt
    if family_name == "qwen3":  # thinking switched off: the template closes an empty thinking block
        assert text.endswith("<think>\n\n</think>\n\n")
    ids = fmt.ids(tok, VIGNETTE)
    assert ids == tok(text, add_special_tokens=False)["input_ids"]
    if BOS[family_name] is not None:
        bos = tok.convert_tokens_to_ids(BOS[family_name])
        assert ids[0] == bos and ids.count(bos) == 1  # the template's BOS, not a second one from the tokenizer
    # The answer starts the assistant's turn: no leading space, and it decodes back to itself.
    answer = fmt.continuation(tok, VIGNETTE, "pneumonia")
    assert tok.decode(answer) == "pneumonia"
    assert ids + answer == tok(text + "pneumonia", add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("family_name", [f for f, chat in CHAT.items() if chat])
def test_chat_concept_positions_skip_the_instruction(family_name: str) -> None:
    tok = real_tokenizer(family_name)
    fmt = PromptFormat("chat", "Think about chest pain causes.")  # the concept also occurs in the instruction
    text, start = fmt.render(tok, VIGNETTE)
    batch = encode(tok, [text], add_special_tokens=False)
    mask = concept_mask(batch["offset_mapping"], batch["attention_mask"], [text], ["chest pain"], [start])[0]
    positions = [i for i, keep in enumerate(mask.tolist()) if keep]
    ids = batch["input_ids"][0].tolist()
    assert tok.decode([ids[i] for i in positions]).strip() == "chest pain"
    # These are the prompt's tokens, after every token of the instruction.
    instruction_end = len(tok(text[:start], add_special_tokens=False)["input_ids"])
    assert positions[0] >= instruction_end - 1


@pytest.mark.parametrize("family_name", [f for f, chat in CHAT.items() if chat])
def test_chat_pair_keeps_concept_positions_and_first_token_answers(family_name: str) -> None:
    tok = real_tokenizer(family_name)
    row = AGE_PAIR
    raw, chat = prepare_pair(tok, row, "first_token"), prepare_pair(tok, row, "first_token", PromptFormat("chat"))
    assert not isinstance(raw, str) and not isinstance(chat, str)
    offset = len(chat.clean) - len(raw.clean)  # the template's tokens before and after the prompt
    assert offset > 0 and len(chat.concept) == len(raw.concept)
    assert tok.decode([chat.clean[i] for i in chat.concept]) == tok.decode([raw.clean[i] for i in raw.concept])
    assert tok.decode([chat.answer]).strip() and tok.decode([chat.answer]).strip() != tok.decode([chat.foil]).strip()


def test_word_answers_sharing_their_first_token_are_excluded_only_in_first_token_mode(family: str) -> None:
    tok = real_tokenizer(family)
    row = pd.Series(
        {
            "id": "ckd",
            "clean": "A patient with oliguria and fatigue most likely has",
            "corrupted": "A patient with wheezing and fatigue most likely has",
            "clean_answer": "chronic kidney disease",
            "corrupted_answer": "chronic obstructive pulmonary disease",
        }
    )
    for symptom in ("wheezing", "polyuria", "hematuria", "dysuria"):  # one with as many tokens as oliguria
        row["corrupted"] = row["clean"].replace("oliguria", symptom)
        if prepare_pair(tok, row, "all") != "unequal_length":
            break
    assert prepare_pair(tok, row, "first_token") == "answers_share_first_token"
    shared = prepare_pair(tok, row, "all")  # compared after the shared " chronic"
    assert not isinstance(shared, str) and shared.answer_mode == "first_differing"
    assert tok.decode([shared.clean[-1]]).strip() == "chronic"
    # Different first tokens: compared there, whatever follows.
    row["corrupted_answer"] = "asthma"
    pair = prepare_pair(tok, row, "first_token")
    assert not isinstance(pair, str) and pair.clean == tuple(tok(row["clean"])["input_ids"])


def test_preflight_counts_formatted_tokens_per_method(family: str) -> None:
    from kmap.data.preflight import USABLE, preflight_table, problems
    from kmap.data.prompts import load_prompt_set

    tok = real_tokenizer(family)
    prompts = load_prompt_set("disease", REPO / "prompts").frame
    pairs = load_pairs("disease", REPO / "prompts").frame
    formats = {m: PromptFormat(mode).resolve(tok) for m, mode in (("activations", "raw"), ("ablation", "auto"))}
    formats["patching"] = PromptFormat("raw")
    table = preflight_table(tok, prompts, pairs, formats, 8192, {"ablation": 64}, "first_token")
    n = table[table["kind"] == "prompt"].pivot(index="id", columns="method", values="n_tokens")
    extra = n["ablation"] - n["activations"]
    # The chat template's turn markers and instruction come on top of the same prompt tokens.
    assert (extra > 0).all() if CHAT[family] else (extra == 0).all()
    assert (table.loc[table["method"] == "ablation", "format"] == ("chat" if CHAT[family] else "raw")).all()
    assert (table["status"] == USABLE).sum() >= 40 and problems(table, family, "disease", min_pairs=40) == []
