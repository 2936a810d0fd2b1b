# Method 4, activation patching. The GPU job runs clean and corrupted prompts once per pair, then an exact
# layer sweep that reuses them (forward stage of the model's GPU plan); a CPU job summarises the per-pair LDs.


rule patching:
    input:
        pairs=f"{PROMPTS}/pairs/{{domain}}.csv",
        model=local_model_dir,
        weights=staged_weights,
        preflight=preflight_table("patching"),
    output:
        pairs=f"{RESULTS}/patching/{{model}}/{{domain}}.pairs.parquet",
        heatmap=f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.parquet",
    log:
        f"{RESULTS}/logs/patching/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patching/{{model}}/{{domain}}.tsv"
    # One retry of a failed job, with half the batch size (a CUDA out-of-memory at the planned batch).
    retries: 1
    conda:
        "../envs/gpu.yaml"
    threads: planned("forward", "cpus")
    resources:
        **model_resources("forward", "patching"),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings=without_batch_size("patching", "min_pairs"),
        prompts_dir=lambda w, input: str(Path(input.pairs).parent.parent),
        prompt_format=formatted("patching"),
        code=code("patching"),
    script:
        "../workflow_scripts/patching.py"


rule patching_summary:
    input:
        pairs=f"{RESULTS}/patching/{{model}}/{{domain}}.pairs.parquet",
        heatmap=f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.parquet",
    output:
        metrics=f"{RESULTS}/patching/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/patching/{{model}}/{{domain}}.replicates.parquet",
        curves_png=method_figure("patching", "curves", "patching"),
        curves_pdf=f"{RESULTS}/patching/{{model}}/{{domain}}.curves.pdf",
        heatmap_png=method_figure("patching", "heatmap", "patching heatmap"),
        heatmap_pdf=f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.pdf",
    log:
        f"{RESULTS}/logs/patching_summary/{{model}}/{{domain}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        bootstrap=config["bootstrap"],
        figures=config["figures"],
        code=code("patching_summary"),
    script:
        "../workflow_scripts/patching_summary.py"
