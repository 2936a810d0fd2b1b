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


def _quantization_config(spec: ModelSpec) -> Any:
    if spec.quantization == "none":
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
) -> LoadedModel:
    """Load ``spec`` for analysis: eval mode, gradients off, KV cache off, safetensors only."""
    from transformers import AutoModelForCausalLM

    if spec.quantization not in QUANTIZATIONS:
        raise ModelLoadError(f"model {spec.name!r}: quantization {spec.quantization!r} not in {QUANTIZATIONS}")
    if spec.is_local:
        check_local_weights(spec)
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
            quantization_config=_quantization_config(spec),
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


def require_devices(gpus: int) -> None:
    """Fail fast when a job got fewer GPUs than its plan asked for (sites do hand out the wrong ones)."""
    if gpus <= 0 or os.environ.get("KMAP_ALLOW_CPU") == "1":
        return
    got = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if got < gpus:
        raise ModelLoadError(
            f"this job was planned for {gpus} GPU(s) but sees {got} "
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); check the partition's GPUs "
            "and the gpu resource in profiles/slurm, or set KMAP_ALLOW_CPU=1 to run on CPU anyway"
        )


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


def load_for_job(job: Any, spec: ModelSpec | None = None) -> LoadedModel:
    """The model of a GPU job (a ``kmap.core.job.Job``): log the devices it got, fail fast with fewer GPUs than
    planned, load with the plan's ``max_memory`` split and record the load in the job's provenance."""
    devices = describe_devices()
    job.log.info("devices: %s", devices)
    require_devices(int(job.smk.resources.gpu))
    loaded = load_model(spec or job.spec(), max_memory=job.params.get("max_memory") or None)
    job.log.info("model %s loaded in %.1f s", loaded.spec.name, loaded.load_seconds)
    facts: dict[str, Any] = {"devices": devices, "load_seconds": round(loaded.load_seconds, 2)}
    if loaded.spec != job.spec():
        # The spec as loaded (saliency loads quantized checkpoints dequantized); same weights, so the record's
        # resolved revision stands and the weights are not hashed again.
        facts["model"] = {**job.provenance["model"], **asdict(loaded.spec)}
    job.note(**facts, n_layers=loaded.n_layers)
    return loaded
