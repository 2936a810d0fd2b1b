# Method 1, representation geometry: CPU only, reads the activation cache (never a model, never a GPU).


rule umap:
    input:
        tensor=f"{RESULTS}/activations/{{model}}/{{domain}}.safetensors",
        table=f"{RESULTS}/activations/{{model}}/{{domain}}.prompts.parquet",
        # Read for the labels, and to check the cache was built from this very file.
        prompts=prompt_file,
    output:
        metrics=f"{RESULTS}/umap/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/umap/{{model}}/{{domain}}.replicates.parquet",
        coords=f"{RESULTS}/umap/{{model}}/{{domain}}.coords.parquet",
        findings=f"{RESULTS}/umap/{{model}}/{{domain}}.findings.parquet",
        curves_png=method_figure("umap", "curves", "UMAP metrics"),
        curves_pdf=f"{RESULTS}/umap/{{model}}/{{domain}}.curves.pdf",
        panels_png=method_figure("umap", "panels", "UMAP panels"),
        panels_pdf=f"{RESULTS}/umap/{{model}}/{{domain}}.panels.pdf",
    log:
        f"{RESULTS}/logs/umap/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/umap/{{model}}/{{domain}}.tsv"
    conda:
        "../envs/cpu.yaml"
    # threads > 1 embeds layers in parallel worker processes; each worker pays ~30 s of start-up (torch, numba),
    # which pays off for the hub models' 36-80 layers, not for the 9-layer demo on 2 cores.
    threads: lambda w: 8 if SPECS[w.model].kind == "hf" else 1
    resources:
        **cpu_resources(mem_mb=4000, runtime=60),
    params:
        umap=config["umap"],
        bootstrap=config["bootstrap"],
        figures=config["figures"],
        prompts_dir=PROMPTS,
        code=code("umap"),
    script:
        "../workflow_scripts/umap.py"
