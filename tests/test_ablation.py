"""Layer ablation: identities (no ablation = no change), KV cache = recomputation, batched = unbatched, every
ablated-layer variant decoded in one batch = one generation per layer (tokens and scores), the judge-free metrics
against independent computations, and the demo model's early-layer sensitivity."""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kmap.core.hooks import RowLayers, identity, identity_rows
from kmap.core.models import LoadedModel, full_kv_cache, load_model
from kmap.core.provenance import read_provenance
from kmap.core.spec import ModelSpec
from kmap.core.stats import bootstrap_indices
from kmap.core.tables import read_table
from kmap.methods.ablation.generate import (
    Clock,
    continue_decoding,
    decode_rows,
    divergence,
    greedy_decode,
    groups,
    left_aligned,
    run_ablation,
    stop_ids,
    teacher_forced,
    token_overlap,
    tokenize_prompts,
    trim_at_stop,
)
from kmap.methods.ablation.reference import ablate, generate, intact_batch, left_padding, run_ablation_per_layer
from kmap.methods.ablation.settings import INTACT, PAIR_METRICS, AblationSettings
from kmap.methods.ablation.sharing import intact_rows_once
from kmap.methods.ablation.summary import summarise
from tests.workflow import ablation_summary_job, run_entry

REPO = Path(__file__).resolve().parents[1]
TEXTS = [
    "a 45 year old male patient presents with chest pain",
    "fever and cough",
    "the dose of metformin is",
]
MAX_NEW = 6


def _greedy_without_cache(loaded: LoadedModel, prompt: list[int], max_new: int, stop: frozenset[int]) -> list[int]:
    """Reference greedy decoding: the whole sequence recomputed at every step, no KV cache, no padding."""
    seq = list(prompt)
    out: list[int] = []
    with torch.inference_mode():
        for _ in range(max_new):
            logits = loaded.model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
            token = int(logits.argmax())
            out.append(token)
            seq.append(token)
            if token in stop:
                break
    return out


@pytest.mark.parametrize("which", [[], [0], [1], [2]])
def test_cached_generation_equals_recomputation(tiny: LoadedModel, which: list[int]) -> None:
    stop = stop_ids(tiny)
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    with identity(tiny.parts.layers, which):
        for prompt in prompts:
            assert generate(tiny, [prompt], MAX_NEW, stop)[0] == _greedy_without_cache(tiny, prompt, MAX_NEW, stop)


@pytest.mark.parametrize("which", [[], [1]])
def test_batched_left_padded_generation_equals_unbatched(tiny: LoadedModel, which: list[int]) -> None:
    stop = stop_ids(tiny)
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    assert len({len(p) for p in prompts}) > 1  # the batch really is padded
    with identity(tiny.parts.layers, which):
        batched = generate(tiny, prompts, MAX_NEW, stop)
        single = [generate(tiny, [p], MAX_NEW, stop)[0] for p in prompts]
    assert batched == single
    assert tiny.tokenizer.padding_side == "right"  # restored after generation


@pytest.mark.parametrize("which", [[], [0], [2]])
def test_own_decoder_equals_hf_generate_and_recomputation(tiny: LoadedModel, which: list[int]) -> None:
    stop = stop_ids(tiny)
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    with identity(tiny.parts.layers, which):
        ours = greedy_decode(tiny, prompts, MAX_NEW, stop)
        assert ours == generate(tiny, prompts, MAX_NEW, stop)
        assert ours == [_greedy_without_cache(tiny, p, MAX_NEW, stop) for p in prompts]


def test_identity_rows_equals_identity_per_row(tiny: LoadedModel) -> None:
    """A batch whose rows ablate different layers gives each row exactly what its own ablation gives."""
    prompt = tokenize_prompts(tiny.tokenizer, TEXTS[:1])[0]
    ids = torch.tensor([prompt] * (tiny.n_layers + 1))
    layers = [-1, *range(tiny.n_layers)]
    with torch.inference_mode(), identity_rows(tiny.parts.layers, RowLayers(torch.tensor(layers))):
        mixed = tiny.model(input_ids=ids, use_cache=False).logits
    for row, layer in enumerate(layers):
        with torch.inference_mode(), identity(tiny.parts.layers, [layer] if layer >= 0 else []):
            alone = tiny.model(input_ids=ids[:1], use_cache=False).logits[0]
        torch.testing.assert_close(mixed[row], alone, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[1], mixed[0])  # the rows really differ


