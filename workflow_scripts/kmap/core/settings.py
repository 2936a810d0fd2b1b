"""Settings: the config schema is the one home of every default, and settings dataclasses read theirs from it.

``default("umap", "n_epochs")`` is the schema's default of ``umap.n_epochs``; each settings dataclass field uses
it, so the schema (validated and filled at parse), the code, and config/README.md (generated from the schema
by tools/config_docs.py) cannot drift apart.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Mapping
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from kmap.core.io import load_yaml

SCHEMA_PATH = Path(__file__).resolve().parents[3] / "config" / "schema.yaml"


@functools.cache
def schema() -> dict[str, Any]:
    return load_yaml(SCHEMA_PATH)


def default(section: str, key: str) -> Any:
    """The schema's default of ``section.key`` (a copy: callers may not mutate the schema)."""
    prop = schema()["properties"][section]["properties"][key]
    if "default" not in prop:
        raise KeyError(f"{SCHEMA_PATH}: {section}.{key} has no default")
    return _filled(prop)


def _filled(prop: dict[str, Any]) -> Any:
    """A property's default, objects filled with their own properties' defaults (as validation fills them)."""
    value = copy.deepcopy(prop.get("default"))
    if isinstance(value, dict):
        for key, sub in prop.get("properties", {}).items():
            if key not in value and "default" in sub:
                value[key] = _filled(sub)
    return value


def schema_field(section: str, key: str) -> Any:
    """A dataclass field defaulting to the schema's default (a fresh copy for lists and dicts)."""
    value = default(section, key)
    if isinstance(value, list | dict):
        return field(default_factory=lambda: default(section, key))
    return field(default=value)


def known_keys(cls: type, values: Mapping[str, Any] | None, section: str, word: str = "setting") -> dict[str, Any]:
    """``values`` as a dict, after checking every key is a field of dataclass ``cls`` (the error names the
    config section, the unknown keys and the known ones)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values or {}) - known)
    if unknown:
        raise ValueError(f"{section}: unknown {word}(s) {unknown}; known: {sorted(known)}")
    return dict(values or {})
