"""Rule cross_model (CPU): the cross-model map (every model on relative depth) and Table 1 (best layer per
concept)."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.job import Job
from kmap.core.tables import read_table
from kmap.maps.curves import read_cells
from kmap.maps.figures import draw_cross_model, summary_figure
from kmap.maps.table1 import concept_curves, markdown_table, read_study, summary_table, with_study


def main(job: Job) -> None:
    out = job.smk.output
    cells = read_cells(job.smk.input.cells)
    agree = pd.concat([pd.read_parquet(path) for path in job.smk.input.consensus], ignore_index=True)
    job.log.info("cross-model map: %s", draw_cross_model(cells, agree, out.map_png, out.map_pdf))
    # Table 1 from the metric tables: one frame per (domain, method) holding every model's rows.
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    for path in job.smk.input.metrics:
        table = read_table(path)
        key = (str(table["domain"].iloc[0]), str(table["method"].iloc[0]))
        tables[key] = pd.concat([tables[key], table]) if key in tables else table
    table = summary_table(concept_curves(tables))
    if job.smk.input.study:
        study = read_study(job.smk.input.study)
        table = with_study(table, study, job.params["sources"])
        job.log.info(
            "study reference %s: %d of %d rows matched",
            job.smk.input.study,
            table["study_value"].notna().sum(),
            len(table),
        )
    job.write_frame(table, out.table_csv)
    job.write_text(out.table_md, markdown_table(table))
    bars = summary_figure(table, out.table_png, out.table_pdf)
    job.log.info("summary table: %d rows, %d finite", len(table), bars)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
