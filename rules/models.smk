# Models: built by the workflow itself, offline (the trained demo model, tiny random-init models), or staged
# from the hub once per model before any job reads them.


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
        **cpu_resources(mem_mb=4000, runtime=30),
    params:
        demo=lambda wc: demo_parameters(config, wc.demo_model),
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
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        architecture=lambda wc: SPECS[wc.tiny_model].architecture,
        shape=config["tiny"],
        code=code("tiny_model"),
    script:
        "../workflow_scripts/tiny_model.py"


# Where the internet is (a login node by default: cluster.internet_jobs), one pinned snapshot per hub model:
# safetensors weights, configs and tokenizer files, the revision resolved to a commit and recorded in the
# manifest. Every job that reads the model (pre-flight, GPU jobs) waits for it and reads it offline. Only the
# manifest is an output: a failed download keeps the files it finished (the next try fetches only the rest), and
# a rerun after a revision change deletes the files the new snapshot does not have.
rule stage_weights:
    output:
        manifest=f"{STAGING}/{{model}}/snapshot.json",
    log:
        f"{RESULTS}/logs/stage_weights/{{model}}.log",
    wildcard_constraints:
        model=alternation(HUB_MODELS),
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        # 140 GB at ~200 MB/s is 12 minutes; slower links take hours.
        **cpu_resources(mem_mb=2000, runtime=600),
    params:
        source=lambda w: SPECS[w.model].source,
        revision=lambda w: SPECS[w.model].revision or "main",
        min_free_gib=config["staging"]["min_free_gib"],
        code=code("stage_weights"),
    script:
        "../workflow_scripts/stage_weights.py"
