"""Snakemake entry: the map curve of one (model, domain, method), its intervals and per-layer stability."""

import pandas as pd

from kmap.io import atomic_output
from kmap.knowledge_map import CELL_COLUMNS, INTERVAL_COLUMNS, MapSettings, curve_intervals, map_curve
from kmap.runner import setup
from kmap.tables import REPLICATE_COLUMNS, read_table


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0])
    model, domain, method = sm.wildcards.model, sm.wildcards.domain, sm.wildcards.method
    settings = MapSettings.from_dict(sm.params.map)
    # Ablation has two tables (judge-free, judge): candidates may come from either.
    metrics = pd.concat([read_table(path) for path in sm.input.metrics], ignore_index=True)
    replicates = pd.concat([read_table(path, REPLICATE_COLUMNS) for path in sm.input.replicates], ignore_index=True)
    curve = map_curve(metrics, replicates, method, domain, settings)
    if curve is None:
        candidates, _ = settings.candidates(method, domain)
        log.warning("%s/%s/%s: none of %s has a finite value; no interval", model, domain, method, candidates)
        intervals, cells = pd.DataFrame(columns=list(INTERVAL_COLUMNS)), pd.DataFrame(columns=list(CELL_COLUMNS))
    else:
        intervals, cells = curve_intervals(curve, settings.rule_params())
        log.info(
            "%s/%s/%s: %s (%s rule) -> %s",
            model,
            domain,
            method,
            curve.metric,
            curve.rule,
            ", ".join(f"{r.start}-{r.end}" for r in intervals.itertuples()) or "no interval",
        )
    for frame, path in ((intervals, sm.output.intervals), (cells, sm.output.cells)):
        with atomic_output(path) as tmp:
            frame.to_parquet(tmp, index=False)


if __name__ == "__main__":
    main()
