# The activation cache: one forward pass per batch, every layer, once per (model, domain).


rule activations:
    input:
        prompts=prompt_file,
        model=local_model_dir,
        weights=staged_weights,
        preflight=preflight_table("activations"),
    output:
        tensor=f"{RESULTS}/activations/{{model}}/{{domain}}.safetensors",
        table=f"{RESULTS}/activations/{{model}}/{{domain}}.prompts.parquet",
        provenance=f"{RESULTS}/activations/{{model}}/{{domain}}.provenance.json",
    log:
        f"{RESULTS}/logs/activations/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/activations/{{model}}/{{domain}}.tsv"
    # One retry of a failed job, with half the batch size (a CUDA out-of-memory at the planned batch).
    retries: 1
    conda:
        "../envs/gpu.yaml"
    threads: planned("forward", "cpus")
    resources:
        **model_resources("forward", "activations"),
    params:
        model=spec_dict,
        # batch_size is a resource, not a param: it never changes values, so it must not trigger reruns.
        settings=without_batch_size("activations"),
        prompts_dir=PROMPTS,
        prompt_format=formatted("activations"),
        code=code("activations"),
    script:
        "../workflow_scripts/activations.py"