def test_intact_rows_computed_once_per_prompt_equal_every_row_computed(tiny: LoadedModel) -> None:
    """Teacher-forced pass over every ablated-layer variant of three prompts (variants interleaved): with
    ``intact_rows_once`` each layer computes one row per prompt for the variants still intact there plus the
    variants ablated below it, and the log-probabilities and every layer's cached keys and values equal those of
    computing every row."""
    tokenized = tokenize_prompts(tiny.tokenizer, TEXTS)
    stop = stop_ids(tiny)
    intact = greedy_decode(tiny, tokenized, MAX_NEW, stop)
    variants = [INTACT, *range(tiny.n_layers)]
    order = [(p, layer) for layer in variants for p in range(len(TEXTS))]  # rows of a prompt far apart
    prompts = [tokenized[p] for p, _ in order]
    responses = [intact[p] for p, _ in order]
    layers = torch.tensor([layer for _, layer in order])
    seen: dict[int, list[int]] = {}

    def count(index: int):
        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(index, []).append(len(kwargs.get("hidden_states", args[0] if args else None)))

        return hook

    results = {}
    for shared in (False, True):
        seen.clear()
        handles = [
            tiny.parts.attention(i).register_forward_pre_hook(count(i), with_kwargs=True) for i in range(tiny.n_layers)
        ]
        rows, cache = RowLayers(layers), full_kv_cache()
        try:
            with identity_rows(tiny.parts.layers, rows), contextlib.ExitStack() as stack:
                if shared:
                    stack.enter_context(intact_rows_once(tiny.parts.layers, rows, groups(prompts, responses)))
                logprobs = teacher_forced(tiny, prompts, responses, cache)[0]
        finally:
            for handle in handles:
                handle.remove()
        results[shared] = (logprobs, cache, dict(seen))
    (full, full_cache, full_rows), (once, once_cache, once_rows) = results[False], results[True]
    assert full_rows == {i: [len(order)] for i in range(tiny.n_layers)}
    # Layer i: one row per prompt still intact there, plus every row ablating a layer below i.
    assert once_rows == {i: [len(TEXTS) * (1 + i)] for i in range(tiny.n_layers)}
    torch.testing.assert_close(once, full, rtol=1e-5, atol=1e-5)
    for a, b in zip(once_cache.layers, full_cache.layers, strict=True):
        torch.testing.assert_close(a.keys, b.keys, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.values, b.values, rtol=1e-5, atol=1e-5)
    assert not any("forward" in layer.__dict__ for layer in tiny.parts.layers)  # the wrappers are gone


def test_decode_rows_each_row_its_own_layer(tiny: LoadedModel) -> None:
    stop = stop_ids(tiny)
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    rows = [(p, layer) for p in range(len(prompts)) for layer in (-1, *range(tiny.n_layers))]
    out = decode_rows(tiny, [prompts[p] for p, _ in rows], [layer for _, layer in rows], MAX_NEW, stop)
    for (p, layer), tokens in zip(rows, out, strict=True):
        with identity(tiny.parts.layers, [layer] if layer >= 0 else []):
            assert tokens == generate(tiny, [prompts[p]], MAX_NEW, stop)[0], (p, layer)


def test_rows_leave_the_batch_at_their_stop_token(tiny: LoadedModel) -> None:
    """A stop token that only some rows emit: those rows end there (stop token kept), the rest decode on, and
    every row equals its own unbatched generation with the same stop set."""
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    free = greedy_decode(tiny, prompts, MAX_NEW, frozenset())
    stop = frozenset({free[0][1]})  # row 0's second token
    cut = greedy_decode(tiny, prompts, MAX_NEW, stop)
    assert cut[0] == free[0][:2]
    assert any(len(row) == MAX_NEW for row in cut)  # some row never met the stop token
    for prompt, row, full in zip(prompts, cut, free, strict=True):
        assert row == trim_at_stop(full, stop)
        assert row == generate(tiny, [prompt], MAX_NEW, stop)[0]


