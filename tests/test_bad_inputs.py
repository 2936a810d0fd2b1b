"""Every bad input of tests/README.md fails the dry run (no job, no GPU) with a message naming the file, the
field and the fix; and tests/README.md lists each case with the message it gets."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from tests.workflow import REPO, copy_workflow, snakemake, write_config

BASE = {
    "models": {"demo": {"kind": "demo", "dtype": "float32"}},
    "domains": ["symptoms", "disease", "drugs"],
}


def _model(**entry: object) -> Callable[[Path, dict], None]:
    def change(work: Path, config: dict) -> None:
        config["models"]["m"] = {"kind": "hf", "source": "org/model", "n_layers": 2, **entry}

    return change


def _local_model(files: dict[str, str | bytes], **entry: object) -> Callable[[Path, dict], None]:
    def change(work: Path, config: dict) -> None:
        root = work / "local-model"
        root.mkdir()
        for name, content in files.items():
            (root / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        _model(source=str(root), **entry)(work, config)

    return change


def _prompts(domain: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path, dict], None]:
    def change(work: Path, config: dict) -> None:
        path = work / "prompts" / f"{domain}.csv"
        edit(pd.read_csv(path, dtype=str, keep_default_na=False)).to_csv(path, index=False)

    return change


def _non_utf8(work: Path, config: dict) -> None:
    path = work / "prompts" / "symptoms.csv"
    lines = path.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"is", b"\xe9s", 1)
    path.write_bytes(b"\n".join(lines))


LLAMA = json.dumps({"model_type": "llama", "num_hidden_layers": 2})
REMOTE = json.dumps({"model_type": "custom", "auto_map": {"AutoModelForCausalLM": "modeling.Custom"}})
# Credentials users paste where a name belongs: never repeated in any message or file (test below).
PASTED_KEY = "sk-proj-Q7pL4vB8nR1tY6wE3abcXYZ123"
NAME_SHAPED_KEY = "a3f9c2e1b4d5e6f7a8b9c0d1e2f3a4b5"  # a valid identifier, but the churn of a random string
HUB_TOKEN = "hf_QwErTyUiOpAsDfGhJkLzXcVbNm"

# name -> (how to break a fresh copy, fragments the dry run's message must contain)
CASES: dict[str, tuple[Callable[[Path, dict], None], list[str]]] = {
    "unknown model id format": (_model(source="not a hub id"), ["models.m.source", "neither a hub id"]),
    "missing local model path": (_model(source="./models/missing"), ["models.m.source", "has no config.json"]),
    "invalid dtype": (_model(dtype="float64"), ["models.m.dtype", "'float64' is not allowed", "bfloat16"]),
    "invalid quantization": (_model(quantization="3bit"), ["models.m.quantization", "'3bit'", "4bit"]),
    "domain not defined": (lambda w, c: c.update(domains=["age", "genetics"]), ["domains.1", "'genetics'"]),
    "method not defined": (lambda w, c: c.update(methods=["umap", "probing"]), ["methods.1", "'probing'"]),
    "prompt file: missing column": (
        _prompts("symptoms", lambda f: f.drop(columns=["system"])),
        ["symptoms.csv", "missing column", "system"],
    ),
    "prompt file: unknown label": (
        _prompts("symptoms", lambda f: f.assign(system=f["system"].where(f.index != 4, "cardiac"))),
        ["symptoms.csv", "row 5", "'system'", "unknown label 'cardiac'"],
    ),
    "prompt file: duplicate id": (
        _prompts("disease", lambda f: f.assign(id=f["id"].where(f.index != 7, f["id"][2]))),
        ["disease.csv", "rows [3, 8]", "duplicate id"],
    ),
    "prompt file: empty set": (_prompts("drugs", lambda f: f.iloc[0:0]), ["drugs.csv", "no rows"]),
    "prompt file: non-UTF-8 bytes": (_non_utf8, ["symptoms.csv", "line 4", "not UTF-8"]),
    "pickled checkpoint only": (
        _local_model({"config.json": LLAMA, "pytorch_model.bin": b"pickle"}),
        ["models.m.source", "no .safetensors weights"],
    ),
    "API key pasted into judge.api_key_env": (
        lambda w, c: c.update(judge={"api_key_env": PASTED_KEY}),
        ["judge.api_key_env", "looks like an API key", "put the variable's name here, and rotate the key"],
    ),
    "identifier-shaped key in judge.api_key_env": (
        lambda w, c: c.update(judge={"api_key_env": NAME_SHAPED_KEY}),
        ["judge.api_key_env", "put the variable's name here, and rotate the key"],
    ),
    "credential in any other field": (
        _model(source=f"https://{HUB_TOKEN}@huggingface.co/org/model"),
        ["models.m.source", "looks like a credential", "environment variables only", "HF_TOKEN"],
    ),
    "ablation layer beyond a model's depth": (
        lambda w, c: c.update(ablation={"layers": [2, 99]}),
        ["ablation.layers", "[99] outside model 'demo', which has 8 decoder layers (0-7)", "null"],
    ),
    "no ablation layers": (lambda w, c: c.update(ablation={"layers": []}), ["ablation.layers", "ablates nothing"]),
    "judge prompt: unknown placeholder": (
        lambda w, c: c.update(judge={"user_prompt": "{prompt} / {intact} / {ablatd}"}),
        ["judge.user_prompt", "unknown placeholder(s) ['ablatd']", "use only {prompt}, {intact}, {ablated}"],
    ),
    "map metric no method writes": (
        lambda w, c: c.update(map={"metrics": {"ablation": ["judge_scor", "kl"]}}),
        ["map.metrics.ablation.0", "'judge_scor' is not a metric ablation writes", "judge_score"],
    ),
    "UMAP map metric not written for the domain": (
        lambda w, c: c.update(map={"umap_metrics": {"disease": "silhouette:categry"}}),
        [
            "map.umap_metrics.disease",
            "'silhouette:categry' is not a metric umap writes for disease",
            "silhouette:category",
        ],
    ),
    "prompt file: empty target": (
        _prompts("symptoms", lambda f: f.assign(target=f["target"].where(f.index != 2, ""))),
        ["symptoms.csv", "row 3", "'target'", "empty"],
    ),
    "prompts folder missing": (
        lambda w, c: c.update(prompts="nowhere"),
        ["prompts: folder 'nowhere' does not exist", "set `prompts:`"],
    ),
    "trust_remote_code required but not allowed": (
        _local_model({"config.json": REMOTE, "model.safetensors": b""}),
        ["models.m.trust_remote_code"],
    ),
}


def _dry_run(tmp_path: Path, change: Callable[[Path, dict], None]) -> str:
    work = copy_workflow(tmp_path / "wf")
    config = json.loads(json.dumps(BASE))
    change(work, config)
    write_config(work, config)
    result = snakemake(work, "-n", "--configfile", "config/test.yaml", check=False)
    assert result.returncode != 0, "the dry run accepted a bad input"
    assert not (work / "results").exists(), "a job ran"
    return result.stdout + result.stderr


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_fails_the_dry_run_with_its_message(tmp_path: Path, case: str) -> None:
    change, fragments = CASES[case]
    output = _dry_run(tmp_path, change)
    for fragment in fragments:
        assert fragment in output, (fragment, output[-3000:])


def test_readme_lists_every_case_with_its_message() -> None:
    text = (REPO / "tests" / "README.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (.+?) \| (.+?) \|$", text, re.M)}
    for case, (_, fragments) in CASES.items():
        assert case in rows, f"tests/README.md lacks the case {case!r}"
        for fragment in fragments:
            assert fragment in rows[case].replace("\\|", "|"), (case, fragment)


@pytest.mark.parametrize("secret", [PASTED_KEY, NAME_SHAPED_KEY, HUB_TOKEN])
def test_a_pasted_credential_is_never_repeated(tmp_path: Path, secret: str) -> None:
    """Neither the console nor any file the run writes (Snakemake's logs included) repeats it; only the user's own
    config file holds it."""

    def change(work: Path, config: dict) -> None:
        if secret == HUB_TOKEN:
            _model(source=f"https://{secret}@huggingface.co/org/model")(work, config)
        else:
            config["judge"] = {"api_key_env": secret}

    output = _dry_run(tmp_path, change)
    work = tmp_path / "wf"
    # A real run too: it stops at the same check, and Snakemake writes its log of the run.
    real = snakemake(work, "--configfile", "config/test.yaml", check=False)
    output += real.stdout + real.stderr
    assert real.returncode != 0 and "rotate" in output and secret not in output and secret[-10:] not in output
    written = [p for p in work.rglob("*") if p.is_file() and p != work / "config" / "test.yaml"]
    assert any(".snakemake" in p.parts for p in written)  # Snakemake's own log of the failed run is among them
    assert [p for p in written if secret.encode() in p.read_bytes()] == []
