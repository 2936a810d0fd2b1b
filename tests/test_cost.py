"""The study cost plan: planted jobs, exact sums."""

from __future__ import annotations

from kmap.core.cost import PlannedJob, cost_rows, format_rows


def test_cost_rows_sum_gpu_hours_per_rule_model_and_study() -> None:
    jobs = [
        PlannedJob("big", "activations", "age", 2, 30),
        PlannedJob("big", "activations", "drugs", 2, 90),
        PlannedJob("big", "saliency", "age", 4, 60),
        PlannedJob("small", "patching", "age", 1, 45),
        PlannedJob("demo", "activations", "age", 0, 30),  # CPU-planned: not a GPU cost
    ]
    rows = {(r["model"], r["rule"]): r for r in cost_rows(jobs)}
    assert list(rows) == [
        ("big", "activations"),
        ("big", "saliency"),
        ("big", "all"),
        ("small", "patching"),
        ("small", "all"),
        ("all", "all"),
    ]
    assert rows["big", "activations"] == {
        "model": "big",
        "rule": "activations",
        "jobs": 2,
        "gpus_per_job": "2",
        "gpu_hours": 4.0,  # 2 GPUs x (30 + 90) min
        "wall_hours": 2.0,
    }
    assert rows["big", "all"]["gpu_hours"] == 8.0 and rows["big", "all"]["gpus_per_job"] == "2-4"
    assert rows["all", "all"]["jobs"] == 4 and rows["all", "all"]["gpu_hours"] == 8.8  # + 0.75 rounded
    assert cost_rows([jobs[-1]]) == []
    text = format_rows(list(rows.values())).splitlines()
    assert text[0].split() == ["model", "rule", "jobs", "gpus_per_job", "gpu_hours", "wall_hours"]
    assert text[-1].split() == ["all", "all", "4", "1-4", "8.8", "3.8"]
