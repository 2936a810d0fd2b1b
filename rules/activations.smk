# The activation cache: one forward pass per batch, every layer, once per (model, domain).


rule activations:
    input:
        prompts=prompt_file,
        model=local_model_dir,
    output:
        tensor=f"{RESULTS}/activations/{{model}}/{{domain}}.safetensors",
        table=f"{RESULTS}/activations/{{model}}/{{domain}}.prompts.parquet",
        provenance=f"{RESULTS}/activations/{{model}}/{{domain}}.provenance.json",
    params:
        model=spec_dict,
        settings=config["activations"],
        prompts_dir=PROMPTS,
        code=code_version("activations", "models", "hooks", "architectures", "prompts"),
    log:
        f"{RESULTS}/logs/activations/{{model}}/{{domain}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/activations/{{model}}/{{domain}}.tsv"
    threads: 2
    resources:
        gpu=gpus,
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/gpu.yaml"
    script:
        "../workflow_scripts/extract_activations.py"
