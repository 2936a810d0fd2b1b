"""Deterministic generation of the six prompt sets and their patching pairs from the knowledge base.

The CSVs under ``prompts/`` are committed data written by ``tools/make_prompts.py``; users may edit them by
hand (validation never assumes they were generated). The same templates feed the demo model's corpus
(``kmap.offline.demo_corpus``), so the demo model has seen every fact the prompts probe.
"""

from __future__ import annotations

import itertools

import pandas as pd

from kmap.data.knowledge import Disease, Knowledge, split_words

AGE_TEMPLATES = (
    "{Article} {age}-year-old {sex} patient presents to the clinic with",
    "The patient is {article} {age}-year-old {sex}. The most likely diagnosis is",
    "A {sex} patient aged {age} years was admitted to the hospital with",
)
SYMPTOM_TEMPLATES = (
    "{Symptom} is a symptom of the",
    "The patient reports {symptom}, which suggests a problem with the",
    "A patient complains of {symptom}. This symptom involves the",
)
DISEASE_TEMPLATES = (
    "{Disease} is a disease of the",
    "A patient with {disease} should be referred to",
    "The patient was diagnosed with {disease} and treated in",
)
PROGRESSION_TEMPLATES = (
    "In {disease}, {stage} means",
    "The patient has {disease}, {stage}, which means",
)
DRUG_TEMPLATES = (
    "{Drug} is a",
    "{Drug} is usually prescribed by a specialist in",
    "{Drug} is used to treat",
)
DOSE_STATEMENT = "The usual dose of {drug} is {value} {unit} {frequency}"
DOSE_QUESTION = "What is the usual dose of {drug}? The dose is"
DIAGNOSIS = "A patient with {first} and {second} most likely has"
AGE_DIAGNOSIS = "{Article} {age}-year-old patient with {first} and {second} most likely has"
STAGE_ORDER = "In {disease}, {stage} comes after{prefix}"
SPECIALTY = DRUG_TEMPLATES[1]
DOSE_PAIR = "The usual dose of {drug} is"


def article(age: int) -> str:
    """ "an" before ages spoken with a vowel sound (8, 11, 18, 80-89), else "a"."""
    return "an" if str(age).startswith("8") or age in (11, 18) else "a"


def fill(template: str, **fields: object) -> str:
    """``template`` with its fields; a capitalised field name (``{Drug}``) capitalises the value's first letter
    (it starts the sentence), and ``{article}``/``{Article}`` follow ``age``."""
    values = {key: str(value) for key, value in fields.items()}
    if "age" in fields:
        values["article"] = article(int(fields["age"]))  # type: ignore[call-overload]
    values.update({key[0].upper() + key[1:]: value[:1].upper() + value[1:] for key, value in list(values.items())})
    return template.format(**values)


def slug(name: str) -> str:
    """An id-safe form of a name: "Parkinson's disease" -> "parkinsons_disease"."""
    return "_".join("".join(c for c in word if c.isalnum()) for word in name.lower().split())


def age_group(age: int) -> str:
    if age <= 1:
        return "infant"
    if age <= 12:
        return "child"
    if age <= 17:
        return "adolescent"
    if age <= 64:
        return "adult"
    return "elderly"


def fits(disease: Disease, age: int, sex: str | None = None) -> bool:
    low, high = disease.age_range
    return low <= age <= high and (sex is None or disease.sex in ("any", sex))


def typical_disease(kb: Knowledge, age: int, sex: str) -> Disease:
    """The disease whose typical age range is narrowest around ``age`` (deterministic target for age prompts)."""
    candidates = [d for d in kb.diseases if fits(d, age, sex)]
    return min(candidates, key=lambda d: (d.age_range[1] - d.age_range[0], d.name))


