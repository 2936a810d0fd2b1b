"""Rule intervals (CPU): one (model, method)'s map curve, intervals and per-layer stability for every domain."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from pathlib import Path

import pandas as pd

from kmap.core.job import Job
from kmap.core.tables import REPLICATE_COLUMNS, read_table
from kmap.maps.curves import CELL_COLUMNS, INTERVAL_COLUMNS, MapSettings, curve_intervals, domain_curve


def main(job: Job) -> None:
    method = job.wildcards["method"]
    settings = MapSettings.from_dict(job.params["map"])
    contrasted = settings.contrast.get(method, "none") == "others"
    # Ablation has two tables per domain (judge-free, judge): candidates may come from either.
    metric_paths, replicate_paths = list(job.smk.input.metrics), list(job.smk.input.replicates)
    metrics = pd.concat([read_table(path) for path in metric_paths], ignore_index=True)
    replicates = pd.concat([read_table(path, REPLICATE_COLUMNS) for path in replicate_paths], ignore_index=True)
    out = job.smk.output
    for domain, intervals_path, cells_path in zip(job.params["domains"], out.intervals, out.cells, strict=True):
        label = f"{job.model}/{domain}/{method}"
        # The tables this domain's curve reads: its own, and the other domains' when contrasted with them.
        read = [p for p in metric_paths + replicate_paths if contrasted or Path(p).name.startswith(f"{domain}.")]
        facts: dict[str, str] = {"domain": domain}
        curve = domain_curve(metrics, replicates, method, domain, settings)
        if curve is None:
            candidates, _ = settings.candidates(method, domain)
            job.log.warning("%s: none of %s has a finite value; no interval", label, candidates)
            intervals = pd.DataFrame(columns=list(INTERVAL_COLUMNS))
            cells = pd.DataFrame(columns=list(CELL_COLUMNS))
        else:
            intervals, cells = curve_intervals(curve, settings.rule_params())
            if curve.note:
                # Read by knowledge_map, which prints it under the map.
                facts["map_note"] = f"{domain}, {method}: {curve.note}"
                job.log.warning("%s: %s", label, curve.note)
            found = ", ".join(f"{r.start}-{r.end}" for r in intervals.itertuples()) or "no interval"
            job.log.info("%s: %s, contrast %s (%s rule) -> %s", label, curve.metric, curve.contrast, curve.rule, found)
        provenance = job.part_provenance(read, **facts)
        job.write_frame(intervals, intervals_path, provenance)
        job.write_frame(cells, cells_path, provenance)


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
