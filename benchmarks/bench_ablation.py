"""Ablation generation throughput (tokens/s): plain HF greedy generate vs kmap's, intact and ablated.

    python benchmarks/bench_ablation.py --model results/models/demo --domain disease --prompts-n 32

"plain" is ``model.generate`` on the same left-padded batches without kmap; "kmap intact" and "kmap ablated"
are ``kmap.methods.ablation.generate.generate`` without and with the middle layer identity-replaced; "full run" is
``run_ablation`` over every layer (intact + L ablated generations, plus the teacher-forced scoring passes),
reported as generated tokens per second of wall time. Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_scripts"))  # after installed packages

from kmap.core.hooks import identity  # noqa: E402
from kmap.core.models import LoadedModel, load_model  # noqa: E402
from kmap.core.spec import ModelSpec  # noqa: E402
from kmap.data.prompts import load_prompt_set  # noqa: E402
from kmap.methods.ablation.generate import generate, left_padding, run_ablation, stop_ids, trim_at_stop
from kmap.methods.ablation.settings import AblationSettings


def batches(ids: list[list[int]], size: int) -> list[list[list[int]]]:
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def plain_generate(loaded: LoadedModel, chunk: list[list[int]], max_new: int) -> int:
    tokenizer = loaded.tokenizer
    with left_padding(tokenizer):
        batch = tokenizer.pad({"input_ids": chunk}, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = loaded.model.generate(
            **batch,
            max_new_tokens=max_new,
            do_sample=False,
            use_cache=True,
            pad_token_id=tokenizer.pad_token_id,
        )
    stop = stop_ids(loaded)
    return sum(len(trim_at_stop(row, stop)) for row in out[:, batch["input_ids"].shape[1] :].tolist())


def kmap_generate(loaded: LoadedModel, chunk: list[list[int]], max_new: int, which: list[int]) -> int:
    with identity(loaded.parts.layers, which):
        return sum(len(r) for r in generate(loaded, chunk, max_new, stop_ids(loaded)))


def timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    tokens = fn()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/models/demo")
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--domain", default="disease")
    parser.add_argument("--prompts-n", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec(name="bench", kind="hf", source=args.model, dtype="float32"))
    frame = load_prompt_set(args.domain, Path(args.prompts)).frame.head(args.prompts_n)
    ids = [list(x) for x in loaded.tokenizer(frame["text"].tolist())["input_ids"]]
    chunks = batches(ids, args.batch_size)
    middle = [loaded.n_layers // 2]
    sides: dict[str, Callable[[], int]] = {
        "plain HF generate": lambda: sum(plain_generate(loaded, c, args.max_new_tokens) for c in chunks),
        "kmap intact": lambda: sum(kmap_generate(loaded, c, args.max_new_tokens, []) for c in chunks),
        "kmap ablated (middle layer)": lambda: sum(
            kmap_generate(loaded, c, args.max_new_tokens, middle) for c in chunks
        ),
    }
    sides["kmap intact"]()  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits every side alike
        for name, fn in sides.items():
            rates[name].append(timed(fn))
    settings = AblationSettings(max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    start = time.perf_counter()
    run = run_ablation(loaded, frame["id"].tolist(), frame["text"].tolist(), settings)
    wall = time.perf_counter() - start
    print(
        f"model={args.model} layers={loaded.n_layers} domain={args.domain} prompts={len(ids)} "
        f"batch={args.batch_size} max_new_tokens={args.max_new_tokens} threads={args.threads}"
    )
    for name, values in rates.items():
        print(f"{name:28s}: median {statistics.median(values):8.1f} tokens/s over {args.repeats}")
    print(
        f"{'full run (all layers)':28s}: {run.generated_tokens / wall:8.1f} tokens/s of wall time "
        f"({run.generated_tokens} tokens, {wall:.1f} s; generation alone {run.tokens_per_second:.1f})"
    )


if __name__ == "__main__":
    main()