def age_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = []
    for template_id, template in enumerate(AGE_TEMPLATES):
        for sex in ("male", "female"):
            for age in range(101):
                rows.append(
                    {
                        "id": f"age-{template_id}-{sex}-{age:03d}",
                        "text": fill(template, age=age, sex=sex),
                        "concept": str(age),
                        "target": typical_disease(kb, age, sex).name,
                        "age": age,
                        "gender": sex,
                        "template": template_id,
                    }
                )
    return pd.DataFrame(rows)


def symptom_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = [
        {
            "id": f"symptom-{t}-{slug(s.name)}",
            "text": fill(template, symptom=s.name),
            "concept": s.name,
            "target": s.system,
            "symptom": s.name,
            "system": s.system,
            "template": t,
        }
        for t, template in enumerate(SYMPTOM_TEMPLATES)
        for s in kb.symptoms
    ]
    return pd.DataFrame(rows)


def disease_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = [
        {
            "id": f"disease-{t}-{d.short}",
            "text": fill(template, disease=d.name),
            "concept": d.name,
            "target": d.category if t == 0 else d.specialty,
            "disease": d.name,
            "category": d.category,
            "specialty": d.specialty,
            "template": t,
        }
        for t, template in enumerate(DISEASE_TEMPLATES)
        for d in kb.diseases
    ]
    return pd.DataFrame(rows)


def progression_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = [
        {
            "id": f"progression-{t}-{slug(p.disease)}-{s.index}",
            "text": fill(template, disease=p.disease, stage=s.name),
            "concept": s.name,
            "target": s.description,
            "disease": p.disease,
            "stage": s.name,
            "stage_index": s.index,
            "template": t,
        }
        for t, template in enumerate(PROGRESSION_TEMPLATES)
        for p in kb.progressions
        for s in p.stages
    ]
    return pd.DataFrame(rows)


def drug_prompts(kb: Knowledge) -> pd.DataFrame:
    targets = (
        lambda d: d.mechanism,
        lambda d: d.specialty,
        lambda d: d.treats[0] if d.treats else d.mechanism,
    )
    rows = [
        {
            "id": f"drug-{t}-{slug(d.name)}",
            "text": fill(template, drug=d.name),
            "concept": d.name,
            "target": targets[t](d),
            "drug": d.name,
            "mechanism": d.mechanism,
            "specialty": d.specialty,
            "template": t,
        }
        for t, template in enumerate(DRUG_TEMPLATES)
        for d in kb.drugs
    ]
    return pd.DataFrame(rows)


def dosage_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = []
    for drug in kb.drugs:
        for i, dose in enumerate(drug.doses):
            answer = f"{dose.value_text} {dose.unit} {dose.frequency}"
            statement = fill(DOSE_STATEMENT, drug=drug.name, value=dose.value_text, unit=dose.unit, frequency="")
            common = {"concept": drug.name, "drug": drug.name, "dose": dose.value_text, "unit": dose.unit}
            rows.append(
                {
                    "id": f"dosage-s-{slug(drug.name)}-{i}",
                    "text": statement.strip(),
                    "target": dose.frequency,
                    **common,
                }
                | {"kind": "statement", "template": 0}
            )
            rows.append(
                {
                    "id": f"dosage-q-{slug(drug.name)}-{i}",
                    "text": fill(DOSE_QUESTION, drug=drug.name),
                    "target": answer,
                }
                | common
                | {"kind": "question", "template": 1}
            )
    columns = ["id", "text", "concept", "target", "drug", "dose", "unit", "kind", "template"]
    return pd.DataFrame(rows)[columns]


# --- patching pairs --------------------------------------------------------------------------------------
#
# Clean and corrupted prompts differ in one concept; each answer is what a clinician would write next (a disease,
# an organ system, a specialty, a number), compared at its first token (patching.multi_token_answers). Patching
# needs clean and corrupted prompts of equal token length, which depends on the tokenizer: each domain's file is
# a candidate pool several times larger than needed, in which every concept is paired with the few concepts of
# the other answer class closest to it in spelled length, and the patching job keeps the pairs its model's
# tokenizer can use, counting the others by reason. At least 40 per domain survive every study tokenizer
# (tests/test_pairs.py).

