"""The demo model: tokenizer, corpus, training, and the planted signals its activations must carry."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from kmap.activations.cache import ActivationSettings
from kmap.activations.extract import extract
from kmap.core.models import LoadedModel, load_model
from kmap.core.spec import DEMO_ARCHITECTURES, ModelSpec
from kmap.data.knowledge import load_knowledge, vocabulary
from kmap.data.prompts import load_prompt_set
from kmap.offline.demo_corpus import DEMO_WORDS, diagnosis_eval_cases, diagnosis_eval_set, generate_corpus
from kmap.offline.demo_tokenizer import SPECIALS, build_tokenizer
from kmap.offline.demo_train import (
    DemoParams,
    demo_tokenizer,
    diagnosis_accuracy,
    encode_corpus,
    last_positions,
    make_model,
    pack_batch,
    train_demo_model,
)

# One xdist worker runs this module: its module-scoped fixtures are built once.
pytestmark = pytest.mark.xdist_group("demo")

REPO = Path(__file__).resolve().parents[1]
KB = load_knowledge(REPO / "prompts" / "knowledge.yaml")
VIGNETTE = re.compile(
    r"An? (\d+)-year-old (male|female) patient presents to the clinic with (.+) and (.+)\. "
    r"The most likely diagnosis is (.+)\."
)
# Small enough to train in well under a minute on 2 cores, big enough to learn diagnosis.
SMALL = DemoParams(
    n_sentences=20_000,
    n_layers=2,
    hidden_size=64,
    n_heads=4,
    intermediate_size=192,
    batch_size=96,
    steps=400,
    lr=6e-3,
    warmup=40,
    eval_every=100,
    n_eval=200,
    torch_threads=1,
)


@pytest.fixture(scope="module")
def tokenizer():
    return demo_tokenizer(KB)


# --- tokenizer ---


def test_every_age_is_one_token(tokenizer) -> None:
    for age in range(101):
        ids = tokenizer(f" {age}", add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and ids != [tokenizer.unk_token_id]
    # Hyphens are tokens of their own: "a 45-year-old" is a, 45, -, year, -, old.
    assert len(tokenizer("A 45-year-old", add_special_tokens=False)["input_ids"]) == 6


def test_tokenizer_round_trip_bos_and_unknown(tokenizer) -> None:
    ids = tokenizer("A 45-year-old male, presents with Parkinson's disease.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    decoded = tokenizer.decode(ids, skip_special_tokens=True)
    assert decoded == "a 45 - year - old male , presents with parkinson ' s disease ."
    assert tokenizer("zyxxy", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]
    assert tokenizer("angina zyxxy .", add_special_tokens=False)["input_ids"][1] == tokenizer.unk_token_id


def test_tokenizer_vocabulary_is_specials_then_knowledge_words(tokenizer) -> None:
    words = sorted(set(vocabulary(KB)) | set(DEMO_WORDS))
    assert tokenizer.convert_ids_to_tokens(list(range(len(tokenizer)))) == list(SPECIALS) + words
    assert tokenizer.pad_token_id == 0
    # Ids depend on the word set only, not on its order.
    assert build_tokenizer(words[::-1]).get_vocab() == tokenizer.get_vocab()


# --- corpus ---


def test_corpus_is_deterministic_and_seeded() -> None:
    first = generate_corpus(KB, 500, seed=3)
    assert first == generate_corpus(KB, 500, seed=3)
    assert first != generate_corpus(KB, 500, seed=4)


def test_corpus_has_no_unknown_words(tokenizer) -> None:
    ids = tokenizer(generate_corpus(KB, 5000, seed=0), add_special_tokens=False)["input_ids"]
    assert not any(tokenizer.unk_token_id in row for row in ids)


def test_corpus_states_every_kind_of_fact() -> None:
    text = "\n".join(generate_corpus(KB, 5000, seed=0))
    for pattern in (
        r"presents to the clinic with .+ The most likely diagnosis is",  # age + sex + symptoms -> diagnosis
        r"is a symptom of the \w+ system",  # symptom -> organ system
        r"is a disease of the \w+ system",  # disease -> category
        r"should be referred to \w+",  # disease -> specialty
        r"is treated with \w+",  # disease -> drug
        r"is used to treat",  # drug -> disease
        r"The usual dose of \w+ is [\d.]+ m?c?g ",  # drug -> dose
        r"What is the usual dose of \w+\? The dose is",  # question form
        r"comes after GOLD \d",  # stage order
        r"\d+ is (older|younger) than \d+",  # number line
        r"An? 1[0-2]-year-old is a child",  # age group
    ):
        assert re.search(pattern, text), pattern


def test_vignette_diagnoses_fit_age_and_sex() -> None:
    """Age and sex matter: every vignette's diagnosis is typical for its patient's age and sex."""
    by_name = {d.name: d for d in KB.diseases}
    matches = [VIGNETTE.fullmatch(s) for s in generate_corpus(KB, 5000, seed=0)]
    vignettes = [m.groups() for m in matches if m]
    assert len(vignettes) > 1000
    for age, sex, first, second, name in vignettes:
        disease = by_name[name]
        assert disease.age_range[0] <= int(age) <= disease.age_range[1]
        assert disease.sex in ("any", sex) and {first, second} <= set(disease.symptoms)
    ages = {name: [int(a) for a, *_, n in vignettes if n == name] for name in ("bronchiolitis", "Alzheimer's disease")}
    assert max(ages["bronchiolitis"]) <= 2 < 65 <= min(ages["Alzheimer's disease"])
    assert {sex for _, sex, *_, name in vignettes if name == "gout"} == {"male"}


# Any sentence stating an age with a symptom pair: full vignettes and "A 23-year-old patient with x and y".
AGE_AND_PAIR = re.compile(
    r"An? (\d+)-year-old (?:\w+ patient presents to the clinic|patient) with (.+?) and (.+?)(?:\.| most)"
)


def _leaks(corpus: list[str], cases: list) -> int:
    held = {(str(c.age), frozenset((c.first, c.second))) for c in cases}
    matches = (AGE_AND_PAIR.match(sentence) for sentence in corpus)
    return sum((m[1], frozenset((m[2], m[3]))) in held for m in matches if m)


def test_eval_cases_never_occur_in_training() -> None:
    cases = diagnosis_eval_cases(KB, 200, seed=0)
    assert len({case.key for case in cases}) == 200
    assert _leaks(generate_corpus(KB, 30_000, seed=0, held_out=cases), cases) == 0
    # Without holding them out some would occur: the guard is doing real work.
    assert _leaks(generate_corpus(KB, 30_000, seed=0), cases) > 0


def test_eval_answers_identify_one_disease_and_are_single_tokens(tokenizer) -> None:
    items = diagnosis_eval_set(KB, 100, seed=0)
    assert items == diagnosis_eval_set(KB, 100, seed=0) != diagnosis_eval_set(KB, 100, seed=1)
    assert all(prompt.endswith("The most likely diagnosis is") for prompt, _ in items)
    answers = tokenizer.convert_tokens_to_ids([answer for _, answer in items])
    assert tokenizer.unk_token_id not in answers
    assert len(set(answers)) > 20  # many diseases, not one easy answer


def test_eval_set_larger_than_the_knowledge_allows_is_an_error() -> None:
    with pytest.raises(ValueError, match="at most \\d+ evaluation vignettes"):
        diagnosis_eval_cases(KB, 10**6, seed=0)


# --- training ---


def test_demo_parameters_are_validated() -> None:
    with pytest.raises(ValueError, match="architecture 'gpt_oss'"):
        DemoParams(architecture="gpt_oss")
    with pytest.raises(ValueError, match="unknown parameter"):
        DemoParams.from_dict({"layers": 3})
    with pytest.raises(ValueError, match="pack_width"):
        DemoParams.from_dict({"pack_width": 20, "max_len": 40})
    with pytest.raises(ValueError, match="multiple of n_heads"):
        DemoParams(hidden_size=100, n_heads=8)
    assert DemoParams.from_dict({"steps": 5}).steps == 5


@pytest.mark.parametrize("architecture", DEMO_ARCHITECTURES)
def test_packed_rows_give_the_padded_batch_loss(tokenizer, architecture: str) -> None:
    """Packing sentences into shared rows changes speed, never what the model computes, in every demo family
    (Gemma-3's sliding-window layers included)."""
    ids, lengths = encode_corpus(tokenizer, generate_corpus(KB, 50, seed=0), max_len=40)
    rows = torch.arange(50)
    packed = pack_batch(ids, lengths, rows, width=80)
    assert packed.input_ids.shape[0] < 25  # ~15 tokens a sentence, 5 sentences a row
    assert (packed.labels != -100).sum() == (lengths - 1).sum()
    width = int(lengths.max())
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    shape = DemoParams(n_layers=2, hidden_size=32, intermediate_size=64, architecture=architecture)
    model = make_model(shape, len(tokenizer), tokenizer)
    assert model.config.model_type == {"llama": "llama", "qwen3": "qwen3", "gemma3": "gemma3_text"}[architecture]
    with torch.no_grad():
        padded = model(ids[:, :width], attention_mask=mask, labels=ids[:, :width].masked_fill(mask == 0, -100))
        torch.testing.assert_close(model(**packed._asdict(), use_cache=False).loss, padded.loss)
        # Shuffled rows pack differently and still agree: no attention leaks between packed sentences.
        shuffled = pack_batch(ids, lengths, rows.flip(0), width=60)
        torch.testing.assert_close(model(**shuffled._asdict(), use_cache=False).loss, padded.loss)


def test_last_positions_handle_either_padding_side() -> None:
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_positions(right).tolist() == [2, 3, 0]
    assert last_positions(right.flip(1)).tolist() == [3, 3, 3]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("small_demo")
    return root, train_demo_model(REPO / "prompts" / "knowledge.yaml", SMALL, root / "model", root / "results")


def test_small_training_learns_diagnosis(small_run: tuple[Path, dict]) -> None:
    root, metrics = small_run
    curve = pd.read_csv(root / "results" / "training_curve.csv")
    assert list(curve.columns[:4]) == ["step", "train_loss", "eval_loss", "diagnosis_accuracy"]
    assert curve["step"].tolist() == [100, 200, 300, 400]
    # From ln(vocab) ~ 6.4 at initialisation; the first row already averages 100 steps of learning.
    assert curve["train_loss"].iloc[-1] < 0.6 * curve["train_loss"].iloc[0]
    assert curve["eval_loss"].iloc[-1] < 0.5 * curve["eval_loss"].iloc[0]
    # Chance is 1/45 (diseases); this small model reaches 0.95-0.98 over seeds 0-2.
    assert metrics["diagnosis_accuracy"] > 0.6
    saved = json.loads((root / "results" / "metrics.json").read_text())
    assert saved["diagnosis_accuracy"] == metrics["diagnosis_accuracy"] == curve["diagnosis_accuracy"].iloc[-1]
    assert (saved["steps"], saved["n_layers"], saved["seed"]) == (400, 2, 0)
    assert saved["vocab_size"] == len(vocabulary(KB)) + len(SPECIALS)
    for name in ("training_curve.png", "training_curve.pdf"):
        assert (root / "results" / name).stat().st_size > 1000


def test_small_model_saved_in_hf_format_and_reloads(small_run: tuple[Path, dict]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, metrics = small_run
    model_dir = root / "model"
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "float32"
    assert (model_dir / "model.safetensors").exists() and not list(model_dir.glob("*.bin"))
    assert not [p for p in root.rglob("*") if ".partial" in p.name]  # atomic writes left nothing behind
    model = AutoModelForCausalLM.from_pretrained(model_dir, use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    items = diagnosis_eval_set(KB, SMALL.n_eval, SMALL.seed)
    # The reloaded model is the trained one: it scores exactly what training measured.
    assert diagnosis_accuracy(model, tokenizer, items)[0] == metrics["diagnosis_accuracy"]
    loaded = load_model(ModelSpec(name="demo", kind="demo", source=str(model_dir), dtype="float32"))
    batch = tokenizer(["A 67-year-old male patient presents to the clinic with"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, loaded.model(**batch).logits, rtol=0, atol=0)


# --- the default demo model (conftest trains it once per session, about 3 minutes on 2 cores) ---


@pytest.mark.slow
def test_demo_training_reaches_target(demo_dir: Path) -> None:
    metrics = json.loads((demo_dir / "results" / "metrics.json").read_text())
    assert metrics["diagnosis_accuracy"] > 0.95
    curve = pd.read_csv(demo_dir / "results" / "training_curve.csv")
    assert curve["train_loss"].iloc[-1] < 0.5 * curve["train_loss"].iloc[0]
    assert (demo_dir / "model" / "model.safetensors").exists()


def age_r2_per_layer(loaded: LoadedModel) -> np.ndarray:
    """Grouped-by-age CV R² of a ridge probe per layer (embedding first), ages 0-100 x 2 sexes."""
    frame = load_prompt_set("age", REPO / "prompts").frame
    frame = frame[frame["template"] == 0]
    acts, _ = extract(loaded, frame["text"].tolist(), ActivationSettings(batch_size=64))
    ages = frame["age"].to_numpy(dtype=float)
    scores = []
    for layer in acts.numpy():
        probe = RidgeCV(alphas=np.logspace(-3, 3, 13))
        predicted = cross_val_predict(probe, layer, ages, groups=ages, cv=GroupKFold(5))
        scores.append(r2_score(ages, predicted))
    return np.array(scores)


@pytest.mark.slow
def test_age_is_linearly_decodable_in_trained_not_random_twin(demo: LoadedModel, twin: LoadedModel) -> None:
    assert age_r2_per_layer(demo).max() > 0.8
    assert age_r2_per_layer(twin).max() < 0.2


def _geometry(loaded: LoadedModel, domain: str):
    from kmap.activations.cache import ActivationCache
    from kmap.methods.umap.embedding import UmapParams
    from kmap.methods.umap.measure import run_geometry

    prompts = load_prompt_set(domain, REPO / "prompts")
    frame = prompts.frame if domain != "age" else prompts.frame[prompts.frame["template"] == 0]
    frame = frame.reset_index(drop=True)
    acts, _ = extract(loaded, frame["text"].tolist(), ActivationSettings(batch_size=64))
    cache = ActivationCache(acts.numpy(), np.arange(-1, acts.shape[0] - 1), frame, {})
    metrics = run_geometry(cache, "m", domain, prompts.group_labels, UmapParams(n_epochs=100), n_boot=20).metrics
    return metrics.pivot_table(index="layer", columns="metric", values="value")


@pytest.mark.slow
def test_demo_geometry_has_knowledge_random_twin_does_not(demo: LoadedModel, twin: LoadedModel) -> None:
    age, symptoms = _geometry(demo, "age"), _geometry(demo, "symptoms")
    assert age["r2"].max() > 0.8
    curve = symptoms["silhouette:system"].to_numpy()
    assert curve.max() > 0 and curve[len(curve) // 2 :].mean() > curve[: len(curve) // 2].mean()
    disease = _geometry(demo, "disease")["silhouette:category"].to_numpy()
    assert disease.max() > 0 and disease[len(disease) // 2 :].mean() > disease[: len(disease) // 2].mean()
    random_age, random_symptoms = _geometry(twin, "age"), _geometry(twin, "symptoms")
    assert random_age["r2"].max() < 0.2
    # Layer -1 (the embedding of the template's last word) holds no symptom at all; judge the decoder layers.
    # Within a template each system has a few prompts, and for structureless points the silhouette's b(i) (a
    # minimum over many small labels) sits below a(i): chance level is negative (about -0.18 on the twin).
    assert random_symptoms["silhouette:system"].loc[0:].max() < 0.05
    assert symptoms["silhouette:system"].loc[0:].max() > 0.5
