"""The demo model's synthetic medical corpus, generated from the knowledge base with the prompt templates.

Sentences state the facts every prompt set probes (symptom -> organ system, disease -> category, specialty
and drug, stage order and meaning, drug -> class, specialty, indication and dose) and clinical vignettes in
which age and sex shift the diagnosis along each disease's typical age range, plus number-line statements
("45 is older than 30", "next year a 45 year old will be 46") that give ages an ordered representation.
Deterministic for a seed. ``diagnosis_eval_cases`` are vignettes whose age and symptom pair never occur
together in a training sentence (``generate_corpus(..., held_out=cases)``).
"""

from __future__ import annotations

import functools
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass

from kmap.data.generation import (
    AGE_DIAGNOSIS,
    AGE_TEMPLATES,
    DIAGNOSIS,
    DISEASE_TEMPLATES,
    DOSE_QUESTION,
    DOSE_STATEMENT,
    DRUG_TEMPLATES,
    PROGRESSION_TEMPLATES,
    SPECIALTY,
    STAGE_ORDER,
    SYMPTOM_TEMPLATES,
    age_group,
    fill,
    fits,
    identifies,
)
from kmap.data.knowledge import Disease, Knowledge, split_words

VIGNETTE = "{Article} {age}-year-old {sex} patient presents to the clinic with {first} and {second}."
VIGNETTE_QUESTION = VIGNETTE + " The most likely diagnosis is"
# Every corpus word is in ``vocabulary(kb)``; words the templates would need beyond it would go here.
DEMO_WORDS: tuple[str, ...] = ()

CaseKey = tuple[int, frozenset[str]]


@dataclass(frozen=True)
class Case:
    """A clinical vignette: who presents with which two symptoms, and what they have."""

    age: int
    sex: str
    first: str
    second: str
    disease: Disease

    @property
    def prompt(self) -> str:
        return fill(VIGNETTE_QUESTION, age=self.age, sex=self.sex, first=self.first, second=self.second)

    @property
    def answer(self) -> str:
        """The first word of the diagnosis (a demo token): what greedy decoding must produce next."""
        return split_words(self.disease.name)[0]

    @property
    def key(self) -> CaseKey:
        """Age and symptom pair, ignoring sex and order: held out means no training sentence has both."""
        return self.age, frozenset((self.first, self.second))


def _sexes(disease: Disease) -> tuple[str, ...]:
    return ("male", "female") if disease.sex == "any" else (disease.sex,)


def _symptom_pair(rng: random.Random, disease: Disease) -> tuple[str, str]:
    if len(disease.symptoms) == 1:
        return disease.symptoms[0], disease.symptoms[0]
    first, second = rng.sample(disease.symptoms, 2)
    return first, second


def _draw_case(rng: random.Random, disease: Disease) -> Case:
    age = rng.randint(*disease.age_range)
    sex = rng.choice(_sexes(disease))
    return Case(age, sex, *_symptom_pair(rng, disease), disease)


def vignette(rng: random.Random, kb: Knowledge, held_out: frozenset[CaseKey] = frozenset()) -> str:
    while (case := _draw_case(rng, rng.choice(kb.diseases))).key in held_out:
        pass
    return f"{case.prompt} {case.disease.name}."


def age_only_vignette(rng: random.Random, kb: Knowledge) -> str:
    """The age prompt templates, continued with what fits that age (symptom or diagnosis of a fitting disease).

    This is what makes the exact age matter at the end of the age prompts: the continuation's distribution
    shifts with every year as diseases' age ranges open and close."""
    age = rng.randint(0, 100)
    sex = rng.choice(("male", "female"))
    disease = rng.choice([d for d in kb.diseases if fits(d, age, sex)])
    template = rng.randrange(len(AGE_TEMPLATES))
    prompt = fill(AGE_TEMPLATES[template], age=age, sex=sex)
    answer = disease.name if template == 1 else rng.choice(disease.symptoms)
    return f"{prompt} {answer}."


def short_diagnosis(rng: random.Random, kb: Knowledge, held_out: frozenset[CaseKey] = frozenset()) -> str:
    """Pair-style vignettes; with an age, the diagnosis is drawn among diseases fitting both symptoms and age."""
    disease = rng.choice(kb.diseases)
    first, second = _symptom_pair(rng, disease)
    low, high = disease.age_range
    ages = [age for age in range(low, high + 1) if (age, frozenset((first, second))) not in held_out]
    if rng.random() < 0.5 or not ages:
        return f"{fill(DIAGNOSIS, first=first, second=second)} {disease.name}."
    age = rng.choice(ages)
    fitting = [d for d in kb.diseases if {first, second} <= set(d.symptoms) and fits(d, age)]
    answer = rng.choice(fitting or [disease])
    return f"{fill(AGE_DIAGNOSIS, age=age, first=first, second=second)} {answer.name}."


def number_line(rng: random.Random, kb: Knowledge) -> str:
    age = rng.randint(0, 99)
    other = rng.randint(0, 100)
    kind = rng.randrange(4)
    if kind == 0:
        return fill("Next year, {article} {age}-year-old will be {next}.", age=age, next=age + 1)
    if kind == 1 and other != age:
        relation = "older" if age > other else "younger"
        return f"{age} is {relation} than {other}."
    if kind == 2:
        return f"{age + 1} comes after {age}."
    group = age_group(age)
    return fill(
        "{Article} {age}-year-old is {group_article} {group}.",
        age=age,
        group=group,
        group_article="an" if group[0] in "aeiou" else "a",
    )


