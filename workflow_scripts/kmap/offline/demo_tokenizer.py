"""The demo model's word-level tokenizer: one token per word of the knowledge base (every age is one token)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

SPECIALS = ("<pad>", "<unk>", "<bos>", "<eos>")
WORD_PATTERN = r"\w+|[^\w\s]"  # as kmap.data.knowledge.split_words


def build_tokenizer(words: Sequence[str]) -> PreTrainedTokenizerFast:
    """A fast tokenizer splitting like ``kmap.data.knowledge.split_words``, lower-casing, prepending <bos>.

    Ids are the specials, then the words sorted, so the same word list always gives the same ids."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIALS)}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.normalizer = normalizers.Lowercase()
    # Split alone would keep the whitespace between matches as tokens; drop it first.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="isolated")]
    )
    # No decoder: tokenizers then joins tokens with single spaces, the corpus's own spelling.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<bos> $A", pair="<bos> $A <bos> $B", special_tokens=[("<bos>", vocab["<bos>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>"
    )
