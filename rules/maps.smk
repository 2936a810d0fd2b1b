# Knowledge maps (CPU only): per (model, domain, method) the map curve's intervals and their bootstrap
# stability; per model the Domain × Layer map; across models the relative-depth map and Table 1.
from kmap.knowledge_map import DEFAULT_CONCEPTS


def map_tables(kind):
    """A method's metric (or replicate) tables: ablation has a judge-free and a judge table."""

    def get(wildcards):
        base = f"{RESULTS}/{wildcards.method}/{wildcards.model}/{wildcards.domain}"
        names = {"metrics": "metrics", "replicates": "replicates"}
        extra = (
            [f"{base}.judge_{kind}.parquet"] if wildcards.method == "ablation" else []
        )
        return [f"{base}.{names[kind]}.parquet", *extra]

    return get


def model_cells(kind):
    def get(wildcards):
        return expand(
            f"{RESULTS}/maps/{wildcards.model}/{{domain}}.{{method}}.{kind}.parquet",
            domain=DOMAINS,
            method=METHODS[wildcards.model],
        )

    return get


def concept_tables():
    """The metric tables Table 1 reads: each concept's (domain, method) for every model that ran it."""
    wanted = {(d, m) for d, m, _ in DEFAULT_CONCEPTS.values() if d in DOMAINS}
    return sorted(
        f"{RESULTS}/{method}/{model}/{domain}.metrics.parquet"
        for model in MAP_MODELS
        for domain, method in wanted
        if method in METHODS[model]
    )


rule intervals:
    input:
        metrics=map_tables("metrics"),
        replicates=map_tables("replicates"),
    output:
        intervals=f"{RESULTS}/maps/{{model}}/{{domain}}.{{method}}.intervals.parquet",
        cells=f"{RESULTS}/maps/{{model}}/{{domain}}.{{method}}.cells.parquet",
    log:
        f"{RESULTS}/logs/intervals/{{model}}/{{domain}}.{{method}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        map=config["map"],
        code=code_version("knowledge_map", "intervals", "tables"),
    script:
        "../workflow_scripts/intervals.py"


rule knowledge_map:
    input:
        cells=model_cells("cells"),
        intervals=model_cells("intervals"),
    output:
        png=report(
            f"{RESULTS}/maps/{{model}}/map.png",
            caption="../report/map.rst",
            category="1. Knowledge maps",
            labels={"model": "{model}", "figure": "knowledge map"},
        ),
        pdf=f"{RESULTS}/maps/{{model}}/map.pdf",
        cells=f"{RESULTS}/maps/{{model}}/map_cells.parquet",
        consensus=f"{RESULTS}/maps/{{model}}/consensus.parquet",
        intervals=report(
            f"{RESULTS}/maps/{{model}}/intervals.csv",
            caption="../report/intervals.rst",
            category="1. Knowledge maps",
            labels={"model": "{model}", "figure": "intervals table"},
        ),
    log:
        f"{RESULTS}/logs/knowledge_map/{{model}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        map=config["map"],
        code=code_version("knowledge_map", "map_figure", "plotting"),
    script:
        "../workflow_scripts/knowledge_map.py"


rule cross_model:
    input:
        cells=expand(f"{RESULTS}/maps/{{model}}/map_cells.parquet", model=MAP_MODELS),
        consensus=expand(
            f"{RESULTS}/maps/{{model}}/consensus.parquet", model=MAP_MODELS
        ),
        metrics=concept_tables(),
    output:
        map_png=report(
            f"{RESULTS}/summary/cross_model_map.png",
            caption="../report/cross_model.rst",
            category="0. Summary",
            labels={"figure": "cross-model map"},
        ),
        map_pdf=f"{RESULTS}/summary/cross_model_map.pdf",
        table_csv=report(
            f"{RESULTS}/summary/table1.csv",
            caption="../report/table1.rst",
            category="0. Summary",
            labels={"figure": "Table 1"},
        ),
        table_md=f"{RESULTS}/summary/table1.md",
        table_png=report(
            f"{RESULTS}/summary/table1.png",
            caption="../report/table1.rst",
            category="0. Summary",
            labels={"figure": "Table 1 (figure)"},
        ),
        table_pdf=f"{RESULTS}/summary/table1.pdf",
    log:
        f"{RESULTS}/logs/cross_model.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        code=code_version("knowledge_map", "map_figure", "plotting", "tables"),
    script:
        "../workflow_scripts/cross_model.py"
