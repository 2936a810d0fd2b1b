"""Tiny random-init models of the study's architectures, built offline from transformers configs.

They exist for coverage (every method runs on every architecture), not for science. Each gets a small
byte-level BPE tokenizer trained on the knowledge-base vocabulary, so, unlike the word-level demo model, they
exercise what hub tokenizers do: words split into several tokens, leading-space tokens, answers that are not
single tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from kmap.core.settings import default

ARCHITECTURES = ("llama", "qwen2", "qwen3", "gemma3", "gpt_oss")

_SPECIALS = ["<|pad|>", "<|bos|>", "<|eos|>", "<|unk|>"]


def tiny_config(
    architecture: str,
    vocab_size: int,
    *,
    n_layers: int = default("tiny", "n_layers"),
    hidden_size: int = default("tiny", "hidden_size"),
) -> Any:
    """A transformers config for a tiny model of ``architecture``."""
    import transformers as tf

    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=n_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    head_dim = hidden_size // 4
    if architecture == "llama":
        return tf.LlamaConfig(**common)
    if architecture == "qwen2":
        return tf.Qwen2Config(**common)
    if architecture == "qwen3":
        return tf.Qwen3Config(**common, head_dim=head_dim)
    if architecture == "gemma3":
        # Text-only Gemma-3 (as MedGemma-27B text); small sliding window so local and global layers differ.
        return tf.Gemma3TextConfig(**common, head_dim=head_dim, sliding_window=8)
    if architecture == "gpt_oss":
        return tf.GptOssConfig(
            **common, head_dim=head_dim, num_local_experts=4, num_experts_per_tok=2, sliding_window=8
        )
    raise ValueError(f"unknown tiny architecture {architecture!r}; choose one of {ARCHITECTURES}")


def train_bpe_tokenizer(words: Sequence[str], vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained on ``words`` (deterministic for a given word list)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Words with and without a leading space, as they occur inside sentences.
    lines = [" ".join(words)] + [f" {word}" for word in words]
    tokenizer.train_from_iterator(lines, trainer=trainer)
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<|bos|> $A", pair="<|bos|> $A <|bos|> $B", special_tokens=[("<|bos|>", 1)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<|pad|>",
        bos_token="<|bos|>",
        eos_token="<|eos|>",
        unk_token="<|unk|>",
    )


def build_tiny_model(
    architecture: str, words: Sequence[str], out_dir: str | Path, *, seed: int = default("tiny", "seed"), **shape: int
) -> None:
    """Write a random-init ``architecture`` model and its tokenizer to ``out_dir`` (safetensors)."""
    from transformers import AutoModelForCausalLM

    tokenizer = train_bpe_tokenizer(words)
    config = tiny_config(architecture, vocab_size=len(tokenizer), **shape)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    out = Path(out_dir)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
