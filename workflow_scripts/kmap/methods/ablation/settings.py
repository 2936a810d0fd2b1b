"""Method 3 settings, read at parse time too (runtime budget, rerun params): no torch here."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kmap.core.settings import known_keys, schema_field

INTACT = -1
METHOD = "ablation"
PAIR_METRICS = ("kl", "logprob_drop", "token_overlap", "identical")


@dataclass(frozen=True)
class AblationSettings:
    max_new_tokens: int = schema_field("ablation", "max_new_tokens")
    batch_size: int = schema_field("ablation", "batch_size")
    layers: tuple[int, ...] | None = schema_field("ablation", "layers")

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("ablation.max_new_tokens must be at least 1")
        if self.batch_size < 1:
            raise ValueError("ablation.batch_size must be at least 1")
        if self.layers is not None:
            object.__setattr__(self, "layers", tuple(int(layer) for layer in self.layers))

    def chosen_layers(self, n_layers: int) -> list[int]:
        chosen = list(range(n_layers)) if self.layers is None else list(self.layers)
        bad = [layer for layer in chosen if not 0 <= layer < n_layers]
        if bad:
            raise ValueError(f"ablation.layers {bad} outside 0..{n_layers - 1}")
        return chosen


def settings_from_config(section: dict[str, Any] | None) -> AblationSettings:
    """``config['ablation']`` on the code's defaults (unknown keys rejected by name)."""
    return AblationSettings(**known_keys(AblationSettings, section, "ablation"))


def value_params(settings: AblationSettings) -> dict[str, Any]:
    """The settings that change results, for a rule's params (batch_size is a resource: it never does)."""
    return {"max_new_tokens": settings.max_new_tokens, "layers": settings.layers}
