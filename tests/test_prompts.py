"""Prompt sets: the shipped sets are valid, complete and generated; every broken file fails naming file,
row, column and fix."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kmap.data.knowledge import load_knowledge, split_words, vocabulary
from kmap.data.prompts import PromptSetError, load_pairs, load_prompt_set, validate_all

REPO = Path(__file__).resolve().parents[1]
PROMPTS = REPO / "prompts"
DOMAINS = ["age", "symptoms", "disease", "progression", "drugs", "dosage"]


def test_shipped_prompt_sets_validate() -> None:
    validate_all(PROMPTS, DOMAINS)


def test_age_covers_every_year_and_both_genders() -> None:
    frame = load_prompt_set("age", PROMPTS).frame
    for gender in ("male", "female"):
        ages = set(frame.loc[frame["gender"] == gender, "age"])
        assert ages == set(range(101))
    assert frame["template"].nunique() >= 3
    assert frame["age"].dtype == "int64"


def test_drug_and_progression_coverage() -> None:
    drugs = load_prompt_set("drugs", PROMPTS).frame
    assert drugs["drug"].nunique() >= 40
    assert drugs["mechanism"].nunique() >= 8 and drugs["specialty"].nunique() >= 6
    kb = load_knowledge(PROMPTS / "knowledge.yaml")
    stages = {p.disease: len(p.stages) for p in kb.progressions}
    assert stages == {
        "Parkinson's disease": 5,
        "COPD": 4,
        "chronic kidney disease": 5,
        "heart failure": 4,
        "breast cancer": 4,
        "Alzheimer's disease": 3,
    }


def test_medical_facts_spot_checks() -> None:
    kb = load_knowledge(PROMPTS / "knowledge.yaml")
    assert kb.drug("lisinopril").mechanism == "ACE inhibitor"
    assert kb.drug("metoprolol").mechanism == "beta blocker"
    assert kb.drug("sertraline").mechanism == "SSRI" and kb.drug("sertraline").specialty == "psychiatry"
    assert kb.drug("atorvastatin").mechanism == "statin"
    assert kb.drug("omeprazole").mechanism == "proton pump inhibitor"
    assert (kb.drug("metformin").doses[0].value, kb.drug("metformin").doses[0].frequency) == (500, "twice daily")
    assert kb.disease("bronchiolitis").age_range[1] <= 2
    assert kb.disease("benign prostatic hyperplasia").sex == "male"


@pytest.mark.parametrize("domain", DOMAINS)
def test_pairs_per_domain(domain: str) -> None:
    """Clean and corrupted differ in one concept: they share all words but a span of at most four (a multi-word
    symptom, an age with its article), and the answers differ."""
    frame = load_pairs(domain, PROMPTS).frame
    assert len(frame) >= 40 and frame["id"].is_unique
    for clean, corrupted in zip(frame["clean"], frame["corrupted"], strict=True):
        a, b = split_words(clean), split_words(corrupted)
        prefix = next(i for i, (x, y) in enumerate(zip([*a, None], [*b, None], strict=False)) if x != y)
        suffix = next(i for i, (x, y) in enumerate(zip([*a[::-1], None], [*b[::-1], None], strict=False)) if x != y)
        assert 0 < len(a) - prefix - suffix <= 4 and 0 < len(b) - prefix - suffix <= 4, (clean, corrupted)
    assert (frame["clean_answer"] != frame["corrupted_answer"]).all()


@pytest.mark.parametrize("domain", DOMAINS)
def test_pairs_usable_on_the_demo_tokenizer(domain: str) -> None:
    """The demo model's tokenizer keeps at least 40 pairs per domain (the real tokenizers: test_real_tokenizers)."""
    from kmap.methods.patching.pairs import prepare_pairs
    from kmap.offline.demo_train import demo_tokenizer

    tokenizer = demo_tokenizer(load_knowledge(PROMPTS / "knowledge.yaml"))
    kept, excluded = prepare_pairs(tokenizer, load_pairs(domain, PROMPTS).frame, "first_token")
    assert len(kept) >= 40, excluded


def test_dosage_pair_answers_differ_in_first_digit() -> None:
    frame = load_pairs("dosage", PROMPTS).frame
    assert (frame["clean_answer"].str[0] != frame["corrupted_answer"].str[0]).all()


def test_every_prompt_word_is_in_the_demo_vocabulary() -> None:
    words = set(vocabulary(load_knowledge(PROMPTS / "knowledge.yaml")))
    for path in [*PROMPTS.glob("*.csv"), *PROMPTS.glob("pairs/*.csv")]:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        for column in ("text", "target", "clean", "corrupted", "clean_answer", "corrupted_answer"):
            for text in frame.get(column, []):
                assert set(split_words(text)) <= words, (path.name, column, text)


