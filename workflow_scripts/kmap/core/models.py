"""Model access: the only module that loads a model or a tokenizer.

A ``ModelSpec`` comes from one entry of ``config['models']``; ``load_model`` turns it into a ``LoadedModel``
(eval mode, no KV cache for analysis forwards, safetensors only) whose ``parts`` expose the decoder layers
uniformly for every supported architecture.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from kmap.core.architectures import ModelParts, parts
from kmap.core.prompt_format import PromptFormat
from kmap.core.spec import QUANTIZATIONS, ModelSpec
from kmap.core.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelLoadError(RuntimeError):
    """A model cannot be loaded as configured; the message names the model, the cause and the fix."""


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Any
    parts: ModelParts
    load_seconds: float

    @property
    def n_layers(self) -> int:
        return self.parts.n_layers

    @property
    def device(self) -> torch.device:
        return self.parts.embed.weight.device

    @property
    def hidden_size(self) -> int:
        return self.parts.embed.weight.shape[1]


def check_local_weights(spec: ModelSpec) -> Path:
    """Refuse a local model directory that is missing or holds only pickled weights."""
    root = Path(spec.source).expanduser()
    if not (root / "config.json").exists():
        raise ModelLoadError(
            f"model {spec.name!r}: no config.json in {root}; set models.{spec.name}.source in the config "
            "to a directory saved with save_pretrained, or to a hub id 'org/name'"
        )
    if not any(root.glob("*.safetensors")):
        pickles = sorted(p.name for p in root.glob("*.bin")) + sorted(p.name for p in root.glob("*.pt*"))
        raise ModelLoadError(
            f"model {spec.name!r}: {root} has no .safetensors weights"
            + (f" (found pickled {', '.join(pickles)}, which kmap refuses to load)" if pickles else "")
            + "; convert them with save_pretrained(..., safe_serialization=True)"
        )
    return root


STAGES = ("forward", "gradient")


def native_quantization(spec: ModelSpec) -> str:
    """The quantization a checkpoint ships with (``quant_method`` in its config: ``mxfp4`` for GPT-OSS), or
    ``none``."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(spec.source, revision=spec.revision, trust_remote_code=spec.trust_remote_code)
    found = getattr(config, "quantization_config", None)
    method = found.get("quant_method") if isinstance(found, dict) else getattr(found, "quant_method", None)
    return str(getattr(method, "value", method)) if method else "none"


def planned_quantization(spec: ModelSpec, native: str, stage: str) -> str:
    """How the GPU plan assumed the weights of this stage (``kmap.core.gpu_plan.effective_quantization``):
    the gradient stage dequantized, the forward stage as configured, else as the checkpoint ships."""
    from kmap.core.gpu_plan import effective_quantization

    return effective_quantization(spec, {"quantization_config": {"quant_method": native}}, stage)


def loaded_quantization(model: torch.nn.Module) -> str:
    """How the weights actually sit in memory: ``mxfp4`` (packed expert blocks), ``8bit``/``4bit``
    (bitsandbytes), or ``none``. transformers falls back to dequantizing MXFP4 with only a warning when its
    kernels are missing; this is what catches it."""
    for name, param in model.named_parameters():
        kind = type(param).__name__
        if kind == "Int8Params":
            return "8bit"
        if kind == "Params4bit":
            return "4bit"
        if ".experts." in name and param.dtype == torch.uint8:
            return "mxfp4"
    return "none"


def _quantization_config(spec: ModelSpec, native: str = "none", stage: str = "forward") -> Any:
    if native == "mxfp4":
        from transformers import Mxfp4Config

        # Explicit either way: MXFP4 experts for forward passes, bf16 where weight gradients are needed.
        return Mxfp4Config(dequantize=stage == "gradient")
    if spec.quantization == "none" or stage == "gradient":
        return None
    from transformers import BitsAndBytesConfig

    if spec.quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=DTYPES.get(spec.dtype, torch.bfloat16),
    )


