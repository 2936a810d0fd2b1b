"""GPU plans computed from a model's architecture config alone (no weights, no GPU).

The model's exact parameter counts come from instantiating it on the meta device (accelerate
``init_empty_weights``), cached per architecture snapshot in ``config/hf_configs/param_counts.json`` so that the
Snakefile parse needs no torch; with the configured dtype and quantization they give the weights' bytes; from those
follow the GPUs a job needs, a ``max_memory`` split that leaves headroom for activations, and the SLURM
resources of the GPU rules. Two stages differ: ``forward`` (activations, patching, ablation) keeps the
checkpoint's quantization; ``gradient`` (saliency) needs real weight gradients, which bitsandbytes and MXFP4
weights do not have, so it plans the model dequantized to bf16.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import math
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kmap.core.io import write_json_atomic
from kmap.core.settings import schema_field
from kmap.core.spec import ModelSpec

GIB = 2**30
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0}
# Bytes per weight of quantized linear layers, including their scales.
QUANT_BYTES = {"8bit": 1.0 + 4 / 4096, "4bit": 0.5 + 4 / 64, "mxfp4": 4.25 / 8}
_LINEAR_IN_LAYERS = re.compile(r"\.layers\.\d+\..*(proj\.weight|experts\.(gate_up_proj|down_proj))$")
_MXFP4_EXPERTS = re.compile(r"\.mlp\.experts\.(gate_up_proj|down_proj)$")
STAGES = ("forward", "gradient")


class PlanError(ValueError):
    """A model cannot run on the configured GPUs; the message names the model and the fix."""


@dataclass(frozen=True)
class GpuSettings:
    memory_gib: float = schema_field("gpu", "memory_gib")
    max_gpus: int = schema_field("gpu", "max_gpus")
    headroom_gib: float = schema_field("gpu", "headroom_gib")
    gradient_headroom_gib: float = schema_field("gpu", "gradient_headroom_gib")


@dataclass(frozen=True)
class GpuPlan:
    model: str
    stage: str
    n_params: int
    weight_gib: float
    gpus: int
    max_memory_gib: float  # per GPU, passed to from_pretrained(max_memory=...)
    mem_mb: int  # host RAM
    cpus: int
    runtime_min: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_snapshot(spec: ModelSpec, snapshots: Path, staged: Path | None = None) -> dict[str, Any]:
    """The architecture config: a shipped snapshot, a local checkpoint's or the staged snapshot's config.json
    (a cluster job re-parses the workflow on a node without internet), or the hub's."""
    for candidate in (
        snapshots / (spec.source.replace("/", "--") + ".json"),
        Path(spec.source) / "config.json",
        *([staged / "config.json"] if staged else []),
    ):
        if candidate.is_file():
            return json.loads(candidate.read_text())
    try:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(spec.source, revision=spec.revision).to_dict()
    except (OSError, ValueError) as error:
        raise PlanError(
            f"model {spec.name!r}: no architecture config for {spec.source!r} to plan GPUs without weights; "
            f"save its config.json as {snapshots / (spec.source.replace('/', '--') + '.json')}"
        ) from error


# Parameter counts by how they are stored: every parameter, the quantizable linear weights inside decoder
# layers (bitsandbytes 8bit/4bit) and the MoE expert weights (MXFP4).
COUNT_KEYS = ("total", "layer_linear", "mxfp4_experts")