def symptom_fact(rng: random.Random, kb: Knowledge) -> str:
    symptom = rng.choice(kb.symptoms)
    return f"{fill(rng.choice(SYMPTOM_TEMPLATES), symptom=symptom.name)} {symptom.system} system."


def disease_fact(rng: random.Random, kb: Knowledge) -> str:
    disease = rng.choice(kb.diseases)
    template = rng.randrange(len(DISEASE_TEMPLATES) + 1)
    if template == len(DISEASE_TEMPLATES):
        if disease.drugs:
            return fill("{Disease} is treated with {drug}.", disease=disease.name, drug=rng.choice(disease.drugs))
        template = 0
    answer = f"{disease.category} system" if template == 0 else disease.specialty
    return f"{fill(DISEASE_TEMPLATES[template], disease=disease.name)} {answer}."


def progression_fact(rng: random.Random, kb: Knowledge) -> str:
    progression = rng.choice(kb.progressions)
    stage = rng.choice(progression.stages)
    if stage.index > 1 and rng.random() < 0.5:
        before = progression.stages[stage.index - 2].name
        # Same wording as the patching pairs: "In COPD, GOLD 3 comes after GOLD 2."
        return f"{fill(STAGE_ORDER, disease=progression.disease, stage=stage.name, prefix='')} {before}."
    template = rng.choice(PROGRESSION_TEMPLATES)
    return f"{fill(template, disease=progression.disease, stage=stage.name)} {stage.description}."


def drug_fact(rng: random.Random, kb: Knowledge) -> str:
    drug = rng.choice(kb.drugs)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{fill(DRUG_TEMPLATES[0], drug=drug.name)} {drug.mechanism}."
    if kind == 1:
        return f"{fill(SPECIALTY, drug=drug.name)} {drug.specialty}."
    if kind == 2 and drug.treats:
        return f"{fill(DRUG_TEMPLATES[2], drug=drug.name)} {rng.choice(drug.treats)}."
    return fill("{Drug} is prescribed in {specialty}.", drug=drug.name, specialty=drug.specialty)


def dose_fact(rng: random.Random, kb: Knowledge) -> str:
    drug = rng.choice(kb.drugs)
    dose = rng.choice(drug.doses)
    if rng.random() < 0.5:
        text = fill(DOSE_STATEMENT, drug=drug.name, value=dose.value_text, unit=dose.unit, frequency=dose.frequency)
        return f"{text}."
    return f"{fill(DOSE_QUESTION, drug=drug.name)} {dose.value_text} {dose.unit} {dose.frequency}."


Generator = Callable[[random.Random, Knowledge], str]


def generators(held_out: frozenset[CaseKey] = frozenset()) -> tuple[tuple[Generator, float], ...]:
    """Sentence kinds and their weights: vignettes dominate, as diagnosis is the hardest skill."""
    return (
        (functools.partial(vignette, held_out=held_out), 0.25),
        (age_only_vignette, 0.12),
        (functools.partial(short_diagnosis, held_out=held_out), 0.15),
        (number_line, 0.12),
        (symptom_fact, 0.08),
        (disease_fact, 0.08),
        (progression_fact, 0.06),
        (drug_fact, 0.08),
        (dose_fact, 0.06),
    )


def diagnosis_eval_cases(kb: Knowledge, n: int, seed: int) -> list[Case]:
    """``n`` vignettes with distinct age and symptom pair, each pair naming exactly one disease."""
    usable = [
        (d, (a, b)) for d in kb.diseases for a in d.symptoms for b in d.symptoms if a != b and identifies(kb, d, (a, b))
    ]
    if not usable:
        raise ValueError("knowledge base: no symptom pair identifies a single disease; cannot evaluate diagnosis")
    possible = {(age, frozenset(pair)) for d, pair in usable for age in range(d.age_range[0], d.age_range[1] + 1)}
    # Half the possible vignettes at most: the training corpus must keep most age-symptom combinations.
    if n > len(possible) // 2:
        raise ValueError(f"knowledge base allows at most {len(possible) // 2} evaluation vignettes, {n} requested")
    rng = random.Random(seed + 10_000)  # apart from the corpus stream of the same seed
    cases: dict[CaseKey, Case] = {}
    while len(cases) < n:
        disease, (first, second) = rng.choice(usable)
        case = Case(rng.randint(*disease.age_range), rng.choice(_sexes(disease)), first, second, disease)
        cases.setdefault(case.key, case)
    return sorted(cases.values(), key=lambda c: c.prompt)


def diagnosis_eval_set(kb: Knowledge, n: int, seed: int) -> list[tuple[str, str]]:
    """(vignette prompt, expected first word of the diagnosis) for the held-out cases."""
    return [(case.prompt, case.answer) for case in diagnosis_eval_cases(kb, n, seed)]


def generate_corpus(kb: Knowledge, n_sentences: int, seed: int, held_out: Collection[Case] = ()) -> list[str]:
    """``n_sentences`` training sentences; none states a held-out case's age with its symptom pair."""
    rng = random.Random(seed)
    kinds, weights = zip(*generators(frozenset(case.key for case in held_out)), strict=True)
    return [rng.choices(kinds, weights)[0](rng, kb) for _ in range(n_sentences)]
