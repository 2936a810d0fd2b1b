"""The demo model: tokenizer, corpus, training, and the planted signals its activations must carry."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.model_selection import GroupKFold, cross_val_predict

from kmap.activations import ActivationSettings, extract
from kmap.demo_corpus import diagnosis_eval_set, generate_corpus
from kmap.demo_tokenizer import build_tokenizer
from kmap.demo_train import DemoParams, make_model, train_demo_model
from kmap.knowledge import load_knowledge, vocabulary
from kmap.models import LoadedModel, ModelSpec, load_model
from kmap.prompts import load_prompt_set

REPO = Path(__file__).resolve().parents[1]
KB = load_knowledge(REPO / "prompts" / "knowledge.yaml")


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(vocabulary(KB))


def test_every_age_is_one_token(tokenizer) -> None:
    for age in range(101):
        assert tokenizer(str(age), add_special_tokens=False)["input_ids"] != [tokenizer.unk_token_id]
        assert len(tokenizer(f" {age}", add_special_tokens=False)["input_ids"]) == 1


def test_tokenizer_round_trip_bos_and_unknown(tokenizer) -> None:
    ids = tokenizer("A 45 year old male, presents with chest pain.")["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a 45 year old male , presents with chest pain ."
    assert tokenizer("zyxxy", add_special_tokens=False)["input_ids"] == [tokenizer.unk_token_id]


def test_corpus_is_deterministic_and_seeded() -> None:
    first = generate_corpus(KB, 500, seed=3)
    assert first == generate_corpus(KB, 500, seed=3)
    assert first != generate_corpus(KB, 500, seed=4)


def test_eval_vignettes_never_in_training() -> None:
    items = diagnosis_eval_set(KB, 100, seed=0)
    prompts = {prompt for prompt, _ in items}
    corpus = generate_corpus(KB, 20_000, seed=0, exclude=prompts)
    assert not any(sentence.rsplit(" is ", 1)[0] + " is" in prompts for sentence in corpus)
    # Without exclusion some would occur: the guard is doing real work.
    unguarded = generate_corpus(KB, 20_000, seed=0)
    assert any(sentence.rsplit(" is ", 1)[0] + " is" in prompts for sentence in unguarded)


def test_unknown_demo_parameter_rejected() -> None:
    with pytest.raises(ValueError, match="unknown parameter"):
        DemoParams.from_dict({"layers": 3})


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default demo model, trained once per test session (about 4 minutes on 2 cores)."""
    root = tmp_path_factory.mktemp("demo")
    train_demo_model(KB, DemoParams(), root / "model", root / "results")
    return root


@pytest.fixture(scope="session")
def demo(demo_dir: Path) -> LoadedModel:
    return load_model(ModelSpec(name="demo", kind="demo", source=str(demo_dir / "model"), dtype="float32"))


def test_demo_training_reaches_target(demo_dir: Path) -> None:
    metrics = json.loads((demo_dir / "results" / "metrics.json").read_text())
    assert metrics["diagnosis_accuracy"] > 0.95
    curve = (demo_dir / "results" / "training_curve.csv").read_text().splitlines()
    first, last = (float(line.split(",")[1]) for line in (curve[1], curve[-1]))
    assert last < 0.5 * first
    assert (demo_dir / "results" / "training_curve.png").exists()
    assert (demo_dir / "model" / "model.safetensors").exists()
    assert not list((demo_dir / "model").glob("*.bin"))


def test_demo_reload_gives_identical_logits(demo: LoadedModel, demo_dir: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(demo_dir / "model", use_safetensors=True).eval()
    tokenizer = AutoTokenizer.from_pretrained(demo_dir / "model")
    batch = tokenizer(["a 67 year old male patient presents to the clinic with"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, demo.model(**batch).logits, rtol=0, atol=0)


def _age_r2(loaded: LoadedModel) -> np.ndarray:
    """Grouped-by-age CV R² of a ridge probe per layer, on the first age template (202 prompts)."""
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


def test_age_is_linearly_decodable_in_trained_not_random_twin(demo: LoadedModel, twin: LoadedModel) -> None:
    assert _age_r2(demo).max() > 0.8
    assert _age_r2(twin).max() < 0.2


def _geometry(loaded: LoadedModel, domain: str):
    from kmap.activations import ActivationCache
    from kmap.embedding import UmapParams
    from kmap.umap_metrics import run_geometry

    prompts = load_prompt_set(domain, REPO / "prompts")
    frame = prompts.frame if domain != "age" else prompts.frame[prompts.frame["template"] == 0]
    frame = frame.reset_index(drop=True)
    acts, _ = extract(loaded, frame["text"].tolist(), ActivationSettings(batch_size=64))
    cache = ActivationCache(acts.numpy(), np.arange(-1, acts.shape[0] - 1), frame, {})
    metrics = run_geometry(cache, "m", domain, prompts.group_labels, UmapParams(n_epochs=100), n_boot=20).metrics
    return metrics.pivot_table(index="layer", columns="metric", values="value")


@pytest.fixture(scope="session")
def twin(demo: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The demo architecture and tokenizer with random weights."""
    root = tmp_path_factory.mktemp("twin")
    make_model(DemoParams(seed=1), len(demo.tokenizer), demo.tokenizer).save_pretrained(root, safe_serialization=True)
    demo.tokenizer.save_pretrained(root)
    return load_model(ModelSpec(name="twin", kind="demo", source=str(root), dtype="float32"))


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
    assert abs(random_symptoms["silhouette:system"].loc[0:]).max() < 0.15
    assert symptoms["silhouette:system"].loc[0:].max() > 0.5
