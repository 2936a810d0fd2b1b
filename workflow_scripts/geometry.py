"""Snakemake entry: representation geometry (UMAP, silhouette, age manifold, progression, collapse)."""

from kmap.activations import check_cache, read_cache
from kmap.embedding import UmapParams
from kmap.plotting import curve_figure, panel_layers, umap_panels
from kmap.prompts import load_prompt_set
from kmap.runner import progress_logger, setup
from kmap.tables import REPLICATE_COLUMNS, write_table


def main() -> None:
    sm = snakemake
    log = setup(sm.log[0], sm.threads)
    model, domain = sm.wildcards.model, sm.wildcards.domain
    params = UmapParams.from_dict(sm.params.umap)
    cache = read_cache(sm.input.tensor, sm.input.table)
    check_cache(cache, sm.input.tensor, sm.input.prompts)
    group_labels = load_prompt_set(domain, sm.params.prompts_dir).group_labels

    from kmap.umap_metrics import run_geometry  # imports umap (slow) only once inputs are valid

    result = run_geometry(
        cache,
        model,
        domain,
        group_labels,
        params,
        sm.params.bootstrap["n"],
        sm.params.bootstrap["seed"],
        progress=progress_logger(log, f"umap {model}/{domain} layers"),
        workers=sm.threads,
    )
    write_table(result.metrics, sm.output.metrics)
    write_table(result.replicates, sm.output.replicates, REPLICATE_COLUMNS)
    for frame, path in ((result.coords, sm.output.coords), (result.findings, sm.output.findings)):
        from kmap.io import atomic_output

        with atomic_output(path) as tmp:
            frame.to_parquet(tmp, index=False)
    shown = result.metrics[~result.metrics["metric"].str.startswith("effective_rank")]
    curve_figure(
        shown,
        sm.output.curves_png,
        sm.output.curves_pdf,
        f"{model} · {domain}: representation geometry",
        "Silhouette on the 30-d UMAP (silhouette:*) and on raw activations with cosine distance (silhouette_raw:*); "
        "bands are 95 % bootstrap CIs over prompts.",
    )
    layers = panel_layers(cache.layers, params.panel_layers)
    style = {
        "age": dict(colour_by="age", split_by="gender"),
        "progression": dict(colour_by="stage_index", trajectory_by="disease"),
    }.get(domain, dict(colour_by=group_labels[0] if group_labels else "id"))
    umap_panels(
        result.coords,
        layers=layers,
        out_png=sm.output.panels_png,
        out_pdf=sm.output.panels_pdf,
        title=f"{model} · {domain}: 2-d UMAP by layer",
        **style,
    )
    log.info("umap %s/%s done: %d metric rows", model, domain, len(result.metrics))


# Layers are embedded in spawned worker processes, which re-import this file as __mp_main__: only the
# process Snakemake started runs the job.
if __name__ == "__main__":
    main()