def arch_key(arch: dict[str, Any]) -> str:
    """Hash of an architecture config: the key of its cached parameter counts."""
    blob = json.dumps(arch, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def count_parameters(named: Iterable[tuple[str, int]]) -> dict[str, int]:
    counts = dict.fromkeys(COUNT_KEYS, 0)
    for name, count in named:
        counts["total"] += count
        if _LINEAR_IN_LAYERS.search(name) and "bias" not in name:
            counts["layer_linear"] += count
        if _MXFP4_EXPERTS.search(name):
            counts["mxfp4_experts"] += count
    return counts


def meta_parameters(arch: dict[str, Any]) -> dict[str, int]:
    """Parameter counts of the model built on the meta device (imports torch and transformers: seconds)."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = {k: v for k, v in arch.items() if k not in ("architectures", "quantization_config", "torch_dtype")}
    config = AutoConfig.for_model(**fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return count_parameters((name, p.numel()) for name, p in model.named_parameters())


def parameter_counts(arch: dict[str, Any], cache: Path | None = None) -> dict[str, int]:
    """Counts from ``cache`` (a JSON keyed by ``arch_key``, shipped for every snapshot in config/hf_configs),
    else built on the meta device and added to the cache, so the Snakefile parse never needs torch twice."""
    key = arch_key(arch)
    known = json.loads(cache.read_text()) if cache is not None and cache.is_file() else {}
    if key in known:
        return known[key]
    counts = _meta_cached(json.dumps(arch, sort_keys=True))
    if cache is not None:
        with contextlib.suppress(OSError):  # a read-only checkout still plans, just not faster next time
            known[key] = counts
            write_json_atomic(cache, known)
    return counts


@functools.lru_cache(maxsize=32)
def _meta_cached(arch_json: str) -> dict[str, int]:
    return meta_parameters(json.loads(arch_json))


def weight_bytes(counts: dict[str, int], dtype: str, quantization: str) -> float:
    """Bytes of the weights; quantization applies to linear weights inside decoder layers only."""
    base = DTYPE_BYTES.get(dtype, 2.0)
    quantized = {"mxfp4": "mxfp4_experts", "8bit": "layer_linear", "4bit": "layer_linear"}.get(quantization)
    if quantized is None:
        return base * counts["total"]
    return base * (counts["total"] - counts[quantized]) + QUANT_BYTES[quantization] * counts[quantized]


def expert_gradient_gib(arch: dict[str, Any], counts: dict[str, int], dtype: str) -> float:
    """Gradient memory a mixture-of-experts layer needs beyond the dense headroom (gradient stage).

    Each routed expert reads its slice of the stacked expert tensors (``gate_up_proj[e]``); autograd's backward of
    that indexing is a zero tensor of the whole stack with the slice filled in, summed into a buffer per stacked
    tensor until the layer's experts are done. So one layer's stacks are held twice over at the peak (the buffer
    and the incoming gradient), whatever few experts the prompt routes to: about 12 GiB per layer of
    GPT-OSS-120B, more than the dense headroom. kmap's hook frees each gradient as soon as it is summed, so one
    layer is the peak."""
    stacked = counts.get("mxfp4_experts", 0)
    if not stacked:
        return 0.0
    layers = arch.get("num_hidden_layers") or (arch.get("text_config") or {}).get("num_hidden_layers") or 1
    return 2 * stacked / layers * DTYPE_BYTES[dtype] / GIB


def effective_quantization(spec: ModelSpec, arch: dict[str, Any], stage: str) -> str:
    if stage == "gradient":
        return "none"  # weight gradients need dequantized weights
    if spec.quantization != "none":
        return spec.quantization
    native = (arch.get("quantization_config") or {}).get("quant_method")
    return "mxfp4" if native == "mxfp4" else "none"


def plan(spec: ModelSpec, arch: dict[str, Any], stage: str, gpu: GpuSettings, cache: Path | None = None) -> GpuPlan:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    counts = parameter_counts(arch, cache)
    n_params = counts["total"]
    dtype = "bfloat16" if spec.dtype == "auto" else spec.dtype
    weights = weight_bytes(counts, dtype, effective_quantization(spec, arch, stage)) / GIB
    headroom = gpu.headroom_gib
    if stage == "gradient":
        headroom = gpu.gradient_headroom_gib + expert_gradient_gib(arch, counts, dtype)
    usable = gpu.memory_gib - headroom
    if usable <= 0:
        raise PlanError(f"gpu.memory_gib {gpu.memory_gib} leaves nothing after {headroom} GiB headroom")
    gpus = max(1, math.ceil(weights / usable))
    if gpus > gpu.max_gpus:
        raise PlanError(
            f"model {spec.name!r} ({stage} stage) needs {weights:.0f} GiB of weights, {gpus} GPUs of "
            f"{gpu.memory_gib:g} GiB, but a node has {gpu.max_gpus}: set models.{spec.name}.quantization to "
            "4bit or 8bit, or raise gpu.max_gpus / gpu.memory_gib to match your nodes"
        )
    # Host RAM: safetensors are memory-mapped shard by shard; keep a margin for the tokenizer and outputs.
    mem_mb = int(1024 * max(16, min(weights * 0.25, 256) + 16))
    # Rough wall-time budget: loading at ~1 GiB/s plus compute that grows with size; overridable.
    runtime = int(20 + weights / 60 + (n_params / 1e9) * (1.5 if stage == "gradient" else 0.5))
    return GpuPlan(
        model=spec.name,
        stage=stage,
        n_params=n_params,
        weight_gib=round(weights, 1),
        gpus=gpus,
        max_memory_gib=round(usable, 1),
        mem_mb=mem_mb,
        cpus=8,
        runtime_min=runtime,
    )


def cpu_plan(spec: ModelSpec, stage: str) -> GpuPlan:
    """Demo and tiny models: no GPU, small host memory."""
    return GpuPlan(spec.name, stage, 0, 0.0, 0, 0.0, 4000, 1, 30)


# Ablation's runtime model (rough, from public H100 figures until benchmarks/gpu_check.sh calibrates it): a decode
# step reads every weight once whatever the batch (memory-bound: a fixed cost plus 1 ms per billion parameters, as
# the per-layer loop assumed) and computes 2 x parameters FLOP per row at an effective 2e14 FLOP/s; the
# teacher-forced scoring pass computes every row's prompt and response at the same rate.
STEP_FIXED_S = 0.02
STEP_PER_BILLION_S = 0.001
EFFECTIVE_FLOPS = 2e14
SCORED_TOKENS = 64  # a prompt's tokens in the scoring pass besides its response (chat formats are longer)


def ablation_runtime_min(base_min: int, n_params: int, n_layers: int | None, n_prompts: int, settings: Any) -> int:
    """Wall-time budget: a model's forward budget plus batched greedy decoding and scoring, with a 1.5x margin.

    Every (prompt, ablated layer or none) is a row; ``settings.batch_size`` rows decode together for
    ``max_new_tokens`` steps, then are teacher-forced once (profiles can override it with set-resources)."""
    if n_layers is None:
        return base_min
    rows = n_prompts * (n_layers + 1)
    batch = min(settings.batch_size, rows)
    step = STEP_FIXED_S + STEP_PER_BILLION_S * n_params / 1e9 + batch * 2 * n_params / EFFECTIVE_FLOPS
    decode = -(-rows // batch) * settings.max_new_tokens * step
    score = rows * (SCORED_TOKENS + settings.max_new_tokens) * 2 * n_params / EFFECTIVE_FLOPS
    return base_min + math.ceil(1.5 * (decode + score) / 60)
