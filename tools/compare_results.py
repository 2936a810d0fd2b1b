"""Compare the tables of two results directories, value by value (for refactors that must not change science).

    python tools/compare_results.py OLD_RESULTS NEW_RESULTS

Every Parquet and CSV table present in both (logs, benchmarks and caches aside) is read and compared exactly
(same columns, dtypes and values; NaN equals NaN); provenance metadata is ignored. Exits 1 on any difference
and lists the tables present in only one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

SKIP = {"logs", "benchmarks", "cache"}


def tables(root: Path) -> dict[str, Path]:
    return {
        str(p.relative_to(root)): p
        for p in root.rglob("*")
        if p.suffix in (".parquet", ".csv") and not SKIP & set(p.relative_to(root).parts)
    }


def read(path: Path) -> pd.DataFrame:
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


def main(old: Path, new: Path) -> int:
    before, after = tables(old), tables(new)
    same, differ = [], []
    for name in sorted(before.keys() & after.keys()):
        try:
            pd.testing.assert_frame_equal(read(before[name]), read(after[name]), check_exact=True)
            same.append(name)
        except AssertionError as error:
            differ.append(f"{name}: {str(error).splitlines()[0]}")
    print(f"identical: {len(same)} tables; different: {len(differ)}")
    for line in differ:
        print("  DIFFERENT", line)
    for name in sorted(before.keys() - after.keys()):
        print("  only in", old, name)
    for name in sorted(after.keys() - before.keys()):
        print("  only in", new, name)
    return 1 if differ else 0


if __name__ == "__main__":
    raise SystemExit(main(Path(sys.argv[1]), Path(sys.argv[2])))
