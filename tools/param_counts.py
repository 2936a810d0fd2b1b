"""Rebuild config/hf_configs/param_counts.json: the parameter counts of every shipped architecture snapshot,
built on the meta device (torch, seconds each), so that planning GPUs at parse time needs no torch.

    python tools/param_counts.py           # rewrite the file
    python tools/param_counts.py --check   # exit 1 if it is missing an entry or holds a wrong one
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.append(str(REPO / "workflow_scripts"))

from kmap.core.gpu_plan import arch_key, meta_parameters  # noqa: E402

SNAPSHOTS = REPO / "config" / "hf_configs"
CACHE = SNAPSHOTS / "param_counts.json"


def expected() -> dict[str, dict[str, int]]:
    out = {}
    for path in sorted(SNAPSHOTS.glob("*--*.json")):
        arch = json.loads(path.read_text())
        out[arch_key(arch)] = {**meta_parameters(arch), "snapshot": path.name}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    want = expected()
    if args.check:
        have = json.loads(CACHE.read_text()) if CACHE.exists() else {}
        wrong = sorted(v["snapshot"] for k, v in want.items() if have.get(k) != v)
        if wrong:
            print(f"{CACHE}: stale for {wrong}; run python tools/param_counts.py", file=sys.stderr)
            return 1
        return 0
    CACHE.write_text(json.dumps(want, indent=2, sort_keys=True) + "\n")
    print(f"wrote {len(want)} entries to {CACHE}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
