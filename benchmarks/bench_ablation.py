"""Ablation: every ablated-layer variant decoded in one batch (the workflow's run) vs one generation per layer.

    python benchmarks/bench_ablation.py --model results/models/demo --domain age --prompts-n 32
    python benchmarks/bench_ablation.py --random 32x512 --domain age --prompts-n 16   # a deeper random Llama

"per-layer" is the previous loop (``kmap.methods.ablation.reference``: ``model.generate`` per ablated layer over
``--loop-batch`` prompts, then a teacher-forced pass per layer); "batched" is ``run_ablation`` with ``--rows``
rows (prompt x ablated layer) per batch. Both run the whole method: intact and every ablated layer, decoding and
scoring. Reported: wall seconds of the whole run, decoding tokens/s (generated tokens over the seconds spent
decoding), the ratios, and whether the two gave the same greedy tokens and scores. Medians of interleaved repeats.
``--json`` writes the numbers to a file (benchmarks/gpu_check.sh collects them).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import load, random_model

from kmap.data.prompts import load_prompt_set
from kmap.methods.ablation.generate import AblationRun, run_ablation
from kmap.methods.ablation.reference import run_ablation_per_layer
from kmap.methods.ablation.settings import AblationSettings


def compare(a: AblationRun, b: AblationRun) -> tuple[bool, float]:
    left = a.responses.set_index(["prompt_id", "layer"]).sort_index()
    right = b.responses.set_index(["prompt_id", "layer"]).sort_index()
    same = left["tokens"].map(list).tolist() == right["tokens"].map(list).tolist()
    diff = max(float(np.nanmax(np.abs(left[m] - right[m]))) for m in ("kl", "logprob_drop"))
    return same, diff


def timed(fn, *args) -> tuple[AblationRun, float]:
    start = time.perf_counter()
    run = fn(*args)
    return run, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a model directory (HF format)")
    parser.add_argument("--random", metavar="LAYERSxHIDDEN", help="build a random-init Llama of this shape instead")
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--domain", default="age")
    parser.add_argument("--prompts-n", type=int, default=32)
    parser.add_argument("--loop-batch", type=int, default=8, help="prompts per generation in the per-layer loop")
    parser.add_argument("--rows", type=int, default=64, help="rows per batch in the batched run")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args()
    if bool(args.model) == bool(args.random):
        parser.error("give exactly one of --model and --random")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(args.model) if args.model else random_model(args.random, Path(tmp))
        loaded = load(source, args.device, args.dtype)
        frame = load_prompt_set(args.domain, Path(args.prompts)).frame.head(args.prompts_n)
        ids, texts = frame["id"].tolist(), frame["text"].tolist()
        loop = AblationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.loop_batch)
        batched = AblationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.rows)
        sides = {
            "per-layer": lambda: timed(run_ablation_per_layer, loaded, ids, texts, loop),
            "batched": lambda: timed(run_ablation, loaded, ids, texts, batched),
        }
        sides["batched"]()  # warm-up
        walls: dict[str, list[float]] = {name: [] for name in sides}
        rates: dict[str, list[float]] = {name: [] for name in sides}
        runs: dict[str, AblationRun] = {}
        for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
            for name, fn in sides.items():
                runs[name], wall = fn()
                walls[name].append(wall)
                rates[name].append(runs[name].tokens_per_second)
        same, diff = compare(runs["per-layer"], runs["batched"])
        n_params = sum(p.numel() for p in loaded.model.parameters())
    result = {
        "model": args.model or f"random llama {args.random}",
        "layers": loaded.n_layers,
        "hidden": loaded.hidden_size,
        "params_millions": round(n_params / 1e6, 1),
        "device": args.device,
        "dtype": args.dtype,
        "domain": args.domain,
        "prompts": len(ids),
        "max_new_tokens": args.max_new_tokens,
        "loop_batch_prompts": args.loop_batch,
        "rows_per_batch": args.rows,
        "generated_tokens": runs["batched"].generated_tokens,
        # The rest are read from the scoring pass (agreed prefixes and identical rows), which decodes nothing.
        "batched_decoded_tokens": runs["batched"].decoded_tokens,
        "same_tokens": same,
        "max_score_diff": diff,
    }
    for name in sides:
        result[f"{name}_wall_s"] = round(statistics.median(walls[name]), 3)
        result[f"{name}_decode_tokens_per_s"] = round(statistics.median(rates[name]), 1)
    result["wall_speedup"] = round(result["per-layer_wall_s"] / result["batched_wall_s"], 2)
    result["decode_speedup"] = round(result["batched_decode_tokens_per_s"] / result["per-layer_decode_tokens_per_s"], 2)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
