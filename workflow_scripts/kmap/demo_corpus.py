"""The demo model's synthetic medical corpus, generated from the knowledge base with the prompt templates.

Sentences state the facts every prompt set probes (symptom -> organ system, disease -> category and
specialty, stage order and meaning, drug -> class, specialty, indication and dose) and clinical vignettes in
which age and sex shift the diagnosis along each disease's typical age range, plus number-line statements
("45 is older than 30", "next year a 45 year old will be 46") that give ages an ordered representation.
Deterministic for a seed. ``diagnosis_eval_set`` holds vignettes whose exact wording never occurs in training.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from kmap.knowledge import Disease, Knowledge
from kmap.prompt_generation import (
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
    fits,
    identifies,
)

VIGNETTE = "a {age} year old {sex} patient presents to the clinic with {first} and {second} ."
VIGNETTE_QUESTION = VIGNETTE + " the most likely diagnosis is"


def _sexes(disease: Disease) -> tuple[str, ...]:
    return ("male", "female") if disease.sex == "any" else (disease.sex,)


def _symptom_pair(rng: random.Random, disease: Disease) -> tuple[str, str]:
    if len(disease.symptoms) == 1:
        return disease.symptoms[0], disease.symptoms[0]
    first, second = rng.sample(disease.symptoms, 2)
    return first, second


def vignette(rng: random.Random, kb: Knowledge) -> str:
    disease = rng.choice(kb.diseases)
    age = rng.randint(*disease.age_range)
    sex = rng.choice(_sexes(disease))
    first, second = _symptom_pair(rng, disease)
    return f"{VIGNETTE_QUESTION.format(age=age, sex=sex, first=first, second=second)} {disease.name} ."


def age_only_vignette(rng: random.Random, kb: Knowledge) -> str:
    """The age prompt templates, continued with what fits that age (symptom or diagnosis of a fitting disease)."""
    age = rng.randint(0, 100)
    sex = rng.choice(("male", "female"))
    candidates = [d for d in kb.diseases if fits(d, age, sex)]
    disease = rng.choice(candidates)
    template = rng.randrange(len(AGE_TEMPLATES))
    prompt = AGE_TEMPLATES[template].format(age=age, sex=sex)
    answer = disease.name if template == 1 else rng.choice(disease.symptoms)
    return f"{prompt} {answer} ."


def short_diagnosis(rng: random.Random, kb: Knowledge) -> str:
    """Pair-style vignettes; with an age, the diagnosis is drawn among diseases fitting both symptoms and age."""
    disease = rng.choice(kb.diseases)
    first, second = _symptom_pair(rng, disease)
    if rng.random() < 0.5:
        return f"{DIAGNOSIS.format(first=first, second=second)} {disease.short} ."
    age = rng.randint(*disease.age_range)
    fitting = [d for d in kb.diseases if {first, second} <= set(d.symptoms) and fits(d, age)]
    answer = rng.choice(fitting or [disease])
    return f"{AGE_DIAGNOSIS.format(age=age, first=first, second=second)} {answer.short} ."


def number_line(rng: random.Random, kb: Knowledge) -> str:
    age = rng.randint(0, 99)
    other = rng.randint(0, 100)
    kind = rng.randrange(4)
    if kind == 0:
        return f"next year a {age} year old will be {age + 1} ."
    if kind == 1 and other != age:
        relation = "older" if age > other else "younger"
        return f"{age} is {relation} than {other} ."
    if kind == 2:
        return f"{age + 1} comes after {age} ."
    return (
        f"a {age} year old is an {age_group(age)} ."
        if age_group(age)[0] in "aeiou"
        else (f"a {age} year old is a {age_group(age)} .")
    )


def symptom_fact(rng: random.Random, kb: Knowledge) -> str:
    symptom = rng.choice(kb.symptoms)
    return f"{rng.choice(SYMPTOM_TEMPLATES).format(symptom=symptom.name)} {symptom.system} system ."


def disease_fact(rng: random.Random, kb: Knowledge) -> str:
    disease = rng.choice(kb.diseases)
    template = rng.randrange(len(DISEASE_TEMPLATES))
    answer = f"{disease.category} system" if template == 0 else disease.specialty
    return f"{DISEASE_TEMPLATES[template].format(disease=disease.name)} {answer} ."


def progression_fact(rng: random.Random, kb: Knowledge) -> str:
    progression = rng.choice(kb.progressions)
    stage = rng.choice(progression.stages)
    if stage.index > 1 and rng.random() < 0.5:
        before = progression.stages[stage.index - 2].name
        # Same wording as the patching pairs: "in copd , gold 3 comes after gold 2".
        return f"{STAGE_ORDER.format(disease=progression.disease, stage=stage.name, prefix='')} {before} ."
    template = rng.choice(PROGRESSION_TEMPLATES)
    return f"{template.format(disease=progression.disease, stage=stage.name)} {stage.description} ."


def drug_fact(rng: random.Random, kb: Knowledge) -> str:
    drug = rng.choice(kb.drugs)
    kind = rng.randrange(4)
    if kind == 0:
        return f"{DRUG_TEMPLATES[0].format(drug=drug.name)} {drug.mechanism} ."
    if kind == 1:
        return f"{SPECIALTY.format(drug=drug.name)} {drug.specialty} ."
    if kind == 2 and drug.treats:
        return f"{DRUG_TEMPLATES[2].format(drug=drug.name)} {rng.choice(drug.treats)} ."
    return f"{drug.name} is prescribed in {drug.specialty} ."


def dose_fact(rng: random.Random, kb: Knowledge) -> str:
    drug = rng.choice(kb.drugs)
    dose = rng.choice(drug.doses)
    if rng.random() < 0.5:
        text = DOSE_STATEMENT.format(drug=drug.name, value=dose.value_text, unit=dose.unit, frequency=dose.frequency)
        return f"{text} ."
    return f"{DOSE_QUESTION.format(drug=drug.name)} {dose.value_text} {dose.unit} {dose.frequency} ."


# Sentence kinds and their weights: vignettes dominate, as diagnosis is the hardest skill.
GENERATORS: tuple[tuple[Callable[[random.Random, Knowledge], str], float], ...] = (
    (vignette, 0.25),
    (age_only_vignette, 0.12),
    (short_diagnosis, 0.15),
    (number_line, 0.12),
    (symptom_fact, 0.08),
    (disease_fact, 0.08),
    (progression_fact, 0.06),
    (drug_fact, 0.08),
    (dose_fact, 0.06),
)


def diagnosis_eval_set(kb: Knowledge, n: int, seed: int) -> list[tuple[str, str]]:
    """(vignette prompt, expected first word of the diagnosis) for symptom pairs naming one disease."""
    rng = random.Random(seed + 10_000)
    usable = [
        (d, pair)
        for d in kb.diseases
        for pair in ((a, b) for a in d.symptoms for b in d.symptoms if a != b)
        if identifies(kb, d, pair)
    ]
    items: dict[str, str] = {}
    while len(items) < n:
        disease, (first, second) = rng.choice(usable)
        age = rng.randint(*disease.age_range)
        sex = rng.choice(_sexes(disease))
        items[VIGNETTE_QUESTION.format(age=age, sex=sex, first=first, second=second)] = disease.name.split()[0]
    return sorted(items.items())


def generate_corpus(kb: Knowledge, n_sentences: int, seed: int, exclude: set[str] | None = None) -> list[str]:
    """``n_sentences`` training sentences; vignettes starting with an excluded prompt are redrawn."""
    rng = random.Random(seed)
    generators, weights = zip(*GENERATORS, strict=True)
    excluded = exclude or set()
    sentences = []
    while len(sentences) < n_sentences:
        sentence = rng.choices(generators, weights)[0](rng, kb)
        if excluded and sentence.rsplit(" is ", 1)[0] + " is" in excluded:
            continue
        sentences.append(sentence)
    return sentences
