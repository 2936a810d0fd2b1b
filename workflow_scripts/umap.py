"""Rule umap (CPU): method 1, representation geometry of one (model, domain) from the activation cache."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

from kmap.activations.cache import check_cache, read_cache
from kmap.core.figures import curve_figure
from kmap.core.job import Job
from kmap.core.tables import REPLICATE_COLUMNS
from kmap.data.prompts import load_prompt_set
from kmap.methods.umap.embedding import UmapParams
from kmap.methods.umap.figures import panel_layers, umap_panels

CAPTION = (
    "Silhouette on the 30-d UMAP (silhouette:*) and on raw activations with cosine distance (silhouette_raw:*); "
    "bands are 95 % bootstrap CIs over prompts."
)


def main(job: Job) -> None:
    out, model, domain = job.smk.output, job.model, job.domain
    params = UmapParams.from_dict(job.params["umap"])
    cache = read_cache(job.smk.input.tensor, job.smk.input.table)
    check_cache(cache, job.smk.input.tensor, job.smk.input.prompts)
    group_labels = load_prompt_set(domain, job.params["prompts_dir"]).group_labels

    from kmap.methods.umap.measure import run_geometry  # imports umap (slow) only once inputs are valid

    bootstrap = job.params["bootstrap"]
    result = run_geometry(
        cache,
        model,
        domain,
        group_labels,
        params,
        bootstrap["n"],
        bootstrap["seed"],
        progress=job.progress("layers"),
        workers=job.smk.threads,
    )
    job.write_table(result.metrics, out.metrics)
    job.write_table(result.replicates, out.replicates, REPLICATE_COLUMNS)
    job.write_frame(result.coords, out.coords)
    job.write_frame(result.findings, out.findings)
    shown = result.metrics[~result.metrics["metric"].str.startswith("effective_rank")]
    curve_figure(shown, out.curves_png, out.curves_pdf, f"{model} · {domain}: representation geometry", CAPTION)
    style = {
        "age": dict(colour_by="age", split_by="gender"),
        "progression": dict(colour_by="stage_index", trajectory_by="disease"),
    }.get(domain, dict(colour_by=group_labels[0] if group_labels else "id"))
    umap_panels(
        result.coords,
        layers=panel_layers(cache.layers, params.panel_layers),
        out_png=out.panels_png,
        out_pdf=out.panels_pdf,
        title=f"{model} · {domain}: 2-d UMAP by layer",
        **style,
    )
    job.log.info("umap %s done: %d metric rows", job.label, len(result.metrics))


# Layers are embedded in spawned worker processes, which re-import this file as __mp_main__: only the
# process Snakemake started runs the job.
if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
