"""The one place that knows where each architecture keeps its parts.

Every method reaches a model's decoder layers, final norm, embeddings and LM head through ``parts(model)``;
no other module walks attribute paths or branches on a model's name.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class ArchPaths:
    """Dotted attribute paths, relative to the ``*ForCausalLM`` module."""

    base: str  # the decoder stack without the LM head
    layers: str
    norm: str
    embed: str
    attention: str = "self_attn"  # inside one decoder layer
    mlp: str = "mlp"


_TEXT = ArchPaths(base="model", layers="model.layers", norm="model.norm", embed="model.embed_tokens")
# Gemma-3 checkpoints with a vision tower load as Gemma3ForConditionalGeneration.
_MULTIMODAL = ArchPaths(
    base="model.language_model",
    layers="model.language_model.layers",
    norm="model.language_model.norm",
    embed="model.language_model.embed_tokens",
)

ARCHITECTURES: dict[str, ArchPaths] = {
    "llama": _TEXT,
    "mistral": _TEXT,
    "qwen2": _TEXT,
    "qwen3": _TEXT,
    "qwen3_moe": _TEXT,
    "gemma3_text": _TEXT,
    "gemma3": _MULTIMODAL,
    "gpt_oss": _TEXT,
}


def _resolve(root: nn.Module, dotted: str) -> nn.Module:
    module = root
    for name in dotted.split("."):
        module = getattr(module, name)
    return module


def arch_paths(model: nn.Module) -> ArchPaths:
    model_type = getattr(model.config, "model_type", None)
    paths = ARCHITECTURES.get(model_type)
    if paths is not None:
        return paths
    # Unknown type: accept it if it has the standard layout, so any HF decoder-only LM works.
    for candidate in (_TEXT, _MULTIMODAL):
        try:
            _resolve(model, candidate.layers)
        except AttributeError:
            continue
        return candidate
    raise ValueError(
        f"kmap does not know where model_type {model_type!r} keeps its decoder layers; "
        "add an entry to ARCHITECTURES in workflow_scripts/kmap/core/architectures.py"
    )


@dataclass(frozen=True)
class ModelParts:
    base: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    embed: nn.Module
    lm_head: nn.Module
    paths: ArchPaths

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def attention(self, layer: int) -> nn.Module:
        return _resolve(self.layers[layer], self.paths.attention)

    def mlp(self, layer: int) -> nn.Module:
        return _resolve(self.layers[layer], self.paths.mlp)


def parts(model: nn.Module) -> ModelParts:
    paths = arch_paths(model)
    return ModelParts(
        base=_resolve(model, paths.base),
        layers=_resolve(model, paths.layers),
        norm=_resolve(model, paths.norm),
        embed=_resolve(model, paths.embed),
        lm_head=model.get_output_embeddings(),
        paths=paths,
    )
