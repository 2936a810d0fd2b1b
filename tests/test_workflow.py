"""The workflow end to end in a scratch copy: a full run, rerun behaviour, and the study's dry run."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kmap.activations.cache import read_cache
from tests.workflow import copy_workflow, job_counts, local_env, local_hf_model, snakemake, write_config

# One xdist worker runs this module: its module-scoped fixtures are built once.
pytestmark = pytest.mark.xdist_group("workflow")

FAST = {
    "results": "results",
    "prompts": "prompts",
    "models": {
        "demo": {"kind": "demo", "dtype": "float32"},
        "tiny-llama": {"kind": "tiny", "architecture": "llama", "dtype": "float32", "methods": []},
    },
    "domains": ["age", "disease"],
    "demo": {"steps": 20, "n_sentences": 2000, "n_layers": 2, "hidden_size": 32, "eval_every": 10, "n_eval": 20},
    "tiny": {"n_layers": 2, "hidden_size": 32},
    "bootstrap": {"n": 20},
    "umap": {"n_epochs": 50},
    "saliency": {"max_prompts": 20},
    "ablation": {"max_new_tokens": 4},
    # The 20-step demo barely separates clean from corrupted answers: keep every pair (plumbing, not science).
    "patching": {"heatmap_pairs": 2, "min_gap": 0.0},
}
METHOD_OUTPUTS = {
    "saliency": ("raw.parquet", "metrics.parquet", "curves.png"),
    "ablation": ("metrics.parquet", "responses.parquet", "judge_metrics.parquet", "judge.parquet"),
    "patching": ("metrics.parquet", "pairs.parquet", "curves.png", "heatmap.png"),
}


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = copy_workflow(tmp_path_factory.mktemp("wf"))
    config = write_config(work, FAST)
    snakemake(work, "--configfile", str(config))
    return work


def _plan(work: Path) -> dict[str, int]:
    result = snakemake(work, "-n", "--configfile", "config/test.yaml")
    return job_counts(result.stdout + result.stderr)


def test_full_run_outputs(ran: Path) -> None:
    for model, layers in (("demo", 2), ("tiny-llama", 2)):
        for domain in ("age", "disease"):
            base = ran / "results" / "activations" / model / domain
            cache = read_cache(f"{base}.safetensors", f"{base}.prompts.parquet")
            assert cache.acts.shape[0] == layers + 1
            assert cache.layers[0] == -1
            record = cache.provenance
            assert record["domain"] == domain and record["model"]["name"] == model
            assert record["model"]["resolved_revision"].startswith("sha256:")
            assert len(record["prompt_sha256"]) == 64 and record["code_version"]
            assert (ran / "results" / "logs" / "activations" / model / f"{domain}.log").exists()
    metrics = yaml.safe_load((ran / "results" / "demo" / "demo" / "metrics.json").read_text())
    assert 0.0 <= metrics["diagnosis_accuracy"] <= 1.0 and metrics["params"]["steps"] == 20
    assert not list(ran.glob("results/**/*.partial")), "temporary files left behind"
    # Geometry ran for the demo model only (the tiny model's methods are []), from the cache alone.
    assert sorted(p.name for p in (ran / "results" / "umap" / "demo").glob("*.panels.png")) == [
        "age.panels.png",
        "disease.panels.png",
    ]
    assert not (ran / "results" / "umap" / "tiny-llama").exists()
    # The causal methods too, demo only; the judge ran without a key: skipped, and said so.
    for method, suffixes in METHOD_OUTPUTS.items():
        for domain in ("age", "disease"):
            for suffix in suffixes:
                assert (ran / "results" / method / "demo" / f"{domain}.{suffix}").exists(), (method, domain, suffix)
        assert not (ran / "results" / method / "tiny-llama").exists()
    judge_log = (ran / "results" / "logs" / "ablation_judge" / "demo" / "age.log").read_text()
    assert "skipped" in judge_log and "OPENAI_API_KEY" in judge_log


def test_full_run_ends_in_maps_and_table(ran: Path) -> None:
    import pandas as pd

    maps = ran / "results" / "maps"
    assert sorted(p.name for p in maps.iterdir()) == ["demo"]  # the tiny model has no methods, so no map
    intervals = pd.read_csv(maps / "demo" / "intervals.csv")
    cells = pd.read_parquet(maps / "demo" / "map_cells.parquet")
    assert set(cells["method"]) == {"umap", "saliency", "ablation", "patching"}
    assert set(cells["domain"]) == {"age", "disease"} and cells["layer"].min() == 0
    # Every interval in the table is drawn from the cells behind the figure.
    for row in intervals.itertuples():
        part = cells[(cells["domain"] == row.domain) & (cells["method"] == row.method)].set_index("layer")
        assert part.loc[row.start : row.end, "selected"].all()
    # Without a judge key, ablation is mapped by the judge-free KL.
    assert set(cells.loc[cells["method"] == "ablation", "metric"]) == {"kl"}
    table = pd.read_csv(ran / "results" / "summary" / "table1.csv")
    assert list(table["concept"]) == ["age R²", "disease silhouette"]
    r2 = pd.read_parquet(ran / "results" / "umap" / "demo" / "age.metrics.parquet")
    r2 = r2[(r2["metric"] == "r2") & (r2["layer"] >= 0)]
    assert table.iloc[0]["value"] == pytest.approx(r2["value"].max())
    for name in ("cross_model_map.png", "cross_model_map.pdf", "table1.md", "table1.png"):
        assert (ran / "results" / "summary" / name).stat().st_size > 100


def test_report_contains_every_map(ran: Path) -> None:
    import zipfile

    snakemake(ran, "--configfile", "config/test.yaml", "--report", "report.zip")
    archive = zipfile.ZipFile(ran / "report.zip")
    # The report stores each file under data/raw/<hash>/<name>: match by name and content.
    contents = {(Path(n).name, archive.read(n)) for n in archive.namelist() if "/data/raw/" in n}
    for name in (
        "maps/demo/map.png",
        "maps/demo/intervals.csv",
        "summary/table1.csv",
        "summary/cross_model_map.png",
        "patching/demo/disease.heatmap.png",
        "umap/demo/age.panels.png",
    ):
        path = ran / "results" / name
        assert (path.name, path.read_bytes()) in contents, name


def test_rerun_plans_nothing(ran: Path) -> None:
    assert _plan(ran) == {}


def test_touch_without_change_plans_nothing(ran: Path) -> None:
    prompt = ran / "prompts" / "disease.csv"
    later = time.time() + 5
    os.utime(prompt, (later, later))
    assert _plan(ran) == {}


def test_editing_one_domain_reruns_only_that_domain(ran: Path) -> None:
    prompt = ran / "prompts" / "disease.csv"
    original = prompt.read_text()
    prompt.write_text(original.replace("is a disease of the", "is an illness of the", 1))
    try:
        plan = _plan(ran)
        result = snakemake(ran, "-n", "--configfile", "config/test.yaml")
        # Patching reads the pairs file, not the prompt file: it stays valid.
        assert plan == {
            "activations": 2,
            "umap": 1,
            "saliency": 1,
            "saliency_summary": 1,
            "ablation_generate": 1,
            "ablation_judge": 1,
            "ablation_summary": 1,
            # One interval job per (model, method) that changed: umap, saliency, ablation (not patching)
            "intervals": 3,
            "knowledge_map": 1,
            "cross_model": 1,
            "all": 1,
        }, plan
        assert "activations/demo/disease.safetensors" in result.stdout
        assert "activations/tiny-llama/disease.safetensors" in result.stdout
        assert "age.safetensors" not in result.stdout.split("rule all")[0]
    finally:
        prompt.write_text(original)


def test_editing_patching_pairs_reruns_only_patching(ran: Path) -> None:
    pairs = ran / "prompts" / "pairs" / "disease.csv"
    original = pairs.read_text()
    lines = original.splitlines(keepends=True)
    pairs.write_text("".join(lines[:-1]))  # drop the last pair
    try:
        maps = {"intervals": 1, "knowledge_map": 1, "cross_model": 1}
        assert _plan(ran) == {"patching": 1, "patching_summary": 1, **maps, "all": 1}
    finally:
        pairs.write_text(original)


def test_changing_a_setting_reruns_its_rule(ran: Path) -> None:
    config = dict(FAST, activations={"position": "concept_mean"})
    write_config(ran, config, "position.yaml")
    result = snakemake(ran, "-n", "--configfile", "config/position.yaml")
    maps = {"intervals": 1, "knowledge_map": 1, "cross_model": 1}
    assert job_counts(result.stdout) == {"activations": 4, "umap": 2, **maps, "all": 1}
    assert "params" in result.stdout.lower()
    # The batch size never changes values (tested in test_activations), so it reruns nothing.
    write_config(ran, dict(FAST, activations={"batch_size": 3}), "batch.yaml")
    assert job_counts(snakemake(ran, "-n", "--configfile", "config/batch.yaml").stdout) == {}


def test_changing_a_models_prompt_format_reruns_that_method_only(ran: Path) -> None:
    models = dict(FAST["models"], demo={**FAST["models"]["demo"], "prompt_format": {"patching": "raw"}})
    write_config(ran, dict(FAST, models=models), "same_format.yaml")
    assert job_counts(snakemake(ran, "-n", "--configfile", "config/same_format.yaml").stdout) == {}
    models["demo"]["prompt_format"] = {"ablation": "raw"}  # was auto (raw for the demo's tokenizer, but a change)
    write_config(ran, dict(FAST, models=models), "format.yaml")
    result = snakemake(ran, "-n", "--configfile", "config/format.yaml")
    maps = {"intervals": 1, "knowledge_map": 1, "cross_model": 1}
    ablation = {"ablation_generate": 2, "ablation_judge": 2, "ablation_summary": 2}
    expected = {**ablation, **maps, "all": 1}
    assert job_counts(result.stdout) == expected


GPU_RULES = {"demo_model", "activations", "saliency", "ablation_generate", "patching"}


@pytest.mark.parametrize(
    ("setting", "expected"),
    [
        # Statistics: every summary and the maps after them; umap computes its CIs on the CPU too.
        (
            {"bootstrap": {"n": 10}},
            {"umap", "saliency_summary", "ablation_summary", "patching_summary", "intervals", "knowledge_map"},
        ),
        ({"figures": {"dpi": 72}}, {"umap", "saliency_summary", "ablation_summary", "patching_summary"}),
        ({"map": {"sigma": 2.0}}, {"intervals", "knowledge_map"}),
    ],
    ids=["bootstrap.n", "figures.dpi", "map.sigma"],
)
def test_statistics_figure_and_map_settings_never_rerun_gpu_jobs(ran: Path, setting: dict, expected: set) -> None:
    write_config(ran, {**FAST, **setting, "bootstrap": {**FAST["bootstrap"], **setting.get("bootstrap", {})}}, "s.yaml")
    plan = job_counts(snakemake(ran, "-n", "--configfile", "config/s.yaml").stdout)
    assert not GPU_RULES & set(plan), plan
    assert expected <= set(plan) <= expected | {"intervals", "knowledge_map", "cross_model", "all"}, plan


MAPS = {"intervals", "knowledge_map", "cross_model"}
SUMMARIES = {"saliency_summary", "ablation_summary", "patching_summary", "umap"}


@pytest.mark.parametrize(
    ("module", "rerun", "after"),
    [
        ("methods/patching/summary.py", {"patching_summary"}, MAPS),
        ("methods/patching/sweep.py", {"patching"}, {"patching_summary", *MAPS}),
        ("maps/figures.py", {"knowledge_map", "cross_model"}, set()),
        ("methods/umap/geometry.py", {"umap"}, MAPS),
        ("activations/cache.py", {"activations", "umap"}, MAPS),
    ],
)
def test_editing_a_module_reruns_the_rules_importing_it(ran: Path, module: str, rerun: set, after: set) -> None:
    """Code versions are derived from each entry script's import closure: an edit plans the rules whose
    scripts reach the module, then only what consumes their outputs."""
    path = ran / "workflow_scripts" / "kmap" / module
    original = path.read_bytes()
    path.write_bytes(original + b"\n# edited\n")
    try:
        planned = set(_plan(ran)) - {"all"}
    finally:
        path.write_bytes(original)
    assert rerun <= planned <= rerun | after, (module, planned)
    assert _plan(ran) == {}


def test_known_metric_names_are_what_the_methods_write(ran: Path) -> None:
    """The names the parse checks map settings against (kmap.maps.known_metrics) are exactly those of a real run."""
    import pandas as pd

    from kmap.data.prompts import load_prompt_set
    from kmap.maps.known_metrics import method_metrics, umap_metrics

    checked = 0
    for domain in FAST["domains"]:
        prompts = load_prompt_set(domain, ran / "prompts")
        written = set(pd.read_parquet(ran / f"results/umap/demo/{domain}.metrics.parquet")["metric"])
        assert written == umap_metrics(domain, prompts.group_labels, prompts.frame), domain
        for method in ("saliency", "patching"):
            written = set(pd.read_parquet(ran / f"results/{method}/demo/{domain}.metrics.parquet")["metric"])
            assert written == method_metrics(method), (method, domain)
        written = {
            *pd.read_parquet(ran / f"results/ablation/demo/{domain}.metrics.parquet")["metric"],
            "judge_score",  # the judge ran without a key here: its table is empty
        }
        assert written == method_metrics("ablation"), domain
        checked += 1
    assert checked == 2


def test_any_deleted_output_is_planned_again(ran: Path) -> None:
    """The default target is every file a run writes: deleting a GPU job's raw table, a figure or a map table
    (as Ctrl-C of a rerun does) plans exactly the jobs that write them and what reads them."""
    import shutil

    deleted = {
        "results/saliency/demo/age.raw.parquet": "saliency",
        "results/ablation/demo/disease.responses.parquet": "ablation_generate",
        "results/patching/demo/age.heatmap.parquet": "patching",
        "results/umap/demo/disease.coords.parquet": "umap",
        "results/saliency/demo/disease.curves.pdf": "saliency_summary",
        "results/maps/demo/map_cells.parquet": "knowledge_map",
    }
    aside = ran.parent / "aside"
    aside.mkdir(exist_ok=True)
    for i, name in enumerate(deleted):
        shutil.move(ran / name, aside / str(i))
    try:
        plan = _plan(ran)
    finally:
        for i, name in enumerate(deleted):
            shutil.move(aside / str(i), ran / name)  # move keeps the mtime: the run stays complete
    for rule in deleted.values():
        assert plan.get(rule, 0) >= 1, (rule, plan)
    assert plan["patching"] == 1 and plan["saliency"] == 1 and plan["ablation_generate"] == 1
    assert _plan(ran) == {}


def test_unrelated_module_and_resaved_script_rerun_nothing(ran: Path) -> None:
    (ran / "workflow_scripts" / "kmap" / "scratch.py").write_text("x = 1\n")
    script = ran / "workflow_scripts" / "patching.py"
    script.write_bytes(script.read_bytes())
    later = time.time() + 5
    os.utime(script, (later, later))
    try:
        assert _plan(ran) == {}
    finally:
        (ran / "workflow_scripts" / "kmap" / "scratch.py").unlink()


def test_every_output_carries_provenance(ran: Path) -> None:
    """Walk the whole run: every file the workflow wrote carries a provenance record naming its rule and code
    version; per-model outputs name the model and its resolved revision, per-domain ones the prompt hash."""
    from kmap.core.provenance import DIRECTORY_FILE, SIDECAR_SUFFIX, read_provenance

    results = ran / "results"
    checked = maps_checked = 0
    for path in sorted(results.rglob("*")):
        parts = path.relative_to(results).parts
        if path.is_dir() or parts[0] in ("logs", "benchmarks", "cache") or path.name.endswith(SIDECAR_SUFFIX):
            continue
        if parts[0] == "models":  # a model directory: one record for the directory
            record = read_provenance(results / "models" / parts[1] / DIRECTORY_FILE)
        else:
            record = read_provenance(path)
        assert record, f"{path} carries no provenance"
        assert record["code_version"] and record["rule"] and record["settings"] is not None, path
        if parts[0] != "summary":  # per-model outputs: the model, and the weights' revision once built
            model = record.get("model") or {}
            assert model.get("name") == parts[1] and "resolved_revision" in model, path
            assert parts[0] in ("models", "demo") or model["resolved_revision"].startswith("sha256:"), path
        if parts[0] in ("activations", "umap", "saliency", "ablation", "patching"):
            assert len(record["prompt_sha256"]) == 64, path
        if parts[0] == "maps" and path.name.count(".") == 3:  # <domain>.<method>.{intervals,cells}.parquet
            # One interval job writes every domain: each file names its own domain and the tables its curve read
            # (a contrasted method's read every domain's; map.contrast defaults).
            domain, method = path.name.split(".")[:2]
            assert record["domain"] == domain and record["method"] == method, path
            read = {Path(p).name.split(".")[0] for p in record["upstream"]}
            contrasted = method in ("saliency", "ablation")
            assert read == (set(FAST["domains"]) if contrasted else {domain}), (path, read)
            maps_checked += 1
        checked += 1
    assert maps_checked == 2 * len(FAST["domains"]) * 4
    assert checked > 100


def test_study_dry_run_plans_every_job_with_gpu_resources(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    result = snakemake(work, "-n", "--configfile", "config/paper.yaml")
    counts = job_counts(result.stdout)
    per_job = (
        "activations",
        "umap",
        "saliency",
        "saliency_summary",
        "ablation_generate",
        "ablation_judge",
        "ablation_summary",
        "patching",
        "patching_summary",
    )
    maps = {"intervals": 11 * 4, "knowledge_map": 11, "cross_model": 1}  # intervals: one per (model, method)
    preflight = {"preflight": 11 * 6 * 2}  # one per data file the GPU jobs read: the prompt set, the pairs
    once = {"stage_weights": 11, "cost_plan": 1, "all": 1}  # one staged snapshot per hub model
    assert counts == {**dict.fromkeys(per_job, 11 * 6), **preflight, **maps, **once}
    assert "demo_model" not in result.stdout

    # The cost plan the dry run prints agrees with the GPU jobs' own resources as Snakemake planned them.
    gpu_minutes = 0
    for block in result.stdout.split("\nrule ")[1:]:
        line = next((x for x in block.splitlines() if "resources:" in x), "")
        found = dict(re.findall(r"\b(gpu|runtime)=(\d+)", line))
        gpu_minutes += int(found.get("gpu", 0)) * int(found.get("runtime", 0))
    total = next(x for x in result.stderr.splitlines() if x.startswith("all ")).split()
    assert total[:3] == ["all", "all", str(11 * 6 * 4)]
    assert float(total[4]) == pytest.approx(gpu_minutes / 60, abs=0.06) and gpu_minutes > 0

    def resources(model: str) -> str:
        """The resources line of the model's age activations job (GPU)."""
        jobs = result.stdout.split("\nrule ")
        block = next(j for j in jobs if j.startswith("activations:") and f"model={model}, domain=age" in j)
        return next(line for line in block.splitlines() if "resources:" in line)

    # Pre-flights are CPU jobs: no GPU resource.
    preflights = [j for j in result.stdout.split("\nrule ") if j.startswith("preflight:")]
    assert len(preflights) == 11 * 6 * 2 and not any("gpu=" in j for j in preflights)

    assert "gpu=2" in resources("llama-3.3-70b") and "mem_mb=50026" in resources("llama-3.3-70b")
    assert "gpu=1" in resources("qwen-32b")


