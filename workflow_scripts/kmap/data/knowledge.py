"""The medical knowledge base (``prompts/knowledge.yaml``) as frozen dataclasses.

It is the single source of facts for the prompt sets and the demo model's corpus, so both speak the same
vocabulary: ``vocabulary(kb)`` is exactly the word list of the demo tokenizer.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmap.core.io import load_yaml

_WORD = re.compile(r"\w+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """Lower-case word tokens: runs of word characters, and single punctuation marks."""
    return _WORD.findall(text.lower())


@dataclass(frozen=True)
class Symptom:
    name: str
    system: str


@dataclass(frozen=True)
class Disease:
    name: str
    category: str
    specialty: str
    symptoms: tuple[str, ...]
    age_range: tuple[int, int]
    sex: str  # "any" | "male" | "female"
    drugs: tuple[str, ...]
    short: str = ""  # one word naming the disease (patching answers, diagnosis evaluation)


@dataclass(frozen=True)
class Stage:
    name: str
    index: int  # 1 = earliest
    description: str


@dataclass(frozen=True)
class Progression:
    disease: str
    system: str
    stages: tuple[Stage, ...]


@dataclass(frozen=True)
class Dose:
    value: float
    unit: str
    frequency: str

    @property
    def value_text(self) -> str:
        return f"{self.value:g}"


@dataclass(frozen=True)
class Drug:
    name: str
    mechanism: str
    specialty: str
    treats: tuple[str, ...]
    doses: tuple[Dose, ...]


@dataclass(frozen=True)
class Knowledge:
    organ_systems: tuple[str, ...]
    symptoms: tuple[Symptom, ...]
    diseases: tuple[Disease, ...]
    progressions: tuple[Progression, ...]
    drugs: tuple[Drug, ...]
    words: tuple[str, ...]

    def disease(self, name: str) -> Disease:
        return next(d for d in self.diseases if d.name == name)

    def drug(self, name: str) -> Drug:
        return next(d for d in self.drugs if d.name == name)

    def system_of(self, symptom: str) -> str:
        return next(s.system for s in self.symptoms if s.name == symptom)


class KnowledgeError(ValueError):
    """knowledge.yaml is inconsistent; the message names the file, the entry and the fix."""


def _parse(raw: dict[str, Any]) -> Knowledge:
    symptoms = tuple(Symptom(name, system) for system, names in raw["symptoms"].items() for name in names)
    diseases = tuple(
        Disease(
            name=d["name"],
            category=d["category"],
            specialty=d["specialty"],
            symptoms=tuple(d["symptoms"]),
            age_range=(int(d["age"][0]), int(d["age"][1])),
            sex=d["sex"],
            drugs=tuple(d["drugs"]),
            short=d.get("short") or d["name"].split()[0],
        )
        for d in raw["diseases"]
    )
    progressions = tuple(
        Progression(
            disease=p["disease"],
            system=p["system"],
            stages=tuple(Stage(name, i, description) for i, (name, description) in enumerate(p["stages"], 1)),
        )
        for p in raw["progressions"]
    )
    drugs = tuple(
        Drug(
            name=d["name"],
            mechanism=d["mechanism"],
            specialty=d["specialty"],
            treats=tuple(d["treats"]),
            doses=tuple(Dose(float(v), str(u), str(f)) for v, u, f in d["doses"]),
        )
        for d in raw["drugs"]
    )
    return Knowledge(
        organ_systems=tuple(raw["organ_systems"]),
        symptoms=symptoms,
        diseases=diseases,
        progressions=progressions,
        drugs=drugs,
        words=tuple(str(w) for w in raw["words"]),
    )


def _problems(kb: Knowledge) -> list[str]:
    problems = []
    systems = set(kb.organ_systems)
    symptom_names = {s.name for s in kb.symptoms}
    drug_names = {d.name for d in kb.drugs}
    disease_names = {d.name for d in kb.diseases}
    for kind, names in (
        ("symptom", [s.name for s in kb.symptoms]),
        ("disease", [d.name for d in kb.diseases]),
    ):
        duplicates = sorted({n for n in names if names.count(n) > 1})
        problems += [f"{kind} {n!r} is listed twice" for n in duplicates]
    problems += [
        f"symptom {s.name!r}: unknown organ system {s.system!r}" for s in kb.symptoms if s.system not in systems
    ]
    shorts = [d.short for d in kb.diseases]
    for d in kb.diseases:
        where = f"disease {d.name!r}"
        if d.category not in systems:
            problems.append(f"{where}: category {d.category!r} is not an organ system")
        problems += [f"{where}: unknown symptom {s!r}" for s in d.symptoms if s not in symptom_names]
        problems += [f"{where}: unknown drug {x!r}" for x in d.drugs if x not in drug_names]
        if d.sex not in ("any", "male", "female"):
            problems.append(f"{where}: sex must be any, male or female")
        if not 0 <= d.age_range[0] <= d.age_range[1] <= 100:
            problems.append(f"{where}: age range {d.age_range} must lie within 0-100")
        if len(split_words(d.short)) != 1 or shorts.count(d.short) > 1:
            problems.append(f"{where}: short name {d.short!r} must be one word, unique among diseases")
    for drug in kb.drugs:
        problems += [f"drug {drug.name!r}: treats unknown disease {t!r}" for t in drug.treats if t not in disease_names]
        if not drug.doses:
            problems.append(f"drug {drug.name!r}: needs at least one dose")
    for p in kb.progressions:
        if len(p.stages) < 2:
            problems.append(f"progression {p.disease!r}: needs at least two stages")
    return problems


def load_knowledge(path: str | Path) -> Knowledge:
    path = Path(path)
    try:
        kb = _parse(load_yaml(path))
    except (KeyError, TypeError, ValueError) as error:
        raise KnowledgeError(f"{path}: malformed entry ({error!r}); compare with the shipped file") from error
    problems = _problems(kb)
    if problems:
        raise KnowledgeError(f"{path}:\n" + "\n".join(f"  - {p}" for p in problems))
    return kb


def vocabulary(kb: Knowledge) -> list[str]:
    """Every word of the knowledge base, the general words, and the numbers 0-100: the demo tokenizer's words."""
    texts: list[str] = list(kb.words) + list(kb.organ_systems)
    texts += [s.name for s in kb.symptoms]
    for d in kb.diseases:
        texts += [d.name, d.category, d.specialty, d.sex, d.short]
    for p in kb.progressions:
        texts += [p.disease, p.system] + [f"{s.name} {s.description}" for s in p.stages]
    for drug in kb.drugs:
        texts += [drug.name, drug.mechanism, drug.specialty]
        texts += [f"{dose.value_text} {dose.unit} {dose.frequency}" for dose in drug.doses]
    words = {word for text in texts for word in split_words(text)}
    words |= {str(n) for n in range(101)}
    return sorted(words)
