# Method 2, weight-gradient saliency. The GPU job measures per-prompt gradient sums (gradient stage of the
# model's GPU plan: dequantized weights, headroom for backward activations); a CPU job summarises them.


rule saliency:
    input:
        prompts=prompt_file,
        model=local_model_dir,
        weights=staged_weights,
        preflight=preflight_table("saliency"),
    output:
        raw=f"{RESULTS}/saliency/{{model}}/{{domain}}.raw.parquet",
    log:
        f"{RESULTS}/logs/saliency/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/saliency/{{model}}/{{domain}}.tsv"
    # One retry of a failed job, with half the batch size (a CUDA out-of-memory at the planned batch).
    retries: 1
    conda:
        "../envs/gpu.yaml"
    threads: planned("gradient", "cpus")
    resources:
        **model_resources("gradient", "saliency"),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings=without_batch_size("saliency"),
        prompts_dir=PROMPTS,
        prompt_format=formatted("saliency"),
        code=code("saliency"),
    script:
        "../workflow_scripts/saliency.py"


rule saliency_summary:
    input:
        raw=f"{RESULTS}/saliency/{{model}}/{{domain}}.raw.parquet",
    output:
        metrics=f"{RESULTS}/saliency/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/saliency/{{model}}/{{domain}}.replicates.parquet",
        curves_png=method_figure("saliency", "curves", "saliency"),
        curves_pdf=f"{RESULTS}/saliency/{{model}}/{{domain}}.curves.pdf",
    log:
        f"{RESULTS}/logs/saliency_summary/{{model}}/{{domain}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        bootstrap=config["bootstrap"],
        figures=config["figures"],
        code=code("saliency_summary"),
    script:
        "../workflow_scripts/saliency_summary.py"
