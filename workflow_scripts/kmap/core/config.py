"""Configuration checks and model specs, run at workflow start (before any job, any GPU).

``check_config`` reports every problem at once, each naming the config file, the key, the bad value and what
is allowed; it complements the schema (types, enums, defaults) with facts a schema cannot state: hub ids
versus local paths, local weights that must exist as safetensors, custom code that must be allowed.
"""

from __future__ import annotations

import copy
import json
import re
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from kmap.core.io import load_yaml
from kmap.core.spec import DEMO_ARCHITECTURES, ModelSpec

HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+$")


class ConfigError(ValueError):
    """Invalid configuration; the message lists every problem with its key and fix."""


# Credentials as providers issue them (OpenAI/Anthropic-style sk-, Stripe-style sk_live_, hub hf_, GitHub, Groq,
# xAI, Google, AWS, Slack, bearer headers). Matched anywhere in the config, so a token pasted into any field is
# refused before it can reach a log, an output or a provenance record.
TOKEN = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}|\bsk_(?:live|test)_[A-Za-z0-9]{12,}|\bhf_[A-Za-z0-9]{20,}|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bgithub_pat_[A-Za-z0-9_]{20,}|\bgsk_[A-Za-z0-9]{20,}|\bxai-[A-Za-z0-9]{20,}|\bAIza[0-9A-Za-z_-]{30,}"
    r"|\bAKIA[0-9A-Z]{16}\b|\bxox[abpr]-[A-Za-z0-9-]{10,}|\bBearer\s+\S{12,}"
)
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
# Config keys whose value is the *name* of an environment variable holding a secret, never the secret.
SECRET_NAME_KEYS = ("judge.api_key_env",)
ROTATE = "put the variable's name here, and rotate the key (it has been in your config file)"


def looks_like_key(value: str) -> bool:
    """Whether a value meant to be an environment variable's name is more likely a credential: a known token
    shape, characters no variable name has, or the letter-digit churn of random strings."""
    if TOKEN.search(value) or not ENV_NAME.fullmatch(value):
        return True
    churn = sum(a.isdigit() != b.isdigit() for a, b in zip(value, value[1:], strict=False))
    return len(value) >= 16 and churn >= 6


def secret_problems(config: Any, path: tuple[str, ...] = ()) -> list[str]:
    """Every config value holding what looks like a credential, by key only: the value is never repeated."""
    problems: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            problems += secret_problems(value, (*path, str(key)))
    elif isinstance(config, list):
        for i, value in enumerate(config):
            problems += secret_problems(value, (*path, str(i)))
    elif isinstance(config, str):
        key = _key(path)
        if key in SECRET_NAME_KEYS and looks_like_key(config):
            problems.append(f"{key}: this looks like an API key, not the name of the variable holding it; {ROTATE}")
        elif TOKEN.search(config):
            problems.append(
                f"{key}: holds what looks like a credential; keep credentials in environment variables only (the "
                "judge's key in the variable judge.api_key_env names, a hub token in HF_TOKEN), and rotate it"
            )
    return problems


def _key(path: Iterable[Any]) -> str:
    return ".".join(str(part) for part in path) or "(top level)"


def _describe(error: ValidationError) -> str:
    key = _key(error.absolute_path)
    value = error.instance
    if error.validator == "enum":
        allowed = ", ".join(map(str, error.validator_value))
        return f"{key}: {value!r} is not allowed; use one of: {allowed}"
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else error.message
        return f"{key}: missing required key {missing!r}"
    if error.validator == "additionalProperties":
        allowed = ", ".join(sorted(error.schema.get("properties", {})))
        return f"{key}: {error.message}; known keys: {allowed}"
    if error.validator == "propertyNames":
        return f"{key}: name {value!r} must match {error.schema.get('pattern')}"
    if error.validator == "type":
        return f"{key}: {value!r} should be of type {error.validator_value}"
    return f"{key}: {error.message}"


