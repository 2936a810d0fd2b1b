"""GPT-OSS as its checkpoint ships: MXFP4 expert blocks. A tiny GPT-OSS saved in that layout (packed FP4
nibbles and E8M0 group scales, as ``transformers.integrations.mxfp4`` reads them) loads dequantized for the
gradient stage, with exactly the values the packing encodes, and saliency runs on it; the forward stage asks for
MXFP4 and, where transformers cannot keep it (no GPU kernels, as on this machine), fails before any forward
instead of silently running four times the planned memory."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from kmap.core.models import ModelLoadError, load_model, loaded_quantization, native_quantization, planned_quantization
from kmap.core.spec import ModelSpec
from kmap.methods.saliency.measure import run_saliency
from kmap.methods.saliency.settings import SaliencySettings

FP4 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0])
NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]


def pack_mxfp4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A stacked expert weight [E, in, out] as checkpoint blocks [E, out, in/32, 16] (two FP4 codes per byte,
    the even element in the low nibble) and scales [E, out, in/32] (exponent + 127); also the values the
    packing represents, in the weight's layout."""
    rows = weight.transpose(1, 2).reshape(*weight.shape[0:1], weight.shape[2], -1, 32).double()
    amax = rows.abs().amax(dim=-1, keepdim=True).clamp_min(2.0**-100)
    exponent = torch.ceil(torch.log2(amax / 6.0))
    scaled = rows / torch.exp2(exponent)
    codes = (scaled.unsqueeze(-1) - FP4.double()).abs().argmin(dim=-1)  # nearest FP4 value (first of ±0)
    blocks = (codes[..., 0::2] | (codes[..., 1::2] << 4)).to(torch.uint8)
    scales = (exponent.squeeze(-1) + 127).to(torch.uint8)
    values = (FP4.double()[codes] * torch.exp2(exponent)).reshape(*weight.shape[0:1], weight.shape[2], -1)
    return blocks, scales, values.transpose(1, 2).to(weight.dtype)


@pytest.fixture(scope="module")
def mxfp4_dir(tiny_dirs: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The conftest's tiny GPT-OSS re-saved with MXFP4 experts; returns the directory and the expert values."""
    source, target = tiny_dirs["gpt_oss"], tmp_path_factory.mktemp("gpt_oss_mxfp4")
    tensors = {}
    for shard in source.glob("*.safetensors"):
        tensors.update(load_file(shard))
    expected = {}
    for name in [n for n in tensors if n.endswith(("experts.gate_up_proj", "experts.down_proj"))]:
        blocks, scales, values = pack_mxfp4(tensors.pop(name))
        tensors[f"{name}_blocks"], tensors[f"{name}_scales"] = blocks, scales
        expected[name] = values
    save_file(tensors, target / "model.safetensors", metadata={"format": "pt"})
    for extra in source.iterdir():
        if extra.suffix != ".safetensors" and extra.name != "model.safetensors.index.json":
            (target / extra.name).write_bytes(extra.read_bytes())
    config = json.loads((target / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": NOT_CONVERTED}
    (target / "config.json").write_text(json.dumps(config))
    return target, expected


def _spec(path: Path) -> ModelSpec:
    return ModelSpec(name="tiny-gpt-oss-mxfp4", kind="tiny", source=str(path), dtype="float32")


def test_gradient_stage_dequantizes_exactly_what_the_blocks_encode(mxfp4_dir) -> None:
    path, expected = mxfp4_dir
    spec = _spec(path)
    assert native_quantization(spec) == "mxfp4"
    assert planned_quantization(spec, "mxfp4", "forward") == "mxfp4"
    assert planned_quantization(spec, "mxfp4", "gradient") == "none"
    loaded = load_model(spec, device_map="cpu", stage="gradient")
    assert loaded_quantization(loaded.model) == "none"
    params = dict(loaded.model.named_parameters())
    for name, values in expected.items():
        assert params[name].dtype == torch.float32
        torch.testing.assert_close(params[name], values, rtol=0, atol=0)
    # Weight gradients on the dequantized experts: saliency runs, finite, with the routed experts counted.
    frame = pd.DataFrame({"id": ["a"], "text": ["a 45 year old male patient presents with"], "target": ["fever"]})
    run = run_saliency(loaded, frame, SaliencySettings())
    assert np.isfinite(run.sums).all() and (run.sums[0, :, 1] > 0).all()


def test_forward_stage_keeps_mxfp4_or_fails_before_any_forward(mxfp4_dir) -> None:
    path, _ = mxfp4_dir
    kernels = importlib.util.find_spec("kernels") is not None and torch.cuda.is_available()
    if kernels:  # a GPU machine with the MXFP4 kernels: the experts stay packed
        loaded = load_model(_spec(path), stage="forward")
        assert loaded_quantization(loaded.model) == "mxfp4"
        return
    with pytest.raises(ModelLoadError) as caught:
        load_model(_spec(path), device_map="cpu", stage="forward")
    message = str(caught.value)
    assert "'tiny-gpt-oss-mxfp4' (forward stage)" in message
    assert "assumed mxfp4 weights but they loaded as none" in message
    assert "kernels" in message and "requirements-gpu.txt" in message


def test_plain_checkpoints_load_as_planned(tiny_dirs: dict[str, Path]) -> None:
    spec = ModelSpec(name="tiny-llama", kind="tiny", source=str(tiny_dirs["llama"]), dtype="float32")
    assert native_quantization(spec) == "none"
    for stage in ("forward", "gradient"):
        assert loaded_quantization(load_model(spec, device_map="cpu", stage=stage).model) == "none"
