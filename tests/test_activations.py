"""The activation cache: values, positions, batching, round trip, atomicity, non-finite guard."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kmap.activations.cache import ActivationSettings, NonFiniteActivations, read_cache, write_cache
from kmap.activations.extract import concept_mask, extract
from kmap.core.models import LoadedModel, encode

TEXTS = [
    "a 45 year old male patient presents with chest pain",
    "fever and cough",
    "the dose of metformin is 500 mg twice daily",
]
CONCEPTS = ["45", "cough", "metformin"]


def _reference(tiny: LoadedModel, text: str) -> list[torch.Tensor]:
    batch = tiny.tokenizer([text], return_tensors="pt")
    with torch.no_grad():
        out = tiny.model(**batch, output_hidden_states=True, use_cache=False)
    return [h[0] for h in out.hidden_states]


def test_last_position_equals_hidden_states(tiny: LoadedModel) -> None:
    acts, n_tokens = extract(tiny, TEXTS, ActivationSettings(batch_size=2))
    assert acts.shape == (tiny.n_layers + 1, len(TEXTS), tiny.hidden_size)
    for row, text in enumerate(TEXTS):
        hidden = _reference(tiny, text)
        assert n_tokens[row] == hidden[0].shape[0]
        for layer in range(tiny.n_layers):  # hidden[L] is post final norm
            torch.testing.assert_close(acts[layer, row], hidden[layer][-1], rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_values(tiny: LoadedModel) -> None:
    one, _ = extract(tiny, TEXTS, ActivationSettings(batch_size=1))
    three, _ = extract(tiny, TEXTS, ActivationSettings(batch_size=3))
    torch.testing.assert_close(one, three, rtol=1e-5, atol=1e-5)


def test_concept_mean_averages_concept_tokens(tiny: LoadedModel) -> None:
    acts, _ = extract(tiny, TEXTS, ActivationSettings(position="concept_mean"), concepts=CONCEPTS)
    batch = encode(tiny.tokenizer, TEXTS)
    mask = concept_mask(batch["offset_mapping"], batch["attention_mask"], TEXTS, CONCEPTS)
    for row, text in enumerate(TEXTS):
        tokens = torch.nonzero(mask[row]).flatten()
        pieces = tiny.tokenizer.decode(batch["input_ids"][row, tokens]).strip()
        assert pieces == CONCEPTS[row]
        hidden = _reference(tiny, text)
        torch.testing.assert_close(acts[1, row], hidden[1][tokens].mean(0), rtol=1e-5, atol=1e-5)


def test_concept_mask_falls_back_to_last_token() -> None:
    offsets = torch.tensor([[[0, 0], [0, 3], [4, 7], [0, 0]]])
    attention = torch.tensor([[1, 1, 1, 0]])
    mask = concept_mask(offsets, attention, ["abc def"], ["zzz"])
    assert mask.tolist() == [[False, False, True, False]]


def _table(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": [f"p{i}" for i in range(n)], "label": ["x"] * n})


def test_cache_round_trip(tmp_path: Path) -> None:
    acts = torch.randn(4, 5, 8)
    paths = [tmp_path / "a.safetensors", tmp_path / "a.parquet", tmp_path / "a.json"]
    write_cache(acts, _table(5), {"model": "m", "prompt_sha256": "abc"}, *paths)
    cache = read_cache(paths[0], paths[1])
    np.testing.assert_array_equal(cache.acts, acts.numpy())
    assert cache.layers.tolist() == [-1, 0, 1, 2]
    np.testing.assert_array_equal(cache.layer(-1), acts[0].numpy())
    assert cache.provenance["prompt_sha256"] == "abc"
    assert json.loads(paths[2].read_text())["model"] == "m"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "a.parquet", "a.safetensors"]


def test_stale_cache_is_refused_by_its_reader(tmp_path: Path) -> None:
    from kmap.activations.cache import StaleCacheError, check_cache
    from kmap.core.io import file_sha256

    prompts = tmp_path / "disease.csv"
    prompts.write_text("id,text\np0,a\n")
    paths = [tmp_path / "a.safetensors", tmp_path / "a.parquet", tmp_path / "a.json"]
    write_cache(torch.randn(2, 5, 4), _table(5), {"prompt_sha256": file_sha256(prompts)}, *paths)
    cache = read_cache(paths[0], paths[1])
    check_cache(cache, paths[0], prompts)  # built from this file: accepted
    prompts.write_text("id,text\np0,b\n")
    with pytest.raises(StaleCacheError, match=r"a\.safetensors: built from a prompt file .*disease\.csv now has"):
        check_cache(cache, paths[0], prompts)
    write_cache(torch.randn(2, 5, 4), _table(5), {}, *paths)
    with pytest.raises(StaleCacheError, match="no provenance.*snakemake --forcerun activations"):
        check_cache(read_cache(paths[0], paths[1]), paths[0], prompts)


def test_bfloat16_storage_halves_size(tmp_path: Path) -> None:
    acts = torch.randn(3, 64, 32)
    write_cache(acts, _table(64), {}, tmp_path / "f.st", tmp_path / "f.pq", tmp_path / "f.json", "float32")
    write_cache(acts, _table(64), {}, tmp_path / "b.st", tmp_path / "b.pq", tmp_path / "b.json", "bfloat16")
    assert (tmp_path / "b.st").stat().st_size < 0.6 * (tmp_path / "f.st").stat().st_size
    cache = read_cache(tmp_path / "b.st", tmp_path / "b.pq")
    np.testing.assert_allclose(cache.acts, acts.numpy(), rtol=1e-2, atol=1e-2)


def test_non_finite_activations_named_and_not_written(tmp_path: Path) -> None:
    acts = torch.randn(4, 6, 8)
    acts[2, 3, 0] = float("inf")
    acts[3, 1, 5] = float("nan")
    paths = [tmp_path / "a.safetensors", tmp_path / "a.parquet", tmp_path / "a.json"]
    with pytest.raises(NonFiniteActivations) as caught:
        write_cache(acts, _table(6), {}, *paths)
    assert "layer 1: 1 prompts (p3)" in str(caught.value)
    assert "layer 2: 1 prompts (p1)" in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_table_rows_must_match(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3 table rows for 5 activation rows"):
        write_cache(torch.zeros(2, 5, 4), _table(3), {}, tmp_path / "a", tmp_path / "b", tmp_path / "c")


def test_bad_settings_rejected() -> None:
    with pytest.raises(ValueError, match="position"):
        ActivationSettings(position="first")
    with pytest.raises(ValueError, match="dtype"):
        ActivationSettings(dtype="int8")


def test_job_fails_fast_without_planned_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    from kmap.core.models import ModelLoadError, require_devices

    monkeypatch.delenv("KMAP_ALLOW_CPU", raising=False)
    require_devices(0)
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="planned for 2 GPU"):
            require_devices(2)
        monkeypatch.setenv("KMAP_ALLOW_CPU", "1")
        require_devices(2)


def test_job_fails_fast_on_gpus_smaller_than_planned(monkeypatch: pytest.MonkeyPatch) -> None:
    from kmap.core.models import ModelLoadError, require_devices

    monkeypatch.delenv("KMAP_ALLOW_CPU", raising=False)
    h100 = 79.19 * 1024  # what an 80 GB H100 reports
    # Planned for 80 GiB GPUs: two H100s pass (within the 3 % label tolerance); an A100 40GB does not.
    require_devices(2, 80 * 1024, [h100, h100])
    with pytest.raises(ModelLoadError, match=r"GPUs of 80 GiB.*cuda:1 39\.4 GiB.*cluster\.gpu_constraint"):
        require_devices(2, 80 * 1024, [h100, 39.39 * 1024])
    # Only the planned GPUs count (a third, smaller visible GPU is not used); no memory in the plan, no check.
    require_devices(2, 80 * 1024, [h100, h100, 10.0 * 1024])
    require_devices(1, 0, [10.0 * 1024])
    with pytest.raises(ModelLoadError, match="planned for 2 GPU"):
        require_devices(2, 80 * 1024, [h100])