def _with_defaults(config: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """Fill schema defaults (objects recursively, and each model entry) without touching the input."""
    filled = copy.deepcopy(config)

    def fill(node: dict[str, Any], sub: dict[str, Any]) -> None:
        for key, prop in sub.get("properties", {}).items():
            if key not in node and "default" in prop:
                node[key] = copy.deepcopy(prop["default"])
            if isinstance(node.get(key), dict):
                fill(node[key], prop)
                entries = prop.get("additionalProperties")
                if isinstance(entries, dict):
                    for entry in node[key].values():
                        if isinstance(entry, dict):
                            fill(entry, entries)

    fill(filled, schema)
    return filled


def _model_problems(name: str, entry: dict[str, Any], methods: list[str]) -> list[str]:
    key = f"models.{name}"
    kind = entry["kind"]
    problems: list[str] = []
    if kind in ("demo", "tiny") and "source" in entry:
        problems.append(f"{key}.source: a {kind} model is built by the workflow; remove 'source'")
    unknown_methods = sorted(set(entry.get("methods", [])) - set(methods))
    if unknown_methods:
        problems.append(f"{key}.methods: {unknown_methods} not in the top-level methods {methods}; add them there")
    if kind == "hf" and "architecture" in entry:
        problems.append(f"{key}.architecture: only tiny and demo models take an architecture; remove it")
    if kind == "demo" and entry.get("architecture", "llama") not in DEMO_ARCHITECTURES:
        problems.append(
            f"{key}.architecture: a demo model is one of {list(DEMO_ARCHITECTURES)}, not {entry['architecture']!r}"
        )
    if kind != "demo" and "demo" in entry:
        problems.append(f"{key}.demo: only demo models take training parameters; remove it")
    if kind != "hf":
        return problems
    source = str(entry["source"])
    looks_local = source.startswith(("/", ".", "~"))
    if looks_local:
        root = Path(source).expanduser()
        config_file = root / "config.json"
        if not config_file.exists():
            problems.append(
                f"{key}.source: local model directory {source!r} has no config.json; "
                "point it to a directory saved with save_pretrained, or use a hub id 'org/name'"
            )
        elif not any(root.glob("*.safetensors")):
            problems.append(
                f"{key}.source: {source!r} has no .safetensors weights (kmap never loads pickled "
                "checkpoints); convert with save_pretrained(..., safe_serialization=True)"
            )
        elif "auto_map" in json.loads(config_file.read_text()) and not entry.get("trust_remote_code"):
            problems.append(
                f"{key}.trust_remote_code: {source!r} needs its own Python code (config.json has auto_map); "
                f"review that code, then set {key}.trust_remote_code: true"
            )
    elif not HUB_ID.match(source):
        problems.append(
            f"{key}.source: {source!r} is neither a hub id of the form 'org/name' nor a local path "
            "(start local paths with '/', './' or '~')"
        )
    if entry.get("quantization", "none") != "none" and entry.get("dtype") == "float32":
        problems.append(f"{key}.dtype: bitsandbytes {entry['quantization']} computes in bfloat16/float16, not float32")
    return problems


def check_config(config: dict[str, Any], schema_path: str | Path, source: str = "the config") -> dict[str, Any]:
    """Validate ``config``; return it with defaults filled, or raise ConfigError listing every problem."""
    schema = load_yaml(Path(schema_path))
    leaked = secret_problems(config)
    if leaked:
        # Alone, so that no other message can repeat the value.
        lines = "\n".join(f"  - {problem}" for problem in leaked)
        raise ConfigError(f"invalid configuration in {source}:\n{lines}")
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    problems = [_describe(error) for error in errors]
    if not problems:
        filled = _with_defaults(config, schema)
        for name, entry in filled["models"].items():
            problems.extend(_model_problems(name, entry, filled["methods"]))
        problems.extend(demo_problems(filled, schema))
        problems.extend(setting_problems(filled))
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"invalid configuration in {source}:\n{lines}\n(see config/README.md for every key)")
    return filled


def demo_parameters(config: dict[str, Any], name: str) -> dict[str, Any]:
    """A demo model's training parameters: the top-level `demo` section, the model's own `demo` over it, and
    its architecture (what ``kmap.offline.demo_train.DemoParams`` takes)."""
    entry = config["models"][name]
    return {**config["demo"], **entry.get("demo", {}), "architecture": entry.get("architecture", "llama")}


