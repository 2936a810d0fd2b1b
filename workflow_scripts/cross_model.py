"""Snakemake entry: the cross-model map (every model on relative depth) and Table 1 (best layer per concept)."""

import pandas as pd

from kmap.io import atomic_output, write_text_atomic
from kmap.knowledge_map import concept_curves, markdown_table, read_cells, summary_table
from kmap.map_figure import draw_cross_model, summary_figure
from kmap.runner import setup
from kmap.tables import read_table


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0])
    cells = read_cells(sm.input.cells)
    agree = pd.concat([pd.read_parquet(path) for path in sm.input.consensus], ignore_index=True)
    drawn = draw_cross_model(cells, agree, sm.output.map_png, sm.output.map_pdf)
    log.info("cross-model map: %s", drawn)

    # Table 1 from the metric tables: one frame per (domain, method) holding every model's rows.
    tables = {}
    for path in sm.input.metrics:
        table = read_table(path)
        key = (str(table["domain"].iloc[0]), str(table["method"].iloc[0]))
        tables[key] = pd.concat([tables[key], table]) if key in tables else table
    table = summary_table(concept_curves(tables))
    with atomic_output(sm.output.table_csv) as tmp:
        table.to_csv(tmp, index=False)
    write_text_atomic(sm.output.table_md, markdown_table(table))
    bars = summary_figure(table, sm.output.table_png, sm.output.table_pdf)
    log.info("summary table: %d rows, %d finite", len(table), bars)


if __name__ == "__main__":
    main()
