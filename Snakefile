# kmap: medical knowledge maps of large language models.
#   snakemake --cores 2                                  # default config: demo + tiny models, CPU only
#   snakemake --profile profiles/slurm --configfile config/paper.yaml
# This file only includes rule files; helpers and config validation live in rules/common.smk.


configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/models.smk"
include: "rules/activations.smk"


rule all:
    input:
        all_targets(),
    default_target: True