def test_committed_files_equal_generator_output() -> None:
    result = subprocess.run(
        [sys.executable, "tools/make_prompts.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.fixture()
def prompts_copy(tmp_path: Path) -> Path:
    shutil.copytree(PROMPTS, tmp_path / "prompts")
    return tmp_path / "prompts"


def _edit(path: Path, change) -> None:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    frame = change(frame)
    frame.to_csv(path, index=False)


BROKEN = [
    ("symptoms", lambda f: f.drop(columns=["system"]), ["symptoms.csv", "missing column", "system"]),
    (
        "symptoms",
        lambda f: f.assign(system=f["system"].where(f.index != 4, "cardiac")),
        ["symptoms.csv", "row 5", "'system'", "unknown label 'cardiac'", "knowledge.yaml"],
    ),
    (
        "disease",
        lambda f: f.assign(id=f["id"].where(f.index != 7, f["id"][2])),
        ["disease.csv", "rows [3, 8]", "duplicate id"],
    ),
    ("drugs", lambda f: f.iloc[0:0], ["drugs.csv", "no rows"]),
    (
        "age",
        lambda f: f.assign(age=f["age"].where(f.index != 9, "forty")),
        ["age.csv", "row 10", "'age'", "'forty' is not a valid int"],
    ),
    (
        "age",
        lambda f: f.assign(age=f["age"].where(f.index != 0, "130")),
        ["age.csv", "row 1", "outside the allowed range"],
    ),
    (
        "disease",
        lambda f: f.assign(concept=f["concept"].where(f.index != 3, "zebra")),
        ["disease.csv", "row 4", "'concept'", "does not occur"],
    ),
    ("dosage", lambda f: f.assign(text=f["text"].where(f.index != 1, "")), ["dosage.csv", "row 2", "'text'", "empty"]),
]


@pytest.mark.parametrize(("domain", "change", "expected"), BROKEN)
def test_broken_prompt_file(prompts_copy: Path, domain: str, change, expected: list[str]) -> None:
    _edit(prompts_copy / f"{domain}.csv", change)
    with pytest.raises(PromptSetError) as caught:
        validate_all(prompts_copy, DOMAINS)
    for fragment in expected:
        assert fragment in str(caught.value), (fragment, str(caught.value))


BROKEN_PAIRS = [
    (
        lambda f: f.assign(corrupted=f["corrupted"].where(f.index != 2, f["clean"] + " extra")),
        ["row 3", "'corrupted'", "words but clean has"],
    ),
    (lambda f: f.assign(corrupted=f["corrupted"].where(f.index != 0, f["clean"])), ["row 1", "identical to clean"]),
    (
        lambda f: f.assign(clean_answer=f["clean_answer"].where(f.index != 1, " . ")),
        ["row 2", "'clean_answer'", "empty answer"],
    ),
    (lambda f: f.assign(corrupted_answer=f["clean_answer"]), ["row 1", "equals clean_answer"]),
]


@pytest.mark.parametrize(("change", "expected"), BROKEN_PAIRS)
def test_broken_pairs_file(prompts_copy: Path, change, expected: list[str]) -> None:
    _edit(prompts_copy / "pairs" / "disease.csv", change)
    with pytest.raises(PromptSetError) as caught:
        load_pairs("disease", prompts_copy)
    assert "pairs/disease.csv" in str(caught.value)
    for fragment in expected:
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_non_utf8_bytes_named_with_line(prompts_copy: Path) -> None:
    path = prompts_copy / "symptoms.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"is", b"\xe9s", 1)
    path.write_bytes(b"\n".join(lines))
    with pytest.raises(PromptSetError, match=r"symptoms.csv: line 4: byte \d+ is not UTF-8"):
        load_prompt_set("symptoms", prompts_copy)


def test_missing_file_and_na_strings_kept(prompts_copy: Path) -> None:
    (prompts_copy / "progression.csv").unlink()
    with pytest.raises(PromptSetError, match="progression.csv: file not found"):
        validate_all(prompts_copy, DOMAINS)
    frame = load_prompt_set("age", PROMPTS).frame
    assert not frame.isna().any().any()


def test_inconsistent_knowledge_named(tmp_path: Path) -> None:
    from kmap.data.knowledge import KnowledgeError

    text = (PROMPTS / "knowledge.yaml").read_text()
    broken = tmp_path / "knowledge.yaml"
    broken.write_text(text.replace("symptoms: [wheezing, cough, dyspnea]", "symptoms: [wheezing, cough, sneezing]"))
    with pytest.raises(KnowledgeError, match="disease 'asthma': unknown symptom 'sneezing'"):
        load_knowledge(broken)
