"""Rule intervals (CPU): the map curve of one (model, domain, method), its intervals and per-layer stability."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.job import Job
from kmap.core.tables import REPLICATE_COLUMNS, read_table
from kmap.maps.curves import CELL_COLUMNS, INTERVAL_COLUMNS, MapSettings, curve_intervals, domain_curve


def main(job: Job) -> None:
    method, domain = job.wildcards["method"], job.domain
    settings = MapSettings.from_dict(job.params["map"])
    # Ablation has two tables (judge-free, judge): candidates may come from either. A contrasted method also
    # reads the model's other domains (the control its curve is compared with).
    metrics = pd.concat([read_table(path) for path in job.smk.input.metrics], ignore_index=True)
    replicates = pd.concat(
        [read_table(path, REPLICATE_COLUMNS) for path in job.smk.input.replicates], ignore_index=True
    )
    curve = domain_curve(metrics, replicates, method, domain, settings)
    if curve is None:
        candidates, _ = settings.candidates(method, domain)
        job.log.warning("%s: none of %s has a finite value; no interval", job.label, candidates)
        intervals, cells = pd.DataFrame(columns=list(INTERVAL_COLUMNS)), pd.DataFrame(columns=list(CELL_COLUMNS))
    else:
        intervals, cells = curve_intervals(curve, settings.rule_params())
        if curve.note:
            # Read by knowledge_map, which prints it under the map.
            job.note(map_note=f"{domain}, {method}: {curve.note}")
            job.log.warning("%s: %s", job.label, curve.note)
        found = ", ".join(f"{r.start}-{r.end}" for r in intervals.itertuples()) or "no interval"
        job.log.info("%s: %s, contrast %s (%s rule) -> %s", job.label, curve.metric, curve.contrast, curve.rule, found)
    job.write_frame(intervals, job.smk.output.intervals)
    job.write_frame(cells, job.smk.output.cells)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
