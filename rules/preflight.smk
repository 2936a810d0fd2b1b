# Pre-flight per (hf model, domain, data file): the tokenizer alone (no weights, no GPU) checks a file the GPU jobs
# read: the prompt set, as each GPU method reading it formats it (token lengths against the context), or the
# patching pairs (which pairs the tokenizer can use). Each GPU rule waits for the pre-flight of its file, so a domain
# that cannot run fails there, before any GPU is requested; a pairs problem never holds back the prompt set's jobs.
# The GPU rules read the table as ancient(): a gate, not data, so a pre-flight never reruns a GPU job by itself
# (one that reran for another method's setting, say ablation.max_new_tokens, leaves activations as they are); each
# GPU job reruns on its own inputs and settings. Its code is recorded in its provenance, not a trigger, and
# patching.min_pairs is read from the config, not a trigger either.


rule preflight:
    input:
        unpack(preflight_inputs),
        model=local_model_dir,
        weights=staged_weights,
    output:
        table=report(
            f"{RESULTS}/preflight/{{model}}/{{domain}}.{{data}}.csv",
            caption="../report/preflight.rst",
            category="0. Pre-flight",
            labels={"model": "{model}", "domain": "{domain}", "data": "{data}"},
        ),
        provenance=f"{RESULTS}/preflight/{{model}}/{{domain}}.{{data}}.csv.provenance.json",
    log:
        f"{RESULTS}/logs/preflight/{{model}}/{{domain}}.{{data}}.log",
    wildcard_constraints:
        model=alternation(names_of("hf")),
        data="prompts|pairs",
    conda:
        "../envs/gpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=4000, runtime=10),
    params:
        model=spec_dict,
        prompts_dir=PROMPTS,
        # Each GPU method reading the file, with its prompt format and the tokens it generates after a prompt.
        formats=lambda w: {
            m: prompt_format(config, w.model, m) for m in preflight_methods(w)
        },
        new_tokens=lambda w: (
            {"ablation": config["ablation"]["max_new_tokens"]}
            if "ablation" in preflight_methods(w)
            else {}
        ),
        multi_token_answers=lambda w: (
            config["patching"]["multi_token_answers"] if w.data == "pairs" else ""
        ),
    script:
        "../workflow_scripts/preflight.py"
