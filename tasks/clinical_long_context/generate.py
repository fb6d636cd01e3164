"""Writes passages/admission_record.yaml: the long synthetic admission records of this task.

Run once by a maintainer (`python tasks/clinical_long_context/generate.py`); the committed YAML is
what qeval scores, so the text can be read and reviewed, its content hash is stable, and loading
the task runs no code. The output is a pure function of this file (no clock, no randomness):
tests/test_long_context.py regenerates it and compares the bytes.

Each record is a full admission of one synthetic patient (no real patients, people or places): an
admission history and physical (history of present illness, past history, home medicines with
doses, allergies, social and family history, examination, admission laboratory panel with units and
reference ranges, microbiology, imaging, ECG, problem-based assessment and plan), one progress note
per hospital day (vital signs, focused examination, that day's laboratory panel, events, plan by
problem), and a discharge summary (diagnoses, course, medicine changes, follow-up).

Building blocks, one per admission scenario (7 scenarios, 3 patients each = 21 records): the
scenario's history, examination, studies and day-by-day course, and its laboratory and vital-sign
trajectories as anchor values that are interpolated over the stay. Values are stated for a
reference patient and scaled by each patient's severity around the middle of the normal range, so
the direction of every abnormality (and so the reasoning that cites it) holds for both patients;
derived values (anion gap, corrected calcium is not used) are computed, and weight-based doses are
computed from each patient's weight.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "passages" / "admission_record.yaml"

# ---------------------------------------------------------------- laboratory reference data
# name: (unit, low, high, decimals); conventional (US) units.
LABS: dict[str, tuple[str, float, float, int]] = {
    "Sodium": ("mmol/L", 135, 145, 0),
    "Potassium": ("mmol/L", 3.5, 5.0, 1),
    "Chloride": ("mmol/L", 98, 107, 0),
    "Bicarbonate": ("mmol/L", 22, 29, 0),
    "Anion gap": ("mmol/L", 8, 16, 0),
    "Urea nitrogen (BUN)": ("mg/dL", 7, 20, 0),
    "Creatinine": ("mg/dL", 0.6, 1.2, 2),
    "Glucose": ("mg/dL", 70, 99, 0),
    "Calcium": ("mg/dL", 8.5, 10.5, 1),
    "Magnesium": ("mg/dL", 1.7, 2.2, 1),
    "Phosphate": ("mg/dL", 2.5, 4.5, 1),
    "White cell count": ("x10^3/uL", 4.0, 11.0, 1),
    "Neutrophils": ("x10^3/uL", 1.8, 7.7, 1),
    "Hemoglobin": ("g/dL", 12.0, 17.5, 1),
    "Hematocrit": ("%", 36, 52, 0),
    "Platelets": ("x10^3/uL", 150, 400, 0),
    "INR": ("", 0.8, 1.2, 1),
    "Lactate": ("mmol/L", 0.5, 2.0, 1),
    "C-reactive protein": ("mg/L", 0, 5, 0),
    "Procalcitonin": ("ng/mL", 0, 0.1, 2),
    "High-sensitivity troponin T": ("ng/L", 0, 14, 0),
    "NT-proBNP": ("pg/mL", 0, 300, 0),
    "Albumin": ("g/dL", 3.5, 5.0, 1),
    "Total bilirubin": ("mg/dL", 0.1, 1.2, 1),
    "ALT": ("U/L", 7, 56, 0),
    "AST": ("U/L", 10, 40, 0),
    "Beta-hydroxybutyrate": ("mmol/L", 0, 0.6, 1),
    "Venous pH": ("", 7.32, 7.42, 2),
    "Arterial pH": ("", 7.35, 7.45, 2),
    "PaCO2": ("mmHg", 35, 45, 0),
    "PaO2": ("mmHg", 80, 100, 0),
    "D-dimer": ("ug/mL FEU", 0, 0.5, 2),
    "Serum osmolality": ("mOsm/kg", 275, 295, 0),
}
BASIC = ["Sodium", "Potassium", "Chloride", "Bicarbonate", "Anion gap", "Urea nitrogen (BUN)", "Creatinine",
         "Glucose", "Calcium", "Magnesium", "Phosphate", "White cell count", "Neutrophils", "Hemoglobin",
         "Hematocrit", "Platelets"]
NORMAL = {"Sodium": 139, "Potassium": 4.2, "Chloride": 103, "Bicarbonate": 25, "Urea nitrogen (BUN)": 14,
          "Creatinine": 0.9, "Glucose": 95, "Calcium": 9.4, "Magnesium": 2.0, "Phosphate": 3.4,
          "White cell count": 7.0, "Neutrophils": 4.2, "Hemoglobin": 14.0, "Hematocrit": 42, "Platelets": 250,
          "INR": 1.0, "Lactate": 1.1, "C-reactive protein": 3, "Procalcitonin": 0.04,
          "High-sensitivity troponin T": 8, "NT-proBNP": 120, "Albumin": 4.1, "Total bilirubin": 0.6,
          "ALT": 24, "AST": 22, "Beta-hydroxybutyrate": 0.2, "Venous pH": 7.37, "Arterial pH": 7.40,
          "PaCO2": 40, "PaO2": 90, "D-dimer": 0.3, "Serum osmolality": 288}


def _round(x: float, d: int) -> float | int:
    return int(round(x)) if d == 0 else round(x, d)


def _fmt(x: float, d: int) -> str:
    return f"{x:.{d}f}"


def flag(name: str, v: float) -> str:
    _, lo, hi, _ = LABS[name]
    return " H" if v > hi else (" L" if v < lo else "")


@dataclass
class Patient:
    pid: str
    age: int
    sex: str  # "man" / "woman"
    weight: float  # kg
    height: int  # cm
    severity: float  # scales every deviation from the normal middle
    los: int  # hospital days (discharge on the last)
    allergies: str
    social: str
    family: str
    extra_history: list[str] = field(default_factory=list)
    extra_meds: list[str] = field(default_factory=list)
    occupation: str = "retired"
    variant: dict = field(default_factory=dict)  # scenario-specific choices

    @property
    def he(self) -> str:
        return "he" if self.sex == "man" else "she"

    @property
    def his(self) -> str:
        return "his" if self.sex == "man" else "her"

    @property
    def bmi(self) -> float:
        return self.weight / (self.height / 100) ** 2


@dataclass
class Scenario:
    key: str
    title: str
    specialty: str
    service: str
    complaint: str
    hpi: callable
    history: list[str]
    home_meds: list[str]
    ros: str
    exam: dict[str, str]
    labs: dict[str, list[float]]  # anchors over the stay, reference patient
    extra_admission_labs: list[str]  # shown on admission only
    vitals: dict[str, list[float]]  # temp, hr, sbp, dbp, rr, spo2
    oxygen: list[str]  # by day, anchors (stepwise)
    micro: callable
    imaging: callable
    ecg: str
    assessment: callable
    plan: callable  # admission plan by problem: list[(problem, [lines])]
    days: callable  # day index → (subjective, exam, events/plan lines)
    discharge_diagnoses: list[str]
    discharge_meds: callable
    follow_up: list[str]
    course_summary: callable
    patients: list[Patient]


def interp(anchors: list[float], day: int, los: int) -> float:
    """The first anchor is admission (day 1), the second the next morning (day 2: the acute phase
    turns over one night), the last discharge (day `los`); the others are spread evenly between day
    2 and discharge, linear in between."""
    if day <= 1 or len(anchors) == 1:
        return anchors[0]
    if los <= 2 or len(anchors) == 2:
        return anchors[-1] if day >= los else anchors[1]
    x = 1 + (day - 2) / (los - 2) * (len(anchors) - 2)
    i = min(int(x), len(anchors) - 2)
    f = x - i
    return anchors[i] * (1 - f) + anchors[i + 1] * f


def lab_value(name: str, anchors: list[float], day: int, p: Patient) -> float:
    raw = interp(anchors, day, p.los)
    mid = NORMAL[name]
    v = mid + (raw - mid) * p.severity
    if name == "Hemoglobin" and p.sex == "woman":
        v -= 1.2
    if name == "Hematocrit" and p.sex == "woman":
        v -= 3.5
    if name == "Creatinine" and p.sex == "woman":
        v *= 0.85
    return _round(max(v, 0.0), LABS[name][3])


def panel(s: Scenario, p: Patient, day: int) -> dict[str, float]:
    vals = {}
    for name, anchors in s.labs.items():
        if name in ("Anion gap",):
            continue
        vals[name] = lab_value(name, anchors, day, p)
    if {"Sodium", "Chloride", "Bicarbonate"} <= vals.keys():
        vals["Anion gap"] = int(round(vals["Sodium"] - vals["Chloride"] - vals["Bicarbonate"]))
    return vals


def lab_lines(vals: dict[str, float], names: list[str]) -> list[str]:
    out = []
    for n in names:
        if n not in vals:
            continue
        unit, lo, hi, d = LABS[n]
        rng = f"{_fmt(lo, d) if lo else '0'}-{_fmt(hi, d)}" if lo or n not in ("C-reactive protein",) else f"<{_fmt(hi, d)}"
        if lo == 0:
            rng = f"<{_fmt(hi, d) if d else int(hi)}"
        u = f" {unit}" if unit else ""
        out.append(f"- {n}: {_fmt(vals[n], d)}{u} (reference {rng}{u}){flag(n, vals[n])}")
    return out


def vital(s: Scenario, p: Patient, day: int) -> dict[str, float]:
    normal = {"temp": 36.8, "hr": 78, "sbp": 126, "dbp": 76, "rr": 16, "spo2": 97}
    out = {}
    for k, anchors in s.vitals.items():
        raw = interp(anchors, day, p.los)
        v = normal[k] + (raw - normal[k]) * p.severity
        out[k] = round(v, 1) if k == "temp" else int(round(min(v, 100) if k == "spo2" else v))
    return out


def oxygen(s: Scenario, p: Patient, day: int) -> str:
    """The oxygen step of the day: the same day mapping as `interp`, stepwise."""
    o = s.oxygen
    if day <= 1 or len(o) == 1:
        return o[0]
    if day >= p.los:
        return o[-1]
    x = 1 + (day - 2) / max(p.los - 2, 1) * (len(o) - 2)
    return o[min(int(x + 1e-9), len(o) - 1)]


def vitals_line(s: Scenario, p: Patient, day: int) -> str:
    v = vital(s, p, day)
    return (f"Temperature {v['temp']:.1f} C, heart rate {v['hr']} beats per minute, blood pressure "
            f"{v['sbp']}/{v['dbp']} mmHg, respiratory rate {v['rr']} breaths per minute, oxygen saturation "
            f"{v['spo2']}% on {oxygen(s, p, day)}.")


# ---------------------------------------------------------------- shared text


def admission_note(s: Scenario, p: Patient) -> list[str]:
    v1 = panel(s, p, 1)
    names = BASIC + [n for n in LABS if n not in BASIC and n in v1]
    lines = [
        "ADMISSION HISTORY AND PHYSICAL",
        "",
        f"Service: {s.service}. Hospital day 1. Source of history: the patient, the emergency department "
        "record and the pharmacy medication history.",
        "",
        f"Chief complaint: {s.complaint}",
        "",
        "History of present illness:",
        *s.hpi(p),
        "",
        "Past medical history:",
        *[f"- {h}" for h in s.history + p.extra_history],
        "",
        "Medications before admission (verified with the patient and the dispensing record):",
        *[f"- {m}" for m in s.home_meds + p.extra_meds],
        "",
        f"Allergies: {p.allergies}",
        "",
        f"Social history: {p.social} Occupation: {p.occupation}.",
        "",
        f"Family history: {p.family}",
        "",
        f"Review of systems: {s.ros} All other systems reviewed and negative.",
        "",
        "Physical examination:",
        f"- Vital signs: {vitals_line(s, p, 1)} Weight {p.weight:.0f} kg, height {p.height} cm, "
        f"body mass index {p.bmi:.1f} kg/m2.",
        *[f"- {k}: {t}" for k, t in s.exam.items()],
        "",
        "Laboratory results on admission:",
        *lab_lines(v1, names),
        *[f"- {x}" for x in s.extra_admission_labs],
        "",
        "Microbiology:",
        *[f"- {x}" for x in s.micro(p)],
        "",
        "Imaging and other studies:",
        *s.imaging(p),
        "",
        f"Electrocardiogram: {s.ecg}",
        "",
        "Assessment:",
        *s.assessment(p),
        "",
        "Plan by problem:",
    ]
    for i, (problem, items) in enumerate(s.plan(p), 1):
        lines.append(f"{i}. {problem}")
        lines += [f"   - {x}" for x in items]
    lines += ["", "Code status: full code, confirmed with the patient. Venous thromboembolism prophylaxis, "
              "diet and lines as above. Disposition: inpatient admission; expected length of stay "
              f"{p.los - 1} to {p.los + 1} days.", ""]
    return lines


def progress_notes(s: Scenario, p: Patient) -> list[str]:
    lines = ["HOSPITAL COURSE: DAILY PROGRESS NOTES", ""]
    for day in range(2, p.los + 1):
        vals = panel(s, p, day)
        subjective, exam, plan = s.days(p, day)
        shown = [n for n in BASIC + [n for n in LABS if n not in BASIC] if n in vals and n not in DAILY_SKIP]
        lines += [
            f"Progress note, hospital day {day}",
            "",
            f"Subjective: {subjective}",
            "",
            f"Objective: {vitals_line(s, p, day)} {exam}",
            "",
            "Laboratory results this morning:",
            *lab_lines(vals, shown),
            "",
            "Assessment and plan:",
            *[f"- {x}" for x in plan],
            "",
        ]
    return lines


DAILY_SKIP = {"Procalcitonin", "Albumin", "Total bilirubin", "ALT", "AST", "D-dimer", "Serum osmolality",
              "Phosphate", "INR", "Neutrophils", "Hematocrit"}


def discharge_summary(s: Scenario, p: Patient) -> list[str]:
    last = panel(s, p, p.los)
    first = panel(s, p, 1)
    key = [n for n in s.labs if n in last and n not in ("Anion gap",)][:10]
    lines = [
        "DISCHARGE SUMMARY",
        "",
        f"Length of stay: {p.los - 1} nights (admitted hospital day 1, discharged hospital day {p.los}).",
        "",
        "Diagnoses:",
        *[f"- {d}" for d in s.discharge_diagnoses],
        "",
        "Hospital course:",
        *s.course_summary(p),
        "",
        "Key results, admission and discharge:",
        *[f"- {n}: {_fmt(first[n], LABS[n][3])} on admission, {_fmt(last[n], LABS[n][3])} at discharge"
          + (f" {LABS[n][0]}" if LABS[n][0] else "") for n in key],
        "",
        f"Condition at discharge: stable. {vitals_line(s, p, p.los)}",
        "",
        "Medicines at discharge:",
        *[f"- {m}" for m in s.discharge_meds(p)],
        *[f"- {m} (unchanged)" for m in p.extra_meds],
        "",
        "Follow-up:",
        *[f"- {f}" for f in s.follow_up],
        "",
        "The patient was given written and verbal instructions, including when to return: worsening "
        "breathlessness, chest pain, fever above 38.3 C, confusion, fainting, bleeding, or inability to "
        "keep fluids or medicines down. The discharge medicine list was reconciled with the admission "
        "list line by line and every change was explained.",
    ]
    return lines


def document(s: Scenario, p: Patient) -> str:
    text = "\n".join(admission_note(s, p) + progress_notes(s, p) + discharge_summary(s, p))
    return text.rstrip() + "\n"


def kg_dose(mg_per_kg: float, weight: float, step: float, cap: float | None = None) -> int:
    d = round(mg_per_kg * weight / step) * step
    return int(min(d, cap) if cap else d)


sys.modules.setdefault("generate", sys.modules[__name__])
sys.path.insert(0, str(HERE))
from scenarios import SCENARIOS  # noqa: E402  (the building blocks, beside this file)


def _yaml_block(text: str) -> str:
    return "\n".join(("      " + line) if line else "" for line in text.splitlines())


def render() -> str:
    out = ["# Written by tasks/clinical_long_context/generate.py; do not edit by hand (edit the",
           "# generator and its building blocks, then run it again).",
           "style: admission_record", "passages:"]
    for s in SCENARIOS:
        for p in s.patients:
            out += [f"  - id: {p.pid}", f'    title: "{s.title}, {p.age}-year-old {p.sex}"',
                    f"    specialty: {s.specialty}", "    text: |", _yaml_block(document(s, p)), ""]
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(render())
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
