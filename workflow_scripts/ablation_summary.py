"""Rule ablation_summary (CPU): method 3, per-layer means with bootstrap CIs of the judge-free metrics and
of the judge's scores, and their figures."""

from kmap.core.warm import hand_over

hand_over()  # first: on a local run the job continues in a process with its libraries imported

import pandas as pd

from kmap.core.figures import curve_figure
from kmap.core.job import Job
from kmap.core.provenance import read_provenance
from kmap.core.tables import REPLICATE_COLUMNS
from kmap.methods.ablation.summary import summarise, summarise_verdicts

CAPTION = (
    "Each layer replaced by the identity in turn. kl: KL(intact ‖ ablated) per token over the intact "
    "response; logprob_drop: intact minus ablated log-probability per token; token_overlap: bag-of-tokens F1 "
    "of the two greedy responses; identical: share of unchanged responses. Bands: 95 % bootstrap CIs over "
    "prompts."
)


def main(job: Job) -> None:
    out, model, domain, bootstrap = job.smk.output, job.model, job.domain, job.params["bootstrap"]
    n, seed = bootstrap["n"], bootstrap["seed"]
    metrics, replicates = summarise(pd.read_parquet(job.smk.input.responses), model, domain, n_boot=n, seed=seed)
    job.write_table(metrics, out.metrics)
    job.write_table(replicates, out.replicates, REPLICATE_COLUMNS)
    curve_figure(metrics, out.curves_png, out.curves_pdf, f"{model} · {domain}: layer ablation (judge-free)", CAPTION)

    judged = pd.read_parquet(job.smk.input.judge)
    metrics, replicates, verdicts = summarise_verdicts(judged, model, domain, n, seed, job.params["min_ok_share"])
    if verdicts.startswith("judge unusable"):
        job.log.warning("%s: %s", job.label, verdicts)
    job.note(judge_verdicts=verdicts)
    job.write_table(metrics, out.judge_metrics)
    job.write_table(replicates, out.judge_replicates, REPLICATE_COLUMNS)
    judge = (read_provenance(job.smk.input.judge) or {}).get("judge", {})
    skipped = (read_provenance(job.smk.input.judge) or {}).get("skipped")
    if skipped:
        caption = f"Judge skipped ({skipped}); the map uses the judge-free metrics."
    elif verdicts.startswith("judge unusable"):
        caption = f"{verdicts[0].upper()}{verdicts[1:]}."
    else:
        caption = (
            f"Degradation judged by {judge.get('model')} from 1 (no change) to 10 (gibberish); {verdicts}; missing "
            "scores (malformed or failed) left out. Bands: 95 % bootstrap CIs over prompts."
        )
    title = f"{model} · {domain}: ablation, LLM judge"
    curve_figure(metrics, out.judge_curves_png, out.judge_curves_pdf, title, caption)
    job.log.info("ablation summary %s: %d judge metric rows", job.label, len(metrics))


if __name__ == "__main__":
    main(Job(snakemake))  # noqa: F821 - injected by Snakemake