def test_cluster_routing_and_launch_checks(tmp_path: Path) -> None:
    """cluster: routes GPU jobs (GPU partition, constraint, one node) and everything else to the CPU partition;
    jobs that need the internet are local rules; what a profile or the environment gets wrong stops the launch."""
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "paper.yaml").read_text())
    config["domains"] = ["age"]
    config["models"] = {
        "llama-3.3-70b": config["models"]["llama-3.3-70b"],
        "tiny-llama": {"kind": "tiny", "architecture": "llama", "methods": ["umap"]},
    }
    config["cluster"] = {"gpu_partition": "gpu", "cpu_partition": "cpu", "gpu_constraint": "h100"}
    write_config(work, config, "routed.yaml")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    # 16 cores: a local dry run caps threads at the cores offered.
    result = snakemake(work, "-n", "--cores", "16", "--configfile", "config/routed.yaml", env=env)
    blocks = result.stdout.split("\n")

    def job(rule: str, model: str) -> str:
        text = "\n".join(blocks)
        for chunk in re.split(r"\n(?=(?:local)?rule )", text):
            if re.match(rf"(local)?rule {rule}:", chunk) and re.search(rf"(model|tiny_model)={model}\b", chunk):
                return chunk
        raise AssertionError(f"no {rule} job for {model}")

    gpu_job = job("activations", "llama-3.3-70b")
    for expected in ("slurm_partition=gpu", "constraint=h100", "nodes=1", "gpu=2", "gpu_memory_mib=81920"):
        assert expected in gpu_job, expected
    cpu_planned = job("activations", "tiny-llama")  # a GPU rule, CPU-planned for a tiny model
    assert "slurm_partition=cpu" in cpu_planned and "constraint" not in cpu_planned and "gpu=0" in cpu_planned
    umap = job("umap", "llama-3.3-70b")
    assert "slurm_partition=cpu" in umap and "threads: 8" in umap and "gpu=" not in umap
    assert "threads:" not in job("umap", "tiny-llama")  # one thread: not printed
    # The gated model is not staged and no token is set: a dry run warns, a real run stops before any job.
    assert "llama-3.3-70b are gated" in result.stderr
    real = snakemake(work, "--configfile", "config/routed.yaml", env=env, check=False)
    assert real.returncode != 0 and "HF_TOKEN is not set" in real.stdout + real.stderr
    assert not (work / "results").exists()
    # A profile asking more GPUs than a node has, or GPUs for every rule, fails before submission.
    token = {**env, "HF_TOKEN": "hf_test"}
    many = snakemake(
        work, "-n", "--configfile", "config/routed.yaml", "--set-resources", "saliency:gpu=16", env=token, check=False
    )
    assert many.returncode != 0 and "asks 16 GPUs for rule saliency, but a node has 8" in many.stdout + many.stderr
    every = snakemake(
        work, "-n", "--configfile", "config/routed.yaml", "--default-resources", "gpu=1", env=token, check=False
    )
    assert every.returncode != 0 and "every CPU rule would then hold a GPU" in every.stdout + every.stderr


