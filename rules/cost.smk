# The study's cost plan: jobs, GPUs and planned GPU-hours per model and GPU rule, from the GPU plans alone. A dry
# run prints it; rule cost_plan writes it for the report. Needs the GPU rules' runtime helpers (included last).
rule cost_plan:
    output:
        table=summary_figure(
            f"{RESULTS}/summary/cost_plan.csv",
            "cost_plan",
            "0. Summary",
            {"figure": "cost plan"},
        ),
    log:
        f"{RESULTS}/logs/cost_plan.log",
    conda:
        "../envs/cpu.yaml"
    threads: 1
    resources:
        **cpu_resources(mem_mb=1000, runtime=5),
    params:
        rows=COST_ROWS,
        code=code("cost_plan"),
    script:
        "../workflow_scripts/cost_plan.py"
