"""Rule knowledge_map (CPU): one model's knowledge map (Domain × Layer, each method's intervals, consensus)."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.job import Job
from kmap.core.provenance import read_provenance
from kmap.maps.curves import MapSettings, consensus, read_cells
from kmap.maps.figures import draw_map


def main(job: Job) -> None:
    out = job.smk.output
    settings = MapSettings.from_dict(job.params["map"])
    cells = read_cells(job.smk.input.cells)
    intervals = pd.concat([pd.read_parquet(path) for path in job.smk.input.intervals], ignore_index=True)
    # Rows whose preferred metric could not stand (an unusable judge): said under the map and in its record.
    notes = [n for p in job.smk.input.intervals if (n := (read_provenance(p) or {}).get("map_note"))]
    job.note(notes=notes)
    agree = consensus(cells, settings.consensus_methods)
    drawn = draw_map(cells, agree, out.png, out.pdf, f"{job.model}: knowledge map", notes=notes)
    job.write_frame(cells, out.cells)
    job.write_frame(agree, out.consensus)
    job.write_frame(intervals, out.intervals)
    job.log.info(
        "%s: %d selected cells, %d consensus cells", job.model, drawn["selected_cells"], drawn["consensus_cells"]
    )


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