POOL_PARTNERS = 3  # partners per concept: the pool is about three times the concepts


def _pair(pair_id: str, clean: str, corrupted: str, clean_answer: str, corrupted_answer: str) -> dict[str, str]:
    return {
        "id": pair_id,
        "clean": clean,
        "corrupted": corrupted,
        "clean_answer": clean_answer,
        "corrupted_answer": corrupted_answer,
    }


def _shape(text: str) -> tuple[int, int]:
    """What predicts equal token lengths without a tokenizer: the words (punctuation included), the letters."""
    return len(split_words(text)), len(text)


def _partners(name: str, candidates: list[str], k: int = POOL_PARTNERS) -> list[str]:
    """The ``k`` candidates with as many words as ``name`` and closest to it in length, ties by name."""
    words, letters = _shape(name)
    same = [c for c in candidates if _shape(c)[0] == words]
    return sorted(same, key=lambda c: (abs(len(c) - letters), c))[:k]


def identifies(kb: Knowledge, disease: Disease, symptoms: tuple[str, ...]) -> bool:
    """True when ``disease`` is the only disease presenting with all of ``symptoms``."""
    return [d.name for d in kb.diseases if set(symptoms) <= set(d.symptoms)] == [disease.name]


def diagnosis_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """Diseases A, B sharing a symptom s: "A patient with {a} and {s} most likely has" -> A, with B's own
    symptom -> B. Each symptom pair identifies its disease uniquely, so the answer is a fact, not a guess; the
    (a, b) combinations with as many words and the closest lengths are candidates, ``POOL_PARTNERS`` at most
    per disease pair."""
    pairs = []
    for a, b in itertools.combinations(kb.diseases, 2):
        for shared in (s for s in a.symptoms if s in b.symptoms):
            own_a = [s for s in a.symptoms if s not in b.symptoms and identifies(kb, a, (s, shared))]
            own_b = [s for s in b.symptoms if s not in a.symptoms and identifies(kb, b, (s, shared))]
            combos = sorted(
                ((sa, sb) for sa, sb in itertools.product(own_a, own_b) if _shape(sa)[0] == _shape(sb)[0]),
                key=lambda ab: (abs(len(ab[0]) - len(ab[1])), ab),
            )
            for k, (sa, sb) in enumerate(combos[:POOL_PARTNERS]):
                clean = fill(DIAGNOSIS, first=sa, second=shared)
                corrupted = fill(DIAGNOSIS, first=sb, second=shared)
                pairs.append(_pair(f"disease-{a.short}-{b.short}-{slug(shared)}-{k}", clean, corrupted, a.name, b.name))
            break  # one shared symptom per disease pair
    return pairs


