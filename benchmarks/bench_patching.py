"""Activation-patching sweep time: kmap's exact sweep vs a naive per-layer loop vs nnsight's batched trace.

    python benchmarks/bench_patching.py --model results/models/demo --domain disease --repeats 3
    python benchmarks/bench_patching.py --random 32x512 --domain age --multi-token first_token   # deeper random

All sides compute the same numbers: LD of every patched copy (each usable pair × {last, concept} positions)
at every layer, from one shared clean/corrupted run per pair batch (not timed; every side needs it).

- "kmap sweep": ``kmap.methods.patching.sweep.sweep`` (layers below the patched one skipped, positions before the first
  patched one taken from the corrupted KV cache, copies batched).
- "naive loop": the same copies, one full corrupted forward per layer with a hook overwriting that layer
  (``sweep(..., naive=True)``), batched the same way.
- "nnsight trace": with nnsight installed (``pip install nnsight``; not a kmap dependency), one
  ``LanguageModel.trace`` per (layer, batch) setting the layer's output at the masked positions.

Every side's LDs are checked against kmap's (max |difference| printed). Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import load, random_model

from kmap.data.prompts import load_pairs
from kmap.methods.patching.pairs import prepare_pairs
from kmap.methods.patching.run import patch_jobs
from kmap.methods.patching.sweep import PairRuns, answer_ld, copy_prefixes, plan_sweep, run_pairs, sweep


def nnsight_sweep(lm, runs: PairRuns, rows: torch.Tensor, masks: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The reference sweep through nnsight: one trace per (layer, batch of copies)."""
    layers = sorted(runs.clean_resid)
    out = torch.empty((len(layers), len(rows)))
    for chunk in torch.split(torch.arange(len(rows)), batch_size):
        r, m = rows[chunk], masks[chunk]
        inputs = {"input_ids": runs.corrupted_ids[r], "attention_mask": runs.attention_mask[r]}
        for index, layer in enumerate(layers):
            clean = runs.clean_resid[layer][r]
            with torch.inference_mode(), lm.trace(inputs, use_cache=False):
                if layer < 0:  # the embedding output: layer 0's input
                    hidden = lm.model.embed_tokens.output
                    lm.model.embed_tokens.output = torch.where(m.unsqueeze(-1), clean, hidden)
                else:
                    hidden = lm.model.layers[layer].output
                    lm.model.layers[layer].output = torch.where(m.unsqueeze(-1), clean, hidden)
                logits = lm.output.logits.save()
            out[index, chunk] = answer_ld(logits, runs.answer_pos[r], runs.answer[r], runs.foil[r]).cpu()
    return out


def arithmetic_share(runs: PairRuns, rows: torch.Tensor, masks: torch.Tensor, batch_size: int, n_layers: int) -> float:
    """Decoder-layer positions the sweep computes over those the naive loop computes, in the sweep's own batches:
    patched at layer l it runs layers l+1..L-1 for the copies of a batch that neither run gives, from their first
    recomputed position; the naive loop runs all L layers at every position, for each of the L + 1 patch layers.
    The floor of kmap/naive where compute rules."""
    plan = plan_sweep(runs, rows, masks, batch_size)
    width = runs.attention_mask.shape[1]
    swept = 0
    for chunk in plan.chunks:
        for index, layer in enumerate(range(-1, n_layers)):
            todo = chunk[~plan.known[index, chunk]]
            if len(todo):
                start = int(copy_prefixes(runs, rows[todo], masks[todo], layer)[0].min())
                swept += len(todo) * (n_layers - 1 - layer) * (width - start)
    return swept / ((n_layers + 1) * n_layers * width * len(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory (HF format)")
    parser.add_argument("--random", metavar="LAYERSxHIDDEN", help="build a random-init Llama of this shape instead")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the numbers to this file")
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--domain", default="disease")
    parser.add_argument("--pairs-n", type=int, default=32, help="pairs (one clean/corrupted batch)")
    parser.add_argument("--batch-size", type=int, default=32, help="patched copies per forward")
    parser.add_argument(
        "--multi-token", default="all", help="patching.multi_token_answers (tiny BPE models split words)"
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if bool(args.model) == bool(args.random):
        parser.error("give exactly one of --model and --random")
    torch.set_num_threads(args.threads)
    tmp = tempfile.TemporaryDirectory()
    source = Path(args.model) if args.model else random_model(args.random, Path(tmp.name))
    loaded = load(source, args.device, args.dtype)
    frame = load_pairs(args.domain, Path(args.prompts)).frame
    prepared, excluded = prepare_pairs(loaded.tokenizer, frame, args.multi_token)
    prepared = prepared[: args.pairs_n]
    runs = run_pairs(loaded, prepared)
    used = list(range(len(prepared)))
    rows, masks, _ = patch_jobs(runs, used, [])
    sides: dict[str, Callable[[], torch.Tensor]] = {
        "kmap sweep": lambda: sweep(runs, loaded, rows, masks, args.batch_size).cpu(),
        "naive loop": lambda: sweep(runs, loaded, rows, masks, args.batch_size, naive=True).cpu(),
    }
    try:
        from nnsight import LanguageModel

        lm = LanguageModel(loaded.model, tokenizer=loaded.tokenizer)
        sides["nnsight trace"] = lambda: nnsight_sweep(lm, runs, rows, masks, args.batch_size)
    except ImportError:
        print("nnsight not installed: skipping its side (pip install nnsight)")
    reference = sides["kmap sweep"]()  # warm-up, and the values every side must reproduce
    times: dict[str, list[float]] = {name: [] for name in sides}
    errors: dict[str, float] = {}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every side alike
        for name, fn in sides.items():
            start = time.perf_counter()
            values = fn()
            times[name].append(time.perf_counter() - start)
            errors[name] = float((values - reference).abs().max())
    kmap = statistics.median(times["kmap sweep"])
    result = {
        "model": args.model or f"random llama {args.random}",
        "layers": loaded.n_layers,
        "device": args.device,
        "dtype": args.dtype,
        "domain": args.domain,
        "pairs": len(prepared),
        "excluded": len(excluded),
        "copies": len(rows),
        "batch": args.batch_size,
        "threads": args.threads,
    }
    for name, values in times.items():
        key = name.split()[0]
        result[f"{key}_s"] = round(statistics.median(values), 4)
        result[f"{key}_max_abs_ld_diff"] = errors[name]
    result["kmap_over_naive"] = round(kmap / result["naive_s"], 3)
    result["arithmetic_share"] = round(arithmetic_share(runs, rows, masks, args.batch_size, loaded.n_layers), 3)
    plan = plan_sweep(runs, rows, masks, args.batch_size)
    result["forwards_per_layer"] = len(plan.chunks)
    result["known_copy_share"] = round(float(plan.known.float().mean()), 3)
    if "nnsight_s" in result:
        result["kmap_over_nnsight"] = round(kmap / result["nnsight_s"], 3)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    tmp.cleanup()


if __name__ == "__main__":
    main()
