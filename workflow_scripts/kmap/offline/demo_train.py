"""Train a demo model: a small Llama (or Qwen3, Gemma-3) with the word-level tokenizer on the synthetic medical corpus.

Deterministic for a seed on a given machine (seeded corpus, initialisation and batch order). Writes the model
in Hugging Face format (safetensors) so it loads through ``kmap.core.models`` like any hub model, plus its
training curve and held-out diagnosis accuracy.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch

from kmap.core.io import atomic_output, write_json_atomic
from kmap.core.settings import known_keys, schema_field
from kmap.core.spec import DEMO_ARCHITECTURES
from kmap.data.knowledge import Knowledge, vocabulary
from kmap.offline.demo_corpus import DEMO_WORDS, diagnosis_eval_cases, generate_corpus
from kmap.offline.demo_tokenizer import build_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoParams:
    seed: int = schema_field("demo", "seed")
    n_sentences: int = schema_field(
        "demo", "n_sentences"
    )  # training corpus size (sentences are sampled with replacement)
    n_layers: int = schema_field("demo", "n_layers")
    hidden_size: int = schema_field("demo", "hidden_size")
    n_heads: int = schema_field("demo", "n_heads")
    intermediate_size: int = schema_field("demo", "intermediate_size")
    max_len: int = schema_field("demo", "max_len")
    batch_size: int = schema_field("demo", "batch_size")
    pack_width: int = schema_field(
        "demo", "pack_width"
    )  # tokens per packed row: sentences share rows instead of padding
    steps: int = schema_field("demo", "steps")
    lr: float = schema_field("demo", "lr")
    warmup: int = schema_field("demo", "warmup")
    weight_decay: float = schema_field("demo", "weight_decay")
    eval_every: int = schema_field("demo", "eval_every")
    n_eval: int = schema_field("demo", "n_eval")
    torch_threads: int = schema_field("demo", "torch_threads")
    # The model entry's `architecture` (not a demo-section key): the same corpus and tokenizer, another family.
    architecture: str = "llama"

    def __post_init__(self) -> None:
        if self.architecture not in DEMO_ARCHITECTURES:
            raise ValueError(f"demo: architecture {self.architecture!r} is not one of {DEMO_ARCHITECTURES}")
        if self.hidden_size % self.n_heads:
            raise ValueError(f"demo: hidden_size {self.hidden_size} must be a multiple of n_heads {self.n_heads}")
        if self.pack_width < self.max_len:
            raise ValueError(f"demo: pack_width {self.pack_width} must be at least max_len {self.max_len}")
        for name in ("n_sentences", "n_layers", "batch_size", "steps", "eval_every", "n_eval", "torch_threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo: {name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_dict(cls, overrides: dict[str, Any] | None) -> DemoParams:
        return cls(**known_keys(cls, overrides, "demo", "parameter"))


class PackedBatch(NamedTuple):
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor


def demo_tokenizer(kb: Knowledge) -> PreTrainedTokenizerFast:
    """The tokenizer of the demo model: the knowledge base's words (never the prompt files) plus the corpus's."""
    return build_tokenizer(vocabulary(kb) + list(DEMO_WORDS))


def make_model(params: DemoParams, vocab_size: int, tokenizer: PreTrainedTokenizerFast) -> PreTrainedModel:
    """A randomly initialised model of the demo shape and ``params.architecture`` (seeded by ``params.seed``).

    Llama as in the study's Llama family; Qwen3 adds per-head query/key norms; Gemma-3 alternates sliding-window
    and global attention (window 8 here, five local layers per global one as in Gemma-3), scales the embeddings and
    uses GeGLU. Every family ties input and output embeddings, so the parameter counts stay comparable."""
    import transformers as tf

    common = dict(
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
        dtype="float32",
    )
    head_dim = params.hidden_size // params.n_heads
    if params.architecture == "qwen3":
        config = tf.Qwen3Config(**common, head_dim=head_dim)
    elif params.architecture == "gemma3":
        config = tf.Gemma3TextConfig(**common, head_dim=head_dim, sliding_window=8, query_pre_attn_scalar=head_dim)
    else:
        config = tf.LlamaConfig(**common)
    torch.manual_seed(params.seed)
    return tf.AutoModelForCausalLM.from_config(config, dtype=torch.float32)


def encode_corpus(
    tokenizer: PreTrainedTokenizerFast, sentences: list[str], max_len: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded token ids (n, max_len) and each sentence's length in tokens."""
    batch = tokenizer(sentences, padding="max_length", truncation=True, max_length=max_len, return_tensors="pt")
    return batch["input_ids"], batch["attention_mask"].sum(1)


