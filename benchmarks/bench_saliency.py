"""Saliency throughput (prompts/s): kmap at several batch sizes vs a plain full backward per prompt.

    python benchmarks/bench_saliency.py --model results/models/demo --domain disease --prompts-n 64

"kmap b=N" is ``kmap.methods.saliency.measure.run_saliency`` with ``batch_size`` N: at 1, one backward per
prompt in which only the measured (attention and MLP) weights require gradients, each reduced to its |grad|
sum and freed as soon as it is accumulated; above 1, N prompts per forward and backward, each prompt's weight
gradients formed from its own rows (``kmap.methods.saliency.batched``). "plain" is the textbook computation:
every parameter requires grad, ``loss.backward()`` per prompt, then the per-layer |grad| means read from
``.grad`` (memory: a second copy of the model). All give the same numbers (max relative difference to plain
printed). Medians of interleaved repeats.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_scripts"))  # after installed packages

from common import load  # noqa: E402

from kmap.core.models import LoadedModel  # noqa: E402
from kmap.core.tokens import continuation  # noqa: E402
from kmap.data.prompts import load_prompt_set  # noqa: E402
from kmap.methods.saliency.measure import run_saliency, target_loss  # noqa: E402
from kmap.methods.saliency.settings import SaliencySettings  # noqa: E402
from kmap.methods.saliency.summary import per_prompt  # noqa: E402


def plain_saliency(loaded: LoadedModel, texts: list[str], targets: list[str]) -> np.ndarray:
    """Combined saliency [n_prompts, n_layers] with every parameter's gradient kept until read."""
    params = list(loaded.model.parameters())
    for p in params:
        p.requires_grad_(True)
    parts = [
        [*loaded.parts.attention(layer).parameters(), *loaded.parts.mlp(layer).parameters()]
        for layer in range(loaded.n_layers)
    ]
    out = []
    try:
        for text, target in zip(texts, targets, strict=True):
            loaded.model.zero_grad(set_to_none=True)
            prompt = loaded.tokenizer(text)["input_ids"]
            with torch.enable_grad():
                target_loss(loaded, prompt, continuation(loaded.tokenizer, text, target)).backward()
            out.append(
                [float(sum(p.grad.abs().sum() for p in layer)) / sum(p.numel() for p in layer) for layer in parts]
            )
    finally:
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return np.array(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="results/models/demo")
    parser.add_argument("--prompts", default="prompts")
    parser.add_argument("--domain", default="disease")
    parser.add_argument("--prompts-n", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-sizes", default="1,8,32,64", help="kmap batch sizes, comma-separated")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load(args.model, args.device, args.dtype)
    frame = load_prompt_set(args.domain, Path(args.prompts)).frame.head(args.prompts_n)
    texts, targets = frame["text"].tolist(), frame["target"].tolist()
    plain_values = plain_saliency(loaded, texts, targets)
    sides = {"plain": lambda: plain_saliency(loaded, texts, targets)}
    difference = {}
    for size in map(int, args.batch_sizes.split(",")):
        settings = SaliencySettings(batch_size=size)
        values = per_prompt(run_saliency(loaded, frame, settings))["saliency_combined"]
        difference[size] = float(np.max(np.abs(values - plain_values) / np.abs(plain_values)))
        sides[f"kmap b={size}"] = lambda settings=settings: run_saliency(loaded, frame, settings)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for _ in range(args.repeats):  # interleaved, so drift in machine load hits both alike
        for name, fn in sides.items():
            start = time.perf_counter()
            fn()
            rates[name].append(len(frame) / (time.perf_counter() - start))
    print(
        f"model={args.model} layers={loaded.n_layers} domain={args.domain} prompts={len(frame)} "
        f"threads={args.threads}; max relative difference to plain: "
        + ", ".join(f"b={size} {value:.1e}" for size, value in difference.items())
    )
    for name, values in rates.items():
        print(f"{name:10s}: median {statistics.median(values):8.1f} prompts/s over {args.repeats}")


if __name__ == "__main__":
    main()
