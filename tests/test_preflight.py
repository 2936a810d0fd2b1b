"""Pre-flight (rule preflight): token lengths against the context, usable pairs per model, and the failure that
stops a domain before any GPU job, naming model, domain and counts."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from kmap.core.prompt_format import PromptFormat
from kmap.core.provenance import read_provenance
from kmap.core.spec import ModelSpec
from kmap.data.knowledge import load_knowledge
from kmap.data.preflight import TOO_LONG, USABLE, PreflightError, preflight_table, problems
from kmap.data.prompts import load_pairs, load_prompt_set
from kmap.methods.patching.pairs import prepare_pairs
from kmap.offline.demo_train import demo_tokenizer
from tests.workflow import REPO, run_entry

PROMPTS = REPO / "prompts"
RAW = {m: PromptFormat("raw") for m in ("activations", "ablation", "patching")}


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer(load_knowledge(PROMPTS / "knowledge.yaml"))


def test_rows_for_every_prompt_per_method_and_every_pair(tokenizer) -> None:
    prompts = load_prompt_set("disease", PROMPTS).frame
    pairs = load_pairs("disease", PROMPTS).frame
    table = preflight_table(tokenizer, prompts, pairs, RAW, 64, {"ablation": 16}, "first_token")
    by_kind = table.groupby(["kind", "method"]).size().to_dict()
    assert by_kind == {
        ("prompt", "activations"): len(prompts),
        ("prompt", "ablation"): len(prompts),
        ("pair", "patching"): len(pairs),
    }
    first = prompts["text"].iloc[0]
    row = table[(table["id"] == prompts["id"].iloc[0]) & (table["method"] == "activations")].iloc[0]
    assert row["n_tokens"] == len(tokenizer(first)["input_ids"]) and row["limit"] == 64 and row["status"] == "fits"
    assert (table.loc[table["method"] == "ablation", "limit"] == 48).all()  # room for 16 new tokens
    # The pairs' statuses are exactly the patching job's own preparation.
    kept, excluded = prepare_pairs(tokenizer, pairs, "first_token")
    status = table[table["kind"] == "pair"].set_index("id")["status"]
    assert set(status[status == USABLE].index) == {p.id for p in kept}
    assert status.drop([p.id for p in kept]).to_dict() == excluded
    usable = table[(table["kind"] == "pair") & (table["status"] == USABLE)]
    assert usable["answer"].notna().all() and (usable["answer"] != usable["foil"]).all()
    assert problems(table, "demo", "disease", min_pairs=20) == []


def test_prompt_over_the_context_is_an_error_naming_model_domain_method_and_prompts(tokenizer) -> None:
    prompts = load_prompt_set("age", PROMPTS).frame
    formats = {"ablation": PromptFormat()}
    # Context 23 with 8 new tokens leaves 15: "A 45-year-old male patient presents to the clinic with" (14 tokens,
    # <bos> included) fits, "The patient is a 45-year-old male. The most likely diagnosis is" (17) does not.
    table = preflight_table(tokenizer, prompts, None, formats, 23, {"ablation": 8}, "first_token")
    long = table[table["status"] == TOO_LONG]
    assert set(long["id"]) == set(prompts.loc[prompts["template"] == 1, "id"])
    (found,) = problems(table, "m1", "age", min_pairs=20)
    assert found.startswith(f"m1/age: {len(long)} prompt(s) exceed the context for ablation (limit 15 tokens;")
    assert long["id"].iloc[0] in found
    assert problems(preflight_table(tokenizer, prompts, None, formats, 25, {"ablation": 8}, ""), "m1", "age", 20) == []


def test_too_few_usable_pairs_names_counts_reasons_and_fixes(tokenizer) -> None:
    pairs = load_pairs("symptoms", PROMPTS).frame
    table = preflight_table(
        tokenizer, pd.DataFrame(columns=["id", "text"]), pairs, {"patching": PromptFormat()}, None, {}, "first_token"
    )
    usable = int((table["status"] == USABLE).sum())
    assert problems(table, "demo", "symptoms", min_pairs=usable) == []
    (found,) = problems(table, "demo", "symptoms", min_pairs=usable + 1)
    assert f"only {usable} of {len(pairs)} patching pairs are usable" in found
    assert f"patching.min_pairs is {usable + 1}" in found and "prompts/pairs/symptoms.csv" in found


def _job(tmp_path: Path, model_dir: Path, data: str, min_pairs: int = 20) -> SimpleNamespace:
    """The rule's job for one file: the prompt set (read by activations and ablation here) or the pairs."""
    spec = ModelSpec(name="demo", kind="demo", source=str(model_dir), dtype="float32")
    pairs = data == "pairs"
    return SimpleNamespace(
        input=SimpleNamespace(),
        output=SimpleNamespace(table=str(tmp_path / "out" / f"disease.{data}.csv")),
        log=[str(tmp_path / f"{data}.log")],
        params=SimpleNamespace(
            model=asdict(spec),
            prompts_dir=str(PROMPTS),
            formats={"patching": {"mode": "raw"}}
            if pairs
            else {"activations": {"mode": "raw"}, "ablation": {"mode": "auto"}},
            new_tokens={} if pairs else {"ablation": 16},
            multi_token_answers="first_token" if pairs else "",
        ),
        config={"patching": {"min_pairs": min_pairs}},
        wildcards=SimpleNamespace(model="demo", domain="disease", data=data),
        threads=1,
        resources=SimpleNamespace(),
    )


def test_entry_script_writes_the_table_or_fails_before_writing(demo_dir: Path, tmp_path: Path) -> None:
    context = json.loads((demo_dir / "model" / "config.json").read_text())["max_position_embeddings"]
    prompts = _job(tmp_path, demo_dir / "model", "prompts")
    run_entry("preflight.py", prompts)
    table = pd.read_csv(prompts.output.table)
    n_prompts = len(load_prompt_set("disease", PROMPTS).frame)
    assert (table["model"] == "demo").all() and set(table["kind"]) == {"prompt"} and len(table) == 2 * n_prompts
    # One row per prompt and method, each against its own limit: ablation leaves room for its 16 new tokens.
    limits = table.groupby("method")["limit"].unique().map(list).to_dict()
    assert limits == {"activations": [context], "ablation": [context - 16]} and (table["status"] == "fits").all()
    assert set(table["format"]) == {"raw"}  # auto on a tokenizer without a chat template
    record = read_provenance(prompts.output.table)
    assert record["context_length"] == context and record["code_version"]
    assert record["prompt_format"] == {"activations": "raw", "ablation": "raw"}

    patching = _job(tmp_path, demo_dir / "model", "pairs")
    run_entry("preflight.py", patching)
    table = pd.read_csv(patching.output.table)
    assert set(table["kind"]) == {"pair"} and len(table) == len(load_pairs("disease", PROMPTS).frame)
    assert read_provenance(patching.output.table)["preflight"][f"pair/patching/{USABLE}"] == int(
        (table["status"] == USABLE).sum()
    )

    failing = _job(tmp_path / "fail", demo_dir / "model", "pairs", min_pairs=10_000)
    with pytest.raises(PreflightError, match=r"demo/disease: only \d+ of \d+ patching pairs are usable"):
        run_entry("preflight.py", failing)
    assert not Path(failing.output.table).exists()