def age_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """Same symptoms, different age (same number of digits): the age alone decides between two diseases."""
    pairs = []
    for a, b in itertools.permutations(kb.diseases, 2):
        shared = [s for s in a.symptoms if s in b.symptoms]
        if len(shared) < 2 or a.age_range[1] >= b.age_range[1]:
            continue
        for digits in (1, 2):
            young = [age for age in range(101) if len(str(age)) == digits and fits(a, age) and not fits(b, age)]
            old = [age for age in range(101) if len(str(age)) == digits and fits(b, age) and not fits(a, age)]
            # Up to three age pairs spread over each disease's exclusive ages (zip stops at the shorter list).
            spread = zip(young[:: max(1, len(young) // 3)], old[:: max(1, len(old) // 3)], strict=False)
            for k, (age_a, age_b) in enumerate(spread):
                clean = fill(AGE_DIAGNOSIS, age=age_a, first=shared[0], second=shared[1])
                corrupted = fill(AGE_DIAGNOSIS, age=age_b, first=shared[0], second=shared[1])
                pairs.append(_pair(f"age-{a.short}-{b.short}-{digits}-{k}", clean, corrupted, a.name, b.name))
    return pairs


def symptom_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """ "{Symptom} is a symptom of the" -> organ system, each symptom with the closest-shaped symptoms of other
    systems."""
    pairs = []
    for a in kb.symptoms:
        others = [s.name for s in kb.symptoms if s.system != a.system]
        system = {s.name: s.system for s in kb.symptoms}
        for b in _partners(a.name, others):
            clean, corrupted = fill(SYMPTOM_TEMPLATES[0], symptom=a.name), fill(SYMPTOM_TEMPLATES[0], symptom=b)
            pairs.append(_pair(f"symptom-{slug(a.name)}-{slug(b)}", clean, corrupted, a.system, system[b]))
    return pairs


def progression_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """ "In COPD, GOLD 3 comes after GOLD" -> "2": clean and corrupted differ in the stage number."""
    pairs = []
    for p in kb.progressions:
        later = p.stages[1:]
        for s, t in itertools.permutations(later, 2):
            s_words, t_words = s.name.split(), t.name.split()
            if len(s_words) != len(t_words) or s_words[:-1] != t_words[:-1]:
                continue
            prefix = "".join(f" {w}" for w in s_words[:-1])
            answer_s = p.stages[s.index - 2].name.split()[-1]
            answer_t = p.stages[t.index - 2].name.split()[-1]
            clean = fill(STAGE_ORDER, disease=p.disease, stage=s.name, prefix=prefix)
            corrupted = fill(STAGE_ORDER, disease=p.disease, stage=t.name, prefix=prefix)
            pair_id = f"progression-{slug(p.system)}-{s.index}-{t.index}"
            pairs.append(_pair(pair_id, clean, corrupted, answer_s, answer_t))
    return pairs


def drug_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """ "{Drug} is usually prescribed by a specialist in" -> specialty, each drug with the closest-shaped drugs of
    other specialties."""
    specialty = {d.name: d.specialty for d in kb.drugs}
    pairs = []
    for a in kb.drugs:
        others = [d.name for d in kb.drugs if d.specialty != a.specialty]
        for b in _partners(a.name, others):
            clean, corrupted = fill(SPECIALTY, drug=a.name), fill(SPECIALTY, drug=b)
            pairs.append(_pair(f"drugs-{slug(a.name)}-{slug(b)}", clean, corrupted, a.specialty, specialty[b]))
    return pairs


def dosage_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """ "The usual dose of {drug} is" -> its first dose, with the closest-shaped drugs whose dose starts with
    another digit (digit-splitting tokenizers compare the first digit)."""
    dose = {d.name: d.doses[0].value_text for d in kb.drugs if d.doses[0].value >= 1}
    pairs = []
    for a, value in dose.items():
        others = [b for b, other in dose.items() if other[0] != value[0]]
        for b in _partners(a, others):
            clean, corrupted = fill(DOSE_PAIR, drug=a), fill(DOSE_PAIR, drug=b)
            pairs.append(_pair(f"dosage-{slug(a)}-{slug(b)}", clean, corrupted, value, dose[b]))
    return pairs


PROMPT_BUILDERS = {
    "age": age_prompts,
    "symptoms": symptom_prompts,
    "disease": disease_prompts,
    "progression": progression_prompts,
    "drugs": drug_prompts,
    "dosage": dosage_prompts,
}
PAIR_BUILDERS = {
    "age": age_pairs,
    "symptoms": symptom_pairs,
    "disease": diagnosis_pairs,
    "progression": progression_pairs,
    "drugs": drug_pairs,
    "dosage": dosage_pairs,
}


def build_prompts(kb: Knowledge, domain: str) -> pd.DataFrame:
    return PROMPT_BUILDERS[domain](kb)


def build_pairs(kb: Knowledge, domain: str) -> pd.DataFrame:
    return pd.DataFrame(PAIR_BUILDERS[domain](kb))
