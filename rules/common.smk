# Config validation, model specs, wildcard constraints and target helpers. Runs at parse time, so every
# problem with the config or the prompt sets stops the workflow before any job (and any GPU) starts.
import re
import sys
from dataclasses import asdict
from pathlib import Path

from snakemake.utils import min_version

min_version("9.0")

SCRIPTS = Path(workflow.basedir) / "workflow_scripts"
# Parse-time imports of kmap; jobs import it too, as Snakemake puts a script's own folder on sys.path.
sys.path.insert(0, str(SCRIPTS))

from kmap.core.config import check_config, model_methods, model_specs, prompt_format
from kmap.core.gpu_plan import STAGES, GpuSettings, config_snapshot, cpu_plan, plan
from kmap.core.provenance import code_version
from kmap.data.prompts import validate_all
from kmap.maps.table1 import DEFAULT_CONCEPTS

# Every problem at once, each with its key and fix; then the schema's defaults filled in (the one home of
# defaults: kmap's settings read theirs from the same schema).
config.update(
    check_config(
        config,
        Path(workflow.basedir) / "config" / "schema.yaml",
        source="the configuration",
    )
)


RESULTS = config["results"]
PROMPTS = config["prompts"]
DOMAINS = config["domains"]
SPECS = model_specs(config)
MODELS = list(SPECS)
METHODS = model_methods(config)
# Models with at least one method get a knowledge map (tiny coverage models usually have none).
MAP_MODELS = [name for name in MODELS if METHODS[name]]

validate_all(Path(PROMPTS), DOMAINS)


def names_of(kind):
    return [name for name, spec in SPECS.items() if spec.kind == kind]


def alternation(names):
    # A pattern that matches nothing when the list is empty, so a rule without models never matches.
    return "|".join(map(re.escape, names)) if names else "(?!x)x"


wildcard_constraints:
    model=alternation(MODELS),
    domain=alternation(DOMAINS),
    method=alternation(sorted({m for methods in METHODS.values() for m in methods})),
    demo_model=alternation(names_of("demo")),
    tiny_model=alternation(names_of("tiny")),


def spec_dict(wildcards):
    return asdict(SPECS[wildcards.model])


def local_model_dir(wildcards):
    """The model directory a job depends on: built by the workflow for demo and tiny models."""
    spec = SPECS[wildcards.model]
    return [spec.source] if spec.kind in ("demo", "tiny") else []


def make_plans():
    # Every plan is computed at start, so a model that cannot fit the configured GPUs fails the dry run.
    settings = GpuSettings(**config["gpu"])
    snapshots = Path(workflow.basedir) / "config" / "hf_configs"
    counts = snapshots / "param_counts.json"
    plans = {}
    for name, spec in SPECS.items():
        arch = config_snapshot(spec, snapshots) if spec.kind == "hf" else None
        for stage in STAGES:
            plans[name, stage] = (
                plan(spec, arch, stage, settings, counts)
                if arch
                else cpu_plan(spec, stage)
            )
    return plans


PLANS = make_plans()


def planned(stage, field):
    """A resource (or param) of the model's GPU plan for a stage: forward or gradient."""

    def get(wildcards):
        return getattr(PLANS[wildcards.model, stage], field)

    return get


