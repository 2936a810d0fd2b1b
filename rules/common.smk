# Config validation, model specs, wildcard constraints and target helpers. Runs at parse time, so every
# problem with the config or the prompt sets stops the workflow before any job (and any GPU) starts.
import re
import sys
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version

min_version("9.0")

SCRIPTS = Path(workflow.basedir) / "workflow_scripts"
# Parse-time imports of kmap; jobs import it too, as Snakemake puts a script's own folder on sys.path.
sys.path.insert(0, str(SCRIPTS))

from kmap.core.config import (
    ConfigError,
    check_config,
    demo_parameters,
    model_methods,
    model_specs,
    prompt_format,
)
from kmap.core.cost import GPU_RULES, PlannedJob, cost_rows, format_rows
from kmap.core.gpu_plan import (
    STAGES,
    GpuSettings,
    ablation_runtime_min,
    config_snapshot,
    cpu_plan,
    plan,
)
from kmap.core.provenance import code_version
from kmap.core.staging import FILES_DIR, hub_token
from kmap.data.prompt_check import checked_prompts
from kmap.maps.table1 import DEFAULT_CONCEPTS
from kmap.methods.ablation.judge import JudgeSettings, retry_file
from kmap.methods.ablation.settings import settings_from_config, value_params

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

# Every domain's prompt set and pairs valid (else an error naming file, row, column and fix), and every map metric
# one its method writes for them (a metric no method writes would silently drop that method's row from every map).
# Remembered by content: an unchanged prompt folder is not read again at each parse.
MAP_PROBLEMS = checked_prompts(PROMPTS, DOMAINS, config["map"])
if MAP_PROBLEMS:
    raise ConfigError(
        "invalid configuration in the configuration:\n"
        + "\n".join(f"  - {p}" for p in MAP_PROBLEMS)
    )


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


# --- staged weights (rule stage_weights in rules/models.smk) ---

STAGING = config["staging"]["dir"]
# Hub models (kind hf with a hub id, not a local directory) are staged once before any job reads them.
HUB_MODELS = [
    name for name, spec in SPECS.items() if spec.kind == "hf" and not spec.is_local
]


def staged_manifest(name):
    return f"{STAGING}/{name}/snapshot.json"


def staged_weights(wildcards):
    """A hub model's staged snapshot: every job that reads the model or its tokenizer waits for it."""
    return [staged_manifest(wildcards.model)] if wildcards.model in HUB_MODELS else []


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
        staged = Path(STAGING) / name / FILES_DIR
        arch = config_snapshot(spec, snapshots, staged) if spec.kind == "hf" else None
        for stage in STAGES:
            plans[name, stage] = (
                plan(spec, arch, stage, settings, counts)
                if arch
                else cpu_plan(spec, stage)
            )
    return plans


PLANS = make_plans()


# Snakemake commands that run no job: a missing token only warns there (dry-run the study on a laptop first).
NON_EXECUTING = (
    "--dry-run", "--dryrun", "--lint", "--summary", "--detailed-summary", "--dag", "--rulegraph",
    "--filegraph", "--report", "--unlock", "--list-rules", "--list-target-rules", "--list-changes",
    "--list-code-changes", "--list-input-changes", "--list-params-changes", "--list-untracked",
    "--cleanup-metadata", "--delete-all-output", "--delete-temp-output", "--containerize",
)  # fmt: skip


def runs_no_job():
    """Whether this command runs no job: Snakemake knows only after the parse, so read its command line."""
    for arg in sys.argv[1:]:
        name = arg.split("=")[0]
        if name.startswith("--") and name in NON_EXECUTING:
            return True
        # Short flags, alone or combined (-n, -np, -S, -l).
        if not arg.startswith("--") and arg.startswith("-") and arg[1:].isalpha():
            if set(arg[1:]) & set("nSl"):
                return True
    return False


def shadowed_profiles():
    """Site profiles that a same-named profile in the working directory hides (Snakemake looks there first:
    from the repository root `--profile slurm` is kmap's ./slurm, never ~/.config/snakemake/slurm).
    """
    from snakemake.cli import get_appdirs

    argv = sys.argv[1:]
    names = [b for a, b in zip(argv, argv[1:]) if a == "--profile"]
    names += [a.split("=", 1)[1] for a in argv if a.startswith("--profile=")]
    dirs = get_appdirs()
    hidden = []
    for name in names:
        if "/" in name or not Path(name).is_dir():
            continue
        for folder in (dirs.user_config_dir, dirs.site_config_dir):
            if (Path(folder) / name).is_dir():
                hidden.append((name, Path(folder) / name))
    return hidden