def load_model(
    spec: ModelSpec,
    *,
    device_map: str | dict | None = None,
    max_memory: dict | None = None,
    dtype: str | None = None,
    stage: str = "forward",
) -> LoadedModel:
    """Load ``spec`` for analysis: eval mode, gradients off, KV cache off, safetensors only; quantized as the
    GPU plan of ``stage`` assumed (``forward`` keeps a checkpoint's MXFP4 experts, ``gradient`` dequantizes),
    and checked to be so after loading."""
    from transformers import AutoModelForCausalLM

    if spec.quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"model {spec.name!r}: quantization {spec.quantization!r} not in {QUANTIZATIONS}")
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}")
    if spec.is_local:
        check_local_weights(spec)
    native = native_quantization(spec)
    dtype_name = dtype or spec.dtype
    torch_dtype = "auto" if dtype_name == "auto" else DTYPES[dtype_name]
    if device_map is None:
        device_map = "auto" if torch.cuda.is_available() else None
    started = time.perf_counter()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            spec.source,
            revision=spec.revision,
            dtype=torch_dtype,
            device_map=device_map,
            max_memory=max_memory,
            quantization_config=_quantization_config(spec, native, stage),
            trust_remote_code=spec.trust_remote_code,
            use_safetensors=True,
        )
    except ValueError as error:
        if "trust_remote_code" in str(error) and not spec.trust_remote_code:
            raise ModelLoadError(
                f"model {spec.name!r} needs custom code; if you trust {spec.source}, set "
                f"models.{spec.name}.trust_remote_code: true in the config"
            ) from error
        raise
    check_weights(spec, stage, planned_quantization(spec, native, stage), loaded_quantization(model))
    model.eval()
    model.requires_grad_(False)
    model.config.use_cache = False
    tokenizer = load_tokenizer(spec)
    seconds = time.perf_counter() - started
    loaded = LoadedModel(spec=spec, model=model, tokenizer=tokenizer, parts=parts(model), load_seconds=seconds)
    log.info(
        "loaded %s (%s) in %.1f s: %d layers, hidden %d, dtype %s, device %s",
        spec.name,
        spec.source,
        seconds,
        loaded.n_layers,
        loaded.hidden_size,
        next(model.parameters()).dtype,
        loaded.device,
    )
    return loaded


def check_weights(spec: ModelSpec, stage: str, planned: str, got: str) -> None:
    """Fail before any forward when the weights are not held as the GPU plan assumed: a silent fallback would
    run a job with four times the memory it was given (MXFP4 dequantized), or quantized weights without
    gradients."""
    if planned == got:
        return
    where = f"model {spec.name!r} ({stage} stage): the GPU plan assumed {planned} weights but they loaded as {got}"
    if planned == "mxfp4":
        fix = (
            "transformers dequantizes MXFP4 experts to bf16 (about 4x their memory) when it cannot run them: they "
            "need a GPU of compute capability >= 7.5 with the `kernels` package and triton >= 3.4; install "
            "requirements-gpu.txt (or envs/gpu.yaml) in the GPU environment"
        )
    elif planned in ("8bit", "4bit"):
        fix = "bitsandbytes is missing or cannot run here; install requirements-gpu.txt in the GPU environment"
    else:
        fix = "this stage needs dequantized weights; report it, this is a kmap defect"
    raise ModelLoadError(f"{where}. {fix}")


def describe_devices() -> dict[str, Any]:
    """What this job got: logged at the start of every model job (sites do hand out the wrong GPUs)."""
    info: dict[str, Any] = {"cuda": torch.cuda.is_available(), "torch": torch.__version__}
    if torch.cuda.is_available():
        info["gpus"] = [
            {
                "name": torch.cuda.get_device_name(i),
                "memory_gib": torch.cuda.get_device_properties(i).total_memory / 2**30,
            }
            for i in range(torch.cuda.device_count())
        ]
    info["threads"] = torch.get_num_threads()
    return info


