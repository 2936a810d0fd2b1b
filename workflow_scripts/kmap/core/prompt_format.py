"""How a prompt reaches the model: as raw text, or inside the tokenizer's chat template with a fixed instruction.

The study's models are instruction-tuned; free generation (ablation) is most natural in their chat format, while
measurements at fixed positions (activations, saliency, patching) read the raw clinical sentence by default
(config ``prompt_format``, overridable per model; docs/methods.md). Every position kmap uses (concept tokens, the
answer position, answer tokens) is computed on the formatted token sequence.

A chat template writes the model's special tokens itself (Llama 3's ``<|begin_of_text|>``, Gemma's ``<bos>``), so
formatted text is tokenised without adding special tokens again: exactly one BOS, as in the model's own chat use.
In the chat format an answer starts the assistant's turn, so its tokens are those of the answer with no leading
space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MODES = ("raw", "chat", "auto")
DEFAULT_INSTRUCTION = "Continue the following clinical text."


class PromptFormatError(ValueError):
    pass


@dataclass(frozen=True)
class PromptFormat:
    mode: str = "raw"  # raw | chat | auto (chat where the tokenizer has a chat template)
    instruction: str = DEFAULT_INSTRUCTION

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise PromptFormatError(f"prompt_format {self.mode!r}: must be one of {MODES}")

    @classmethod
    def from_param(cls, value: dict[str, Any] | None) -> PromptFormat:
        return cls(**value) if value else cls()

    def resolve(self, tokenizer: Any) -> PromptFormat:
        """``auto`` made concrete for this tokenizer; ``chat`` without a template is an error naming the fix."""
        has_template = bool(getattr(tokenizer, "chat_template", None))
        if self.mode == "auto":
            return PromptFormat("chat" if has_template else "raw", self.instruction)
        if self.mode == "chat" and not has_template:
            raise PromptFormatError(
                "prompt_format chat: the model's tokenizer has no chat template (tokenizer_config.json "
                "'chat_template' or chat_template.jinja); set prompt_format to raw or auto for this model"
            )
        return self

    @property
    def chat(self) -> bool:
        if self.mode == "auto":
            raise PromptFormatError("prompt_format auto must be resolved against the tokenizer first")
        return self.mode == "chat"

    def render(self, tokenizer: Any, text: str) -> tuple[str, int]:
        """The formatted text and the character offset where ``text`` begins inside it."""
        if not self.chat:
            return text, 0
        content = f"{self.instruction}\n\n{text}" if self.instruction else text
        # enable_thinking=False: reasoning models (Qwen3) answer at once, so a layer's effect shows in the answer
        # rather than in a thinking block; templates without the switch ignore it.
        formatted = tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True, enable_thinking=False
        )
        start = formatted.rfind(text)
        if start < 0:
            raise PromptFormatError(f"the chat template dropped or rewrote the prompt {text!r}")
        return formatted, start

    @property
    def add_special_tokens(self) -> bool:
        return not self.chat

    @property
    def answer_joiner(self) -> str:
        """What separates a prompt from its answer: a space inside a sentence, nothing at the start of a turn."""
        return "" if self.chat else " "

    def ids(self, tokenizer: Any, text: str) -> list[int]:
        formatted, _ = self.render(tokenizer, text)
        return list(tokenizer(formatted, add_special_tokens=self.add_special_tokens)["input_ids"])

    def continuation(self, tokenizer: Any, text: str, answer: str) -> list[int]:
        """Tokens of ``answer`` as they follow the formatted ``text``."""
        from kmap.core.tokens import continuation

        formatted, _ = self.render(tokenizer, text)
        return continuation(
            tokenizer, formatted, answer, joiner=self.answer_joiner, add_special_tokens=self.add_special_tokens
        )


RAW = PromptFormat()  # the default of every measurement function: the clinical text as written