def check_launch():
    """What a profile, the environment and the plans must agree on, checked before anything is submitted."""
    problems = []
    max_gpus = config["gpu"]["max_gpus"]
    overrides = getattr(workflow.resource_settings, "overwrite_resources", None) or {}
    for rule_name, resources in overrides.items():
        asked = resources.get("gpu")
        value = getattr(asked, "_value", asked)
        if isinstance(value, int) and value > max_gpus:
            problems.append(
                f"set-resources asks {value} GPUs for rule {rule_name}, but a node has {max_gpus} "
                "(gpu.max_gpus): remove the override (each model's GPU plan sets its GPUs), or raise "
                "gpu.max_gpus if your nodes have more"
            )
    defaults = getattr(workflow.resource_settings, "default_resources", None)
    if defaults is not None and "gpu" in getattr(defaults, "_data", {}):
        problems.append(
            "default-resources sets gpu: every CPU rule would then hold a GPU; remove it from the profile "
            "(GPU rules take their GPUs from each model's plan)"
        )
    token = hub_token()
    gated = [
        name
        for name in HUB_MODELS
        if config["models"][name].get("gated")
        and not Path(staged_manifest(name)).exists()
    ]
    if gated and not token:
        message = (
            f"models {', '.join(gated)} are gated on the hub and not staged yet, but HF_TOKEN is not set: "
            "accept each model's license on its hub page, then export HF_TOKEN (a read token) where "
            "Snakemake runs"
        )
        if runs_no_job():
            print(f"kmap warning: {message}", file=sys.stderr)
        else:
            problems.append(message)
    for name, site in shadowed_profiles():
        print(
            f"kmap warning: --profile {name} is ./{name} (Snakemake searches the working directory first); "
            f"your site profile {site} is not used. To use it: snakemake --profile {site} (kmap's own "
            "settings still apply: they are in the workflow profile profiles/default).",
            file=sys.stderr,
        )
    if problems:
        raise WorkflowError(
            "kmap cannot launch:\n" + "\n".join(f"- {p}" for p in problems)
        )


check_launch()


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


CLUSTER = config["cluster"]
# Routing is all or nothing: with a partition configured every job gets one (an empty one = SLURM's default);
# without, no rule sets slurm_partition and the profile's default-resources decide.
ROUTED = bool(CLUSTER["gpu_partition"] or CLUSTER["cpu_partition"])


def partition(name):
    return (
        CLUSTER[name] or None
    )  # None drops the resource: the plugin then takes SLURM's default partition


def model_resources(stage, batch_section=None, runtime=None):
    """The resources of a model job (activations, saliency, ablation generation, patching): its GPU plan and
    SLURM routing. All resources, never params: describing the hardware differently reruns nothing.
    """

    def holds_gpus(wildcards):
        return PLANS[wildcards.model, stage].gpus > 0

    resources = {
        "gpu": planned(stage, "gpus"),
        # The per-GPU memory split handed to from_pretrained.
        "max_memory_mib": planned_mib(stage),
        # What the plan assumed each GPU has: the job checks its GPUs against it and fails fast when smaller.
        "gpu_memory_mib": lambda w: (
            int(config["gpu"]["memory_gib"] * 1024) if holds_gpus(w) else 0
        ),
        "mem_mb": planned(stage, "mem_mb"),
        "runtime": runtime or planned(stage, "runtime_min"),
        # A model's GPUs share one node (device_map splits layers over local GPUs only).
        "nodes": 1,
    }
    if batch_section:
        resources["batch_size"] = batch_size(batch_section)
    if ROUTED:
        resources["slurm_partition"] = lambda w: partition(
            "gpu_partition" if holds_gpus(w) else "cpu_partition"
        )
    if CLUSTER["gpu_constraint"]:
        resources["constraint"] = lambda w: (
            CLUSTER["gpu_constraint"] if holds_gpus(w) else None
        )
    return resources


def cpu_resources(mem_mb, runtime):
    """The resources of a CPU rule, routed to cluster.cpu_partition when routing is configured."""
    resources = {"mem_mb": mem_mb, "runtime": runtime}
    if ROUTED:
        resources["slurm_partition"] = partition("cpu_partition")
    return resources


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

# The file each GPU method reads (a preflight's `data` wildcard): the prompt set, or the patching pairs. Each of
# these methods' GPU jobs waits for the pre-flight of its file.
PREFLIGHT_DATA = {
    "activations": "prompts",
    "saliency": "prompts",
    "ablation": "prompts",
    "patching": "pairs",
}
GPU_METHODS = tuple(PREFLIGHT_DATA)


def preflight_methods(wildcards):
    """The GPU methods of the model that read the pre-flight's file (activations always runs)."""
    return [
        method
        for method in GPU_METHODS
        if PREFLIGHT_DATA[method] == wildcards.data
        and (method == "activations" or method in METHODS[wildcards.model])
    ]


def preflight_inputs(wildcards):
    """The data file the pre-flight checks: the pairs, or the prompt set."""
    if wildcards.data == "pairs":
        return {"pairs": f"{PROMPTS}/pairs/{wildcards.domain}.csv"}
    return {"prompts": prompt_file(wildcards)}


def preflight_table(method):
    """The pre-flight table a GPU job waits for, as ancient() (a gate: see rules/preflight.smk), for hub-style
    (kind hf) models: the demo and tiny models are built here from the knowledge base's own vocabulary and run on
    the CPU; every pair suits their tokenizers (tested).
    """

    def get(wildcards):
        if SPECS[wildcards.model].kind != "hf":
            return []
        data = PREFLIGHT_DATA[method]
        return [
            ancient(
                f"{RESULTS}/preflight/{wildcards.model}/{wildcards.domain}.{data}.csv"
            )
        ]

    return get


