# kmap: medical knowledge maps of large language models.
#   snakemake --cores 2                                  # default config: demo + tiny models, CPU only
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
# This file only includes rule files; helpers and config validation live in rules/common.smk.


# The default config applies only when none is given: --configfile replaces it instead of being merged
# into it (a merged `models:` would run the demo models alongside the study's).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# Seconds-long aggregation over small tables: on a cluster they run where Snakemake runs instead of waiting in
# a queue (one interval job per model, domain and method: 264 on the study).
localrules:
    intervals,
    knowledge_map,
    cross_model,


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/preflight.smk"
include: "rules/activations.smk"
include: "rules/umap.smk"
include: "rules/saliency.smk"
include: "rules/ablation.smk"
include: "rules/patching.smk"
include: "rules/maps.smk"


rule all:
    default_target: True
    input:
        all_targets(),
