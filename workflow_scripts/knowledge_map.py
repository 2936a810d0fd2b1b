"""Snakemake entry: one model's knowledge map (Domain × Layer, each method's intervals, consensus)."""

import pandas as pd

from kmap.io import atomic_output
from kmap.knowledge_map import MapSettings, consensus, read_cells
from kmap.map_figure import draw_map
from kmap.runner import setup


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0])
    model = sm.wildcards.model
    settings = MapSettings.from_dict(sm.params.map)
    cells = read_cells(sm.input.cells)
    intervals = pd.concat([pd.read_parquet(path) for path in sm.input.intervals], ignore_index=True)
    agree = consensus(cells, settings.consensus_methods)
    drawn = draw_map(cells, agree, sm.output.png, sm.output.pdf, f"{model}: knowledge map")
    for frame, path in ((cells, sm.output.cells), (agree, sm.output.consensus)):
        with atomic_output(path) as tmp:
            frame.to_parquet(tmp, index=False)
    with atomic_output(sm.output.intervals) as tmp:
        intervals.to_csv(tmp, index=False)
    log.info("%s: %d selected cells, %d consensus cells", model, drawn["selected_cells"], drawn["consensus_cells"])


if __name__ == "__main__":
    main()
