"""Settings dataclasses built from config sections: one place that rejects unknown keys by name."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def known_keys(cls: type, values: Mapping[str, Any] | None, section: str, word: str = "setting") -> dict[str, Any]:
    """``values`` as a dict, after checking every key is a field of dataclass ``cls`` (the error names the
    config section, the unknown keys and the known ones)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise ValueError(f"{section}: unknown {word}(s) {unknown}; known: {sorted(known)}")
    return dict(values or {})
