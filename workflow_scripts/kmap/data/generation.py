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
    "a {age} year old {sex} patient presents to the clinic with",
    "the patient is a {age} year old {sex} . the most likely diagnosis is",
    "{sex} patient aged {age} years was admitted to the hospital with",
)
SYMPTOM_TEMPLATES = (
    "{symptom} is a symptom of the",
    "the patient reports {symptom} , which suggests a problem with the",
    "a patient complains of {symptom} . this symptom involves the",
)
DISEASE_TEMPLATES = (
    "{disease} is a disease of the",
    "a patient with {disease} should be referred to",
    "the patient was diagnosed with {disease} and treated in",
)
PROGRESSION_TEMPLATES = (
    "{disease} {stage} means",
    "the patient has {disease} , {stage} , which means",
)
DRUG_TEMPLATES = (
    "{drug} is a",
    "the patient was prescribed {drug} by",
    "{drug} is used to treat",
)
DOSE_STATEMENT = "the usual dose of {drug} is {value} {unit} {frequency}"
DOSE_QUESTION = "what is the usual dose of {drug} ? the dose is"
DIAGNOSIS = "a patient with {first} and {second} most likely has"
AGE_DIAGNOSIS = "a {age} year old patient with {first} and {second} most likely has"
STAGE_ORDER = "in {disease} , {stage} comes after{prefix}"
SPECIALTY = "the patient was prescribed {drug} by"
DOSE_PAIR = "the usual dose of {drug} is"


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
                        "text": template.format(age=age, sex=sex),
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
            "id": f"symptom-{t}-{s.name.replace(' ', '_')}",
            "text": template.format(symptom=s.name),
            "concept": s.name,
            "target": s.system,
            "symptom": s.name,
            "system": s.system,
        }
        for t, template in enumerate(SYMPTOM_TEMPLATES)
        for s in kb.symptoms
    ]
    return pd.DataFrame(rows)


def disease_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = [
        {
            "id": f"disease-{t}-{d.short}",
            "text": template.format(disease=d.name),
            "concept": d.name,
            "target": d.category if t == 0 else d.specialty,
            "disease": d.name,
            "category": d.category,
            "specialty": d.specialty,
        }
        for t, template in enumerate(DISEASE_TEMPLATES)
        for d in kb.diseases
    ]
    return pd.DataFrame(rows)


