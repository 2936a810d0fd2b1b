"""Activation patching: the identities every implementation must satisfy, the fast sweep against the naive
per-layer loop on every architecture, pair preparation, aggregation, and the demo model's curve."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kmap.core.models import LoadedModel
from kmap.core.stats import bootstrap_indices, cluster_bootstrap_indices
from kmap.core.tables import EMBEDDINGS
from kmap.maps.table1 import concept_curves, summary_table
from kmap.methods.patching.pairs import PreparedPair, prepare_pair, prepare_pairs
from kmap.methods.patching.run import run_patching
from kmap.methods.patching.settings import SMALL_GAP, USED, PatchingSettings, exclusion_note
from kmap.methods.patching.summary import TRANSFER, heatmap_figure, summarise
from kmap.methods.patching.sweep import run_pairs, start_at, sweep

REPO = Path(__file__).resolve().parents[1]
VIGNETTE = "a {age} year old {sex} patient presents with chest pain and fever , most likely has"
DOSE = "the dose of metformin is {dose} mg twice daily , the dose of metformin is"
# Equal token lengths in the tiny BPE tokenizer (conftest WORDS), 16-19 tokens: longer than the tiny models'
# sliding window (8), and of two lengths, so batches are right-padded.
PAIRS = pd.DataFrame(
    [
        (
            "v1",
            VIGNETTE.format(age=45, sex="male"),
            VIGNETTE.format(age=67, sex="female"),
            "angina",
            "migraine",
        ),
        (
            "v2",
            VIGNETTE.format(age=20, sex="female"),
            VIGNETTE.format(age=45, sex="male"),
            "pneumonia",
            "eczema",
        ),
        ("d1", DOSE.format(dose=45), DOSE.format(dose=67), "500", "20"),
        ("d2", DOSE.format(dose=20), DOSE.format(dose=45), "10", "500"),
        # Not usable: "chest pain" is two tokens, "rash" one; "and" is several tokens.
        ("unequal", "a patient with chest pain has", "a patient with rash has", "angina", "eczema"),
        ("multi", "the patient has fever", "the patient has rash", "and", "angina"),
    ],
    columns=["id", "clean", "corrupted", "clean_answer", "corrupted_answer"],
)
USABLE = ["v1", "v2", "d1", "d2"]


def _runs(model: LoadedModel):
    pairs, excluded = prepare_pairs(model.tokenizer, PAIRS, "numbers")
    assert [p.id for p in pairs] == USABLE
    assert excluded == {"unequal": "unequal_length", "multi": "answer_not_single_token"}
    return run_pairs(model, pairs)


def _p(ld: torch.Tensor, runs) -> torch.Tensor:
    return (ld - runs.ld_corrupted) / (runs.ld_clean - runs.ld_corrupted)


def assert_p(ld: torch.Tensor, runs, expected: float, rows: slice | list[int] = slice(None)) -> None:
    """P = ``expected`` to 1e-5, checked through LD: within 2e-7 (a few float32 ulps of the logits) of
    LD_corrupted + P·gap for every pair, and on P directly where the gap exceeds 0.005 logits (random tiny
    models' gaps reach 1e-3, where float noise alone moves P by 1e-5)."""
    gap = (runs.ld_clean - runs.ld_corrupted)[rows]
    target = (runs.ld_corrupted[rows] + expected * gap).expand_as(ld)
    torch.testing.assert_close(ld, target, atol=2e-7, rtol=0)
    clear = gap.abs() >= 5e-3
    assert int(clear.sum()) >= 2
    p = (ld - runs.ld_corrupted[rows]) / gap
    torch.testing.assert_close(p[..., clear], torch.full_like(p[..., clear], expected), atol=1e-5, rtol=0)


@pytest.mark.parametrize("naive", [False, True], ids=["sweep", "naive"])
def test_all_positions_give_p_one_and_nothing_gives_p_zero(tiny: LoadedModel, naive: bool) -> None:
    runs = _runs(tiny)
    rows = torch.arange(len(USABLE))
    everything = runs.attention_mask.bool()
    restored = sweep(runs, tiny, rows, everything, batch_size=3, naive=naive)
    untouched = sweep(runs, tiny, rows, torch.zeros_like(everything), batch_size=3, naive=naive)
    assert restored.shape == (tiny.n_layers + 1, len(USABLE))
    assert_p(restored, runs, 1.0)
    assert_p(untouched, runs, 0.0)


@pytest.mark.parametrize("naive", [False, True], ids=["sweep", "naive"])
def test_position_sets_at_the_ends_of_the_stack(tiny: LoadedModel, naive: bool) -> None:
    """Embeddings: the concept positions are all that differs (P = 1), the last token is the same (P = 0).
    Last layer: only the answer position reaches the logits (last: P = 1, concept: P = 0). The naive loop
    computes these; the sweep takes them from the clean and corrupted runs (``known_lds``)."""
    runs = _runs(tiny)
    rows = torch.arange(len(USABLE))
    last = sweep(runs, tiny, rows, runs.last_mask(), 4, naive=naive)
    concept = sweep(runs, tiny, rows, runs.concept_mask(), 4, naive=naive)
    for curve, first, final in ((last, 0.0, 1.0), (concept, 1.0, 0.0)):
        assert_p(curve[0], runs, first)
        assert_p(curve[-1], runs, final)


def test_sweep_runs_only_copies_that_neither_run_already_gives(tiny: LoadedModel) -> None:
    """A copy is the clean (corrupted) run where every position that matters holds the clean (corrupted) run's
    state: at the embeddings, its patched tokens are the clean (corrupted) prompt's; at a decoder layer, it
    patches every (no) position from the pair's first differing token to the answer; at the last layer, it does
    (not) patch the answer position. Only the other copies run."""
    runs = _runs(tiny)
    real = runs.attention_mask.bool()
    generator = torch.Generator().manual_seed(0)
    random_sets = (torch.rand(real.shape, generator=generator) < 0.5) & real
    rows = torch.arange(len(USABLE)).repeat(5)
    tails = real & (torch.arange(real.shape[1]) >= torch.tensor([p.concept[0] for p in runs.pairs]).unsqueeze(1))
    masks = torch.cat([runs.last_mask(), runs.concept_mask(), random_sets, tails, tails & ~runs.concept_mask()])
    unknown = {}  # per layer, the copies that must run (an independent reading of the rules above)
    for j, (row, mask) in enumerate(zip(rows.tolist(), masks.tolist(), strict=True)):
        pair, n = runs.pairs[row], int(real[row].sum())
        patched = tuple(pair.clean[i] if mask[i] else pair.corrupted[i] for i in range(n))
        if patched not in (pair.clean, pair.corrupted):
            unknown.setdefault(-1, []).append(j)
        if 0 < sum(mask[pair.concept[0] : n]) < n - pair.concept[0]:
            unknown.setdefault(0, []).append(j)
    assert 0 < len(unknown[-1]) < len(unknown[0]) < len(rows)  # each case occurs
    computed: list[int] = []
    handle = tiny.model.register_forward_pre_hook(
        lambda module, args, kwargs: computed.append(len(kwargs["input_ids"])), with_kwargs=True
    )
    try:
        fast = sweep(runs, tiny, rows, masks, batch_size=64)
        assert sum(computed) == len(unknown[-1]) + len(unknown[0]) * (tiny.n_layers - 1)
        computed.clear()  # without reuse (a debugging aid) every copy runs at every layer
        sweep(runs, tiny, rows, masks, batch_size=64, reuse=False)
        assert sum(computed) == len(rows) * (tiny.n_layers + 1)
    finally:
        handle.remove()
    torch.testing.assert_close(fast, sweep(runs, tiny, rows, masks, batch_size=64, naive=True), atol=1e-5, rtol=0)
    gives_clean = masks[torch.arange(len(rows)), runs.answer_pos[rows]]
    expected_last = torch.where(gives_clean, runs.ld_clean[rows], runs.ld_corrupted[rows])
    torch.testing.assert_close(fast[-1], expected_last, atol=0, rtol=0)


def test_fast_sweep_equals_naive_per_layer_loop(tiny: LoadedModel) -> None:
    runs = _runs(tiny)
    generator = torch.Generator().manual_seed(0)
    real = runs.attention_mask.bool()
    random_sets = (torch.rand(real.shape, generator=generator) < 0.3) & real
    rows = torch.arange(len(USABLE)).repeat(3)
    masks = torch.cat([runs.last_mask(), runs.concept_mask(), random_sets])
    naive = sweep(runs, tiny, rows, masks, batch_size=5, naive=True)
    fast = sweep(runs, tiny, rows, masks, batch_size=5)
    no_reuse = sweep(runs, tiny, rows, masks, batch_size=64, reuse=False)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=0)
    torch.testing.assert_close(no_reuse, naive, atol=1e-5, rtol=0)
    # The sweep measures something: patched LDs differ from the corrupted ones somewhere in the stack.
    assert (naive - runs.ld_corrupted[rows]).abs().max() > 1e-3