def batch_size(section):
    """The configured batch size, halved on each retry: Snakemake reruns an OOM-killed job with attempt + 1."""

    def get(wildcards, attempt):
        return max(1, config[section]["batch_size"] // 2 ** (attempt - 1))

    return get


def planned_mib(stage):
    """The plan's per-GPU max_memory in MiB (0 without GPUs), handed to from_pretrained by the job."""

    def get(wildcards):
        plan = PLANS[wildcards.model, stage]
        return int(plan.max_memory_gib * 1024) if plan.gpus else 0

    return get


def formatted(method):
    """The model's prompt format for ``method`` (a param: changing it reruns exactly that method's jobs)."""

    def get(wildcards):
        return prompt_format(config, wildcards.model, method)

    return get


def without_batch_size(section, *checked_before):
    """A config section without batch_size (a resource that never changes values) and the ``checked_before``
    keys (checked by the pre-flight, not used by the job): never rerun triggers."""
    skip = {"batch_size", *checked_before}
    return {k: v for k, v in config[section].items() if k not in skip}


def code(script):
    """The rerun trigger of a rule: its entry script and every kmap module the script imports, transitively."""
    return code_version(SCRIPTS / f"{script}.py")


def method_figure(method, name, figure):
    """A method's per-(model, domain) figure, in the report under its model and domain."""
    caption = {"panels": "panels", "heatmap": "heatmap"}.get(name, "curves")
    return report(
        f"{RESULTS}/{method}/{{model}}/{{domain}}.{name}.png",
        caption=f"../report/{caption}.rst",
        category="2. Methods: {model}",
        subcategory="{domain}",
        labels={"model": "{model}", "domain": "{domain}", "figure": figure},
    )


def summary_figure(path, caption, category, labels):
    """A map, table or summary figure in the report."""
    return report(
        path, caption=f"../report/{caption}.rst", category=category, labels=labels
    )


# --- pre-flight (rules/preflight.smk) ---

# The methods whose GPU jobs each wait for their own pre-flight.
GPU_METHODS = ("activations", "saliency", "ablation", "patching")


def preflight_inputs(wildcards):
    """The data file its GPU job reads: the pairs for patching, the prompt set otherwise."""
    if wildcards.method == "patching":
        return {"pairs": f"{PROMPTS}/pairs/{wildcards.domain}.csv"}
    return {"prompts": prompt_file(wildcards)}


def preflight_table(method):
    """A GPU job's pre-flight table, for hub-style (kind hf) models: the demo and tiny models are built here from
    the knowledge base's own vocabulary and run on the CPU; every pair suits their tokenizers (tested).
    """

    def get(wildcards):
        if SPECS[wildcards.model].kind != "hf":
            return []
        return [
            f"{RESULTS}/preflight/{wildcards.model}/{wildcards.domain}.{method}.csv"
        ]

    return get


def prompt_file(wildcards):
    return f"{PROMPTS}/{wildcards.domain}.csv"


def activation_targets():
    return expand(
        f"{RESULTS}/activations/{{model}}/{{domain}}.safetensors",
        model=MODELS,
        domain=DOMAINS,
    )


def method_targets(method, pattern):
    """``pattern`` (with {model} and {domain}) for every model that runs ``method``."""
    models = [name for name in MODELS if method in METHODS[name]]
    return expand(pattern, model=models, domain=DOMAINS)


def all_targets():
    demo = expand(f"{RESULTS}/demo/{{model}}/metrics.json", model=names_of("demo"))
    umap = method_targets("umap", f"{RESULTS}/umap/{{model}}/{{domain}}.panels.png")
    saliency = method_targets(
        "saliency", f"{RESULTS}/saliency/{{model}}/{{domain}}.metrics.parquet"
    )
    ablation = method_targets(
        "ablation", f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_metrics.parquet"
    )
    patching = method_targets(
        "patching", f"{RESULTS}/patching/{{model}}/{{domain}}.metrics.parquet"
    )
    maps = expand(f"{RESULTS}/maps/{{model}}/map.png", model=MAP_MODELS)
    summary = [f"{RESULTS}/summary/table1.csv"] if MAP_MODELS else []
    methods = umap + saliency + ablation + patching
    return demo + activation_targets() + methods + maps + summary


# --- knowledge maps ---


def map_tables(kind):
    """A method's metric (or replicate) tables: ablation has a judge-free and a judge table. A method whose map
    curve is contrasted with the other domains (map.contrast) reads every domain's tables.
    """

    def get(wildcards):
        method = wildcards.method
        contrasted = config["map"]["contrast"].get(method, "none") == "others"
        tables = []
        for domain in DOMAINS if contrasted else [wildcards.domain]:
            base = f"{RESULTS}/{method}/{wildcards.model}/{domain}"
            tables.append(f"{base}.{kind}.parquet")
            if method == "ablation":
                tables.append(f"{base}.judge_{kind}.parquet")
        return tables

    return get


def model_cells(kind):
    def get(wildcards):
        return expand(
            f"{RESULTS}/maps/{wildcards.model}/{{domain}}.{{method}}.{kind}.parquet",
            domain=DOMAINS,
            method=METHODS[wildcards.model],
        )

    return get


def study_reference():
    """The study's Table 1, when configured (editing it reruns only cross_model)."""
    return config["study_reference"] or []


def concept_tables():
    """The metric tables Table 1 reads: each concept's (domain, method) for every model that ran it."""
    wanted = {(d, m) for d, m, _ in DEFAULT_CONCEPTS.values() if d in DOMAINS}
    return sorted(
        f"{RESULTS}/{method}/{model}/{domain}.metrics.parquet"
        for model in MAP_MODELS
        for domain, method in wanted
        if method in METHODS[model]
    )
