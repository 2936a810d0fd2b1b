# kmap: medical knowledge maps of large language models.
#   snakemake --cores 2                                  # default config: demo + tiny models, CPU only
#   snakemake --profile slurm --configfile config/paper.yaml    # from this folder: ./slurm -> profiles/slurm
# This file only includes rule files; helpers and config validation live in rules/common.smk.
import gc

# Snakemake and its libraries are imported and live as long as this process: move them out of the cyclic garbage
# collector's reach. Otherwise every full collection while the DAG is built walks them all again (the study's
# dry run: 3.5 s -> 2.8 s). Reference counting still frees them; only a cycle among them would never be.
gc.freeze()
# And full collections 100 times rarer (every 1,000 collections of the middle generation, not 10): the DAG's jobs
# live as long as the run, so each one walked them all for nothing (4 of them, 0.1 s, in the study's dry run).
# Young objects are still collected as often; a long run still collects everything now and then.
gc.set_threshold(*gc.get_threshold()[:2], 1000)


# The default config applies only when none is given: --configfile replaces it instead of being merged
# into it (a merged `models:` would run the demo models alongside the study's).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


report: "report/workflow.rst"


# Seconds-long aggregation over small tables: on a cluster they run where Snakemake runs instead of waiting in
# a queue (one interval job per model and method: 44 on the study).
localrules:
    intervals,
    knowledge_map,
    cross_model,
    cost_plan,


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/preflight.smk"
include: "rules/activations.smk"
include: "rules/umap.smk"
include: "rules/saliency.smk"
include: "rules/ablation.smk"
include: "rules/patching.smk"
include: "rules/maps.smk"
include: "rules/cost.smk"


# Jobs that need the internet (the hub, the judge's API) run where Snakemake runs unless the cluster's compute
# nodes reach it (cluster.internet_jobs: cluster).
if config["cluster"]["internet_jobs"] == "local":

    localrules:
        stage_weights,
        ablation_judge,


rule all:
    default_target: True
    input:
        all_targets(),