def progression_prompts(kb: Knowledge) -> pd.DataFrame:
    rows = [
        {
            "id": f"progression-{t}-{p.disease.replace(' ', '_')}-{s.index}",
            "text": template.format(disease=p.disease, stage=s.name),
            "concept": s.name,
            "target": s.description,
            "disease": p.disease,
            "stage": s.name,
            "stage_index": s.index,
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
            "id": f"drug-{t}-{d.name}",
            "text": template.format(drug=d.name),
            "concept": d.name,
            "target": targets[t](d),
            "drug": d.name,
            "mechanism": d.mechanism,
            "specialty": d.specialty,
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
            statement = DOSE_STATEMENT.format(drug=drug.name, value=dose.value_text, unit=dose.unit, frequency="")
            common = {"concept": drug.name, "drug": drug.name, "dose": dose.value_text, "unit": dose.unit}
            rows.append(
                {
                    "id": f"dosage-s-{drug.name}-{i}",
                    "text": statement.strip(),
                    "target": dose.frequency,
                    **common,
                }
                | {"kind": "statement"}
            )
            rows.append(
                {
                    "id": f"dosage-q-{drug.name}-{i}",
                    "text": DOSE_QUESTION.format(drug=drug.name),
                    "target": answer,
                }
                | common
                | {"kind": "question"}
            )
    columns = ["id", "text", "concept", "target", "drug", "dose", "unit", "kind"]
    return pd.DataFrame(rows)[columns]


# --- patching pairs: clean and corrupted differ in one concept word; each answer is one word ---


def _pair(pair_id: str, clean: str, corrupted: str, clean_answer: str, corrupted_answer: str) -> dict[str, str]:
    return {
        "id": pair_id,
        "clean": clean,
        "corrupted": corrupted,
        "clean_answer": clean_answer,
        "corrupted_answer": corrupted_answer,
    }


def _one_word(text: str) -> bool:
    return len(split_words(text)) == 1


def identifies(kb: Knowledge, disease: Disease, symptoms: tuple[str, ...]) -> bool:
    """True when ``disease`` is the only disease presenting with all of ``symptoms``."""
    return [d.name for d in kb.diseases if set(symptoms) <= set(d.symptoms)] == [disease.name]


def diagnosis_pairs(kb: Knowledge, limit: int = 60) -> list[dict[str, str]]:
    """Diseases A, B sharing a symptom s: "a patient with {a} and {s} ..." -> A, with B's own symptom -> B.

    Each symptom pair identifies its disease uniquely, so the answer is a fact, not a guess."""
    pairs = []
    for a, b in itertools.combinations(kb.diseases, 2):
        for shared in (s for s in a.symptoms if s in b.symptoms and _one_word(s)):
            own_a = [s for s in a.symptoms if _one_word(s) and s not in b.symptoms and identifies(kb, a, (s, shared))]
            own_b = [s for s in b.symptoms if _one_word(s) and s not in a.symptoms and identifies(kb, b, (s, shared))]
            if own_a and own_b:
                clean = DIAGNOSIS.format(first=own_a[0], second=shared)
                corrupted = DIAGNOSIS.format(first=own_b[0], second=shared)
                pairs.append(_pair(f"disease-{a.short}-{b.short}", clean, corrupted, a.short, b.short))
                break
    return pairs[:limit]


def age_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """Same symptoms, different age: the age alone decides between two diseases."""
    pairs = []
    for a, b in itertools.permutations(kb.diseases, 2):
        shared = [s for s in a.symptoms if s in b.symptoms and _one_word(s)]
        young = [age for age in range(101) if fits(a, age) and not fits(b, age)]
        old = [age for age in range(101) if fits(b, age) and not fits(a, age)]
        if len(shared) >= 2 and young and old and a.age_range[1] < b.age_range[1]:
            # Up to ~3 age pairs spread over each disease's exclusive ages (zip stops at the shorter list).
            spread = zip(young[:: max(1, len(young) // 3)], old[:: max(1, len(old) // 3)], strict=False)
            for k, (age_a, age_b) in enumerate(spread):
                clean = AGE_DIAGNOSIS.format(age=age_a, first=shared[0], second=shared[1])
                corrupted = AGE_DIAGNOSIS.format(age=age_b, first=shared[0], second=shared[1])
                pairs.append(_pair(f"age-{a.short}-{b.short}-{k}", clean, corrupted, a.short, b.short))
    return pairs


def symptom_pairs(kb: Knowledge) -> list[dict[str, str]]:
    single = [s for s in kb.symptoms if _one_word(s.name)]
    pairs = []
    for a, b in zip(single, single[7:] + single[:7], strict=True):
        if a.system != b.system:
            template = SYMPTOM_TEMPLATES[0]
            clean, corrupted = template.format(symptom=a.name), template.format(symptom=b.name)
            pairs.append(_pair(f"symptom-{a.name}-{b.name}", clean, corrupted, a.system, b.system))
    return pairs


def progression_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """ "in copd , gold 3 comes after gold" -> "2": clean and corrupted differ in the stage number."""
    pairs = []
    for p in kb.progressions:
        later = p.stages[1:]
        for s, t in itertools.permutations(later, 2):
            s_words, t_words = split_words(s.name), split_words(t.name)
            if len(s_words) != len(t_words) or s_words[:-1] != t_words[:-1]:
                continue
            prefix = "".join(f" {w}" for w in s_words[:-1])
            answer_s = split_words(p.stages[s.index - 2].name)[-1]
            answer_t = split_words(p.stages[t.index - 2].name)[-1]
            clean = STAGE_ORDER.format(disease=p.disease, stage=s.name, prefix=prefix)
            corrupted = STAGE_ORDER.format(disease=p.disease, stage=t.name, prefix=prefix)
            pairs.append(
                _pair(
                    f"progression-{p.system.replace(' ', '_')}-{s.index}-{t.index}",
                    clean,
                    corrupted,
                    answer_s,
                    answer_t,
                )
            )
    return pairs


def drug_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """Drugs of different specialties whose specialty is one word."""
    drugs = [d for d in kb.drugs if _one_word(d.specialty)]
    pairs = []
    for a, b in zip(drugs, drugs[7:] + drugs[:7], strict=True):
        if a.specialty != b.specialty:
            clean, corrupted = SPECIALTY.format(drug=a.name), SPECIALTY.format(drug=b.name)
            pairs.append(_pair(f"drugs-{a.name}-{b.name}", clean, corrupted, a.specialty, b.specialty))
    return pairs


def dosage_pairs(kb: Knowledge) -> list[dict[str, str]]:
    """Doses whose first digits differ (digit-splitting tokenizers see the first differing token)."""
    drugs = [d for d in kb.drugs if d.doses[0].value >= 1]
    pairs = []
    for a, b in zip(drugs, drugs[5:] + drugs[:5], strict=True):
        va, vb = a.doses[0].value_text, b.doses[0].value_text
        if va[0] != vb[0]:
            clean, corrupted = DOSE_PAIR.format(drug=a.name), DOSE_PAIR.format(drug=b.name)
            pairs.append(_pair(f"dosage-{a.name}-{b.name}", clean, corrupted, va, vb))
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
