"""Activation extraction vs one plain batched HF forward over the same prompts (target: <= 1.10x).

    python benchmarks/bench_activations.py --model results/models/demo --domain disease --repeats 5

Both sides see the same right-padded batches; the plain side runs the full CausalLM forward with
use_cache=False (what a user would write), the kmap side captures every layer at the concept position.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_scripts"))  # after installed packages

from kmap.activations.cache import ActivationSettings  # noqa: E402
from kmap.activations.extract import extract  # noqa: E402
from kmap.core.models import encode, load_model  # noqa: E402
from kmap.core.spec import ModelSpec  # noqa: E402
from kmap.data.prompts import load_prompt_set  # noqa: E402


def plain_forward(loaded, texts: list[str], batch_size: int) -> None:
    for start in range(0, len(texts), batch_size):
        batch = encode(loaded.tokenizer, texts[start : start + batch_size], loaded.device)
        with torch.inference_mode():
            loaded.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/models/demo")
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--domain", default="disease")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_model(ModelSpec(name="bench", kind="hf", source=args.model, dtype="float32"))
    texts = load_prompt_set(args.domain, Path(args.prompts)).frame["text"].tolist()
    settings = ActivationSettings(batch_size=args.batch_size)
    timings: dict[str, list[float]] = {"plain": [], "kmap": []}
    extract(loaded, texts, settings)  # warm-up
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both sides alike
        start = time.perf_counter()
        plain_forward(loaded, texts, args.batch_size)
        timings["plain"].append(time.perf_counter() - start)
        start = time.perf_counter()
        extract(loaded, texts, settings)
        timings["kmap"].append(time.perf_counter() - start)
    plain, ours = statistics.median(timings["plain"]), statistics.median(timings["kmap"])
    print(f"model={args.model} domain={args.domain} prompts={len(texts)} batch={args.batch_size}")
    print(f"plain HF forward: median {plain:.3f} s over {args.repeats}")
    print(f"kmap extraction : median {ours:.3f} s over {args.repeats}")
    print(f"ratio kmap/plain: {ours / plain:.2f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
