# Method 3, layer ablation, in three rules so that no GPU waits on a network or on statistics: generation and
# the judge-free per-pair values on the GPU (ablation_generate), the LLM judge on a CPU (ablation_judge), the
# bootstrap summaries and figures on a CPU (ablation_summary).
rule ablation_generate:
    input:
        prompts=prompt_file,
        model=local_model_dir,
        weights=staged_weights,
        preflight=preflight_table("ablation"),
    output:
        responses=f"{RESULTS}/ablation/{{model}}/{{domain}}.responses.parquet",
    log:
        f"{RESULTS}/logs/ablation_generate/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/ablation_generate/{{model}}/{{domain}}.tsv"
    # One retry of a failed job, with half the batch size (a CUDA out-of-memory at the planned batch).
    retries: 1
    conda:
        "../envs/gpu.yaml"
    threads: planned("forward", "cpus")
    resources:
        **model_resources("forward", "ablation", runtime=ablation_runtime),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings=value_params(ABLATION),
        prompts_dir=PROMPTS,
        prompt_format=formatted("ablation"),
        code=code("ablation_generate"),
    script:
        "../workflow_scripts/ablation_generate.py"


# Without the API key the job succeeds with every pair "skipped" and empty judge metric tables; the key is
# not an input, so after setting it run `snakemake --forcerun ablation_judge` (cached answers are reused).
rule ablation_judge:
    input:
        responses=f"{RESULTS}/ablation/{{model}}/{{domain}}.responses.parquet",
    output:
        judge=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge.parquet",
    log:
        f"{RESULTS}/logs/ablation_judge/{{model}}/{{domain}}.log",
    conda:
        "../envs/cpu.yaml"
    # Requests are I/O bound: judge.concurrency threads in flight on one core.
    threads: 1
    resources:
        # Up to judge.concurrency requests in flight with retries: minutes per domain, more on a slow API.
        **cpu_resources(mem_mb=2000, runtime=120),
    params:
        # Only settings that change a score; transport ones (concurrency, timeouts, retries, key variable)
        # are read from the config by the script, so tuning them never reruns the judge.
        judge=JudgeSettings.from_dict(config["judge"]).score_settings(),
        # Outside any one run's outputs and never declared: a rerun reads it and pays only for new pairs.
        cache_dir=JUDGE_CACHE,
        # Changed by a judge job that left pairs failed (unreachable endpoint, timeouts, a wrong key): the next
        # run retries exactly those; unchanged once every pair has a verdict, so nothing reruns after that.
        retry=judge_retry_token,
        code=code("ablation_judge"),
    script:
        "../workflow_scripts/ablation_judge.py"


rule ablation_summary:
    input:
        responses=f"{RESULTS}/ablation/{{model}}/{{domain}}.responses.parquet",
        judge=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge.parquet",
    output:
        metrics=f"{RESULTS}/ablation/{{model}}/{{domain}}.metrics.parquet",
        replicates=f"{RESULTS}/ablation/{{model}}/{{domain}}.replicates.parquet",
        curves_png=method_figure("ablation", "curves", "ablation (judge-free)"),
        curves_pdf=f"{RESULTS}/ablation/{{model}}/{{domain}}.curves.pdf",
        judge_metrics=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_metrics.parquet",
        judge_replicates=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_replicates.parquet",
        judge_curves_png=method_figure("ablation", "judge_curves", "ablation (judge)"),
        judge_curves_pdf=f"{RESULTS}/ablation/{{model}}/{{domain}}.judge_curves.pdf",
    log:
        f"{RESULTS}/logs/ablation_summary/{{model}}/{{domain}}.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=2000, runtime=10),
    params:
        bootstrap=config["bootstrap"],
        figures=config["figures"],
        # Whether a domain's verdicts can stand as its judge score: a summary setting, never a judge rerun.
        min_ok_share=config["judge"]["min_ok_share"],
        code=code("ablation_summary"),
    script:
        "../workflow_scripts/ablation_summary.py"