@pytest.mark.parametrize("batch_size", [1, 4, 100])
def test_batched_ablation_equals_per_layer_generation(tiny: LoadedModel, batch_size: int) -> None:
    """The workflow's run (all ablated-layer variants of several prompts in one batch) and the per-layer loop
    (one generation per layer) give the same greedy tokens and the same scores."""
    ids = [f"p{i}" for i in range(len(TEXTS))]
    new = run_ablation(tiny, ids, TEXTS, AblationSettings(max_new_tokens=MAX_NEW, batch_size=batch_size))
    old = run_ablation_per_layer(tiny, ids, TEXTS, AblationSettings(max_new_tokens=MAX_NEW, batch_size=2))
    a = new.responses.set_index(["prompt_id", "layer"]).sort_index()
    b = old.responses.set_index(["prompt_id", "layer"]).sort_index()
    assert a.index.equals(b.index) and len(a) == len(TEXTS) * (tiny.n_layers + 1)
    assert a["tokens"].map(list).tolist() == b["tokens"].map(list).tolist()
    assert (a["response"] == b["response"]).all() and (a["stopped"] == b["stopped"]).all()
    for name in ("token_overlap", "identical"):
        np.testing.assert_array_equal(a[name].to_numpy(), b[name].to_numpy())
    for name in ("kl", "logprob_drop"):
        np.testing.assert_allclose(a[name].to_numpy(), b[name].to_numpy(), rtol=1e-5, atol=1e-6)
    assert new.generated_tokens == old.generated_tokens and new.greedy_mismatches == old.greedy_mismatches == 0
    assert (a.loc[(slice(None), range(tiny.n_layers)), "kl"] > 0).all()


@pytest.mark.parametrize("agreed", [0, 2, 4])
def test_decoding_continued_from_the_scoring_pass_equals_decoding_afresh(tiny: LoadedModel, agreed: int) -> None:
    """Keys and values of a teacher-forced pass (right-padded, rows of different lengths), cut after each prompt and
    ``agreed`` response tokens and re-laid left-padded, continue decoding exactly as decoding that prefix from
    scratch does; on every architecture, Gemma-3 and GPT-OSS with their 8-token sliding windows included."""
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    intact = greedy_decode(tiny, prompts, MAX_NEW, frozenset())
    cache = full_kv_cache()
    teacher_forced(tiny, prompts, intact, cache)
    held = torch.tensor([len(p) + agreed for p in prompts])
    aligned, mask = left_aligned(cache, torch.arange(len(prompts)), held)
    out = [list(r[: agreed + 1]) for r in intact]  # the next token is fed first, as after a differing argmax
    step = torch.tensor([[r[agreed]] for r in intact])
    mask = torch.cat([mask, mask.new_ones((len(prompts), 1))], dim=1)
    continue_decoding(tiny, step, mask, held.view(-1, 1), aligned, out, MAX_NEW, frozenset())
    fresh = [
        r[: agreed + 1] + greedy_decode(tiny, [p + r[: agreed + 1]], MAX_NEW - agreed - 1, frozenset())[0]
        for p, r in zip(prompts, intact, strict=True)
    ]
    assert out == fresh == intact


def test_bfloat16_rows_decode_from_their_prompt(tiny_dirs: dict[str, Path]) -> None:
    """In bfloat16 ties are common and the scoring pass's logits differ from decoding's in the low bits, so a tie
    could read as a difference: there every ablated row decodes from its prompt. A case found in review: the
    scoring pass's argmaxes left this response at its third token, where decoding meets a tie."""
    loaded = load_model(ModelSpec(name="g", kind="tiny", source=str(tiny_dirs["gemma3"]), dtype="bfloat16"))
    text = ["cough and chest pain and fever"]
    settings = AblationSettings(max_new_tokens=12, batch_size=4, layers=(1,))
    new = run_ablation(loaded, ["p"], text, settings).responses.set_index("layer")["tokens"].map(list)
    old = run_ablation_per_layer(loaded, ["p"], text, settings).responses.set_index("layer")["tokens"].map(list)
    assert new.to_dict() == old.to_dict()


