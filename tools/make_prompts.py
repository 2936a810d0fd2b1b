"""Regenerate the prompt sets and patching pairs under prompts/ from prompts/knowledge.yaml.

    python tools/make_prompts.py [--prompts prompts] [--check]

Deterministic: the same knowledge base always gives byte-identical files. --check exits 1 if a committed
file differs from what the generator writes (a hand edit, or a knowledge change not regenerated).
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1] / "workflow_scripts"))  # after installed packages

from kmap.data.generation import PROMPT_BUILDERS, build_pairs, build_prompts  # noqa: E402
from kmap.data.knowledge import load_knowledge  # noqa: E402


def render(frame) -> str:
    buffer = io.StringIO()
    frame.to_csv(buffer, index=False, lineterminator="\n")
    return buffer.getvalue()


def generated(prompts_dir: Path) -> dict[Path, str]:
    kb = load_knowledge(prompts_dir / "knowledge.yaml")
    files = {}
    for domain in PROMPT_BUILDERS:
        files[prompts_dir / f"{domain}.csv"] = render(build_prompts(kb, domain))
        files[prompts_dir / "pairs" / f"{domain}.csv"] = render(build_pairs(kb, domain))
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=Path, default=Path("prompts"))
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for path, text in generated(args.prompts).items():
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10)) - 1} rows)")
    for path in stale:
        print(f"differs from the generator: {path}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