def require_devices(gpus: int, memory_mib: int = 0, memories_mib: list[float] | None = None) -> None:
    """Fail fast when a job got fewer GPUs than its plan asked for, or smaller ones than the plan assumed
    (``memory_mib``, gpu.memory_gib): sites do hand out the wrong GPUs, and a model split for 80 GiB GPUs spills
    or dies mid-run on 40 GiB ones. ``memories_mib`` stands in for the visible GPUs' memory in tests."""
    if gpus <= 0 or os.environ.get("KMAP_ALLOW_CPU") == "1":
        return
    if memories_mib is None:
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        memories_mib = [torch.cuda.get_device_properties(i).total_memory / 2**20 for i in range(count)]
    got = len(memories_mib)
    if got < gpus:
        raise ModelLoadError(
            f"this job was planned for {gpus} GPU(s) but sees {got} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check the partition's GPUs "
            "(cluster.gpu_partition) and any gpu override in your profile, or set KMAP_ALLOW_CPU=1 to run on CPU anyway"
        )
    # Cards report a little less than their label (an 80 GB H100 shows 79.2 GiB): 3 % tolerance.
    small = [i for i, mib in enumerate(memories_mib[:gpus]) if mib < 0.97 * memory_mib]
    if memory_mib and small:
        have = ", ".join(f"cuda:{i} {memories_mib[i] / 1024:.1f} GiB" for i in small)
        raise ModelLoadError(
            f"this job was planned for GPUs of {memory_mib / 1024:g} GiB (gpu.memory_gib) but got {have}; set "
            "cluster.gpu_constraint to the node feature of such GPUs (or cluster.gpu_partition), or describe the "
            "GPUs you have with gpu.memory_gib so the plan splits the model over more of them"
        )


def full_kv_cache() -> Any:
    """An empty KV cache whose every layer keeps every position, for forwards that later continue from an earlier
    position (patching's corrupted prefix, ablation's decoding on from its scoring pass). A cache built from the
    model's config gives sliding-window layers a window-sized cache, which would drop positions those
    continuations still attend to; the sliding mask is applied from positions either way."""
    from transformers import DynamicCache

    return DynamicCache()


def encode(
    tokenizer: Any, texts: list[str], device: torch.device | None = None, add_special_tokens: bool = True
) -> dict[str, Tensor]:
    """Right-padded batch with offsets (used to find concept spans); ``add_special_tokens`` False for text a
    chat template formatted (it holds them already)."""
    batch = tokenizer(
        texts, return_tensors="pt", padding=True, return_offsets_mapping=True, add_special_tokens=add_special_tokens
    )
    return {key: value.to(device) if device is not None else value for key, value in batch.items()}


def prompt_format_for_job(job: Any, loaded: LoadedModel) -> PromptFormat:
    """The job's prompt format (param ``prompt_format``), resolved against the model's tokenizer and recorded in
    the job's provenance; a chat format without a chat template fails here, before any forward."""
    fmt = PromptFormat.from_param(job.params.get("prompt_format")).resolve(loaded.tokenizer)
    job.note(prompt_format={"mode": fmt.mode, "instruction": fmt.instruction if fmt.chat else None})
    job.log.info("prompt format: %s", fmt.mode)
    return fmt


def load_for_job(job: Any, spec: ModelSpec | None = None, stage: str = "forward") -> LoadedModel:
    """The model of a GPU job (a ``kmap.core.job.Job``): log the devices it got, fail fast with fewer GPUs than
    planned, load with the plan's ``max_memory`` split and record the load in the job's provenance."""
    devices = describe_devices()
    job.log.info("devices: %s", devices)
    gpus = int(job.smk.resources.gpu)
    require_devices(gpus, int(getattr(job.smk.resources, "gpu_memory_mib", 0) or 0))
    # The GPU plan's split (a resource, not a setting: hardware descriptions never rerun a job).
    mib = int(getattr(job.smk.resources, "max_memory_mib", 0) or 0)
    max_memory = {i: f"{mib}MiB" for i in range(gpus)} if gpus and mib else None
    loaded = load_model(spec or job.spec(), max_memory=max_memory, stage=stage)
    job.log.info("model %s loaded in %.1f s", loaded.spec.name, loaded.load_seconds)
    facts: dict[str, Any] = {
        "devices": devices,
        "load_seconds": round(loaded.load_seconds, 2),
        "max_memory": max_memory,
    }
    if loaded.spec != job.spec():
        # The spec as loaded (saliency loads quantized checkpoints dequantized); same weights, so the record's
        # resolved revision stands and the weights are not hashed again.
        # Where it was read from stays as recorded (a staged snapshot keeps its hub id and commit).
        loaded_as = {k: v for k, v in asdict(loaded.spec).items() if k not in ("source", "revision")}
        facts["model"] = {**job.provenance["model"], **loaded_as}
    job.note(**facts, n_layers=loaded.n_layers)
    return loaded
