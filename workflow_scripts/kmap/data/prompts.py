"""Loading and validation of prompt sets and patching pairs against ``prompts/schema.yaml``.

Every problem raises ``PromptSetError`` naming the file, the row (1-based data row, as a spreadsheet shows it
after the header) and the column, with what is wrong and how to fix it. ``validate_all`` runs at workflow
start, so a malformed file stops even a dry run.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd

from kmap.core.io import file_sha256, load_yaml
from kmap.data.knowledge import Knowledge, load_knowledge, split_words


class PromptSetError(ValueError):
    """A prompt or pairs file is malformed; the message names file, row, column and the fix."""


@dataclass(frozen=True)
class PromptSet:
    domain: str
    path: Path
    frame: pd.DataFrame
    label_columns: tuple[str, ...]
    group_labels: tuple[str, ...]
    sha256: str


@dataclass(frozen=True)
class PairSet:
    domain: str
    path: Path
    frame: pd.DataFrame
    sha256: str


def load_schema(path: str | Path) -> dict[str, Any]:
    return load_yaml(Path(path))


@lru_cache(maxsize=8)
def _knowledge(path: str) -> Knowledge:
    return load_knowledge(path)


def allowed_values(kb: Knowledge, source: str) -> set[str]:
    sources = {
        "organ_systems": lambda: set(kb.organ_systems),
        "symptoms": lambda: {s.name for s in kb.symptoms},
        "diseases": lambda: {d.name for d in kb.diseases},
        "specialties": lambda: {d.specialty for d in kb.diseases} | {d.specialty for d in kb.drugs},
        "mechanisms": lambda: {d.mechanism for d in kb.drugs},
        "drugs": lambda: {d.name for d in kb.drugs},
        "progression_diseases": lambda: {p.disease for p in kb.progressions},
        "units": lambda: {dose.unit for d in kb.drugs for dose in d.doses},
    }
    if source not in sources:
        raise PromptSetError(f"prompts/schema.yaml: unknown values_from {source!r}; use one of {sorted(sources)}")
    return sources[source]()


def _read_csv(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise PromptSetError(f"{path}: file not found; create it (see prompts/schema.yaml) or remove the domain")
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise PromptSetError(
            f"{path}: line {line}: byte {error.start} is not UTF-8 ({raw[error.start : error.start + 1]!r}); "
            "save the file as UTF-8"
        ) from error
    try:
        # Strings only, no NA parsing: "NA" or "none" must stay labels, not vanish into NaN.
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise PromptSetError(f"{path}: not a readable CSV ({error}); check quoting and the header") from error


def _where(path: Path, index: int, column: str) -> str:
    return f"{path}: row {index + 1}, column {column!r}"


def _check_common(path: Path, frame: pd.DataFrame, required: list[str]) -> None:
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise PromptSetError(
            f"{path}: missing column(s) {missing}; the header must contain {required} (see prompts/schema.yaml)"
        )
    if frame.empty:
        raise PromptSetError(f"{path}: no rows; a prompt set needs at least one prompt")
    duplicated = frame["id"].duplicated(keep=False)
    if duplicated.any():
        rows = [i + 1 for i in frame.index[duplicated]]
        first = frame.loc[duplicated, "id"].iloc[0]
        raise PromptSetError(f"{path}: rows {rows}, column 'id': duplicate id {first!r}; ids must be unique")
    for column in required:
        empty = frame[column].str.strip() == ""
        # `target` is what saliency scores (-log p(target | prompt)): an empty one has no gradient to take.
        needed = ("id", "text", "target", "clean", "corrupted", "clean_answer", "corrupted_answer")
        if empty.any() and column in needed:
            raise PromptSetError(f"{_where(path, int(frame.index[empty][0]), column)}: empty; fill it in")


def _convert_label(path: Path, frame: pd.DataFrame, column: str, rule: dict[str, Any], kb: Knowledge) -> pd.Series:
    kind = rule["type"]
    values = frame[column]
    if kind in ("int", "float"):
        converted = pd.to_numeric(values, errors="coerce")
        bad = converted.isna() | ((converted % 1 != 0) if kind == "int" else False)
        if bad.any():
            index = int(frame.index[bad][0])
            raise PromptSetError(f"{_where(path, index, column)}: {values[index]!r} is not a valid {kind}")
        low, high = rule.get("min"), rule.get("max")
        out = (converted < low) if low is not None else pd.Series(False, index=frame.index)
        if high is not None:
            out |= converted > high
        if out.any():
            index = int(frame.index[out][0])
            raise PromptSetError(
                f"{_where(path, index, column)}: {values[index]} is outside the allowed range [{low}, {high}]"
            )
        return converted.astype("int64" if kind == "int" else "float64")
    if kind == "category":
        allowed = set(rule["values"]) if "values" in rule else allowed_values(kb, rule["values_from"])
        unknown = ~values.isin(allowed)
        if unknown.any():
            index = int(frame.index[unknown][0])
            shown = ", ".join(sorted(allowed)[:12]) + (", …" if len(allowed) > 12 else "")
            origin = "prompts/schema.yaml" if "values" in rule else f"knowledge.yaml ({rule['values_from']})"
            raise PromptSetError(
                f"{_where(path, index, column)}: unknown label {values[index]!r}; allowed: {shown} "
                f"(from {origin}; add it there if it is a new label)"
            )
    return values


def load_prompt_set(domain: str, prompts_dir: str | Path, schema: dict[str, Any] | None = None) -> PromptSet:
    prompts_dir = Path(prompts_dir)
    schema = schema or load_schema(prompts_dir / "schema.yaml")
    if domain not in schema["domains"]:
        raise PromptSetError(f"{prompts_dir / 'schema.yaml'}: domain {domain!r} is not defined there")
    spec = schema["domains"][domain]
    path = prompts_dir / f"{domain}.csv"
    frame = _read_csv(path)
    labels = list(spec["labels"])
    _check_common(path, frame, list(schema["common_columns"]) + labels)
    kb = _knowledge(str(prompts_dir / "knowledge.yaml"))
    optional = {c: r for c, r in schema.get("optional_labels", {}).items() if c in frame and c not in spec["labels"]}
    for column, rule in {**spec["labels"], **optional}.items():
        frame[column] = _convert_label(path, frame, column, rule, kb)
    labels += list(optional)
    for index, (text, concept) in enumerate(zip(frame["text"], frame["concept"], strict=True)):
        if concept and concept.lower() not in text.lower():
            raise PromptSetError(
                f"{_where(path, index, 'concept')}: {concept!r} does not occur in the text; it must be the "
                "part of the text that names the concept"
            )
    return PromptSet(
        domain=domain,
        path=path,
        frame=frame,
        label_columns=tuple(labels),
        group_labels=tuple(spec.get("group_labels", ())),
        sha256=file_sha256(path),
    )


def load_pairs(domain: str, prompts_dir: str | Path, schema: dict[str, Any] | None = None) -> PairSet:
    prompts_dir = Path(prompts_dir)
    schema = schema or load_schema(prompts_dir / "schema.yaml")
    path = prompts_dir / "pairs" / f"{domain}.csv"
    frame = _read_csv(path)
    _check_common(path, frame, list(schema["pair_columns"]))
    # Plain dicts, not iterrows(): this runs for every domain at every Snakefile parse.
    for index, row in enumerate(frame.to_dict("records")):
        clean, corrupted = split_words(row["clean"]), split_words(row["corrupted"])
        if clean == corrupted:
            raise PromptSetError(f"{_where(path, index, 'corrupted')}: identical to clean; change one concept")
        if len(clean) != len(corrupted):
            raise PromptSetError(
                f"{_where(path, index, 'corrupted')}: {len(corrupted)} words but clean has {len(clean)}; "
                "clean and corrupted must align word for word"
            )
        for column in ("clean_answer", "corrupted_answer"):
            if not any(word[0].isalnum() for word in split_words(row[column])):
                raise PromptSetError(
                    f"{_where(path, index, column)}: empty answer {row[column]!r}; write the word(s) the prompt "
                    "continues with"
                )
        if row["clean_answer"].strip().lower() == row["corrupted_answer"].strip().lower():
            raise PromptSetError(
                f"{_where(path, index, 'corrupted_answer')}: equals clean_answer; the answers must differ"
            )
    return PairSet(domain=domain, path=path, frame=frame, sha256=file_sha256(path))


def validate_all(prompts_dir: str | Path, domains: list[str]) -> dict[str, PromptSet]:
    """Load every configured domain's prompt set and pairs; raise on the first problem. Returns the prompt sets."""
    prompts_dir = Path(prompts_dir)
    if not prompts_dir.is_dir():
        raise PromptSetError(
            f"prompts: folder {str(prompts_dir)!r} does not exist (relative to {Path.cwd()}); set `prompts:` in "
            "the config to the folder holding knowledge.yaml, schema.yaml and one CSV per domain"
        )
    if not (prompts_dir / "schema.yaml").is_file():
        raise PromptSetError(
            f"{prompts_dir / 'schema.yaml'}: missing; a prompts folder needs the schema of its CSV files (copy "
            "prompts/schema.yaml from kmap)"
        )
    schema = load_schema(prompts_dir / "schema.yaml")
    sets = {}
    for domain in domains:
        sets[domain] = load_prompt_set(domain, prompts_dir, schema)
        load_pairs(domain, prompts_dir, schema)
    return sets