def prompt_file(wildcards):
    return f"{PROMPTS}/{wildcards.domain}.csv"


def outputs(rule, **values):
    """Every output file of ``rule`` for each combination of wildcard ``values``."""
    return (
        expand([str(path) for path in rule.output], **values)
        if all(values.values())
        else []
    )


def all_targets():
    """Every file a run writes, not only the last of each chain: Snakemake replans a deleted file only when a
    target needs it, and a missing intermediate (a GPU job's raw table) would otherwise go unnoticed. Every file,
    not one per job: Snakemake checks only the outputs that some job or target asks for (measured: a deleted
    heatmap table, which only an up-to-date summary reads, planned nothing when one file per job was targeted).
    """
    by = {m: [name for name in MODELS if m in METHODS[name]] for m in GPU_METHODS}
    hf = names_of("hf")
    targets = outputs(rules.demo_model, demo_model=names_of("demo"))
    targets += outputs(rules.tiny_model, tiny_model=names_of("tiny"))
    targets += outputs(rules.stage_weights, model=HUB_MODELS)
    targets += outputs(rules.activations, model=MODELS, domain=DOMAINS)
    targets += outputs(rules.preflight, model=hf, domain=DOMAINS, data=["prompts"])
    targets += outputs(
        rules.preflight,
        model=[name for name in by["patching"] if name in hf],
        domain=DOMAINS,
        data=["pairs"],
    )
    umap = [name for name in MODELS if "umap" in METHODS[name]]
    targets += outputs(rules.umap, model=umap, domain=DOMAINS)
    for name in ("saliency", "saliency_summary"):
        targets += outputs(getattr(rules, name), model=by["saliency"], domain=DOMAINS)
    for name in ("ablation_generate", "ablation_judge", "ablation_summary"):
        targets += outputs(getattr(rules, name), model=by["ablation"], domain=DOMAINS)
    for name in ("patching", "patching_summary"):
        targets += outputs(getattr(rules, name), model=by["patching"], domain=DOMAINS)
    for name in MAP_MODELS:
        targets += outputs(rules.intervals, model=[name], method=METHODS[name])
    targets += outputs(rules.knowledge_map, model=MAP_MODELS)
    if MAP_MODELS:
        targets += outputs(rules.cross_model)
    if COST_ROWS:
        targets += outputs(rules.cost_plan)
    return targets


# --- knowledge maps ---


def map_tables(kind):
    """A method's metric (or replicate) tables of every domain: ablation has a judge-free and a judge table."""

    def get(wildcards):
        method, model = wildcards.method, wildcards.model
        kinds = [kind, f"judge_{kind}"] if method == "ablation" else [kind]
        return [
            f"{RESULTS}/{method}/{model}/{domain}.{k}.parquet"
            for domain in DOMAINS
            for k in kinds
        ]

    return get


def per_domain(pattern):
    """One file per configured domain: ``pattern`` with {domain} filled in, its other wildcards kept."""
    return [pattern.replace("{domain}", domain) for domain in DOMAINS]


JUDGE_CACHE = f"{RESULTS}/cache/judge"


def judge_retry_token(wildcards):
    """The token a judge job writes beside its answer cache when pairs failed; a new one reruns the judge."""
    marker = retry_file(JUDGE_CACHE, wildcards.model, wildcards.domain)
    return marker.read_text().strip() if marker.is_file() else ""


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


# --- ablation's runtime and the study's cost plan (printed by a dry run; rule cost_plan in rules/cost.smk) ---


ABLATION = settings_from_config(config["ablation"])


def ablation_runtime(wildcards):
    """The forward plan's budget plus decoding time; the prompt count is read from the prompt file."""
    forward = PLANS[wildcards.model, "forward"]
    with open(prompt_file(wildcards), encoding="utf-8") as prompts:
        n_prompts = sum(1 for _ in prompts) - 1
    return ablation_runtime_min(
        forward.runtime_min,
        forward.n_params,
        SPECS[wildcards.model].n_layers if forward.gpus else None,
        n_prompts,
        ABLATION,
    )


def planned_jobs():
    jobs = []
    for model in MODELS:
        for method, (rule_name, stage) in GPU_RULES.items():
            # Every model caches activations (UMAP and the map read them); other methods as configured.
            if method != "activations" and method not in METHODS[model]:
                continue
            plan = PLANS[model, stage]
            for domain in DOMAINS:
                wildcards = SimpleNamespace(model=model, domain=domain)
                runtime = (
                    ablation_runtime(wildcards)
                    if rule_name == "ablation_generate"
                    else plan.runtime_min
                )
                jobs.append(PlannedJob(model, rule_name, domain, plan.gpus, runtime))
    return jobs


COST_ROWS = cost_rows(planned_jobs())
if COST_ROWS and runs_no_job():
    print(
        "kmap cost plan (GPU jobs; hours are their SLURM time limits, an upper bound):\n"
        + format_rows(COST_ROWS),
        file=sys.stderr,
    )
