"""Config validation: every broken config fails with the key, the bad value and what is allowed."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml

from kmap.core.config import ConfigError, check_config, demo_parameters, model_depth, model_specs, prompt_format
from kmap.core.prompt_format import DEFAULT_INSTRUCTION, PromptFormat

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "config" / "schema.yaml"


def _default() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml"])
def test_shipped_configs_are_valid(name: str) -> None:
    config = check_config(yaml.safe_load((REPO / "config" / name).read_text()), SCHEMA)
    specs = model_specs(config)
    assert specs, "no models"
    if name == "paper.yaml":
        assert {s.kind for s in specs.values()} == {"hf"}
        assert specs["llama-3.3-70b"].n_layers == 80
        assert all(not s.trust_remote_code for s in specs.values())


def test_defaults_filled() -> None:
    config = _default()
    config.pop("activations", None)
    config["models"]["demo"].pop("dtype")
    filled = check_config(config, SCHEMA)
    assert filled["activations"] == {"position": "last", "dtype": "float32", "batch_size": 16}
    assert filled["models"]["demo"]["dtype"] == "bfloat16"
    assert filled["models"]["demo"]["trust_remote_code"] is False
    assert "activations" not in config, "input must not be modified"


def _hf(**entry: object) -> dict:
    config = _default()
    config["models"] = {"m": {"kind": "hf", "source": "org/model", "n_layers": 4, **entry}}
    return config


BROKEN = [
    (lambda c: c["models"]["demo"].update(dtype="float64"), ["models.demo.dtype", "'float64'", "bfloat16"]),
    (
        lambda c: c["models"]["demo"].update(quantization="3bit"),
        ["models.demo.quantization", "'3bit'", "4bit"],
    ),
    (lambda c: c.update(domains=["age", "genetics"]), ["domains.1", "'genetics'", "symptoms"]),
    (lambda c: c.update(methods=["umap", "probing"]), ["methods.1", "'probing'", "patching"]),
    (lambda c: c["models"]["tiny-qwen2"].pop("architecture"), ["models.tiny-qwen2", "architecture"]),
    (lambda c: c["models"]["demo"].update(colour="red"), ["models.demo", "colour", "known keys"]),
    (lambda c: c["models"].update({"bad name!": {"kind": "demo"}}), ["models", "bad name!"]),
    (lambda c: c.update(activations={"batch_size": 0}), ["activations.batch_size", "minimum"]),
    # A typo in a training parameter fails at parse, before Snakemake would delete the trained model.
    (lambda c: c.update(demo={"stepz": 10}), ["demo", "stepz", "known keys"]),
    (lambda c: c["models"]["demo"].update(source="/x"), ["models.demo.source", "remove 'source'"]),
    # A demo model's own training parameters and architecture.
    (lambda c: c["models"]["demo"].update(demo={"n_layerz": 3}), ["models.demo.demo", "n_layerz", "known keys"]),
    (lambda c: c["models"]["demo"].update(demo={"n_layers": 0}), ["models.demo.demo.n_layers", "minimum"]),
    (lambda c: c["models"]["demo"].update(demo={"n_heads": 5}), ["models.demo.demo", "multiple of n_heads"]),
    (lambda c: c["models"]["demo"].update(architecture="gpt_oss"), ["models.demo.architecture", "qwen3"]),
    (lambda c: c["models"]["tiny-qwen2"].update(demo={"n_layers": 3}), ["models.tiny-qwen2.demo", "remove it"]),
]


@pytest.mark.parametrize(("breaks", "expected"), BROKEN)
def test_broken_config_names_key_value_and_fix(breaks, expected: list[str]) -> None:
    config = _default()
    breaks(config)
    with pytest.raises(ConfigError) as caught:
        check_config(config, SCHEMA, source="config/test.yaml")
    message = str(caught.value)
    assert "config/test.yaml" in message
    for fragment in expected:
        assert fragment in message, (fragment, message)


def test_all_problems_reported_at_once() -> None:
    config = _default()
    config["models"]["demo"]["dtype"] = "float64"
    config["domains"] = ["nope"]
    with pytest.raises(ConfigError) as caught:
        check_config(config, SCHEMA)
    assert "models.demo.dtype" in str(caught.value) and "domains.0" in str(caught.value)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("not a hub id", "neither a hub id"),
        ("./does/not/exist", "has no config.json"),
    ],
)
def test_hf_source_checked(source: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        check_config(_hf(source=source), SCHEMA)


def test_hf_needs_n_layers() -> None:
    config = _hf()
    del config["models"]["m"]["n_layers"]
    with pytest.raises(ConfigError, match="models.m: missing required key 'n_layers'"):
        check_config(config, SCHEMA)


def test_local_pickle_only_and_remote_code_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (tmp_path / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(ConfigError, match="no .safetensors weights"):
        check_config(_hf(source=str(tmp_path)), SCHEMA)
    (tmp_path / "model.safetensors").write_bytes(b"")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "x", "auto_map": {"AutoModel": "m.M"}}))
    with pytest.raises(ConfigError, match="models.m.trust_remote_code"):
        check_config(_hf(source=str(tmp_path)), SCHEMA)
    config = check_config(_hf(source=str(tmp_path), trust_remote_code=True), SCHEMA)
    assert model_specs(config)["m"].trust_remote_code is True


def test_each_demo_model_trains_with_its_own_parameters_over_the_demo_section() -> None:
    config = check_config(_default(), SCHEMA)
    shared = demo_parameters(config, "demo")
    own = demo_parameters(config, "demo-qwen3")
    assert shared == {**config["demo"], "architecture": "llama"}
    assert own["architecture"] == "qwen3" and own["n_layers"] == 12 != shared["n_layers"]
    # The model's own keys win; every other key comes from the shared section.
    overrides = config["models"]["demo-qwen3"]["demo"]
    assert set(overrides) >= {"n_layers", "steps"}
    assert own == {**shared, **overrides, "architecture": "qwen3"}
    assert model_depth(config, "demo-qwen3") == 12 and model_depth(config, "demo") == 8


def test_model_specs_place_built_models_under_results() -> None:
    config = check_config(copy.deepcopy(_default()), SCHEMA)
    specs = model_specs(config)
    assert specs["demo"].source == "results/models/demo"
    assert specs["tiny-gemma3"].architecture == "gemma3"


def test_prompt_format_defaults_and_per_model_overrides() -> None:
    raw = copy.deepcopy(_default())
    raw["models"]["demo"]["prompt_format"] = {"patching": "chat", "instruction": "Be brief."}
    config = check_config(raw, SCHEMA)
    # Defaults: the clinical text as written for measurements, the chat template where there is one for generation.
    assert [prompt_format(config, "tiny-qwen2", m)["mode"] for m in ("activations", "saliency", "patching")] == [
        "raw"
    ] * 3
    assert prompt_format(config, "tiny-qwen2", "ablation") == {"mode": "auto", "instruction": DEFAULT_INSTRUCTION}
    assert prompt_format(config, "demo", "patching") == {"mode": "chat", "instruction": "Be brief."}
    assert prompt_format(config, "demo", "activations")["mode"] == "raw"
    assert PromptFormat(**prompt_format(config, "demo", "patching")).chat
    # The schema's instruction default and the module's agree (one home: the schema fills the config).
    assert config["prompt_format"]["instruction"] == DEFAULT_INSTRUCTION
    raw["models"]["demo"]["prompt_format"] = {"patching": "jinja"}
    with pytest.raises(ConfigError, match="models.demo.prompt_format.patching: 'jinja' is not allowed"):
        check_config(raw, SCHEMA)


SETTINGS = {
    "activations": "kmap.activations.cache.ActivationSettings",
    "umap": "kmap.methods.umap.embedding.UmapParams",
    "saliency": "kmap.methods.saliency.settings.SaliencySettings",
    "ablation": "kmap.methods.ablation.settings.AblationSettings",
    "judge": "kmap.methods.ablation.judge.JudgeSettings",
    "patching": "kmap.methods.patching.settings.PatchingSettings",
    "map": "kmap.maps.curves.MapSettings",
    "gpu": "kmap.core.gpu_plan.GpuSettings",
    "demo": "kmap.offline.demo_train.DemoParams",
}


@pytest.mark.parametrize("section", sorted(SETTINGS))
def test_settings_dataclasses_take_their_defaults_from_the_schema(section: str) -> None:
    """One home for defaults: a dataclass built without arguments equals the section validation fills in."""
    import dataclasses
    import importlib

    module, name = SETTINGS[section].rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    filled = check_config({"models": {"d": {"kind": "demo"}}, "domains": ["age"]}, SCHEMA)[section]
    if section == "demo":  # a demo model's architecture comes from its model entry (default llama)
        filled = {**filled, "architecture": "llama"}
    assert {f.name for f in dataclasses.fields(cls)} == set(filled), section
    assert dataclasses.asdict(cls()) == {k: (tuple(v) if k == "layers" and v else v) for k, v in filled.items()}


def test_config_readme_is_generated_from_the_schema(tmp_path: Path) -> None:
    import subprocess
    import sys

    check = [sys.executable, str(REPO / "tools" / "config_docs.py"), "--check"]
    assert subprocess.run(check, capture_output=True).returncode == 0, "run python tools/config_docs.py"
    readme = (REPO / "config" / "README.md").read_text()
    schema = yaml.safe_load(SCHEMA.read_text())
    for section in ("umap", "patching", "map", "demo", "figures"):
        for key, prop in schema["properties"][section]["properties"].items():
            assert f"| `{section}.{key}` |" in readme, (section, key)
            if "default" in prop and not isinstance(prop["default"], dict | str):
                assert json.dumps(prop["default"]) in readme.split(f"| `{section}.{key}` |")[1].split("\n")[0]