def _agreed_prefix(intact: list[int], ablated: list[int]) -> int:
    k = 0
    while k < min(len(intact), len(ablated)) and intact[k] == ablated[k]:
        k += 1
    return k


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["age", "symptoms"])
def test_demo_responses_read_from_the_scoring_pass_equal_decoding(demo: LoadedModel, domain: str) -> None:
    """On a learned model ablated responses follow the intact one for a while: the workflow takes those tokens
    from the teacher-forced pass and decodes only from where a row leaves the intact response, continuing from
    the pass's keys and values. Same tokens and scores as one full generation per layer, on rows of every kind:
    identical to the intact response, leaving it at the first token, and leaving it later and decoding on."""
    from kmap.data.prompts import load_prompt_set

    frame = load_prompt_set(domain, REPO / "prompts").frame.iloc[::23].head(16)
    ids, texts = frame["id"].tolist(), frame["text"].tolist()
    settings = AblationSettings(max_new_tokens=12, batch_size=40)
    new = run_ablation(demo, ids, texts, settings)
    old = run_ablation_per_layer(demo, ids, texts, AblationSettings(max_new_tokens=12, batch_size=8))
    a = new.responses.set_index(["prompt_id", "layer"]).sort_index()
    b = old.responses.set_index(["prompt_id", "layer"]).sort_index()
    assert a["tokens"].map(list).tolist() == b["tokens"].map(list).tolist()
    for name in ("kl", "logprob_drop"):
        np.testing.assert_allclose(a[name].to_numpy(), b[name].to_numpy(), rtol=1e-5, atol=1e-6)
    intact = a.xs(INTACT, level="layer")["tokens"].map(list)
    kinds = set()
    for (prompt, layer), tokens in a["tokens"].map(list).items():
        if layer == INTACT:
            continue
        k = _agreed_prefix(intact[prompt], tokens)
        kinds.add("identical" if tokens == intact[prompt] else "first" if k == 0 else "later")
    assert kinds == {"identical", "first", "later"}
    # Decoding produced only part of the tokens; the intact ones all.
    assert sum(map(len, intact)) < new.decoded_tokens < new.generated_tokens == old.generated_tokens


def test_no_ablation_gives_zero_kl_and_identical_responses(tiny: LoadedModel) -> None:
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    intact = intact_batch(tiny, prompts, MAX_NEW, Clock())
    responses, kl, drop = ablate(tiny, prompts, intact, [], MAX_NEW, Clock())
    assert responses == intact.responses
    np.testing.assert_array_equal(kl, np.zeros(len(TEXTS)))
    np.testing.assert_array_equal(drop, np.zeros(len(TEXTS)))
    # The teacher-forced intact distributions reproduce the greedy tokens (same positions as generation).
    predicted = intact.logprobs.argmax(-1)
    assert bool((predicted[intact.valid] == intact.targets[intact.valid]).all())


def test_kl_and_drop_match_independent_computation(tiny: LoadedModel) -> None:
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    intact = intact_batch(tiny, prompts, MAX_NEW, Clock())
    _, kl, drop = ablate(tiny, prompts, intact, [1], MAX_NEW, Clock())
    for b, (prompt, response) in enumerate(zip(prompts, intact.responses, strict=True)):
        seq = torch.tensor([prompt + response])
        with torch.inference_mode():
            p = tiny.model(input_ids=seq, use_cache=False).logits[0].double().softmax(-1)
            with identity(tiny.parts.layers, [1]):
                q = tiny.model(input_ids=seq, use_cache=False).logits[0].double().softmax(-1)
        rows = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(response))
        p, q = p[rows].numpy(), q[rows].numpy()
        expected_kl = float(np.mean(np.sum(p * np.log(p / q), axis=1)))
        picked = np.arange(len(response)), np.array(response)
        expected_drop = float(np.mean(np.log(p[picked]) - np.log(q[picked])))
        assert kl[b] == pytest.approx(expected_kl, rel=1e-4, abs=1e-6)
        assert drop[b] == pytest.approx(expected_drop, rel=1e-4, abs=1e-6)
    assert (kl > 0).all()


def test_divergence_known_values_and_padding_ignored() -> None:
    p = torch.tensor([[0.5, 0.5], [0.9, 0.1], [0.3, 0.7]]).log()
    q = torch.tensor([[0.25, 0.75], [0.9, 0.1], [0.01, 0.99]]).log()
    targets = torch.tensor([[0, 1, 1]])
    valid = torch.tensor([[True, True, False]])  # the third position is padding
    kl, drop = divergence(p[None], q[None], targets, valid)
    expected = (0.5 * np.log(0.5 / 0.25) + 0.5 * np.log(0.5 / 0.75) + 0.0) / 2
    assert kl[0] == pytest.approx(expected, rel=1e-6)
    assert drop[0] == pytest.approx((np.log(0.5 / 0.25) + 0.0) / 2, rel=1e-6)


def test_teacher_forced_batch_equals_single(tiny: LoadedModel) -> None:
    prompts = tokenize_prompts(tiny.tokenizer, TEXTS)
    responses = [[5, 6, 7], [8], [9, 10]]
    batched, targets, valid = teacher_forced(tiny, prompts, responses)
    for b, (prompt, response) in enumerate(zip(prompts, responses, strict=True)):
        single, _, _ = teacher_forced(tiny, [prompt], [response])
        torch.testing.assert_close(batched[b, : len(response)], single[0], rtol=1e-5, atol=1e-5)
        assert targets[b, : len(response)].tolist() == response
        assert valid[b].sum() == len(response)


