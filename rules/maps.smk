# Knowledge maps (CPU only): per (model, method) every domain's map curve, intervals and their bootstrap
# stability; per model the Domain × Layer map; across models the relative-depth map and Table 1.


# One job per (model, method), not per domain: a contrasted method's curve reads every domain's tables anyway
# (map.contrast), the work is seconds, and the study's DAG then has 44 interval jobs instead of 264 (a dry run's
# time grows with the jobs and the files they read).
rule intervals:
    input:
        metrics=map_tables("metrics"),
        replicates=map_tables("replicates"),
    output:
        intervals=per_domain(
            f"{RESULTS}/maps/{{model}}/{{domain}}.{{method}}.intervals.parquet"
        ),
        cells=per_domain(
            f"{RESULTS}/maps/{{model}}/{{domain}}.{{method}}.cells.parquet"
        ),
    log:
        f"{RESULTS}/logs/intervals/{{model}}/{{method}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        map=config["map"],
        domains=DOMAINS,
        code=code("intervals"),
    script:
        "../workflow_scripts/intervals.py"


rule knowledge_map:
    input:
        cells=model_cells("cells"),
        intervals=model_cells("intervals"),
    output:
        png=summary_figure(
            f"{RESULTS}/maps/{{model}}/map.png",
            "map",
            "1. Knowledge maps",
            {"model": "{model}", "figure": "knowledge map"},
        ),
        pdf=f"{RESULTS}/maps/{{model}}/map.pdf",
        cells=f"{RESULTS}/maps/{{model}}/map_cells.parquet",
        consensus=f"{RESULTS}/maps/{{model}}/consensus.parquet",
        intervals=summary_figure(
            f"{RESULTS}/maps/{{model}}/intervals.csv",
            "intervals",
            "1. Knowledge maps",
            {"model": "{model}", "figure": "intervals table"},
        ),
        intervals_provenance=f"{RESULTS}/maps/{{model}}/intervals.csv.provenance.json",
    log:
        f"{RESULTS}/logs/knowledge_map/{{model}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        map=config["map"],
        figures=config["figures"],
        code=code("knowledge_map"),
    script:
        "../workflow_scripts/knowledge_map.py"


rule cross_model:
    input:
        cells=expand(f"{RESULTS}/maps/{{model}}/map_cells.parquet", model=MAP_MODELS),
        consensus=expand(
            f"{RESULTS}/maps/{{model}}/consensus.parquet", model=MAP_MODELS
        ),
        metrics=concept_tables(),
        study=study_reference(),
    output:
        map_png=summary_figure(
            f"{RESULTS}/summary/cross_model_map.png",
            "cross_model",
            "0. Summary",
            {"figure": "cross-model map"},
        ),
        map_pdf=f"{RESULTS}/summary/cross_model_map.pdf",
        table_csv=summary_figure(
            f"{RESULTS}/summary/table1.csv",
            "table1",
            "0. Summary",
            {"figure": "Table 1"},
        ),
        table_md=f"{RESULTS}/summary/table1.md",
        table_png=summary_figure(
            f"{RESULTS}/summary/table1.png",
            "table1",
            "0. Summary",
            {"figure": "Table 1 (figure)"},
        ),
        table_pdf=f"{RESULTS}/summary/table1.pdf",
        sidecars=multiext(
            f"{RESULTS}/summary/table1", ".csv.provenance.json", ".md.provenance.json"
        ),
    log:
        f"{RESULTS}/logs/cross_model.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        figures=config["figures"],
        # Hub ids, to find each model in the study's reference table.
        sources={m: config["models"][m].get("source", "") for m in MAP_MODELS},
        code=code("cross_model"),
    script:
        "../workflow_scripts/cross_model.py"
