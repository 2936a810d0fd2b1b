"""GPU plans computed from a model's architecture config alone (no weights, no GPU).

The model is instantiated on the meta device (accelerate ``init_empty_weights``), so its exact parameter
count and the bytes each parameter takes under the configured dtype and quantization are known; from those
follow the GPUs a job needs, a ``max_memory`` split that leaves headroom for activations, and the SLURM
resources of the GPU rules. Two stages differ: ``forward`` (activations, patching, ablation) keeps the
checkpoint's quantization; ``gradient`` (saliency) needs real weight gradients, which bitsandbytes and MXFP4
weights do not have, so it plans the model dequantized to bf16.
"""

from __future__ import annotations

import functools
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kmap.models import ModelSpec

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
    memory_gib: float = 80.0  # per GPU
    max_gpus: int = 8  # per node: one job never spans nodes
    headroom_gib: float = 6.0  # per GPU, left for activations, CUDA context and fragmentation
    gradient_headroom_gib: float = 10.0  # per GPU, for backward activations and one gradient at a time


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

    def max_memory(self) -> dict[Any, str]:
        if self.gpus == 0:
            return {}
        return {i: f"{self.max_memory_gib:.0f}GiB" for i in range(self.gpus)}

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def config_snapshot(spec: ModelSpec, snapshots: Path) -> dict[str, Any]:
    """The architecture config: a shipped snapshot, a local checkpoint's config.json, or the hub's."""
    for candidate in (
        snapshots / (spec.source.replace("/", "--") + ".json"),
        Path(spec.source) / "config.json",
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


def _meta_parameters(arch: dict[str, Any]) -> dict[str, int]:
    return dict(_meta_parameters_cached(json.dumps(arch, sort_keys=True)))


@functools.lru_cache(maxsize=32)
def _meta_parameters_cached(arch_json: str) -> tuple[tuple[str, int], ...]:
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    arch = json.loads(arch_json)
    fields = {k: v for k, v in arch.items() if k not in ("architectures", "quantization_config", "torch_dtype")}
    config = AutoConfig.for_model(**fields)
    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    return tuple((name, p.numel()) for name, p in model.named_parameters())


def weight_bytes(params: dict[str, int], dtype: str, quantization: str) -> float:
    """Bytes of the weights; quantization applies to linear weights inside decoder layers only."""
    base = DTYPE_BYTES.get(dtype, 2.0)
    total = 0.0
    for name, count in params.items():
        per = base
        if quantization == "mxfp4" and _MXFP4_EXPERTS.search(name):
            per = QUANT_BYTES["mxfp4"]
        elif quantization in ("8bit", "4bit") and _LINEAR_IN_LAYERS.search(name) and "bias" not in name:
            per = QUANT_BYTES[quantization]
        total += per * count
    return total


def effective_quantization(spec: ModelSpec, arch: dict[str, Any], stage: str) -> str:
    if stage == "gradient":
        return "none"  # weight gradients need dequantized weights
    if spec.quantization != "none":
        return spec.quantization
    native = (arch.get("quantization_config") or {}).get("quant_method")
    return "mxfp4" if native == "mxfp4" else "none"


def plan(spec: ModelSpec, arch: dict[str, Any], stage: str, gpu: GpuSettings) -> GpuPlan:
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    params = _meta_parameters(arch)
    n_params = sum(params.values())
    dtype = "bfloat16" if spec.dtype == "auto" else spec.dtype
    weights = weight_bytes(params, dtype, effective_quantization(spec, arch, stage)) / GIB
    headroom = gpu.gradient_headroom_gib if stage == "gradient" else gpu.headroom_gib
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