def test_token_overlap_values() -> None:
    assert token_overlap([1, 2, 3], [1, 2, 3]) == 1.0
    assert token_overlap([1, 2, 3], [1, 2, 4]) == pytest.approx(2 * 2 / 6)
    assert token_overlap([1, 1, 2], [1, 2, 2]) == pytest.approx(2 * 2 / 6)  # multisets, not sets
    assert token_overlap([1, 2, 3], [3, 2, 1]) == 1.0  # order-free: a shifted continuation still overlaps
    assert token_overlap([1, 9], [1], stop=frozenset({9})) == 1.0  # the stop token does not count
    assert token_overlap([], []) == 1.0
    assert token_overlap([1], []) == 0.0


def test_trim_at_stop_keeps_first_stop_token() -> None:
    assert trim_at_stop([4, 5, 3, 0, 0], frozenset({3})) == [4, 5, 3]
    assert trim_at_stop([4, 5, 6], frozenset({3})) == [4, 5, 6]
    assert trim_at_stop([3, 3], frozenset({3})) == [3]


def test_left_padding_restored_on_error(tiny: LoadedModel) -> None:
    with pytest.raises(RuntimeError), left_padding(tiny.tokenizer):
        assert tiny.tokenizer.padding_side == "left"
        raise RuntimeError("boom")
    assert tiny.tokenizer.padding_side == "right"


def test_settings_validate_layers() -> None:
    assert AblationSettings(layers=[2, 0]).chosen_layers(3) == [2, 0]
    assert AblationSettings().chosen_layers(3) == [0, 1, 2]
    with pytest.raises(ValueError, match="outside"):
        AblationSettings(layers=[3]).chosen_layers(3)
    with pytest.raises(ValueError, match="max_new_tokens"):
        AblationSettings(max_new_tokens=0)


def test_run_ablation_table_and_summary(tiny: LoadedModel) -> None:
    ids = [f"p{i}" for i in range(len(TEXTS))]
    run = run_ablation(tiny, ids, TEXTS, AblationSettings(max_new_tokens=4, batch_size=2))
    frame = run.responses
    assert len(frame) == len(TEXTS) * (tiny.n_layers + 1)
    intact = frame[frame["layer"] == INTACT]
    assert intact[list(PAIR_METRICS)].isna().all().all()
    assert frame["n_tokens"].between(1, 4).all()
    assert run.greedy_mismatches == 0
    assert run.generated_tokens == frame["n_tokens"].sum()
    assert frame.loc[frame["prompt_id"] == "p1", "prompt"].eq(TEXTS[1]).all()
    metrics, replicates = summarise(frame, "m", "d", n_boot=20, seed=0)
    assert len(metrics) == tiny.n_layers * len(PAIR_METRICS)
    assert len(replicates) == len(metrics) * 20
    kl = metrics[metrics["metric"] == "kl"].set_index("layer")["value"]
    expected = frame[frame["layer"] >= 0].groupby("layer")["kl"].mean()
    np.testing.assert_allclose(kl.sort_index().to_numpy(), expected.to_numpy(), rtol=1e-12)


def _planted(n_prompts: int, layers: list[int], values: np.ndarray) -> pd.DataFrame:
    rows = [
        dict(prompt_id=f"p{i}", layer=layer, kl=values[i, j])
        for i in range(n_prompts)
        for j, layer in enumerate(layers)
    ]
    return pd.DataFrame(rows)


def test_summarise_shares_bootstrap_rows_across_layers() -> None:
    values = np.arange(12, dtype=float).reshape(6, 2)  # layer 1 is layer 0 + 1 for every prompt
    frame = _planted(6, [0, 1], values)
    metrics, replicates = summarise(frame, "m", "d", metrics=("kl",), n_boot=50, seed=3)
    reps = replicates.pivot(index="replicate", columns="layer", values="value").to_numpy()
    np.testing.assert_allclose(reps[:, 1] - reps[:, 0], 1.0)  # same resampled prompts in both layers
    expected = values[bootstrap_indices(6, 50, 3)].mean(axis=1)
    np.testing.assert_allclose(reps, expected)
    assert metrics["n"].tolist() == [6, 6] and (metrics["note"] == "").all()


