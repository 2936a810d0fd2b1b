"""The tidy tables every method writes and every map reads.

metrics: one row per (model, domain, layer, metric) with value, 95 % bootstrap CI and n (prompts or pairs
used); ``note`` says why a value is NaN (too few prompts per label, excluded pairs, ...).
replicates: one row per (model, domain, layer, metric, replicate) with the bootstrap replicate value.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kmap.io import atomic_output

METRIC_COLUMNS = ("model", "domain", "method", "layer", "metric", "value", "ci_low", "ci_high", "n", "note")
REPLICATE_COLUMNS = ("model", "domain", "method", "layer", "metric", "replicate", "value")

_DTYPES = {
    "model": "string",
    "domain": "string",
    "method": "string",
    "layer": "int64",
    "metric": "string",
    "value": "float64",
    "ci_low": "float64",
    "ci_high": "float64",
    "n": "int64",
    "note": "string",
    "replicate": "int64",
}


def tidy(frame: pd.DataFrame, columns: tuple[str, ...] = METRIC_COLUMNS) -> pd.DataFrame:
    """Check and order the columns, cast dtypes, sort rows (deterministic files for identical results)."""
    frame = frame.copy()
    if "note" in columns and "note" not in frame:
        frame["note"] = ""
    missing = [c for c in columns if c not in frame]
    if missing:
        raise ValueError(f"metric table lacks columns {missing}")
    frame = frame[list(columns)].astype({c: _DTYPES[c] for c in columns})
    if "note" in frame:
        frame["note"] = frame["note"].fillna("")
    keys = [c for c in ("model", "domain", "method", "metric", "layer", "replicate") if c in columns]
    return frame.sort_values(keys, kind="stable").reset_index(drop=True)


def write_table(frame: pd.DataFrame, path: str | Path, columns: tuple[str, ...] = METRIC_COLUMNS) -> None:
    """Parquet (and a CSV beside it when the path asks for one), each written atomically."""
    frame = tidy(frame, columns)
    path = Path(path)
    with atomic_output(path) as tmp:
        if path.suffix == ".csv":
            frame.to_csv(tmp, index=False)
        else:
            frame.to_parquet(tmp, index=False)


def read_table(path: str | Path, columns: tuple[str, ...] = METRIC_COLUMNS) -> pd.DataFrame:
    path = Path(path)
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return tidy(frame, columns)
