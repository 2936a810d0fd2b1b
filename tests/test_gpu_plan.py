"""GPU plans from architecture configs alone: the study's models get the GPU counts a person would pick."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from kmap.core.config import check_config, model_specs
from kmap.core.gpu_plan import (
    GpuSettings,
    PlanError,
    arch_key,
    config_snapshot,
    count_parameters,
    meta_parameters,
    plan,
    weight_bytes,
)

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = REPO / "config" / "hf_configs"


@pytest.fixture(scope="module")
def specs():
    config = check_config(yaml.safe_load((REPO / "config" / "paper.yaml").read_text()), REPO / "config" / "schema.yaml")
    return model_specs(config)


@pytest.mark.parametrize(
    ("model", "quantization", "stage", "gpus", "gib"),
    [
        ("llama-3.3-70b", "none", "forward", 2, (128, 135)),
        ("llama-3.3-70b", "4bit", "forward", 1, (34, 42)),
        ("gemma-3-27b", "none", "forward", 1, (48, 56)),
        ("medgemma-27b", "none", "forward", 1, (48, 56)),
        ("qwen-32b", "none", "forward", 1, (58, 64)),
        ("gpt-oss-120b", "none", "forward", 1, (55, 68)),  # native MXFP4 experts
        ("gpt-oss-120b", "none", "gradient", 3, (210, 225)),  # dequantized to bf16 for weight gradients
    ],
)
def test_study_plans(specs, model: str, quantization: str, stage: str, gpus: int, gib: tuple[int, int]) -> None:
    spec = replace(specs[model], quantization=quantization)
    result = plan(spec, config_snapshot(spec, SNAPSHOTS), stage, GpuSettings())
    assert gib[0] <= result.weight_gib <= gib[1]
    assert result.gpus >= gpus if stage == "gradient" else result.gpus == gpus
    # The max_memory split holds the weights with the headroom left free.
    assert result.gpus * result.max_memory_gib >= result.weight_gib
    if stage == "forward":
        assert result.max_memory_gib == 80 - 6
    elif model != "gpt-oss-120b":
        assert result.max_memory_gib == 80 - 10


def test_moe_gradient_stage_budgets_full_size_expert_gradients(specs) -> None:
    """Autograd gives a stacked-experts tensor a gradient of its full size, however few experts a prompt routes
    to (held twice at the peak: buffer and incoming). GPT-OSS-120B: 36 layers of 128 experts, hidden 2880,
    intermediate 2880: gate_up 128 x 2880 x 5760 and down 128 x 2880 x 2880 per layer, in bf16."""
    spec = specs["gpt-oss-120b"]
    arch = config_snapshot(spec, SNAPSHOTS)
    stacked = 128 * 2880 * (2 * 2880) + 128 * 2880 * 2880
    expected = 2 * stacked * 2 / 2**30  # about 11.9 GiB
    result = plan(spec, arch, "gradient", GpuSettings())
    assert result.max_memory_gib == round(80 - 10 - expected, 1)
    assert result.gpus == 4  # 218 GiB of bf16 weights over 58 usable GiB per GPU
    # Dense models are unchanged, and the forward stage of GPT-OSS needs no gradient memory.
    assert (
        plan(specs["qwen-32b"], config_snapshot(specs["qwen-32b"], SNAPSHOTS), "gradient", GpuSettings()).max_memory_gib
        == 70
    )
    assert plan(spec, arch, "forward", GpuSettings()).max_memory_gib == 74


def test_llama_parameter_count_is_exact(specs) -> None:
    spec = specs["llama-3.3-70b"]
    result = plan(spec, config_snapshot(spec, SNAPSHOTS), "forward", GpuSettings())
    # 80 layers x (attention 4*8192^2 * (1 + 2*8/64)/2... ) computed independently below.
    h, i, v, layers, kv = 8192, 28672, 128256, 80, 1024
    per_layer = h * h * 2 + h * kv * 2 + 3 * h * i + 2 * h
    assert result.n_params == layers * per_layer + 2 * v * h + h


def test_too_small_gpus_fail_with_fix(specs) -> None:
    spec = specs["llama-3.3-70b"]
    with pytest.raises(PlanError) as caught:
        plan(spec, config_snapshot(spec, SNAPSHOTS), "forward", GpuSettings(memory_gib=24, max_gpus=4))
    message = str(caught.value)
    assert "'llama-3.3-70b'" in message and "quantization" in message and "gpu.max_gpus" in message


def test_missing_snapshot_names_file(tmp_path: Path, specs) -> None:
    spec = replace(specs["qwen-32b"], source="nobody/not-a-model-xyz")
    with pytest.raises(PlanError, match="nobody--not-a-model-xyz.json"):
        config_snapshot(spec, tmp_path)


def test_quantized_bytes() -> None:
    named = {"model.embed_tokens.weight": 1000, "model.layers.0.mlp.up_proj.weight": 4096}
    counts = count_parameters(named.items())
    assert weight_bytes(counts, "bfloat16", "none") == 2 * 5096
    assert weight_bytes(counts, "bfloat16", "4bit") == 2 * 1000 + 4096 * (0.5 + 4 / 64)
    experts = count_parameters(
        [("model.layers.0.mlp.experts.gate_up_proj", 64), ("model.layers.0.mlp.router.weight", 8)]
    )
    assert weight_bytes(experts, "bfloat16", "mxfp4") == 64 * 4.25 / 8 + 8 * 2


def test_shipped_counts_match_the_meta_device_models() -> None:
    """The parse-time cache holds, for every shipped snapshot, exactly what the meta-device model counts."""
    shipped = json.loads((SNAPSHOTS / "param_counts.json").read_text())
    snapshots = sorted(SNAPSHOTS.glob("*--*.json"))
    assert len(snapshots) == 11
    for path in snapshots:
        arch = json.loads(path.read_text())
        cached = {k: v for k, v in shipped[arch_key(arch)].items() if k != "snapshot"}
        assert cached == meta_parameters(arch), path.name


def test_a_new_architecture_is_counted_once_and_cached(tmp_path: Path, specs) -> None:
    spec = specs["qwen-32b"]
    arch = {**config_snapshot(spec, SNAPSHOTS), "num_hidden_layers": 3}
    cache = tmp_path / "counts.json"
    first = plan(spec, arch, "forward", GpuSettings(), cache)
    assert json.loads(cache.read_text())[arch_key(arch)]["total"] == first.n_params
    # The cached counts are used from then on (an edited entry proves it).
    edited = json.loads(cache.read_text())
    edited[arch_key(arch)]["total"] += 1
    cache.write_text(json.dumps(edited))
    assert plan(spec, arch, "forward", GpuSettings(), cache).n_params == first.n_params + 1


def test_parse_time_modules_import_no_torch() -> None:
    """What the Snakefile imports at parse (read from the rule files, so a new import is covered): no torch, no
    transformers (every SLURM job re-parses)."""
    import re

    sources = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    modules = sorted({m for s in sources for m in re.findall(r"^from (kmap[\w.]*) import", s.read_text(), re.M)})
    assert "kmap.core.gpu_plan" in modules and "kmap.core.config" in modules
    code = (
        "import sys; sys.path.append('workflow_scripts');"
        f"import {', '.join(modules)};"
        "print(sorted(m for m in ('torch', 'transformers', 'accelerate') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_ablation_runtime_model_counts_rows_batches_and_compute() -> None:
    """The budget is the forward budget plus 1.5 x (decode steps x step time + scoring), recomputed here."""
    from types import SimpleNamespace

    from kmap.core.gpu_plan import EFFECTIVE_FLOPS, STEP_FIXED_S, STEP_PER_BILLION_S, ablation_runtime_min

    n_params, layers, prompts = 70e9, 80, 606
    settings = SimpleNamespace(batch_size=64, max_new_tokens=64)
    rows = prompts * (layers + 1)
    step = STEP_FIXED_S + STEP_PER_BILLION_S * 70 + 64 * 2 * n_params / EFFECTIVE_FLOPS
    decode = -(-rows // 64) * 64 * step
    score = rows * (64 + 64) * 2 * n_params / EFFECTIVE_FLOPS
    assert ablation_runtime_min(100, int(n_params), layers, prompts, settings) == 100 + math.ceil(
        1.5 * (decode + score) / 60
    )
    # Larger batches amortise the weight reads; a CPU-planned model (no layer count) keeps its forward budget.
    small = ablation_runtime_min(100, int(n_params), layers, prompts, SimpleNamespace(batch_size=8, max_new_tokens=64))
    assert small > ablation_runtime_min(100, int(n_params), layers, prompts, settings)
    assert ablation_runtime_min(30, int(n_params), None, prompts, settings) == 30
