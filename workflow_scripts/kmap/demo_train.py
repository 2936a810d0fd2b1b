"""Train the demo model: a small Llama with the word-level tokenizer on the synthetic medical corpus.

Deterministic for a seed on a given machine (seeded corpus, initialisation and batch order). Writes the model
in Hugging Face format (safetensors) so it loads through ``kmap.models`` like any hub model, plus its
training curve and held-out diagnosis accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kmap.demo_corpus import diagnosis_eval_set, generate_corpus
from kmap.demo_tokenizer import build_tokenizer
from kmap.io import atomic_output, write_json_atomic
from kmap.knowledge import Knowledge, vocabulary

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoParams:
    seed: int = 0
    n_sentences: int = 100_000
    n_layers: int = 8
    hidden_size: int = 128
    n_heads: int = 4
    intermediate_size: int = 384
    max_len: int = 40
    batch_size: int = 96
    steps: int = 800
    lr: float = 3e-3
    warmup: int = 80
    weight_decay: float = 0.01
    eval_every: int = 200
    n_eval: int = 400
    torch_threads: int = 2

    @classmethod
    def from_dict(cls, overrides: dict[str, Any] | None) -> DemoParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides or {}) - known)
        if unknown:
            raise ValueError(f"demo: unknown parameter(s) {unknown}; known: {sorted(known)}")
        return cls(**(overrides or {}))


def make_model(params: DemoParams, vocab_size: int, tokenizer: Any) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=params.hidden_size,
        intermediate_size=params.intermediate_size,
        num_hidden_layers=params.n_layers,
        num_attention_heads=params.n_heads,
        num_key_value_heads=params.n_heads,
        max_position_embeddings=max(64, params.max_len),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(params.seed)
    return LlamaForCausalLM(config)


def encode_corpus(tokenizer: Any, sentences: list[str], max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    batch = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"]


def diagnosis_accuracy(model: torch.nn.Module, tokenizer: Any, items: list[tuple[str, str]]) -> tuple[float, float]:
    """Greedy next word == expected first word of the diagnosis; and the mean loss on that word."""
    model.eval()
    correct, losses = 0, []
    with torch.no_grad():
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            batch = tokenizer([prompt for prompt, _ in chunk], return_tensors="pt", padding=True)
            logits = model(**batch, use_cache=False).logits
            last = batch["attention_mask"].sum(1) - 1
            next_logits = logits[torch.arange(len(chunk)), last]
            expected = torch.tensor([tokenizer.convert_tokens_to_ids(answer) for _, answer in chunk])
            correct += int((next_logits.argmax(-1) == expected).sum())
            losses.append(torch.nn.functional.cross_entropy(next_logits, expected, reduction="sum").item())
    model.train()
    return correct / len(items), sum(losses) / len(items)


def _lr(step: int, params: DemoParams) -> float:
    if step < params.warmup:
        return params.lr * (step + 1) / params.warmup
    progress = (step - params.warmup) / max(1, params.steps - params.warmup)
    return params.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(kb: Knowledge, params: DemoParams) -> tuple[torch.nn.Module, Any, list[dict[str, float]], dict[str, Any]]:
    """Train in memory; return model, tokenizer, curve rows and final metrics."""
    torch.set_num_threads(params.torch_threads)
    started = time.perf_counter()
    tokenizer = build_tokenizer(vocabulary(kb))
    tokenizer.padding_side = "right"
    eval_items = diagnosis_eval_set(kb, params.n_eval, params.seed)
    sentences = generate_corpus(kb, params.n_sentences, params.seed, exclude={p for p, _ in eval_items})
    input_ids, attention = encode_corpus(tokenizer, sentences, params.max_len)
    labels = input_ids.masked_fill(attention == 0, -100)
    model = make_model(params, len(tokenizer), tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    order = torch.Generator().manual_seed(params.seed)
    curve: list[dict[str, float]] = []
    running = []
    for step in range(params.steps):
        rows = torch.randint(0, len(sentences), (params.batch_size,), generator=order)
        # Trim shared padding: short sentences make most of a batch padding.
        width = int(attention[rows].sum(1).max())
        out = model(
            input_ids=input_ids[rows, :width],
            attention_mask=attention[rows, :width],
            labels=labels[rows, :width],
            use_cache=False,
        )
        for group in optimizer.param_groups:
            group["lr"] = _lr(step, params)
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(out.loss.item())
        if (step + 1) % params.eval_every == 0 or step + 1 == params.steps:
            accuracy, eval_loss = diagnosis_accuracy(model, tokenizer, eval_items)
            row = {
                "step": step + 1,
                "train_loss": float(np.mean(running)),
                "eval_loss": eval_loss,
                "diagnosis_accuracy": accuracy,
                "seconds": time.perf_counter() - started,
            }
            curve.append(row)
            running = []
            log.info(
                "step %d: train loss %.3f, held-out diagnosis loss %.3f, accuracy %.3f (%.0f s)",
                row["step"],
                row["train_loss"],
                eval_loss,
                accuracy,
                row["seconds"],
            )
    model.eval()
    metrics = {
        "diagnosis_accuracy": curve[-1]["diagnosis_accuracy"],
        "final_train_loss": curve[-1]["train_loss"],
        "eval_items": len(eval_items),
        "train_sentences": len(sentences),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "vocab_size": len(tokenizer),
        "torch_threads": params.torch_threads,
        "params": asdict(params),
    }
    return model, tokenizer, curve, metrics


def plot_curve(curve: list[dict[str, float]], png: Path, pdf: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(steps, [row["train_loss"] for row in curve], label="train loss")
    left.plot(steps, [row["eval_loss"] for row in curve], label="held-out diagnosis loss")
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy")
    left.legend(frameon=False)
    right.plot(steps, [row["diagnosis_accuracy"] for row in curve], color="C2")
    right.axhline(0.95, ls="--", color="grey", lw=0.8)
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("held-out diagnosis accuracy")
    fig.suptitle("demo model training")
    fig.tight_layout()
    for path in (png, pdf):
        with atomic_output(path) as tmp:
            fig.savefig(tmp, format=path.suffix.lstrip("."), dpi=150)
    plt.close(fig)


def train_demo_model(kb: Knowledge, params: DemoParams, out_dir: str | Path, results_dir: str | Path) -> dict:
    """Train and write the model directory and ``results_dir/{training_curve.csv,.png,.pdf,metrics.json}``."""
    model, tokenizer, curve, metrics = train(kb, params)
    results = Path(results_dir)
    with atomic_output(out_dir, directory=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "kmap_demo.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    import pandas as pd

    with atomic_output(results / "training_curve.csv") as tmp:
        pd.DataFrame(curve).to_csv(tmp, index=False)
    plot_curve(curve, results / "training_curve.png", results / "training_curve.pdf")
    write_json_atomic(results / "metrics.json", metrics)
    return metrics