def demo_problems(config: dict[str, Any], schema: dict[str, Any]) -> list[str]:
    """Each demo model's merged training parameters checked against the `demo` section's schema."""
    section = schema["properties"]["demo"]
    validator = Draft202012Validator(section)
    problems = []
    for name, entry in config["models"].items():
        own = entry.get("demo")
        if entry["kind"] != "demo" or not own:
            continue
        merged = {**config["demo"], **own}
        for error in validator.iter_errors(merged):
            error.path.appendleft("demo")  # name the model's own key, e.g. models.demo-qwen3.demo.n_layers
            error.path.appendleft(name)
            error.path.appendleft("models")
            problems.append(_describe(error))
        if merged["hidden_size"] % merged["n_heads"]:
            problems.append(
                f"models.{name}.demo: hidden_size {merged['hidden_size']} must be a multiple of n_heads "
                f"{merged['n_heads']}"
            )
    return problems


def model_depth(config: dict[str, Any], name: str) -> int | None:
    """Decoder layers of a configured model, known without weights (demo and tiny from their shape settings)."""
    entry = config["models"][name]
    if entry["kind"] == "demo":
        return int(demo_parameters(config, name)["n_layers"])
    if entry["kind"] == "tiny":
        return int(config["tiny"]["n_layers"])
    return entry.get("n_layers")


JUDGE_FIELDS = ("prompt", "intact", "ablated")


def setting_problems(config: dict[str, Any]) -> list[str]:
    """Settings a job would reject only after it started (and after Snakemake deleted the previous outputs):
    ablation layers against each model's depth, and the judge prompt's placeholders."""
    problems = []
    layers = config["ablation"]["layers"]
    if layers is not None and not layers:
        problems.append("ablation.layers: [] ablates nothing; list decoder layers, or null for every layer")
    elif layers:
        for name in config["models"]:
            depth = model_depth(config, name)
            runs = "ablation" in config["models"][name].get("methods", config["methods"])
            outside = [layer for layer in layers if depth is not None and layer >= depth]
            if runs and outside:
                problems.append(
                    f"ablation.layers: {outside} outside model {name!r}, which has {depth} decoder layers "
                    f"(0-{depth - 1}); remove them, or use null for every layer of every model"
                )
    # Only the user prompt is a template (str.format); the system prompt is sent as written.
    template = config["judge"]["user_prompt"]
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as error:
        return [*problems, f"judge.user_prompt: {error}; write literal braces as {{{{ and }}}}"]
    unknown = sorted(fields - set(JUDGE_FIELDS))
    if unknown:
        problems.append(
            f"judge.user_prompt: unknown placeholder(s) {unknown}; use only "
            f"{', '.join('{' + f + '}' for f in JUDGE_FIELDS)} (literal braces: {{{{ and }}}})"
        )
    missing = [f for f in JUDGE_FIELDS if f not in fields]
    if missing:
        problems.append(f"judge.user_prompt: lacks {missing}: the judge would not see what it scores")
    return problems


def model_methods(config: dict[str, Any]) -> dict[str, list[str]]:
    """Methods to run per model: its own list, else the top-level one."""
    return {name: entry.get("methods", config["methods"]) for name, entry in config["models"].items()}


def prompt_format(config: dict[str, Any], model: str, method: str) -> dict[str, str]:
    """The prompt format of ``model``'s ``method`` (``kmap.core.prompt_format.PromptFormat`` fields): the model's
    own setting where it has one, else the top-level one."""
    own = config["models"][model].get("prompt_format", {})
    shared = config["prompt_format"]
    return {
        "mode": own.get(method, shared[method]),
        "instruction": own.get("instruction", shared["instruction"]),
    }


def model_specs(config: dict[str, Any]) -> dict[str, ModelSpec]:
    """ModelSpec per configured model; demo and tiny models live under ``{results}/models/{name}``."""
    specs = {}
    for name, entry in config["models"].items():
        kind = entry["kind"]
        source = entry.get("source") or str(Path(config["results"]) / "models" / name)
        specs[name] = ModelSpec(
            name=name,
            kind=kind,
            source=source,
            revision=entry.get("revision"),
            dtype=entry.get("dtype", "bfloat16"),
            quantization=entry.get("quantization", "none"),
            trust_remote_code=bool(entry.get("trust_remote_code", False)),
            n_layers=entry.get("n_layers"),
            architecture=entry.get("architecture"),
        )
    return specs
