# Method 2, weight-gradient saliency: one forward and backward per prompt (gradient stage of the model's GPU
# plan: dequantized weights, headroom for backward activations).


rule saliency:
    input:
        prompts=prompt_file,
        model=local_model_dir,
    output:
        metrics=f"{RESULTS}/saliency/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/saliency/{{model}}/{{domain}}.replicates.parquet",
        curves_png=report(
            f"{RESULTS}/saliency/{{model}}/{{domain}}.curves.png",
            caption="../report/curves.rst",
            category="2. Methods: {model}",
            subcategory="{domain}",
            labels={"model": "{model}", "domain": "{domain}", "figure": "saliency"},
        ),
        curves_pdf=f"{RESULTS}/saliency/{{model}}/{{domain}}.curves.pdf",
    log:
        f"{RESULTS}/logs/saliency/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/saliency/{{model}}/{{domain}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: planned("gradient", "cpus")
    resources:
        gpu=planned("gradient", "gpus"),
        mem_mb=planned("gradient", "mem_mb"),
        runtime=planned("gradient", "runtime_min"),
    params:
        model=spec_dict,
        settings=config["saliency"],
        bootstrap=config["bootstrap"],
        prompts_dir=PROMPTS,
        max_memory=max_memory("gradient"),
        code=code_version(
            "saliency",
            "answer_tokens",
            "models",
            "architectures",
            "prompts",
            "stats",
            "tables",
            "plotting",
        ),
    script:
        "../workflow_scripts/saliency.py"