def test_start_at_restores_the_model_even_after_an_error(tiny: LoadedModel) -> None:
    ids = tiny.tokenizer(VIGNETTE.format(age=45, sex="male"), return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        before = tiny.model(input_ids=ids).logits
    layers = tiny.parts.layers
    with pytest.raises(RuntimeError, match="inside"), start_at(layers, 1, torch.zeros(1)):
        assert "forward" in layers[0].__dict__ and "forward" in layers[1].__dict__
        raise RuntimeError("inside")
    assert not any("forward" in layer.__dict__ for layer in layers)
    with torch.inference_mode():
        torch.testing.assert_close(tiny.model(input_ids=ids).logits, before, atol=0, rtol=0)


class DigitTokenizer:
    """Words are single tokens, numbers are split into digits (as the Qwen and Gemma tokenizers do)."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict[str, list[int]]:
        pieces = [p for word in text.split() for p in (list(word) if word.isdigit() else [word])]
        ids = [self.vocab.setdefault(p, len(self.vocab) + 2) for p in pieces]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def _pair(clean_answer: str, corrupted_answer: str, clean: str = "dose of lisinopril is") -> pd.Series:
    return pd.Series(
        dict(
            id="p",
            clean=clean,
            corrupted="dose of metoprolol is",
            clean_answer=clean_answer,
            corrupted_answer=corrupted_answer,
        )
    )


def test_numbers_use_their_first_differing_token() -> None:
    tok = DigitTokenizer()
    ids = lambda text: tok(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    differ_first = prepare_pair(tok, _pair("10", "50"), "numbers")
    assert isinstance(differ_first, PreparedPair) and differ_first.answer_mode == "first_differing"
    assert (differ_first.answer, differ_first.foil) == (ids("1")[0], ids("5")[0])
    assert differ_first.clean == tuple(tok("dose of lisinopril is")["input_ids"])
    shared = prepare_pair(tok, _pair("10", "15"), "numbers")
    # The shared "1" is appended to both prompts; LD compares "0" with "5".
    assert shared.clean[-1] == shared.corrupted[-1] == ids("1")[0]
    assert (shared.answer, shared.foil) == (ids("0")[0], ids("5")[0])
    assert shared.concept == (3,)
    assert prepare_pair(tok, _pair("10", "1"), "numbers") == "answers_share_tokens"
    assert prepare_pair(tok, _pair("10", "50"), "exclude") == "answer_not_single_token"
    assert prepare_pair(tok, _pair("10", "50", clean="dose of 20 is"), "all") == "unequal_length"
    single = prepare_pair(tok, _pair("angina", "asthma"), "exclude")
    assert single.answer_mode == "single" and single.answer == ids("angina")[0]


def _planted_pairs() -> pd.DataFrame:
    """Three used pairs (gaps 2, 1, 0.5; P at layer 0 = 0.5, 1.5, -0.2) and one excluded, one layer."""
    records = [dict(id="x", status=SMALL_GAP, ld_clean=0.1, ld_corrupted=0.0)]
    for pid, clean, patched in (("a", 2.0, 1.0), ("b", 1.0, 1.5), ("c", 0.5, -0.1)):
        for variant in ("last", "concept"):
            for layer, ld in ((-1, 0.0), (0, patched)):
                records.append(
                    dict(id=pid, status=USED, variant=variant, layer=layer, ld_clean=clean, ld_corrupted=0.0)
                    | dict(ld_patched=ld, clean_prompt=f"prompt {pid}")
                )
    return pd.DataFrame(records)


def test_aggregates_ratio_of_means_and_median_keep_overshoot() -> None:
    metrics, replicates = summarise(_planted_pairs(), "m", "d", n_layers=1, n_boot=50, seed=3)
    table = metrics.set_index(["metric", "layer"])
    assert table.loc[("P_last", 0), "value"] == pytest.approx((1.0 + 1.5 - 0.1) / (2.0 + 1.0 + 0.5))
    assert table.loc[("P_median_last", 0), "value"] == pytest.approx(0.5)
    assert table.loc[("P_last", -1), "value"] == 0.0
    note = "excluded 1 of 4 pairs: 1 small_gap; CIs over 3 clean prompts"
    assert (metrics["n"] == 3).all() and (metrics["note"] == note).all()
    # Replicates: the same resampled pairs for every layer and metric, recomputed independently (one pair per
    # clean prompt: the cluster bootstrap is the pair bootstrap, draw for draw).
    indices = bootstrap_indices(3, 50, 3)
    numerator, denominator = np.array([1.0, 1.5, -0.1]), np.array([2.0, 1.0, 0.5])
    expected = numerator[indices].mean(axis=1) / denominator[indices].mean(axis=1)
    got = replicates[(replicates["metric"] == "P_concept") & (replicates["layer"] == 0)].sort_values("replicate")
    np.testing.assert_allclose(got["value"], expected)
    medians = replicates[(replicates["metric"] == "P_median_last") & (replicates["layer"] == 0)]
    assert medians["value"].max() == pytest.approx(1.5) and medians["value"].min() == pytest.approx(-0.2)
    low, high = table.loc[("P_last", 0), ["ci_low", "ci_high"]]
    assert low < table.loc[("P_last", 0), "value"] < high


def test_pairs_are_oriented_by_the_sign_of_their_denominator() -> None:
    """Planted pairs of both signs: a clean prompt preferring the foil (LD_clean < LD_corrupted) keeps its own
    P, and no longer cancels the other pairs in the ratio of means."""
    records = []
    # (clean, corrupted, patched at layer 0): per-pair P = 0.5, 0.5, 0.9; the last two prefer the foil.
    planted = (("up", 2.0, 0.0, 1.0), ("down", -1.0, 0.0, -0.5), ("near", 0.0, 1.9, 0.19))
    for pid, clean, corrupted, patched in planted:
        for variant in ("last", "concept"):
            for layer, ld in ((-1, corrupted), (0, patched)):
                records.append(
                    dict(id=pid, status=USED, variant=variant, layer=layer, ld_clean=clean, ld_corrupted=corrupted)
                    | dict(ld_patched=ld, clean_prompt=pid)
                )
    metrics, _ = summarise(pd.DataFrame(records), "m", "d", n_layers=1, n_boot=20)
    table = metrics.set_index(["metric", "layer"])["value"]
    # Oriented: (1 + 0.5 + 1.71) / (2 + 1 + 1.9) = 0.655; with signs kept it would be -1.21 / -0.9 = 1.34.
    assert table[("P_last", 0)] == pytest.approx((1.0 + 0.5 + 1.71) / (2.0 + 1.0 + 1.9))
    assert table[("P_median_last", 0)] == pytest.approx(0.5)  # per-pair P unchanged by orientation
    assert table[("P_last", -1)] == 0.0


def _curve_pairs(clusters: dict[str, list[tuple[float, list[float]]]]) -> pd.DataFrame:
    """Used pairs from {clean prompt: [(LD_clean, LD_patched per layer -1..L-1)]}, LD_corrupted = 0, the same
    patched LDs for both variants."""
    records = []
    for prompt, pairs in clusters.items():
        for k, (clean, patched) in enumerate(pairs):
            for variant in ("last", "concept"):
                for layer, ld in enumerate(patched, start=-1):
                    records.append(
                        dict(id=f"{prompt}-{k}", status=USED, variant=variant, layer=layer, clean_prompt=prompt)
                        | dict(ld_clean=clean, ld_corrupted=0.0, ld_patched=ld)
                    )
    return pd.DataFrame(records)


def test_bootstrap_resamples_clean_prompts_with_their_pairs() -> None:
    """Pairs sharing a clean prompt are one cluster: four prompts with three identical pairs each must give
    exactly the replicates of the four prompts with one pair each (a pair bootstrap would treat the 12 pairs as
    independent and give narrower CIs)."""
    curves = {
        "p1": (2.0, [0, 0.4, 2.0]),
        "p2": (1.0, [0, 0.9, 1.0]),
        "p3": (4.0, [0, 0.4, 4.0]),
        "p4": (1.0, [0, 0, 1]),
    }
    once = _curve_pairs({p: [c] for p, c in curves.items()})
    thrice = _curve_pairs({p: [c] * 3 for p, c in curves.items()})
    _, single = summarise(once, "m", "d", n_layers=2, n_boot=200, seed=5)
    metrics, clustered = summarise(thrice, "m", "d", n_layers=2, n_boot=200, seed=5)
    pd.testing.assert_frame_equal(clustered, single)
    assert (metrics["n"] == 12).all() and metrics["note"].str.endswith("CIs over 4 clean prompts").all()
    # Each replicate holds whole clusters: rows of one prompt are drawn together.
    clusters = ["a", "b", "b", "c", "c", "c"]
    for rows in cluster_bootstrap_indices(clusters, 50, 1):
        drawn = Counter(clusters[i] for i in rows)
        assert all(count % clusters.count(c) == 0 for c, count in drawn.items())
        assert sum(count // clusters.count(c) for c, count in drawn.items()) == 3
    assert [r.tolist() for r in cluster_bootstrap_indices(list("xyz"), 20, 7)] == bootstrap_indices(3, 20, 7).tolist()


def test_transfer_is_the_rise_of_p_last_and_table1_is_not_decided_by_the_final_layer() -> None:
    """P_last = 1 at the final layer for any model; transfer_last (P_last minus the layer below) peaks where the
    planted jump is, and Table 1's patching row reports that peak, not the identity."""
    pairs = _curve_pairs({f"p{i}": [(2.0, [0.0, 0.4, 0.4, 1.8, 2.0])] for i in range(3)})
    metrics, replicates = summarise(pairs, "m", "dosage", n_layers=4, n_boot=30)
    transfer = metrics[metrics["metric"] == TRANSFER].set_index("layer")["value"]
    assert np.isnan(transfer[-1])
    np.testing.assert_allclose(transfer.loc[0:].to_numpy(), [0.2, 0.0, 0.7, 0.1], atol=1e-12)
    rep = replicates[replicates["metric"] == TRANSFER].pivot(index="replicate", columns="layer", values="value")
    last = replicates[replicates["metric"] == "P_last"].pivot(index="replicate", columns="layer", values="value")
    np.testing.assert_allclose(rep[2], last[2] - last[1])
    table = summary_table(concept_curves({("dosage", "patching"): metrics})).set_index("concept")
    peak = table.loc["dosage patching peak transfer"]
    assert peak["value"] == pytest.approx(0.7) and peak["layer"] == 2
    study = table.loc[[c for c in table.index if c.startswith("dosage patching max P_last")][0]]
    assert study["value"] == pytest.approx(1.0) and study["layer"] == 3


def test_no_usable_pair_gives_nan_rows_that_say_why() -> None:
    pairs = pd.DataFrame([dict(id="a", status="unequal_length"), dict(id="b", status=SMALL_GAP)])
    metrics, replicates = summarise(pairs, "m", "d", n_layers=2)
    # P and P_median of both variants, and transfer_last, at layers -1, 0, 1.
    assert len(metrics) == 5 * 3 and metrics["value"].isna().all() and (metrics["n"] == 0).all()
    assert exclusion_note(pairs) == "excluded 2 of 2 pairs: 1 small_gap, 1 unequal_length"
    assert replicates.empty


def test_run_patching_counts_every_pair_and_draws_heatmaps(tiny: LoadedModel, tmp_path: Path) -> None:
    settings = PatchingSettings(min_gap=0.0, heatmap_pairs=2, batch_size=3, multi_token_answers="numbers")
    run = run_patching(tiny, PAIRS, settings)
    status = run.pairs.drop_duplicates("id").set_index("id")["status"]
    assert status.to_dict() == dict.fromkeys(USABLE, USED) | {
        "unequal": "unequal_length",
        "multi": "answer_not_single_token",
    }
    used = run.pairs[run.pairs["status"] == USED]
    assert len(used) == len(USABLE) * 2 * (tiny.n_layers + 1)
    # Heatmap identities: at the embeddings, a position where the prompts agree changes nothing (P = 0);
    # at the last layer only the answer position reaches the logits (P = 1 there, 0 elsewhere).
    heat = run.heatmap
    assert set(heat["id"]) == {"v1", "d2"}
    for pair_id in ("v1", "d2"):
        part = heat[heat["id"] == pair_id]
        concept = [int(p) for p in used[used["id"] == pair_id]["concept_positions"].iloc[0].split(",")]
        moved = (part["ld_patched"] - part["ld_corrupted"]).abs()  # P·gap: compared in LD units (float noise)
        embeddings = moved[part["layer"] == EMBEDDINGS].set_axis(part["position"][part["layer"] == EMBEDDINGS])
        assert embeddings.drop(concept).max() < 1e-6
        top = part[part["layer"] == tiny.n_layers - 1]
        np.testing.assert_allclose(top["ld_patched"].iloc[-1], top["ld_clean"].iloc[-1], atol=1e-6, rtol=0)
        assert moved[top.index].iloc[:-1].max() < 1e-6
    assert heatmap_figure(heat, tmp_path / "h.png", tmp_path / "h.pdf", "t") == 2
    assert (tmp_path / "h.png").stat().st_size > 1000 and (tmp_path / "h.pdf").exists()
    strict = run_patching(tiny, PAIRS, PatchingSettings(min_gap=1e6, multi_token_answers="numbers"))
    assert (strict.pairs.drop_duplicates("id")["status"] == SMALL_GAP).sum() == len(USABLE)
    assert strict.heatmap.empty


def test_demo_diagnosis_patching_rises_with_depth(demo: LoadedModel) -> None:
    from kmap.data.prompts import load_pairs

    frame = load_pairs("disease", REPO / "prompts").frame
    settings = PatchingSettings(heatmap_pairs=0)
    run = run_patching(demo, frame, settings)
    metrics, _ = summarise(run.pairs, "demo", "disease", demo.n_layers, n_boot=100)
    curve = metrics[metrics["metric"] == "P_last"].set_index("layer")["value"]
    concept = metrics[metrics["metric"] == "P_concept"].set_index("layer")["value"]
    half = len(curve) // 2
    # The trained model separates clean from corrupted answers (max_pairs of the pool are patched).
    assert metrics["n"].iloc[0] >= 0.8 * min(len(frame), settings.max_pairs)
    assert curve.iloc[0] == pytest.approx(0.0, abs=1e-5) and curve.iloc[-1] == pytest.approx(1.0, abs=1e-5)
    assert curve.iloc[half:].mean() >= curve.iloc[1:half].mean() > 0.5
    # Concept positions lose their effect with depth as the answer position takes the information over.
    assert concept.iloc[0] == pytest.approx(1.0, abs=1e-5) and concept.iloc[-1] == pytest.approx(0.0, abs=1e-5)
    assert concept.iloc[1:half].mean() >= concept.iloc[half:].mean()


def test_table1_patching_row_separates_the_trained_demo_from_its_random_twin(
    demo: LoadedModel, twin: LoadedModel
) -> None:
    """The study's maximum of P_last is about 1 for both (the final-layer identity); the peak transfer is high
    for the trained model, which moves the drug into the answer position in one layer, and low for the random
    twin, whose P_last creeps up layer by layer. min_gap 0, so the twin's pairs are used too."""
    from kmap.data.prompts import load_pairs

    frame = load_pairs("dosage", REPO / "prompts").frame
    settings = PatchingSettings(heatmap_pairs=0, min_gap=0.0, max_pairs=24)
    tables = {}
    for name, model in (("demo", demo), ("twin", twin)):
        metrics, _ = summarise(run_patching(model, frame, settings).pairs, name, "dosage", model.n_layers, 200)
        tables[name] = metrics
    table = summary_table(concept_curves({("dosage", "patching"): pd.concat(tables.values())}))
    table = table.set_index(["concept", "model"])
    peak = table.loc["dosage patching peak transfer"]
    assert peak.loc["demo", "value"] > 0.9 and peak.loc["twin", "value"] < 0.6
    assert peak.loc["twin", "ci_high"] < peak.loc["demo", "ci_low"]
    study = table.xs("dosage patching max P_last (study's measure, ≥ 1 by identity)", level="concept")
    assert (study["value"] >= 1.0 - 1e-5).all()


def test_non_finite_logit_differences_exclude_the_pair_and_name_layers(
    tiny_dirs, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import kmap.methods.patching.run as report
    from kmap.core.models import load_model
    from kmap.core.spec import ModelSpec
    from kmap.methods.patching.settings import NON_FINITE

    model = load_model(ModelSpec(name="t", kind="tiny", source=str(tiny_dirs["llama"]), dtype="float32"))
    # An overflowed logit (as fp16 produces): v1's foil "migraine" scores inf, so v1's LDs are -inf.
    foil = model.tokenizer(" migraine", add_special_tokens=False)["input_ids"]
    assert len(foil) == 1
    with torch.no_grad():
        model.model.lm_head.weight[foil[0]] = float("inf")
    real_sweep = report.sweep

    def overflowing_sweep(runs, *args, **kwargs):  # and v2's patched run overflows at layer 1 only
        lds = real_sweep(runs, *args, **kwargs)
        rows = args[1]
        v2 = [p.id for p in runs.pairs].index("v2")
        lds[2, (rows == v2).nonzero()[0, 0]] = float("nan")  # index 2: layer 1 (row 0 is the embeddings)
        return lds

    monkeypatch.setattr(report, "sweep", overflowing_sweep)
    with caplog.at_level("WARNING"):
        run = run_patching(model, PAIRS, PatchingSettings(min_gap=0.0, heatmap_pairs=0, multi_token_answers="numbers"))
    status = run.pairs.drop_duplicates("id").set_index("id")["status"]
    assert status["v1"] == NON_FINITE and status["v2"] == NON_FINITE
    assert status["d1"] == USED and status["d2"] == USED
    assert "pair v2: non-finite patched LD at layers [1]" in caplog.text
    metrics, _ = summarise(run.pairs, "t", "d", model.n_layers, n_boot=20)
    defined = metrics[(metrics["metric"] != TRANSFER) | (metrics["layer"] >= 0)]  # no layer below layer -1
    assert np.isfinite(defined["value"]).all() and (metrics["n"] == 2).all()
    assert "2 non_finite" in metrics["note"].iloc[0]


def test_max_pairs_spreads_over_the_pool_and_counts_the_rest(tiny: LoadedModel) -> None:
    from kmap.methods.patching.settings import BEYOND_MAX_PAIRS

    settings = PatchingSettings(min_gap=0.0, heatmap_pairs=0, max_pairs=2, multi_token_answers="numbers")
    status = run_patching(tiny, PAIRS, settings).pairs.drop_duplicates("id").set_index("id")["status"]
    # The first and the last usable pair (evenly spaced over v1, v2, d1, d2), never an unusable one.
    assert status.to_dict() == {
        "v1": USED,
        "d2": USED,
        "v2": BEYOND_MAX_PAIRS,
        "d1": BEYOND_MAX_PAIRS,
        "unequal": "unequal_length",
        "multi": "answer_not_single_token",
    }
    everything = run_patching(tiny, PAIRS, dataclasses.replace(settings, max_pairs=0)).pairs
    assert set(everything.loc[everything["status"] == USED, "id"]) == set(USABLE)


def _plan_cost(first: list[int], parts: list[slice], width: int) -> int:
    from kmap.methods.patching.sweep import CALL_OVERHEAD_ROWS

    return sum(CALL_OVERHEAD_ROWS * width + (p.stop - p.start) * (width - first[p.start]) for p in parts)


def test_patch_batches_keep_last_position_copies_apart_and_are_optimal() -> None:
    import itertools

    from kmap.methods.patching.sweep import plan_batches

    # 16 copies patched from position 2 (a concept) and 16 patched only at the answer position 15.
    first = [2] * 16 + [15] * 16
    parts = plan_batches(first, 16, 32)
    assert parts == [slice(0, 16), slice(16, 32)]  # one batch would recompute 14 positions for all 32
    equal = plan_batches([3] * 10, 16, 4)  # nothing to save by splitting: the fewest calls
    assert len(equal) == 3 and sum(p.stop - p.start for p in equal) == 10
    rng = np.random.default_rng(0)
    for _ in range(20):
        first = sorted(rng.integers(0, 12, size=7).tolist())
        parts = plan_batches(first, 12, 3)
        assert [i for p in parts for i in range(p.start, p.stop)] == list(range(7))
        assert all(0 < p.stop - p.start <= 3 for p in parts)
        # Brute force over every way to cut the sorted order: nothing cheaper exists.
        cheapest = min(
            _plan_cost(first, [slice(a, b) for a, b in itertools.pairwise((0, *cuts, 7))], 12)
            for k in range(7)
            for cuts in itertools.combinations(range(1, 7), k)
            if all(b - a <= 3 for a, b in itertools.pairwise((0, *cuts, 7)))
        )
        assert _plan_cost(first, parts, 12) == cheapest