def test_summarise_leaves_out_missing_values_and_says_so() -> None:
    values = np.array([[1.0, np.nan], [3.0, np.nan], [np.nan, np.nan]])
    metrics, _ = summarise(_planted(3, [0, 1], values), "m", "d", metrics=("kl",), n_boot=30)
    first, second = metrics.iloc[0], metrics.iloc[1]
    assert first["value"] == 2.0 and first["n"] == 2 and first["note"] == "1 of 3 values missing"
    assert np.isnan(second["value"]) and second["n"] == 0


@pytest.mark.slow
def test_demo_layer0_ablation_degrades_more_than_middle(demo: LoadedModel) -> None:
    from kmap.data.prompts import load_prompt_set

    frame = load_prompt_set("disease", REPO / "prompts").frame.iloc[::9].head(12)
    middle = demo.n_layers // 2
    settings = AblationSettings(max_new_tokens=12, batch_size=12, layers=(0, middle))
    run = run_ablation(demo, frame["id"].tolist(), frame["text"].tolist(), settings)
    metrics, _ = summarise(run.responses, "demo", "disease", n_boot=100)
    table = metrics.set_index(["metric", "layer"])
    # CIs separate: every resampled prompt set ranks layer 0 as more damaging.
    assert table.loc[("kl", 0), "ci_low"] > table.loc[("kl", middle), "ci_high"]
    assert table.loc[("logprob_drop", 0), "ci_low"] > table.loc[("logprob_drop", middle), "ci_high"]
    assert table.loc[("token_overlap", 0), "value"] < table.loc[("token_overlap", middle), "value"]


def test_entry_script_writes_tables_and_figure(tiny_dirs: dict[str, Path], tmp_path: Path) -> None:
    prompts = tmp_path / "prompts"
    shutil.copytree(REPO / "prompts", prompts)
    full = pd.read_csv(prompts / "disease.csv")
    full.head(5).to_csv(prompts / "disease.csv", index=False)
    spec = ModelSpec(name="tiny-llama", kind="tiny", source=str(tiny_dirs["llama"]), dtype="float32")
    out = tmp_path / "out"
    names = {"responses": ".parquet"}
    job = SimpleNamespace(
        input=SimpleNamespace(prompts=str(prompts / "disease.csv")),
        output=SimpleNamespace(**{n: str(out / f"{n}{s}") for n, s in names.items()}),
        log=[str(tmp_path / "generate.log")],
        params=SimpleNamespace(
            model=asdict(spec),
            settings={"max_new_tokens": 3, "layers": None},
            prompts_dir=str(prompts),
            code="test",
        ),
        wildcards=SimpleNamespace(model="tiny-llama", domain="disease"),
        threads=1,
        resources=SimpleNamespace(gpu=0, max_memory_mib=0, batch_size=2),
    )
    run_entry("ablation_generate.py", job)
    responses = pd.read_parquet(job.output.responses)
    assert len(responses) == 5 * 4 and set(responses["layer"]) == {-1, 0, 1, 2}
    assert (responses["model"] == "tiny-llama").all()
    record = read_provenance(job.output.responses)
    assert record["generated_tokens"] == int(responses["n_tokens"].sum())
    assert record["settings"]["settings"]["max_new_tokens"] == 3 and record["greedy_mismatches"] == 0
    assert record["model"]["resolved_revision"].startswith("sha256:") and len(record["prompt_sha256"]) == 64
    summary = ablation_summary_job(job.output.responses, str(tmp_path / "judge.parquet"), out, job.wildcards)
    skipped = responses[responses["layer"] >= 0][["prompt_id", "layer"]].assign(score=np.nan, status="skipped")
    skipped.to_parquet(summary.input.judge)
    run_entry("ablation_summary.py", summary)
    metrics = read_table(summary.output.metrics)
    assert set(metrics["metric"]) == set(PAIR_METRICS) and (metrics["n"] == 5).all()
    assert Path(summary.output.curves_png).stat().st_size > 0
    assert read_provenance(summary.output.curves_pdf)["model"]["name"] == "tiny-llama"


def test_pad_batch_both_sides() -> None:
    from kmap.core.batches import pad_batch

    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]
    ids, mask = pad_batch([[5, 6, 7], [8]], pad_id=0, side="left")
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    with pytest.raises(ValueError, match="side"):
        pad_batch([[1]], 0, side="middle")
