# Pre-flight per (hf model, domain, method): the tokenizer alone (no weights, no GPU) checks the prompts of a GPU
# method as that method formats them (token lengths against the context) and, for patching, which pairs the
# tokenizer can use. Each GPU rule waits for its own pre-flight, so a domain that cannot run fails there, before
# any GPU is requested. A pre-flight has exactly its GPU job's data inputs and data settings, so it reruns exactly
# when that job does: it never reruns a GPU job by itself (its code is recorded in its provenance, not a trigger;
# patching.min_pairs is read from the config, not a trigger either).


rule preflight:
    input:
        unpack(preflight_inputs),
        model=local_model_dir,
        weights=staged_weights,
    output:
        table=report(
            f"{RESULTS}/preflight/{{model}}/{{domain}}.{{method}}.csv",
            caption="../report/preflight.rst",
            category="0. Pre-flight",
            labels={"model": "{model}", "domain": "{domain}", "method": "{method}"},
        ),
        provenance=f"{RESULTS}/preflight/{{model}}/{{domain}}.{{method}}.csv.provenance.json",
    log:
        f"{RESULTS}/logs/preflight/{{model}}/{{domain}}.{{method}}.log",
    wildcard_constraints:
        model=alternation(names_of("hf")),
        method="|".join(GPU_METHODS),
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=4000, runtime=10),
    params:
        model=spec_dict,
        prompts_dir=PROMPTS,
        prompt_format=lambda w: prompt_format(config, w.model, w.method),
        new_tokens=lambda w: (
            config["ablation"]["max_new_tokens"] if w.method == "ablation" else 0
        ),
        multi_token_answers=lambda w: (
            config["patching"]["multi_token_answers"] if w.method == "patching" else ""
        ),
    script:
        "../workflow_scripts/preflight.py"