def test_bad_config_fails_dry_run_with_key(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "paper.yaml").read_text())
    config["models"]["qwen-32b"]["dtype"] = "float64"
    write_config(work, config, "bad.yaml")
    result = snakemake(work, "-n", "--configfile", "config/bad.yaml", check=False)
    assert result.returncode != 0
    assert "models.qwen-32b.dtype: 'float64' is not allowed" in result.stdout + result.stderr


def test_too_small_gpus_fail_dry_run(tmp_path: Path) -> None:
    work = copy_workflow(tmp_path)
    config = yaml.safe_load((work / "config" / "paper.yaml").read_text())
    config["gpu"] = {"memory_gib": 40, "max_gpus": 2}
    write_config(work, config, "small.yaml")
    result = snakemake(work, "-n", "--configfile", "config/small.yaml", check=False)
    assert result.returncode != 0
    assert "'llama-3.3-70b'" in result.stdout + result.stderr and "quantization" in result.stdout + result.stderr


def test_failed_preflight_stops_the_gpu_job_before_it_starts(tmp_path: Path) -> None:
    """A hub-style model whose tokenizer cannot use enough pairs: the pairs' pre-flight fails, naming model,
    domain and counts, and the patching job never starts; the prompt set's pre-flight passes and its GPU job
    (activations) runs. Then the gate: a setting only the pre-flight and ablation read (ablation.max_new_tokens)
    reruns the pre-flight, never the activations it gates."""
    from kmap.data.knowledge import load_knowledge, vocabulary
    from kmap.offline.tiny import build_tiny_model

    repo = Path(__file__).resolve().parents[1]
    model_dir = tmp_path / "local-llama"
    words = vocabulary(load_knowledge(repo / "prompts" / "knowledge.yaml"))
    build_tiny_model("llama", words, model_dir, n_layers=2, hidden_size=32)
    work = copy_workflow(tmp_path / "wf")
    config = {
        "models": {"local-llama": local_hf_model(model_dir, ["ablation", "patching"])},
        "domains": ["disease"],
        "patching": {"min_pairs": 10_000},
    }
    write_config(work, config)
    activations = "results/activations/local-llama/disease.safetensors"
    targets = ["results/patching/local-llama/disease.pairs.parquet", activations]
    env = local_env(KMAP_ALLOW_CPU="1")  # a hub-style model's GPU job, here on the CPU
    result = snakemake(work, *targets, "--keep-going", "--configfile", "config/test.yaml", check=False, env=env)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "local-llama/disease: only" in output and "patching.min_pairs is 10000" in output, output[-3000:]
    assert not (work / "results" / "patching").exists()  # the GPU job never ran, not even its log
    assert not (work / "results" / "logs" / "patching").exists()
    assert not (work / "results" / "preflight" / "local-llama" / "disease.pairs.csv").exists()
    prompts = pd.read_csv(work / "results" / "preflight" / "local-llama" / "disease.prompts.csv")
    assert set(prompts["method"]) == {"activations", "ablation"}  # the GPU methods reading the prompt set
    assert (work / activations).exists()

    config["ablation"] = {"max_new_tokens": 8}
    write_config(work, config, "tokens.yaml")
    planned = snakemake(work, "-n", activations, "--configfile", "config/tokens.yaml", env=env).stdout
    assert job_counts(planned) == {"preflight": 1}