def _first_fit(lengths: list[int], width: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of at most ``width`` (first fit, longest first)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        slot = next((b for b, free in enumerate(room) if free >= lengths[i]), len(bins))
        if slot == len(bins):
            bins.append([])
            room.append(width)
        bins[slot].append(i)
        room[slot] -= lengths[i]
    return bins


def pack_batch(ids: torch.Tensor, lengths: torch.Tensor, rows: torch.Tensor, width: int) -> PackedBatch:
    """Several sentences per row, each with its own positions 0..n-1.

    transformers reads position ids that restart as separate sequences and masks attention between them, so
    the loss equals that of one padded row per sentence, without computing the padding (40 % of it)."""
    chosen = [(ids[r, : int(lengths[r])], int(lengths[r])) for r in rows.tolist()]
    bins = _first_fit([n for _, n in chosen], width)
    input_ids = torch.zeros(len(bins), width, dtype=torch.long)
    positions = torch.zeros(len(bins), width, dtype=torch.long)
    labels = torch.full((len(bins), width), -100, dtype=torch.long)
    for row, members in enumerate(bins):
        start = 0
        for tokens, n in (chosen[i] for i in members):
            input_ids[row, start : start + n] = tokens
            positions[row, start : start + n] = torch.arange(n)
            # Position 0 (<bos>) is no target: the previous sentence must not learn to predict it.
            labels[row, start + 1 : start + n] = tokens[1:]
            start += n
        # Row padding continues the last sentence's positions: it joins that sentence, after all its tokens.
        last = int(positions[row, start - 1]) + 1
        positions[row, start:] = torch.arange(last, last + width - start)
    return PackedBatch(input_ids, positions, labels)


def last_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token, whichever side the tokenizer pads."""
    width = attention_mask.shape[1]
    return width - 1 - attention_mask.flip(1).argmax(1)


def diagnosis_accuracy(
    model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, items: list[tuple[str, str]]
) -> tuple[float, float]:
    """Greedy next word == expected first word of the diagnosis; and the mean loss on that word."""
    was_training = model.training
    model.eval()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for start in range(0, len(items), 64):
            chunk = items[start : start + 64]
            batch = tokenizer([prompt for prompt, _ in chunk], return_tensors="pt", padding=True)
            logits = model(**batch, use_cache=False).logits
            next_logits = logits[torch.arange(len(chunk)), last_positions(batch["attention_mask"])]
            expected = torch.tensor(tokenizer.convert_tokens_to_ids([answer for _, answer in chunk]))
            correct += int((next_logits.argmax(-1) == expected).sum())
            loss += torch.nn.functional.cross_entropy(next_logits, expected, reduction="sum").item()
    model.train(was_training)
    return correct / len(items), loss / len(items)


def learning_rate(step: int, params: DemoParams) -> float:
    """Linear warm-up, then cosine decay to 5 % of the peak."""
    if step < params.warmup:
        return params.lr * (step + 1) / params.warmup
    progress = (step - params.warmup) / max(1, params.steps - params.warmup)
    return params.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(
    kb: Knowledge, params: DemoParams, log: logging.Logger = _log
) -> tuple[PreTrainedModel, PreTrainedTokenizerFast, list[dict[str, float]], dict[str, Any]]:
    """Train in memory; return model, tokenizer, curve rows and final metrics."""
    torch.set_num_threads(params.torch_threads)
    started, cpu_started = time.perf_counter(), time.process_time()
    tokenizer = demo_tokenizer(kb)
    tokenizer.padding_side = "right"
    held_out = diagnosis_eval_cases(kb, params.n_eval, params.seed)
    eval_items = [(case.prompt, case.answer) for case in held_out]
    sentences = generate_corpus(kb, params.n_sentences, params.seed, held_out=held_out)
    ids, lengths = encode_corpus(tokenizer, sentences, params.max_len)
    model = make_model(params, len(tokenizer), tokenizer)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    order = torch.Generator().manual_seed(params.seed)
    log.info("demo: %d sentences, %d parameters, %d steps", len(sentences), model.num_parameters(), params.steps)
    curve: list[dict[str, float]] = []
    running: list[float] = []
    for step in range(params.steps):
        rows = torch.randint(0, len(sentences), (params.batch_size,), generator=order)
        batch = pack_batch(ids, lengths, rows, params.pack_width)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, params)
        loss = model(**batch._asdict(), use_cache=False).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        running.append(loss.item())
        if (step + 1) % params.eval_every == 0 or step + 1 == params.steps:
            accuracy, eval_loss = diagnosis_accuracy(model, tokenizer, eval_items)
            row = {
                "step": step + 1,
                "train_loss": float(np.mean(running)),
                "eval_loss": eval_loss,
                "diagnosis_accuracy": accuracy,
                "seconds": round(time.perf_counter() - started, 1),
            }
            curve.append(row)
            running = []
            log.info(
                "demo step %d: train loss %.3f, held-out diagnosis loss %.3f, accuracy %.3f (%.0f s)",
                *(row[k] for k in ("step", "train_loss", "eval_loss", "diagnosis_accuracy", "seconds")),
            )
    model.eval()
    metrics = {
        "diagnosis_accuracy": curve[-1]["diagnosis_accuracy"],
        "final_train_loss": curve[-1]["train_loss"],
        "final_eval_loss": curve[-1]["eval_loss"],
        "eval_items": len(eval_items),
        "train_sentences": len(sentences),
        "steps": params.steps,
        "n_layers": params.n_layers,
        "architecture": params.architecture,
        "seed": params.seed,
        "wall_seconds": round(time.perf_counter() - started, 1),
        # CPU time over all threads: with the machine shared, wall time alone says little.
        "cpu_seconds": round(time.process_time() - cpu_started, 1),
        "n_parameters": model.num_parameters(),
        "vocab_size": len(tokenizer),
        "torch_threads": params.torch_threads,
        "params": asdict(params),
    }
    return model, tokenizer, curve, metrics


def plot_curve(curve: list[dict[str, float]], png: Path, pdf: Path) -> None:
    from kmap.core.figures import plt, save

    steps = [row["step"] for row in curve]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.2))
    left.plot(steps, [row["train_loss"] for row in curve], marker=".", label="train loss")
    left.plot(steps, [row["eval_loss"] for row in curve], marker=".", label="held-out diagnosis loss")
    left.set_xlabel("step")
    left.set_ylabel("cross-entropy")
    left.legend(frameon=False)
    right.plot(steps, [row["diagnosis_accuracy"] for row in curve], marker=".", color="C2")
    right.axhline(0.95, ls="--", color="grey", lw=0.8)
    right.set_ylim(0, 1.02)
    right.set_xlabel("step")
    right.set_ylabel("held-out diagnosis accuracy")
    fig.suptitle("demo model training")
    fig.tight_layout()
    save(fig, png, pdf)


# Libraries whose versions can change the trained weights (initialisation, masking, tokenizer, kernels).
LIBRARIES = ("torch", "numpy", "transformers", "tokenizers", "accelerate", "safetensors")


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return f"{name} missing"


def cache_key(knowledge_path: str | Path, params: DemoParams) -> str:
    """Everything that decides the trained weights: the knowledge base, the parameters, the training code
    (this module's import closure) and the numeric libraries' versions."""
    import platform

    from kmap.core.io import file_sha256, stable_hash
    from kmap.core.provenance import code_version

    return stable_hash(
        {
            "knowledge": file_sha256(knowledge_path),
            "params": asdict(params),
            "code": code_version(Path(__file__)),
            "versions": [platform.python_version(), *(_version(name) for name in LIBRARIES)],
        }
    )


def default_cache_dir() -> Path | None:
    """Where trained demo models are kept for reuse: ``$KMAP_CACHE/demo`` (default ``~/.cache/kmap``;
    ``KMAP_CACHE=off`` disables it)."""
    from kmap.core.io import cache_root

    root = cache_root()
    return None if root is None else root / "demo"


def train_demo_model(
    knowledge_path: str | Path,
    params: DemoParams,
    out_dir: str | Path,
    results_dir: str | Path,
    log: logging.Logger = _log,
    provenance: dict[str, Any] | None = None,
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Train (or take from ``cache_dir``, keyed by ``cache_key``) and write the model directory and
    ``results_dir/{training_curve.csv,.png,.pdf,metrics.json}``, each carrying ``provenance``.

    Each output is renamed into place only when complete; metrics.json, which the workflow tracks, last."""
    import shutil

    import pandas as pd

    from kmap.core.provenance import DIRECTORY_FILE
    from kmap.core.tables import write_frame
    from kmap.data.knowledge import load_knowledge

    cached = Path(cache_dir) / cache_key(knowledge_path, params) if cache_dir else None
    if cached is not None and (cached / "metrics.json").is_file():
        log.info("demo model: reusing %s (same knowledge, parameters, code and library versions)", cached)
        curve = pd.read_csv(cached / "training_curve.csv").to_dict("records")
        metrics = json.loads((cached / "metrics.json").read_text())
        source: Path | None = cached / "model"
    else:
        model, tokenizer, curve, metrics = train(load_knowledge(knowledge_path), params, log)
        source = None
    results = Path(results_dir)
    with atomic_output(out_dir, directory=True) as tmp:
        if source is not None:
            shutil.copytree(source, tmp, dirs_exist_ok=True)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
            (tmp / "kmap_demo.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if provenance is not None:
            write_json_atomic(tmp / DIRECTORY_FILE, provenance)
    if cached is not None and source is None:
        _store(cached, Path(out_dir), curve, metrics)
        log.info("demo model cached in %s", cached)
    write_frame(pd.DataFrame(curve), results / "training_curve.csv", provenance)
    plot_curve(curve, results / "training_curve.png", results / "training_curve.pdf")
    write_json_atomic(results / "metrics.json", {**metrics, "provenance": provenance} if provenance else metrics)
    log.info("demo model written to %s, results to %s", out_dir, results)
    return metrics


def _store(cached: Path, model_dir: Path, curve: list[dict[str, float]], metrics: dict[str, Any]) -> None:
    """Put a trained model into the shared cache: built in a unique temporary directory and renamed into place
    in one step, so concurrent writers never see (or delete) each other's partial copies; the first wins."""
    import contextlib
    import os
    import shutil
    import tempfile

    import pandas as pd

    from kmap.core.provenance import DIRECTORY_FILE

    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        shutil.copytree(model_dir, tmp / "model", ignore=shutil.ignore_patterns(DIRECTORY_FILE))
        pd.DataFrame(curve).to_csv(tmp / "training_curve.csv", index=False)
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        # Another job may have cached the same key first: theirs is identical, so keep it.
        with contextlib.suppress(OSError):
            os.rename(tmp, cached)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
