# Models the workflow builds itself, offline: the trained demo model and tiny random-init models.


rule demo_model:
    input:
        knowledge=f"{PROMPTS}/knowledge.yaml",
    output:
        model=directory(f"{RESULTS}/models/{{demo_model}}"),
        curve=f"{RESULTS}/demo/{{demo_model}}/training_curve.csv",
        curve_provenance=f"{RESULTS}/demo/{{demo_model}}/training_curve.csv.provenance.json",
        curve_png=f"{RESULTS}/demo/{{demo_model}}/training_curve.png",
        curve_pdf=f"{RESULTS}/demo/{{demo_model}}/training_curve.pdf",
        metrics=f"{RESULTS}/demo/{{demo_model}}/metrics.json",
    log:
        f"{RESULTS}/logs/demo_model/{{demo_model}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/demo_model/{{demo_model}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        demo=config["demo"],
        code=code("demo_model"),
    script:
        "../workflow_scripts/demo_model.py"


rule tiny_model:
    input:
        knowledge=f"{PROMPTS}/knowledge.yaml",
    output:
        model=directory(f"{RESULTS}/models/{{tiny_model}}"),
    log:
        f"{RESULTS}/logs/tiny_model/{{tiny_model}}.log",
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        architecture=lambda wc: SPECS[wc.tiny_model].architecture,
        shape=config["tiny"],
        code=code("tiny_model"),
    script:
        "../workflow_scripts/tiny_model.py"
