# Method 4, activation patching: clean and corrupted runs once per pair, then an exact layer sweep that
# reuses them (forward stage of the model's GPU plan).


rule patching:
    input:
        pairs=f"{PROMPTS}/pairs/{{domain}}.csv",
        model=local_model_dir,
    output:
        metrics=f"{RESULTS}/patching/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/patching/{{model}}/{{domain}}.replicates.parquet",
        pairs=f"{RESULTS}/patching/{{model}}/{{domain}}.pairs.parquet",
        heatmap=f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.parquet",
        curves_png=report(
            f"{RESULTS}/patching/{{model}}/{{domain}}.curves.png",
            caption="../report/curves.rst",
            category="2. Methods: {model}",
            subcategory="{domain}",
            labels={"model": "{model}", "domain": "{domain}", "figure": "patching"},
        ),
        curves_pdf=f"{RESULTS}/patching/{{model}}/{{domain}}.curves.pdf",
        heatmap_png=report(
            f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.png",
            caption="../report/heatmap.rst",
            category="2. Methods: {model}",
            subcategory="{domain}",
            labels={
                "model": "{model}",
                "domain": "{domain}",
                "figure": "patching heatmap",
            },
        ),
        heatmap_pdf=f"{RESULTS}/patching/{{model}}/{{domain}}.heatmap.pdf",
    log:
        f"{RESULTS}/logs/patching/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/patching/{{model}}/{{domain}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: planned("forward", "cpus")
    resources:
        gpu=planned("forward", "gpus"),
        mem_mb=planned("forward", "mem_mb"),
        runtime=planned("forward", "runtime_min"),
        batch_size=batch_size("patching"),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings={k: v for k, v in config["patching"].items() if k != "batch_size"},
        bootstrap=config["bootstrap"],
        prompts_dir=lambda w, input: str(Path(input.pairs).parent.parent),
        max_memory=max_memory("forward"),
        code=code_version(
            "patching",
            "patching_report",
            "answer_tokens",
            "models",
            "hooks",
            "architectures",
            "prompts",
            "stats",
            "tables",
            "plotting",
        ),
    script:
        "../workflow_scripts/patching.py"
