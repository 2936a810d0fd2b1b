"""Every method on a model whose layers sit on different devices (issue 13): the study plans seven of its
eleven models on two GPUs, so each layer's captured output lives on that layer's device while batch indices
live with the embeddings.

The split test needs CUDA (layers alternate between ``cuda:0`` and the CPU, the LM head on the CPU) and is
skipped without it; its result on a GPU is recorded in benchmarks/README.md. The device map itself is
checked everywhere: it must place every parameter, and a model loaded with it (all on the CPU) must give the
single-device numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from kmap.activations.cache import ActivationSettings
from kmap.activations.extract import extract
from kmap.core.architectures import arch_paths
from kmap.core.models import LoadedModel, load_model
from kmap.core.spec import ModelSpec
from kmap.methods.ablation.generate import run_ablation
from kmap.methods.ablation.settings import AblationSettings
from kmap.methods.patching.run import run_patching
from kmap.methods.patching.settings import PatchingSettings
from kmap.methods.saliency.measure import run_saliency
from kmap.methods.saliency.settings import SaliencySettings
from tests.test_patching import PAIRS

TEXTS = [
    "a 45 year old male patient presents with chest pain and fever , most likely has",
    "the dose of metformin is 500 mg twice daily",
    "a 67 year old female patient presents with rash , most likely has",
]
TARGETS = ["angina", "500 mg", "eczema"]


def split_map(model: torch.nn.Module, first: str | int, second: str | int) -> dict[str, str | int]:
    """An accelerate device map with the decoder layers alternating between ``first`` and ``second``: the
    embeddings (and a tied LM head) on ``first``, the final norm and an untied LM head on ``second``, so
    inputs, layer outputs and logits do not share one device."""
    paths = arch_paths(model)
    names = dict(model.named_modules())
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    device_map: dict[str, str | int] = {}
    path = ""
    for part in paths.layers.split("."):
        # Siblings of the path down to the layer list: the embeddings' parent, then the norm and the head.
        for child, _ in names[path].named_children():
            full = f"{path}.{child}" if path else child
            if paths.layers.startswith(full + ".") or full == paths.layers:
                continue
            on_first = full == paths.embed or (tied and model.get_output_embeddings() is names[full])
            device_map[full] = first if on_first else second
        path = f"{path}.{part}" if path else part
    for index in range(len(names[paths.layers])):
        device_map[f"{paths.layers}.{index}"] = first if index % 2 == 0 else second
    return device_map


def _results(loaded: LoadedModel) -> dict[str, np.ndarray]:
    acts, _ = extract(loaded, TEXTS, ActivationSettings(batch_size=2))
    frame = pd.DataFrame({"id": ["a", "b", "c"], "text": TEXTS, "target": TARGETS})
    saliency = run_saliency(loaded, frame, SaliencySettings())
    ablation = run_ablation(loaded, ["a", "b", "c"], TEXTS, AblationSettings(max_new_tokens=3, batch_size=2))
    settings = PatchingSettings(multi_token_answers="numbers", min_gap=0.0, heatmap_pairs=1, batch_size=3)
    patching = run_patching(loaded, PAIRS, settings)
    used = patching.pairs[patching.pairs["status"] == "used"]
    return {
        "activations": acts.numpy(),
        "saliency": saliency.sums / saliency.counts,
        "ablation_kl": ablation.responses["kl"].to_numpy(dtype=float),
        "ablation_tokens": np.concatenate([np.asarray(t, dtype=float) for t in ablation.responses["tokens"]]),
        "patching_p": used["p"].to_numpy(dtype=float),
        "heatmap_p": patching.heatmap["p"].to_numpy(dtype=float),
    }


def _spec(tiny_dirs: dict[str, Path], arch: str) -> ModelSpec:
    return ModelSpec(name=f"tiny-{arch}", kind="tiny", source=str(tiny_dirs[arch]), dtype="float32")


def _compare(split: dict[str, np.ndarray], whole: dict[str, np.ndarray]) -> None:
    for name, expected in whole.items():
        assert split[name].shape == expected.shape, name
        np.testing.assert_allclose(split[name], expected, rtol=1e-4, atol=1e-4, err_msg=name)


# On the CPU this checks the device map itself (the split runs on CUDA below): the MoE architecture, whose
# experts module is the most nested, stands for the others.
@pytest.mark.parametrize("arch", ["gpt_oss"])
def test_device_map_places_every_parameter_and_changes_no_number(tiny_dirs: dict[str, Path], arch: str) -> None:
    whole = load_model(_spec(tiny_dirs, arch), device_map="cpu")
    device_map = split_map(whole.model, "cpu", "cpu")
    covered = {name for name, _ in whole.model.named_parameters() if any(name.startswith(k + ".") for k in device_map)}
    assert covered == {name for name, _ in whole.model.named_parameters()}
    assert sum(k.startswith(arch_paths(whole.model).layers + ".") for k in device_map) == whole.n_layers
    _compare(_results(load_model(_spec(tiny_dirs, arch), device_map=device_map)), _results(whole))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: layers split between cuda:0 and the CPU")
@pytest.mark.parametrize("arch", ["llama", "qwen3", "gemma3", "gpt_oss"])
def test_every_method_on_a_model_split_between_cuda_and_cpu(tiny_dirs: dict[str, Path], arch: str) -> None:
    whole = load_model(_spec(tiny_dirs, arch), device_map="cpu")
    split = load_model(_spec(tiny_dirs, arch), device_map=split_map(whole.model, 0, "cpu"))
    devices = {p.device.type for p in split.parts.layers.parameters()}
    assert devices == {"cuda", "cpu"}, devices
    _compare(_results(split), _results(whole))
