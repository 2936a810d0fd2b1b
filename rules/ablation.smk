# Method 3, layer ablation, in two rules so that no GPU waits on a network: generation and the judge-free
# metrics on the GPU (ablation_generate), the LLM judge on a CPU (ablation_judge).
from kmap import ablation as _ablation
from kmap.judge import JudgeSettings

ABLATION = _ablation.settings_from_config(config.get("ablation"))


rule ablation_generate:
    input:
        prompts=prompt_file,
        model=local_model_dir,
    output:
        responses=f"{RESULTS}/ablation/{{model}}/{{domain}}.responses.parquet",
        metrics=f"{RESULTS}/ablation/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/ablation/{{model}}/{{domain}}.replicates.parquet",
        curves_png=report(
            f"{RESULTS}/ablation/{{model}}/{{domain}}.curves.png",
            caption="../report/curves.rst",
            category="2. Methods: {model}",
            subcategory="{domain}",
            labels={
                "model": "{model}",
                "domain": "{domain}",
                "figure": "ablation (judge-free)",
            },
        ),
        curves_pdf=f"{RESULTS}/ablation/{{model}}/{{domain}}.curves.pdf",
        provenance=f"{RESULTS}/ablation/{{model}}/{{domain}}.provenance.json",
    log:
        f"{RESULTS}/logs/ablation_generate/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablation_generate/{{model}}/{{domain}}.tsv"
    conda:
        "../envs/gpu.yaml"
    threads: planned("forward", "cpus")
    resources:
        gpu=planned("forward", "gpus"),
        mem_mb=planned("forward", "mem_mb"),
        # The forward plan's budget plus decoding time; the prompt count is read from the prompt file.
        runtime=lambda w: _ablation.runtime_min(
            PLANS[w.model, "forward"].runtime_min,
            PLANS[w.model, "forward"].n_params,
            SPECS[w.model].n_layers if PLANS[w.model, "forward"].gpus else None,
            sum(1 for _ in open(prompt_file(w), encoding="utf-8")) - 1,
            ABLATION,
        ),
        batch_size=batch_size("ablation"),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings=_ablation.value_params(ABLATION),
        bootstrap=config["bootstrap"],
        prompts_dir=PROMPTS,
        max_memory=max_memory("forward"),
        code=code_version(
            "ablation",
            "models",
            "hooks",
            "architectures",
            "prompts",
            "stats",
            "tables",
            "plotting",
        ),
    script:
        "../workflow_scripts/ablation_generate.py"


# Without the API key the job succeeds with every pair "skipped" and empty judge metric tables; the key is
# not an input, so after setting it run `snakemake --forcerun ablation_judge` (cached answers are reused).
rule ablation_judge:
    input:
        responses=f"{RESULTS}/ablation/{{model}}/{{domain}}.responses.parquet",
    output:
        judge=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge.parquet",
        metrics=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_metrics.parquet",
        replicates=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_replicates.parquet",
        curves_png=report(
            f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_curves.png",
            caption="../report/curves.rst",
            category="2. Methods: {model}",
            subcategory="{domain}",
            labels={
                "model": "{model}",
                "domain": "{domain}",
                "figure": "ablation (judge)",
            },
        ),
        curves_pdf=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_curves.pdf",
        provenance=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_provenance.json",
    log:
        f"{RESULTS}/logs/ablation_judge/{{model}}/{{domain}}.log",
    conda:
        "../envs/cpu.yaml"
    # Requests are I/O bound: judge.concurrency threads in flight on one core.
    threads: 1
    params:
        # Only settings that change a score; transport ones (concurrency, timeouts, retries, key variable)
        # are read from the config by the script, so tuning them never reruns the judge.
        judge=JudgeSettings.from_dict(config.get("judge", {})).score_settings(),
        bootstrap=config["bootstrap"],
        # Outside any one run's outputs and never declared: a rerun reads it and pays only for new pairs.
        cache_dir=f"{RESULTS}/cache/judge",
        code=code_version("judge", "ablation", "stats", "tables", "plotting"),
    script:
        "../workflow_scripts/ablation_judge.py"
