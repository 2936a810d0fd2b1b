"""The tidy tables every method writes and every map reads, each carrying its provenance.

metrics: one row per (model, domain, layer, metric) with value, 95 % bootstrap CI and n (prompts or pairs
used); ``note`` says why a value is NaN (too few prompts per label, excluded pairs, ...).
replicates: one row per (model, domain, layer, metric, replicate) with the bootstrap replicate value.
Raw tables (per prompt, per pair) are written by ``write_frame`` as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from kmap.core.io import atomic_output, write_json_atomic
from kmap.core.provenance import KEY, sidecar, to_json

# Layer numbering in every table: -1 is the embeddings, 0..L-1 the decoder layers.
EMBEDDINGS = -1

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


def write_frame(frame: pd.DataFrame, path: str | Path, provenance: Mapping[str, Any] | None = None) -> None:
    """Write ``frame`` as it is, atomically: Parquet with the provenance in its schema metadata, or CSV with
    a ``.provenance.json`` sidecar (written first, so a complete CSV always has one)."""
    path = Path(path)
    if path.suffix == ".csv":
        if provenance is not None:
            write_json_atomic(sidecar(path), dict(provenance))
        with atomic_output(path) as tmp:
            frame.to_csv(tmp, index=False)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(frame, preserve_index=False)
    if provenance is not None:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), KEY.encode(): to_json(provenance)})
    with atomic_output(path) as tmp:
        pq.write_table(table, tmp)


def write_table(
    frame: pd.DataFrame,
    path: str | Path,
    columns: tuple[str, ...] = METRIC_COLUMNS,
    provenance: Mapping[str, Any] | None = None,
) -> None:
    """A tidy metric (or replicate) table: Parquet, or CSV when the path asks for one."""
    write_frame(tidy(frame, columns), path, provenance)


def read_table(path: str | Path, columns: tuple[str, ...] = METRIC_COLUMNS) -> pd.DataFrame:
    path = Path(path)
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    return tidy(frame, columns)
