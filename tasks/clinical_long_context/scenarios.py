"""The building blocks of the long admission records: 7 admission scenarios, 3 synthetic patients
each. Read by generate.py (see its docstring); every dose, unit and reference range here was
checked against the usual adult regimen for the diagnosis, and every trajectory against the
course the text describes."""

from __future__ import annotations

from generate import Patient, Scenario, kg_dose, panel


def staged(entries: list, day: int, los: int):
    """The entry for hospital day `day` (2..los): entries spread evenly over the stay."""
    if los <= 2:
        return entries[-1]
    i = round((day - 2) / (los - 2) * (len(entries) - 1))
    return entries[i]


def P(pid, age, sex, weight, height, severity, los, allergies, social, family, **kw) -> Patient:
    return Patient(pid, age, sex, weight, height, severity, los, allergies, social, family, **kw)


NKDA = "No known drug allergies."

# ---------------------------------------------------------------- 1. community-acquired pneumonia


def _cap_abx(p):
    if p.variant.get("anaphylaxis"):
        return ["Levofloxacin 750 mg intravenously once daily (penicillin anaphylaxis: a respiratory "
                "fluoroquinolone alone instead of a beta-lactam with a macrolide); baseline QTc checked"]
    return ["Ceftriaxone 1 g intravenously every 24 hours", "Azithromycin 500 mg intravenously once daily, "
            "then orally, for 3 days in total"]


CAP = Scenario(
    key="cap", title="Admission record, community-acquired pneumonia", specialty="internal medicine",
    service="General internal medicine",
    complaint="Fever, cough with rusty sputum and right-sided chest pain for 3 days.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} who was well until 3 days ago, when {p.he} developed rigors, a fever "
        f"measured at home at 39.1 C and a cough productive of rust-coloured sputum. Since yesterday {p.he} "
        "has had sharp right lower chest pain on deep inspiration and breathlessness walking from the "
        "bedroom to the kitchen. Appetite is poor and oral intake has been limited to small amounts of "
        "water and tea. No haemoptysis, no calf pain or swelling, no recent travel and no sick contacts "
        "known.",
        f"{p.he.capitalize()} has not been in hospital or received intravenous antibiotics in the last 90 "
        "days, and no respiratory culture has ever grown MRSA or Pseudomonas aeruginosa. Influenza and "
        "pneumococcal vaccines are up to date. In the emergency department the chest radiograph showed "
        "right lower lobe consolidation. CURB-65 score is 2 (age 65 or over and urea nitrogen above 19 "
        "mg/dL; no confusion, respiratory rate below 30 and blood pressure above 90/60 mmHg), so "
        "admission to a general ward was advised. Blood cultures were drawn before the first antibiotic "
        "dose, which was given within an hour of arrival."],
    history=["Hypertension for 12 years", "Type 2 diabetes mellitus, last HbA1c 7.2% four months ago",
             "Osteoarthritis of both knees"],
    home_meds=["Amlodipine 5 mg orally once daily", "Metformin 1000 mg orally twice daily with meals",
               "Paracetamol (acetaminophen) 1 g orally up to three times daily as needed for knee pain"],
    ros="Positive for fever, rigors, productive cough, pleuritic chest pain, exertional breathlessness and "
        "reduced appetite. Negative for headache, neck stiffness, rash, diarrhoea, dysuria and leg swelling.",
    exam={"General": "Flushed and tired, speaking full sentences, alert and oriented to person, place and time.",
          "Head and neck": "Dry mucous membranes. No lymphadenopathy. Jugular venous pressure not raised.",
          "Chest": "Reduced expansion on the right. Dull to percussion at the right base with bronchial "
                   "breathing and coarse crackles over the right lower zone; increased vocal resonance "
                   "there. Left lung clear.",
          "Cardiovascular": "Tachycardic, regular; normal heart sounds, no murmur. Capillary refill 3 seconds.",
          "Abdomen": "Soft and non-tender, no organomegaly.",
          "Extremities": "No calf tenderness or oedema. Crepitus of both knees.",
          "Neurological": "No focal deficit. Glasgow Coma Scale 15."},
    labs={"Sodium": [133, 135, 137, 138], "Potassium": [3.8, 3.9, 4.1, 4.2], "Chloride": [99, 101, 102, 103],
          "Bicarbonate": [21, 23, 24, 25], "Urea nitrogen (BUN)": [26, 21, 17, 14],
          "Creatinine": [1.32, 1.15, 1.0, 0.94], "Glucose": [212, 176, 148, 132], "Calcium": [8.9, 9.0, 9.1, 9.2],
          "Magnesium": [1.9, 2.0, 2.0, 2.0], "Phosphate": [3.0, 3.1, 3.3, 3.4],
          "White cell count": [17.2, 14.1, 10.6, 8.4], "Neutrophils": [14.6, 11.5, 8.1, 5.9],
          "Hemoglobin": [13.6, 13.1, 13.0, 13.2], "Hematocrit": [41, 39, 39, 40], "Platelets": [232, 248, 281, 322],
          "C-reactive protein": [196, 168, 92, 41], "Procalcitonin": [1.9, 1.4, 0.6, 0.2],
          "Lactate": [2.4, 1.4, 1.1, 1.0], "Albumin": [3.4, 3.3, 3.3, 3.4], "Total bilirubin": [0.9, 0.8, 0.7, 0.6],
          "ALT": [31, 30, 28, 27], "AST": [35, 31, 27, 25], "INR": [1.1, 1.1, 1.0, 1.0]},
    extra_admission_labs=["Urinalysis: no leukocyte esterase or nitrite; trace ketones",
                          "SARS-CoV-2 and influenza A/B PCR of a nasopharyngeal swab: not detected"],
    vitals={"temp": [38.9, 38.2, 37.4, 36.9], "hr": [108, 96, 84, 78], "sbp": [118, 122, 128, 130],
            "dbp": [68, 70, 74, 76], "rr": [24, 21, 18, 16], "spo2": [91, 94, 95, 96]},
    oxygen=["2 L/min oxygen by nasal cannula", "1 L/min oxygen by nasal cannula", "room air", "room air"],
    micro=lambda p: ["Blood cultures, two sets before antibiotics: no growth at 48 hours, final no growth at 5 days",
                     "Sputum Gram stain: many neutrophils, few epithelial cells, Gram-positive diplococci; "
                     "culture grew Streptococcus pneumoniae susceptible to penicillin, ceftriaxone and levofloxacin",
                     "Urinary pneumococcal antigen: positive. Urinary Legionella antigen: negative"],
    imaging=lambda p: [
        "Chest radiograph, posteroanterior and lateral: dense consolidation of the right lower lobe with air "
        "bronchograms and a small right pleural effusion blunting the costophrenic angle. No cavitation. "
        "Heart size normal. Left lung clear.",
        "Point-of-care pleural ultrasound (hospital day 2): small anechoic right effusion, maximal depth "
        "1.4 cm, no septations; too small to sample safely and not thought to need drainage."],
    ecg="Sinus tachycardia at 106 beats per minute, normal axis, QTc 432 ms, no ischaemic changes.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with right lower lobe community-acquired pneumonia of moderate severity "
        "(CURB-65 2), sepsis without shock (fever, tachycardia, tachypnoea, leucocytosis, lactate 2 mmol/L or "
        "more that fell with fluids), mild pre-renal acute kidney injury from poor intake, and hyperglycaemia "
        "from infection. No risk factors for MRSA or Pseudomonas, so standard empirical therapy without "
        "broader cover is appropriate."],
    plan=lambda p: [
        ("Community-acquired pneumonia", _cap_abx(p) + [
            "Oxygen to keep saturation 92 to 96%", "Sputum culture, urinary antigens and blood cultures followed up",
            "Switch to oral therapy when afebrile for 24 hours, haemodynamically stable and eating; total "
            "antibiotic course at least 5 days and until clinically stable for 48 hours"]),
        ("Acute kidney injury, pre-renal", [
            f"Lactated Ringer's solution {kg_dose(30, p.weight, 50)} mL (30 mL/kg) given in the emergency "
            "department; then 100 mL/hour, reassessed every shift", "Metformin held while creatinine is above "
            "baseline and oral intake is poor", "Daily renal panel; strict fluid balance"]),
        ("Type 2 diabetes with stress hyperglycaemia", [
            "Capillary glucose before meals and at bedtime", "Basal insulin glargine "
            f"{kg_dose(0.1, p.weight, 1)} units subcutaneously at night (0.1 units/kg) with correction-scale "
            "insulin lispro before meals; target 140 to 180 mg/dL"]),
        ("Hypertension", ["Amlodipine continued; hold for systolic pressure below 110 mmHg"]),
        ("Prophylaxis", ["Enoxaparin 40 mg subcutaneously once daily", "Early mobilisation with physiotherapy"])],
    days=lambda p, d: staged([
        ("Still febrile overnight to 38.4 C but breathing feels a little easier; drinking more.",
         "Bronchial breathing persists at the right base; less work of breathing.",
         ["Pneumonia: day 2 of antibiotics, improving; continue current regimen", "Kidney: creatinine falling "
          "with fluids; intravenous fluids reduced to 75 mL/hour", "Glucose 150s to 190s on glargine and "
          "correction doses; no change", "Pleural ultrasound: small simple effusion, no tap"]),
        ("No fever for 24 hours. Cough looser, less chest pain. Ate most of breakfast.",
         "Crackles at the right base, bronchial breathing resolved.",
         ["Pneumonia: clinically stable; switched to oral therapy " + (
             "(levofloxacin 750 mg once daily)" if p.variant.get("anaphylaxis") else
             "(amoxicillin-clavulanate 875/125 mg twice daily; azithromycin course completed)"),
          "Oxygen weaned to room air with saturation 95% at rest and 93% walking", "Metformin restarted as "
          "creatinine is back to baseline and eating normally", "Physiotherapy: walking the ward independently"]),
        ("Feels well, walked to the end of the corridor twice. Sleeping well.",
         "Few crackles at the right base only. Calves soft.",
         ["Pneumonia: 48 hours clinically stable; plan discharge", "Repeat chest radiograph at 6 to 8 weeks "
          "(age over 50 and a smoking history) to confirm resolution", "Insulin glargine stopped; back on home "
          "metformin"])], d, p.los),
    discharge_diagnoses=["Right lower lobe community-acquired pneumococcal pneumonia (CURB-65 2) with sepsis",
                         "Small simple parapneumonic effusion, not drained",
                         "Acute kidney injury, pre-renal, resolved", "Type 2 diabetes with stress hyperglycaemia"],
    discharge_meds=lambda p: [
        ("Levofloxacin 750 mg orally once daily to complete 5 days in total (NEW)" if p.variant.get("anaphylaxis")
         else "Amoxicillin-clavulanate 875/125 mg orally twice daily to complete 5 days in total (NEW)"),
        "Amlodipine 5 mg orally once daily (unchanged)", "Metformin 1000 mg orally twice daily (unchanged; "
        "restarted)", "Paracetamol (acetaminophen) 1 g orally up to three times daily as needed (unchanged)"],
    follow_up=["Primary care review in 1 week: symptoms, glucose and a renal panel",
               "Chest radiograph in 6 to 8 weeks to confirm the consolidation has cleared",
               "Final blood culture result to be checked by the ward team"],
    course_summary=lambda p: [
        f"Pneumococcal pneumonia of the right lower lobe treated with {'levofloxacin' if p.variant.get('anaphylaxis') else 'ceftriaxone and azithromycin'}. "
        "Fever settled by day 3, oxygen was weaned to room air and treatment was switched to oral therapy once "
        "clinically stable. Inflammatory markers and the white cell count fell steadily. The pre-renal kidney "
        "injury resolved with intravenous fluids, and metformin was restarted once creatinine returned to "
        "baseline. Glucose was controlled with temporary basal insulin."],
    patients=[
        P("lc-cap-01", 72, "man", 84, 176, 1.0, 5, NKDA, "Former smoker, 30 pack-years, stopped 8 years ago. "
          "Drinks about 6 units of alcohol a week. Lives with his wife, independent in all activities.",
          "Father had a myocardial infarction at 70. No family history of lung disease.",
          occupation="retired electrician"),
        P("lc-cap-02", 67, "woman", 71, 163, 1.12, 6, "Penicillin: anaphylaxis (throat swelling and "
          "hypotension needing adrenaline) at age 30.", "Former smoker, 20 pack-years, stopped 15 years ago. "
          "No alcohol. Lives alone; her daughter lives nearby.", "Mother had type 2 diabetes. Sister has asthma.",
          occupation="retired school administrator", variant={"anaphylaxis": True},
          extra_history=["Hypothyroidism on replacement"], extra_meds=["Levothyroxine 75 micrograms orally "
                                                                      "once daily before breakfast"]),
        P("lc-cap-03", 69, "man", 92, 181, 0.92, 4, "Latex: contact dermatitis.", "Never smoked. Alcohol 8 units a week. "
          "Lives with his wife.", "Mother has type 2 diabetes.", occupation="retired bus driver"),
    ],
)

# ---------------------------------------------------------------- 2. heart failure exacerbation

CHF = Scenario(
    key="chf", title="Admission record, acute decompensated heart failure", specialty="cardiology",
    service="Cardiology",
    complaint="Increasing breathlessness, orthopnoea and leg swelling for 10 days.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} with ischaemic cardiomyopathy and heart failure with reduced ejection "
        "fraction (left ventricular ejection fraction 30% on echocardiography last year) presenting with 10 "
        f"days of progressive exertional breathlessness, now after 20 metres on the flat. {p.he.capitalize()} "
        "sleeps on four pillows and has woken twice a night gasping for breath. Both ankles have swollen to "
        f"the knees and {p.his} home weight has risen by 4 kg. The decompensation followed a family "
        "celebration with salty food, and two missed refills of furosemide last week.",
        "No chest pain, no palpitations, no syncope, no fever or cough productive of purulent sputum. NYHA "
        "class was II before this episode and is now IV. The emergency department gave furosemide 80 mg "
        "intravenously with a good diuresis of 900 mL in 2 hours."],
    history=["Ischaemic cardiomyopathy after anterior myocardial infarction treated with a drug-eluting stent "
             "to the left anterior descending artery 6 years ago",
             "Heart failure with reduced ejection fraction, LVEF 30%", "Hypertension",
             "Chronic kidney disease stage 3a, baseline creatinine 1.2 mg/dL", "Hyperlipidaemia"],
    home_meds=["Furosemide 40 mg orally once daily", "Sacubitril-valsartan 49/51 mg orally twice daily",
               "Metoprolol succinate 100 mg orally once daily", "Spironolactone 25 mg orally once daily",
               "Dapagliflozin 10 mg orally once daily", "Aspirin 81 mg orally once daily",
               "Atorvastatin 40 mg orally once daily"],
    ros="Positive for exertional breathlessness, orthopnoea, paroxysmal nocturnal dyspnoea, leg swelling, "
        "abdominal fullness and weight gain. Negative for chest pain, palpitations, syncope and fever.",
    exam={"General": "Sitting upright, breathless speaking in sentences of five or six words.",
          "Neck": "Jugular venous pressure raised to the angle of the jaw at 45 degrees; positive "
                  "hepatojugular reflux.",
          "Cardiovascular": "Displaced apex beat in the sixth intercostal space, anterior axillary line. S3 gallop. "
                            "Grade 2/6 pansystolic murmur at the apex radiating to the axilla.",
          "Chest": "Fine bibasal crackles to the mid zones; dull bases.",
          "Abdomen": "Tender smooth hepatomegaly, 3 cm below the costal margin. Mild ascites.",
          "Extremities": "Pitting oedema to both knees and over the sacrum. Warm peripheries.",
          "Neurological": "Alert and oriented, no focal deficit."},
    labs={"Sodium": [132, 133, 135, 136], "Potassium": [4.6, 4.0, 3.8, 4.1], "Chloride": [96, 97, 98, 100],
          "Bicarbonate": [24, 27, 28, 27], "Urea nitrogen (BUN)": [34, 38, 36, 31],
          "Creatinine": [1.38, 1.5, 1.42, 1.3], "Glucose": [118, 110, 104, 102], "Calcium": [9.0, 9.1, 9.2, 9.2],
          "Magnesium": [1.8, 1.7, 1.9, 2.0], "Phosphate": [3.6, 3.5, 3.4, 3.4],
          "White cell count": [7.8, 7.4, 7.1, 6.9], "Neutrophils": [5.1, 4.8, 4.6, 4.4],
          "Hemoglobin": [12.4, 12.6, 12.9, 13.0], "Hematocrit": [38, 38, 39, 40], "Platelets": [212, 218, 224, 230],
          "NT-proBNP": [7400, 6100, 4300, 2900], "High-sensitivity troponin T": [31, 33, 30, 29],
          "Albumin": [3.6, 3.6, 3.7, 3.7], "Total bilirubin": [1.8, 1.5, 1.1, 0.9], "ALT": [58, 52, 44, 38],
          "AST": [49, 42, 36, 31], "INR": [1.2, 1.2, 1.1, 1.1], "Lactate": [1.6, 1.2, 1.1, 1.0]},
    extra_admission_labs=["Thyroid-stimulating hormone 2.1 mIU/L (reference 0.4-4.0)",
                          "Ferritin 62 ng/mL and transferrin saturation 14%: iron deficiency by heart failure criteria",
                          "Repeat high-sensitivity troponin T at 3 hours: unchanged, so a stable chronic "
                          "elevation rather than acute myocardial infarction"],
    vitals={"temp": [36.7, 36.8, 36.7, 36.6], "hr": [102, 92, 82, 74], "sbp": [146, 132, 118, 112],
            "dbp": [88, 80, 72, 68], "rr": [26, 22, 18, 16], "spo2": [89, 93, 95, 96]},
    oxygen=["3 L/min oxygen by nasal cannula", "2 L/min oxygen by nasal cannula", "room air", "room air"],
    micro=lambda p: ["No cultures sent; no clinical infection"],
    imaging=lambda p: [
        "Chest radiograph, anteroposterior: cardiomegaly with cardiothoracic ratio 0.62, upper lobe blood "
        "diversion, interstitial oedema with Kerley B lines and bilateral small pleural effusions. No consolidation.",
        "Transthoracic echocardiogram (hospital day 2): dilated left ventricle, end-diastolic diameter 64 mm, "
        "akinetic apex and anterior wall, global LVEF 28% by biplane Simpson method. Moderate functional mitral "
        "regurgitation. Estimated pulmonary artery systolic pressure 52 mmHg. Dilated inferior vena cava, 2.4 cm, "
        "with less than 50% collapse. No left ventricular thrombus."],
    ecg="Sinus tachycardia at 100 beats per minute, left bundle branch block with QRS duration 152 ms, old anterior "
        "Q waves, no new ischaemic change compared with the tracing of last year.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with acute decompensated heart failure with reduced ejection fraction, warm and "
        "wet profile (congested, adequately perfused: warm peripheries, normal lactate, preserved blood pressure), "
        "precipitated by dietary sodium and missed diuretic doses. No evidence of an acute coronary syndrome "
        "(troponin stable and chronically raised), arrhythmia or infection. Hyponatraemia is dilutional. Congestive "
        "hepatopathy explains the mild transaminase and bilirubin rise. Left bundle branch block with QRS 150 ms or "
        "more and LVEF 35% or less despite treatment: candidate for cardiac resynchronisation therapy."],
    plan=lambda p: [
        ("Acute decompensated heart failure", [
            "Furosemide 80 mg intravenously twice daily (2 times the oral daily dose, as an intravenous dose), "
            "with a target net negative balance of 1 to 2 litres a day",
            "Spot urine sodium 2 hours after the dose; double the dose if below 50 to 70 mmol/L", "Fluid restriction "
            "1.5 L/day, sodium 2 g/day, daily weights on the same scale before breakfast, strict input and output",
            "Continue sacubitril-valsartan, metoprolol succinate, spironolactone and dapagliflozin (perfusion "
            "adequate, potassium and creatinine acceptable)"]),
        ("Electrolytes and kidney function", ["Renal panel and magnesium twice daily during intravenous diuresis",
            "Replace potassium to keep 4.0 to 5.0 mmol/L and magnesium to 2.0 mg/dL or more",
            "Accept a creatinine rise of up to 0.3 mg/dL while decongesting"]),
        ("Iron deficiency", ["Ferric carboxymaltose 1000 mg intravenously once before discharge "
                             "(ferritin below 100 ng/mL)"]),
        ("Coronary disease", ["Continue aspirin and atorvastatin"]),
        ("Prophylaxis", ["Enoxaparin 40 mg subcutaneously once daily"])],
    days=lambda p, d: staged([
        ("Slept on two pillows for the first time in a week. Passed large volumes of urine.",
         "Jugular venous pressure 10 cm above the sternal angle. Crackles to the lower third. Oedema to mid-shin. "
         "Net balance minus 2.1 L; weight down 1.8 kg.",
         ["Heart failure: responding; continue furosemide 80 mg intravenously twice daily",
          "Magnesium low: magnesium sulfate 2 g intravenously", "Potassium chloride 20 mmol orally",
          "Echocardiogram done: LVEF 28%, moderate functional mitral regurgitation"]),
        ("Breathing much better; walked to the bathroom without stopping.",
         "Jugular venous pressure 7 cm. Crackles at the bases only. Oedema to the ankles. Net minus 1.6 L; weight "
         "down another 1.4 kg. Creatinine rose slightly, expected with decongestion and not a reason to stop.",
         ["Heart failure: furosemide reduced to 80 mg intravenously once daily", "Ferric carboxymaltose 1000 mg "
          "intravenously given", "Electrophysiology consulted about cardiac resynchronisation therapy"]),
        ("No orthopnoea. Walked 120 metres with physiotherapy.",
         "Jugular venous pressure not raised. Chest clear. Trace ankle oedema. Weight 4.3 kg below admission, at "
         "dry weight.",
         ["Heart failure: euvolaemic; switched to furosemide 40 mg orally twice daily and observed for 24 hours",
          "Creatinine back towards baseline", "Cardiac resynchronisation therapy with defibrillator planned as an "
          "outpatient", "Heart failure nurse education: daily weights, salt, fluid, medicines"])], d, p.los),
    discharge_diagnoses=["Acute decompensated heart failure with reduced ejection fraction (LVEF 28%)",
                         "Precipitants: dietary sodium and missed diuretic doses", "Iron deficiency, treated intravenously",
                         "Left bundle branch block, candidate for cardiac resynchronisation therapy",
                         "Chronic kidney disease stage 3a"],
    discharge_meds=lambda p: ["Furosemide 40 mg orally twice daily (CHANGED from 40 mg once daily)",
                              "Sacubitril-valsartan 49/51 mg orally twice daily (unchanged)",
                              "Metoprolol succinate 100 mg orally once daily (unchanged)",
                              "Spironolactone 25 mg orally once daily (unchanged)",
                              "Dapagliflozin 10 mg orally once daily (unchanged)",
                              "Aspirin 81 mg orally once daily (unchanged)", "Atorvastatin 40 mg orally once daily (unchanged)"],
    follow_up=["Heart failure clinic within 7 days: weight, symptoms, renal panel and potassium",
               "Electrophysiology clinic in 4 weeks for cardiac resynchronisation therapy with defibrillator",
               "Call the heart failure nurse if weight rises more than 1 kg in a day or 2 kg in a week"],
    course_summary=lambda p: [
        "Decongested with intravenous furosemide with a net negative balance of about 1.5 to 2 litres a day; weight "
        "fell by 4.3 kg to dry weight. Guideline-directed medicines were continued throughout. Creatinine rose "
        "slightly during diuresis and returned towards baseline. Intravenous iron was given for iron deficiency. "
        "Natriuretic peptide fell by more than 30%. Transitioned to oral furosemide twice daily and stable for "
        "24 hours before discharge."],
    patients=[
        P("lc-chf-01", 74, "woman", 78, 160, 1.0, 5, NKDA, "Never smoked. No alcohol. Lives with her husband; "
          "independent.", "Brother died of heart failure at 68.", occupation="retired seamstress"),
        P("lc-chf-02", 66, "man", 96, 178, 1.1, 6, "Lisinopril: angioedema in 2015 (sacubitril-valsartan was "
          "started after cardiology review with a 36-hour gap from the last ACE inhibitor dose and has been "
          "tolerated for 4 years).", "Former smoker, 40 pack-years, stopped 6 years ago. 2 units of alcohol a week. "
          "Lives with his son.", "Father had coronary artery disease in his 50s.", occupation="retired truck driver",
          extra_history=["Gout, last flare 2 years ago"], extra_meds=["Allopurinol 100 mg orally once daily"]),
        P("lc-chf-03", 81, "man", 72, 170, 0.95, 6, NKDA, "Former smoker, 20 pack-years, stopped 25 years ago. No "
          "alcohol. Lives alone; his son visits daily.", "Brother had a myocardial infarction at 70.", occupation="retired electrician"),
    ],
)

# ---------------------------------------------------------------- 3. diabetic ketoacidosis


def _dka_hours(p):
    a, b = panel(DKA, p, 1), panel(DKA, p, 2)
    rate = round(0.1 * p.weight, 1)
    out = [f"Intravenous insulin infusion (regular insulin) at 0.1 units/kg/hour = {rate} units/hour, started "
           "after potassium was confirmed above 3.3 mmol/L. Hourly flow sheet, first 12 hours:"]
    for h in (2, 4, 6, 8, 10, 12):
        f = h / 16
        g = round(a["Glucose"] + (b["Glucose"] - a["Glucose"]) * f * 1.25)
        hco3 = round(a["Bicarbonate"] + (b["Bicarbonate"] - a["Bicarbonate"]) * f)
        ag = round(a["Anion gap"] + (b["Anion gap"] - a["Anion gap"]) * f)
        k = round(a["Potassium"] + (b["Potassium"] - a["Potassium"]) * f, 1)
        fluid = ("0.9% sodium chloride 1 L/hour" if h <= 2 else "0.45% sodium chloride 250 mL/hour" if g >= 250
                 else "5% dextrose with 0.45% sodium chloride 150 mL/hour")
        kcl = ("no potassium added (above 5.0 mmol/L)" if k > 5.0 else
               "potassium chloride 20 mmol added to each litre (potassium 3.3 to 5.0 mmol/L)")
        out.append(f"- Hour {h}: glucose {g} mg/dL, bicarbonate {hco3} mmol/L, anion gap {ag} mmol/L, potassium "
                   f"{k} mmol/L; fluid {fluid}; {kcl}")
    return out


DKA = Scenario(
    key="dka", title="Admission record, diabetic ketoacidosis", specialty="endocrinology",
    service="Medical intensive care, then endocrinology ward",
    complaint="Vomiting, abdominal pain and breathlessness for 2 days.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} with type 1 diabetes since childhood, on a basal-bolus regimen, who developed "
        "diarrhoea and vomiting 3 days ago after a family member had the same illness. Unable to eat, "
        f"{p.he} stopped taking insulin glargine on the assumption that no food meant no insulin. Over the last "
        "day there has been constant central abdominal pain, thirst, passing large volumes of urine, and deep "
        "rapid breathing. Home glucose meter read HI. Capillary ketones at home 5.2 mmol/L.",
        "No fever, no urinary symptoms, no chest pain. Not on SGLT2 inhibitors. No alcohol or drugs in the last "
        "week. In the emergency department the venous gas confirmed severe diabetic ketoacidosis and the "
        "endocrinology and intensive care teams were called."],
    history=["Type 1 diabetes mellitus since age 9; last HbA1c 8.4%; one previous episode of diabetic ketoacidosis",
             "No known diabetic retinopathy at the last screen; microalbuminuria negative"],
    home_meds=["Insulin glargine 22 units subcutaneously at night", "Insulin aspart by carbohydrate ratio 1 unit per "
               "10 g with meals, correction 1 unit per 50 mg/dL above 150 mg/dL"],
    ros="Positive for nausea, vomiting, diarrhoea, abdominal pain, polyuria, polydipsia, fatigue and breathlessness. "
        "Negative for fever, dysuria, cough and chest pain.",
    exam={"General": "Drowsy but rousable and oriented, Glasgow Coma Scale 14. Kussmaul breathing. Ketotic breath.",
          "Hydration": "Dry mucous membranes, reduced skin turgor, capillary refill 4 seconds; estimated deficit "
                       "about 10% of body weight.",
          "Cardiovascular": "Tachycardic, regular, normal heart sounds.",
          "Chest": "Clear; deep, rapid respirations.",
          "Abdomen": "Diffusely tender without guarding or rebound; bowel sounds present.",
          "Neurological": "No focal deficit; pupils equal and reactive."},
    labs={"Sodium": [130, 137, 139, 140], "Potassium": [5.6, 3.9, 4.0, 4.2], "Chloride": [96, 107, 106, 104],
          "Bicarbonate": [8, 19, 23, 25], "Urea nitrogen (BUN)": [30, 18, 12, 10],
          "Creatinine": [1.48, 1.0, 0.84, 0.8], "Glucose": [486, 178, 164, 142], "Calcium": [9.4, 8.7, 8.9, 9.1],
          "Magnesium": [2.0, 1.7, 1.8, 1.9], "Phosphate": [5.1, 1.9, 2.4, 3.0],
          "White cell count": [16.4, 11.2, 8.6, 7.2], "Neutrophils": [13.8, 8.2, 5.6, 4.3],
          "Hemoglobin": [15.8, 13.6, 13.2, 13.3], "Hematocrit": [48, 41, 40, 40], "Platelets": [312, 268, 254, 250],
          "Beta-hydroxybutyrate": [6.2, 0.8, 0.3, 0.2], "Venous pH": [7.08, 7.33, 7.37, 7.38],
          "Serum osmolality": [309, 292, 289, 288], "Lactate": [2.2, 1.2, 0.9, 0.9],
          "Albumin": [4.6, 3.9, 3.9, 4.0], "ALT": [22, 20, 19, 19], "AST": [24, 21, 20, 20],
          "Total bilirubin": [0.7, 0.6, 0.5, 0.5]},
    extra_admission_labs=["Lipase 42 U/L (reference 13-60): pancreatitis unlikely",
                          "Urinalysis: glucose 4+, ketones 3+, no leukocyte esterase or nitrite",
                          "Corrected sodium for hyperglycaemia (add 1.6 mmol/L per 100 mg/dL of glucose above "
                          "100 mg/dL): in the normal range, so the measured hyponatraemia is translocational"],
    vitals={"temp": [37.2, 36.9, 36.8, 36.7], "hr": [122, 94, 80, 74], "sbp": [104, 116, 120, 122],
            "dbp": [62, 70, 74, 76], "rr": [30, 18, 16, 15], "spo2": [99, 98, 98, 98]},
    oxygen=["room air"],
    micro=lambda p: ["Blood cultures, two sets: no growth at 5 days", "Urine culture: no growth",
                     "Stool PCR panel: norovirus GII detected"],
    imaging=lambda p: ["Chest radiograph: clear lungs, normal heart size."] + _dka_hours(p),
    ecg="Sinus tachycardia at 120 beats per minute. Tall, slightly peaked T waves in V2 to V4 consistent with "
        "hyperkalaemia; QRS and PR normal; QTc 438 ms.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with type 1 diabetes and severe diabetic ketoacidosis (venous pH below 7.1, "
        "bicarbonate below 10 mmol/L, drowsy), precipitated by stopping basal insulin during norovirus "
        "gastroenteritis. High anion gap metabolic acidosis with ketonaemia; about 10% dehydration; pre-renal acute "
        "kidney injury. Admission potassium is high, but total body potassium is depleted and will fall with "
        "insulin and fluids. Leucocytosis is expected in ketoacidosis and no bacterial infection is evident."],
    plan=lambda p: [
        ("Diabetic ketoacidosis", [
            "Fluids: 0.9% sodium chloride 1 L over the first hour, then 250 to 500 mL/hour guided by haemodynamics and "
            "corrected sodium; add 5% dextrose once glucose falls below 250 mg/dL and continue insulin until the "
            "ketoacidosis has resolved",
            f"Fixed-rate insulin infusion 0.1 units/kg/hour ({round(0.1 * p.weight, 1)} units/hour); no bolus",
            "Potassium: none added while above 5.0 mmol/L; 20 to 30 mmol per litre of fluid when 3.3 to 5.0 mmol/L; "
            "hold insulin and replace if it falls below 3.3 mmol/L",
            "Hourly capillary glucose, venous gas with ketones and electrolytes every 2 hours for 6 hours, then every "
            "4 hours",
            "Resolution: glucose below 200 mg/dL and two of bicarbonate 15 mmol/L or more, venous pH above 7.3, anion "
            "gap 12 mmol/L or less"]),
        ("Transition", [f"When resolved and eating: insulin glargine {kg_dose(0.25, p.weight, 1)} units "
                        "subcutaneously (about half of a total daily dose of 0.5 units/kg) and prandial aspart, with "
                        "the infusion stopped 2 hours after the first basal dose"]),
        ("Gastroenteritis", ["Ondansetron 4 mg intravenously every 8 hours as needed; contact precautions for norovirus"]),
        ("Acute kidney injury", ["Expected to resolve with rehydration; urine output monitored hourly by measurement, "
                                 "not catheter, unless output falls"]),
        ("Prophylaxis", ["Enoxaparin 40 mg subcutaneously once daily once mobile and stable"])],
    days=lambda p, d: staged([
        ("Ketoacidosis resolved overnight at hour 14: anion gap closed and bicarbonate above 15 mmol/L. Eating toast "
         "and soup. Abdominal pain gone.",
         "Alert, well perfused, mucous membranes moist. Abdomen soft and non-tender. Phosphate low after insulin.",
         ["Diabetic ketoacidosis: resolved; transitioned to subcutaneous basal-bolus insulin with a 2-hour overlap",
          "Phosphate below 2 mg/dL and eating: oral phosphate replacement, recheck tomorrow",
          "Magnesium sulfate 2 g intravenously", "Transferred from intensive care to the endocrinology ward"]),
        ("No vomiting. Glucose 120 to 210 mg/dL on the new regimen.",
         "Well, walking the ward. Abdomen benign.",
         ["Diabetes: glargine continued; carbohydrate ratio reviewed with the diabetes educator",
          "Sick-day rules taught: never stop basal insulin; check ketones when glucose is above 250 mg/dL or when "
          "unwell; seek help for ketones above 1.5 mmol/L or vomiting", "Ketone meter and strips supplied"]),
        ("Feels back to normal. Ready for home.",
         "Normal examination.",
         ["Diabetes: stable on basal-bolus regimen; discharge today", "Continuous glucose monitor started with "
          "education", "Follow-up arranged"])], d, p.los),
    discharge_diagnoses=["Severe diabetic ketoacidosis, resolved", "Precipitant: basal insulin stopped during "
                         "norovirus gastroenteritis", "Acute kidney injury, pre-renal, resolved", "Hypophosphataemia "
                         "after insulin, replaced", "Type 1 diabetes mellitus"],
    discharge_meds=lambda p: [f"Insulin glargine {kg_dose(0.25, p.weight, 1)} units subcutaneously at night "
                              "(CHANGED from 22 units)",
                              "Insulin aspart by carbohydrate ratio 1 unit per 10 g with meals and correction 1 unit "
                              "per 50 mg/dL above 150 mg/dL (unchanged)",
                              "Blood ketone meter and strips (NEW)"],
    follow_up=["Diabetes clinic within 2 weeks, with the continuous glucose monitor data",
               "Diabetes specialist nurse telephone call in 48 hours", "Return at once for vomiting, ketones above "
               "1.5 mmol/L, or abdominal pain"],
    course_summary=lambda p: [
        "Severe diabetic ketoacidosis treated in intensive care with intravenous fluids, a fixed-rate insulin infusion "
        "and potassium replacement; it resolved at about 14 hours. Dextrose was added when glucose fell below 250 "
        "mg/dL. Phosphate and magnesium fell after insulin and were replaced. Kidney function returned to normal with "
        "rehydration. Sick-day rules were taught and a ketone meter supplied."],
    patients=[
        P("lc-dka-01", 24, "woman", 58, 165, 1.0, 4, NKDA, "Never smoked, occasional alcohol, no recreational drugs. "
          "Lives with a flatmate.", "Mother has hypothyroidism. No family history of diabetes.",
          occupation="graduate student in architecture"),
        P("lc-dka-02", 31, "man", 74, 182, 1.08, 5, "Sulfonamide antibiotics: widespread rash.", "Smokes 5 "
          "cigarettes a day; 10 units of alcohol a week; no drugs. Lives with his partner.", "Father has type 1 "
          "diabetes; a cousin has coeliac disease.", occupation="warehouse supervisor",
          extra_history=["Coeliac disease on a gluten-free diet"]),
        P("lc-dka-03", 19, "woman", 61, 170, 0.94, 4, "Adhesive tape: skin blistering.", "Never smoked. No alcohol. "
          "University student living in shared accommodation.", "Aunt has coeliac disease.", occupation="student"),
    ],
)

# ---------------------------------------------------------------- 4. COPD exacerbation

COPD = Scenario(
    key="copd", title="Admission record, exacerbation of chronic obstructive pulmonary disease",
    specialty="respiratory medicine", service="Respiratory medicine",
    complaint="Worsening breathlessness, wheeze and green sputum for 4 days.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} with chronic obstructive pulmonary disease (FEV1 38% of predicted, FEV1/FVC "
        "0.46 on spirometry last year; two exacerbations treated at home in the last 12 months) presenting with 4 "
        "days of increased breathlessness, more wheeze, and a change in sputum from white to green with a larger "
        f"volume: all three cardinal symptoms. {p.he.capitalize()} has used the salbutamol inhaler every 2 hours "
        "without relief and started the rescue pack of prednisolone yesterday.",
        "A coryzal illness preceded it. No chest pain, no haemoptysis, no leg swelling. The ambulance crew gave "
        "nebulised salbutamol driven by air and controlled oxygen by 28% Venturi mask. The emergency department "
        "arterial gas showed acute-on-chronic hypercapnic respiratory failure with acidosis, and non-invasive "
        "ventilation was started."],
    history=["Chronic obstructive pulmonary disease, GOLD grade 3, group E", "Previous hypercapnia: "
             "bicarbonate 30 mmol/L when well", "Hypertension", "Osteopenia on DEXA 3 years ago",
             "Anxiety"],
    home_meds=["Tiotropium-olodaterol 2.5/2.5 micrograms, 2 inhalations once daily", "Budesonide-formoterol "
               "200/6 micrograms, 2 inhalations twice daily (triple therapy with the above)",
               "Salbutamol (albuterol) 100 micrograms per actuation, 2 puffs as needed", "Ramipril 5 mg orally once daily",
               "Calcium carbonate 1250 mg with colecalciferol 400 units orally twice daily"],
    ros="Positive for breathlessness, wheeze, increased purulent sputum, poor sleep and anxiety. Negative for "
        "fever above 38 C, chest pain, haemoptysis, leg swelling and weight loss.",
    exam={"General": "Tripoding, using accessory muscles, speaking in short phrases. Alert; flapping tremor absent.",
          "Chest": "Hyperexpanded, reduced expansion bilaterally, prolonged expiration with widespread polyphonic "
                   "expiratory wheeze; no focal crackles or bronchial breathing.",
          "Cardiovascular": "Tachycardic, regular; heart sounds quiet. Jugular venous pressure not raised.",
          "Abdomen": "Soft, non-tender.",
          "Extremities": "No oedema. No clubbing. Nicotine staining of the right fingers.",
          "Neurological": "No focal deficit; oriented."},
    labs={"Sodium": [138, 139, 139, 140], "Potassium": [4.0, 3.6, 3.9, 4.1], "Chloride": [97, 98, 99, 100],
          "Bicarbonate": [31, 33, 32, 31], "Urea nitrogen (BUN)": [18, 20, 19, 17], "Creatinine": [0.98, 0.95, 0.92, 0.9],
          "Glucose": [124, 198, 176, 142], "Calcium": [9.3, 9.3, 9.4, 9.4], "Magnesium": [1.9, 1.8, 2.0, 2.0],
          "Phosphate": [3.2, 3.0, 3.2, 3.3], "White cell count": [12.8, 14.6, 12.9, 11.1],
          "Neutrophils": [10.4, 12.8, 10.9, 8.9], "Hemoglobin": [15.9, 15.6, 15.5, 15.6], "Hematocrit": [49, 48, 48, 48],
          "Platelets": [268, 271, 280, 292], "C-reactive protein": [38, 30, 16, 8], "Procalcitonin": [0.09, 0.08, 0.06, 0.05],
          "Arterial pH": [7.29, 7.36, 7.39, 7.40], "PaCO2": [68, 56, 52, 50], "PaO2": [57, 66, 64, 66],
          "Albumin": [3.9, 3.8, 3.9, 3.9], "ALT": [21, 22, 22, 21], "AST": [19, 20, 20, 19],
          "Total bilirubin": [0.5, 0.5, 0.5, 0.5]},
    extra_admission_labs=["Arterial gas on 28% Venturi oxygen; PaO2 on that inspired oxygen",
                          "Eosinophils 0.35 x10^3/uL (reference 0.0-0.5): eosinophilic phenotype supports "
                          "inhaled corticosteroid",
                          "SARS-CoV-2 and influenza PCR: not detected; respiratory syncytial virus: not detected",
                          "Rhinovirus detected on the extended respiratory PCR panel"],
    vitals={"temp": [37.6, 37.3, 36.9, 36.8], "hr": [112, 98, 88, 82], "sbp": [148, 138, 134, 132],
            "dbp": [86, 80, 78, 78], "rr": [28, 22, 19, 18], "spo2": [87, 90, 91, 92]},
    oxygen=["28% oxygen via non-invasive ventilation, IPAP 16 cmH2O and EPAP 5 cmH2O",
            "1 L/min oxygen by nasal cannula, non-invasive ventilation overnight only", "1 L/min oxygen by nasal cannula",
            "room air"],
    micro=lambda p: ["Sputum culture: Haemophilus influenzae, beta-lactamase negative, susceptible to amoxicillin "
                     "and doxycycline", "Blood cultures: no growth"],
    imaging=lambda p: [
        "Chest radiograph: hyperinflated lungs with flattened hemidiaphragms and 8 anterior ribs above the "
        "diaphragm; no consolidation, pneumothorax, effusion or pulmonary oedema. Heart size normal.",
        "Arterial gas 1 hour after starting non-invasive ventilation: pH 7.33, PaCO2 61 mmHg, improving; "
        "ventilation continued."],
    ecg="Sinus tachycardia at 110 beats per minute, P pulmonale in II, right axis deviation; no ischaemic change.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with a severe exacerbation of chronic obstructive pulmonary disease "
        "(Anthonisen type 1: more breathlessness, more sputum, purulent sputum), probably triggered by rhinovirus "
        "with bacterial superinfection, with acute-on-chronic hypercapnic respiratory failure (pH below 7.35 with "
        "PaCO2 above 45 mmHg and a raised bicarbonate from chronic compensation), an indication for non-invasive "
        "ventilation. No pneumonia, pneumothorax or heart failure on imaging. Oxygen target 88 to 92% because of "
        "chronic hypercapnia."],
    plan=lambda p: [
        ("Exacerbation of COPD with hypercapnic respiratory failure", [
            "Non-invasive ventilation, IPAP 16 and EPAP 5 cmH2O, titrated to pH and PaCO2; repeat gas at 1 and 4 hours",
            "Controlled oxygen to saturation 88 to 92%",
            "Nebulised salbutamol 2.5 mg every 4 hours and as needed, with ipratropium 500 micrograms every 6 hours, "
            "driven by air", "Prednisolone 40 mg orally once daily for 5 days in total (day 1 was yesterday)",
            "Doxycycline 200 mg orally on day 1, then 100 mg once daily, 5 days in total (purulent sputum)",
            "Escalation plan discussed with the patient: suitable for intubation if non-invasive ventilation fails"]),
        ("Steroid-induced hyperglycaemia", ["Capillary glucose before meals; correction insulin if above 180 mg/dL"]),
        ("Hypertension", ["Ramipril continued"]),
        ("Prophylaxis", ["Enoxaparin 40 mg subcutaneously once daily"])],
    days=lambda p, d: staged([
        ("Used non-invasive ventilation 18 hours, tolerated the mask. Less breathless; sputum still green.",
         "Using fewer accessory muscles; wheeze reduced. Repeat arterial gas: acidosis resolved.",
         ["COPD: hypercapnic acidosis corrected; non-invasive ventilation overnight only", "Potassium low with "
          "salbutamol: potassium chloride 40 mmol orally", "Glucose raised on prednisolone: correction insulin"]),
        ("Slept without the mask for 2 hours at the patient's request; afterwards PaCO2 stable.", "Scattered wheeze only.",
         ["COPD: non-invasive ventilation stopped", "Nebulisers changed to the home inhalers with spacer and technique "
          "checked", "Physiotherapy: airway clearance and walking"]),
        ("Walking 40 metres; breathless but comfortable.", "Mild wheeze; saturation 92% on room air.",
         ["COPD: prednisolone and doxycycline courses complete", "Referral to pulmonary rehabilitation within 4 "
          "weeks of discharge", "Assessment for home non-invasive ventilation in 2 to 4 weeks (persistent "
          "hypercapnia after an episode of acidotic respiratory failure)", "Smoking status confirmed; no smoking "
          "since stopping"])], d, p.los),
    discharge_diagnoses=["Severe exacerbation of COPD with acute-on-chronic hypercapnic respiratory failure",
                         "Rhinovirus infection with Haemophilus influenzae in sputum",
                         "Steroid-induced hyperglycaemia, resolved"],
    discharge_meds=lambda p: ["Tiotropium-olodaterol 2.5/2.5 micrograms, 2 inhalations once daily (unchanged)",
                              "Budesonide-formoterol 200/6 micrograms, 2 inhalations twice daily (unchanged)",
                              "Salbutamol 100 micrograms, 2 puffs as needed (unchanged)", "Ramipril 5 mg orally once daily (unchanged)",
                              "Calcium carbonate with colecalciferol (unchanged)"],
    follow_up=["Respiratory clinic in 2 weeks with an arterial gas for home non-invasive ventilation assessment",
               "Pulmonary rehabilitation referral sent", "Primary care review in 1 week"],
    course_summary=lambda p: [
        "Acute hypercapnic acidosis corrected within 24 hours of non-invasive ventilation, which was weaned over 2 "
        "nights. Treated with a 5-day course of prednisolone and doxycycline and nebulised bronchodilators, then "
        "home inhalers with technique checked. Hypokalaemia from salbutamol and steroid hyperglycaemia were treated."],
    patients=[
        P("lc-copd-01", 71, "man", 64, 172, 1.0, 5, NKDA, "Former smoker, 50 pack-years, stopped 2 years ago. "
          "No alcohol. Lives with his wife in a ground-floor flat.", "Mother had emphysema.", occupation="retired miner"),
        P("lc-copd-02", 64, "woman", 55, 158, 1.1, 6, "Codeine: severe nausea and vomiting.", "Former smoker, 45 "
          "pack-years, stopped 1 year ago. No alcohol. Lives alone; carers visit once a day.",
          "Father died of lung cancer.", occupation="retired cleaner",
          extra_history=["Alpha-1 antitrypsin level normal (tested 5 years ago)"]),
        P("lc-copd-03", 76, "man", 70, 175, 0.93, 5, NKDA, "Former smoker, 55 pack-years, stopped 6 years ago. "
          "Alcohol 4 units a week. Lives with his wife in a ground-floor flat.", "No relevant family history.", occupation="retired bricklayer"),
    ],
)

# ---------------------------------------------------------------- 5. urosepsis


def _uro_abx(p):
    return [f"Ceftriaxone 1 g intravenously every 24 hours (no prior resistant organisms; local susceptibility "
            "of E. coli to ceftriaxone above 90%)"]


URO = Scenario(
    key="urosepsis", title="Admission record, sepsis from acute pyelonephritis", specialty="internal medicine",
    service="General internal medicine (after 12 hours in the high-dependency unit)",
    complaint="Fever, confusion and left flank pain.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} brought in by family after 2 days of burning on passing urine and frequency, "
        f"followed today by rigors, left flank pain and new confusion: {p.he} did not recognise {p.his} "
        "grandson. Poor oral intake for 2 days. No cough, no diarrhoea, no rash, no headache.",
        "In the emergency department blood pressure was 84/50 mmHg with a lactate of 3.6 mmol/L, meeting "
        "criteria for sepsis with hypotension. Blood and urine cultures were taken, ceftriaxone was given within "
        "one hour, and 30 mL/kg of balanced crystalloid was infused over 3 hours, after which mean arterial "
        "pressure rose above 65 mmHg without vasopressors."],
    history=["Hypertension", "Type 2 diabetes mellitus on diet and metformin", "Recurrent urinary tract "
             "infections, two in the last year, both Escherichia coli sensitive to ceftriaxone",
             "Mild cognitive impairment (Montreal Cognitive Assessment 24/30 last year)"],
    home_meds=["Lisinopril 20 mg orally once daily", "Hydrochlorothiazide 12.5 mg orally once daily",
               "Metformin 500 mg orally twice daily", "Atorvastatin 20 mg orally once daily"],
    ros="Positive for dysuria, frequency, flank pain, rigors, confusion and poor intake. Negative for cough, "
        "chest pain, diarrhoea and rash.",
    exam={"General": "Drowsy, disoriented to time and place, Glasgow Coma Scale 14 (confused speech). Flushed.",
          "Cardiovascular": "Tachycardic, warm peripheries, bounding pulses; capillary refill 3 seconds.",
          "Chest": "Clear to auscultation.",
          "Abdomen": "Suprapubic tenderness; left costovertebral angle tenderness. No guarding. Bladder not palpable "
                     "(bladder scan 60 mL after voiding).",
          "Skin": "No rash, no pressure injury, no line.",
          "Neurological": "No neck stiffness, no focal deficit; 4AT score 6 (delirium likely)."},
    labs={"Sodium": [134, 136, 138, 139], "Potassium": [3.6, 3.8, 4.0, 4.1], "Chloride": [100, 106, 105, 104],
          "Bicarbonate": [18, 21, 24, 25], "Urea nitrogen (BUN)": [36, 30, 22, 17], "Creatinine": [1.92, 1.62, 1.24, 1.02],
          "Glucose": [204, 164, 142, 128], "Calcium": [8.6, 8.5, 8.8, 9.0], "Magnesium": [1.8, 1.8, 1.9, 2.0],
          "Phosphate": [2.8, 2.9, 3.1, 3.3], "White cell count": [19.4, 16.2, 11.8, 8.9], "Neutrophils": [17.6, 14.1, 9.2, 6.4],
          "Hemoglobin": [12.9, 11.9, 11.8, 12.1], "Hematocrit": [39, 36, 36, 37], "Platelets": [142, 128, 156, 204],
          "Lactate": [3.6, 1.6, 1.1, 0.9], "C-reactive protein": [248, 212, 118, 52], "Procalcitonin": [8.6, 6.2, 2.4, 0.8],
          "Albumin": [3.3, 3.0, 3.0, 3.2], "Total bilirubin": [1.1, 0.9, 0.7, 0.6], "ALT": [26, 24, 22, 22],
          "AST": [30, 27, 24, 22], "INR": [1.3, 1.2, 1.1, 1.1]},
    extra_admission_labs=["Urinalysis: leukocyte esterase 3+, nitrite positive, blood 2+, protein 1+; microscopy "
                          "more than 50 white cells per high-power field with white cell casts",
                          "Baseline creatinine 0.9 mg/dL (6 months ago)"],
    vitals={"temp": [39.4, 38.3, 37.2, 36.8], "hr": [118, 98, 84, 76], "sbp": [96, 112, 124, 130],
            "dbp": [54, 62, 70, 74], "rr": [24, 20, 17, 16], "spo2": [95, 96, 97, 97]},
    oxygen=["room air"],
    micro=lambda p: ["Blood cultures 2 of 2 sets: Escherichia coli at 14 hours", "Urine culture: more than 100,000 "
                     "CFU/mL Escherichia coli", "Susceptibility (both): ampicillin resistant; ceftriaxone, ciprofloxacin, "
                     "trimethoprim-sulfamethoxazole, nitrofurantoin and gentamicin susceptible; no ESBL"],
    imaging=lambda p: [
        "CT abdomen and pelvis without contrast (hospital day 1, because of sepsis with acute kidney injury: to "
        "exclude obstruction or abscess): left kidney mildly enlarged with perinephric fat stranding; no "
        "hydronephrosis, no calculus, no gas, no collection. Right kidney normal. Bladder wall not thickened.",
        "Chest radiograph: clear."],
    ecg="Sinus tachycardia at 116 beats per minute, QTc 446 ms, no ischaemic change.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with sepsis from left acute pyelonephritis with Escherichia coli bacteraemia, "
        "hypotension responsive to fluid (not septic shock: no vasopressor needed and lactate cleared), "
        "hypoactive-hyperactive delirium from sepsis on a background of mild cognitive impairment, and acute kidney "
        "injury stage 2 (creatinine about twice baseline) from sepsis, hypovolaemia, an ACE inhibitor and a thiazide. "
        "No obstruction, so no source control procedure is needed."],
    plan=lambda p: [
        ("Sepsis from pyelonephritis, E. coli bacteraemia", _uro_abx(p) + [
            f"Balanced crystalloid 30 mL/kg ({kg_dose(30, p.weight, 50)} mL) completed; further 250 mL boluses "
            "for mean arterial pressure below 65 mmHg or urine output below 0.5 mL/kg/hour",
            "Repeat lactate at 2 hours (done: fallen); high-dependency unit overnight",
            "Narrow to an oral agent guided by susceptibility once afebrile 48 hours; 7 days in total for "
            "uncomplicated bacteraemic pyelonephritis with prompt response"]),
        ("Acute kidney injury stage 2", ["Hold lisinopril, hydrochlorothiazide and metformin", "Urine output "
            "hourly; daily renal panel", "Avoid nephrotoxins and contrast"]),
        ("Delirium", ["Reorientation, glasses and hearing aids, family visits, sleep hygiene; avoid "
                      "benzodiazepines and anticholinergics", "Screen twice daily with the 4AT"]),
        ("Diabetes", ["Correction insulin; metformin held"]),
        ("Prophylaxis", ["Apixaban continued at 2.5 mg twice daily (dose criteria unchanged); no additional "
                         "heparin prophylaxis"] if p.variant.get("anticoagulated") else
                        ["Enoxaparin 40 mg subcutaneously once daily"])],
    days=lambda p, d: staged([
        ("Confused overnight, pulled at the cannula; calmer this morning. Still flank pain.",
         "Oriented to place only. Left costovertebral angle tenderness. Urine output 0.8 mL/kg/hour.",
         ["Sepsis: blood cultures grew E. coli, susceptible to ceftriaxone; continue", "Kidney: creatinine falling",
          "Delirium: non-drug measures; family at the bedside", "Stepped down to the general ward"]),
        ("Afebrile 24 hours. Recognised her family; eating half of meals.",
         "Oriented to time, place and person; 4AT 0. Mild flank tenderness only.",
         ["Sepsis: improving; plan oral step-down after 48 hours afebrile", "Kidney: creatinine near baseline",
          "Metformin restarted"]),
        ("Afebrile 48 hours. Walking with a frame; back to her usual self per her daughter.",
         "No flank tenderness. Cognition at baseline.",
         ["Pyelonephritis: switched to ciprofloxacin 500 mg orally twice daily to complete 7 days from the first "
          "effective dose", "Hypertension: lisinopril restarted at 10 mg with a renal panel in 1 week; "
          "hydrochlorothiazide stopped (pressure controlled without it)", "Urology outpatient review of recurrent "
          "infections"])], d, p.los),
    discharge_diagnoses=["Sepsis from left acute pyelonephritis with Escherichia coli bacteraemia",
                         "Acute kidney injury stage 2, resolved", "Delirium, resolved",
                         "Type 2 diabetes mellitus", "Hypertension"],
    discharge_meds=lambda p: ["Ciprofloxacin 500 mg orally twice daily to complete 7 days of effective therapy (NEW)",
                              "Lisinopril 10 mg orally once daily (CHANGED from 20 mg)",
                              "Hydrochlorothiazide (STOPPED)", "Metformin 500 mg orally twice daily (unchanged)",
                              "Atorvastatin 20 mg orally once daily (unchanged)"],
    follow_up=["Primary care in 1 week: renal panel, potassium and blood pressure; titrate lisinopril",
               "Urology clinic for recurrent urinary tract infections", "Memory clinic review as planned"],
    course_summary=lambda p: [
        "Sepsis from E. coli pyelonephritis with bacteraemia responded to fluids and ceftriaxone without vasopressors. "
        "CT showed no obstruction. Fever settled by day 3 and treatment was stepped down to oral ciprofloxacin by "
        "susceptibility. Acute kidney injury resolved after holding the ACE inhibitor, thiazide and metformin. "
        "Delirium resolved with non-drug measures."],
    patients=[
        P("lc-uro-01", 79, "woman", 62, 158, 1.0, 5, NKDA, "Never smoked; no alcohol. Lives with her daughter's family; "
          "walks with a stick.", "Sister had breast cancer.", occupation="retired baker"),
        P("lc-uro-02", 84, "woman", 54, 152, 1.08, 6, "Nitrofurantoin: acute lung reaction in 2019.", "Never smoked. "
          "Lives in sheltered housing with a warden.", "No relevant family history.", occupation="retired nurse",
          extra_history=["Atrial flutter, rate-controlled, CHA2DS2-VASc 5"],
          extra_meds=["Apixaban 2.5 mg orally twice daily (age 80 or over and weight 60 kg or less)",
                      "Bisoprolol 2.5 mg orally once daily"], variant={"anticoagulated": True}),
        P("lc-uro-03", 77, "woman", 68, 160, 0.95, 5, NKDA, "Former smoker, stopped 30 years ago. Alcohol 3 units a "
          "week. Lives with her husband.", "No relevant family history.", occupation="retired pharmacy assistant"),
    ],
)

# ---------------------------------------------------------------- 6. NSTEMI


def _heparin(p):
    bolus = min(kg_dose(60, p.weight, 100), 4000)
    rate = min(kg_dose(12, p.weight, 50), 1000)
    return (f"Unfractionated heparin {bolus} units intravenous bolus (60 units/kg, maximum 4000) then {rate} "
            "units/hour (12 units/kg/hour, maximum 1000), anti-Xa target 0.3 to 0.7 units/mL, until angiography")


NSTEMI = Scenario(
    key="nstemi", title="Admission record, non-ST-elevation myocardial infarction", specialty="cardiology",
    service="Cardiology, coronary care unit",
    complaint="Central chest pressure on exertion and at rest for 2 days, the last episode lasting 40 minutes.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} with hypertension, hyperlipidaemia and a family history of early coronary "
        "disease, who has had central chest pressure radiating to the left arm and jaw for 2 days: first on climbing "
        f"stairs, relieved by rest, then this morning at rest for 40 minutes with sweating and nausea. {p.he.capitalize()} "
        "took no medicine for it. The pain had settled by arrival after aspirin 325 mg chewed, given by the "
        "ambulance crew, and one sublingual glyceryl trinitrate spray.",
        "No pleuritic or positional quality, no tearing pain radiating to the back, no pulse or blood pressure "
        "difference between the arms, no recent immobility, no cocaine. The first high-sensitivity troponin T was "
        "raised and rose further at 1 hour; the ECG shows dynamic ST depression. GRACE score 128 (intermediate to "
        "high risk): early invasive strategy within 24 hours."],
    history=["Hypertension", "Hyperlipidaemia, not taking the prescribed statin", "Pre-diabetes (HbA1c 6.1%)"],
    home_meds=["Amlodipine 10 mg orally once daily", "Atorvastatin 20 mg orally once daily (stopped by the patient "
               "4 months ago because of fear of side effects)"],
    ros="Positive for exertional and rest chest pressure, diaphoresis and nausea. Negative for syncope, "
        "palpitations, orthopnoea, leg swelling, melaena and recent bleeding.",
    exam={"General": "Comfortable at rest now, pain-free.",
          "Cardiovascular": "Regular rhythm; normal heart sounds, no murmur, no rub. Equal radial pulses and blood "
                            "pressure in both arms (right 148/88, left 146/86 mmHg). Jugular venous pressure not raised.",
          "Chest": "Clear; no crackles (Killip class I).",
          "Abdomen": "Soft, non-tender; no bruit.",
          "Extremities": "Palpable radial and pedal pulses; Allen test normal on the right; no oedema.",
          "Neurological": "No deficit."},
    labs={"Sodium": [139, 139, 140, 140], "Potassium": [4.1, 4.3, 4.2, 4.3], "Chloride": [102, 103, 103, 103],
          "Bicarbonate": [25, 25, 26, 26], "Urea nitrogen (BUN)": [16, 15, 16, 15], "Creatinine": [0.96, 0.98, 1.02, 0.97],
          "Glucose": [146, 118, 112, 108], "Calcium": [9.4, 9.3, 9.3, 9.4], "Magnesium": [2.0, 2.0, 2.0, 2.1],
          "Phosphate": [3.3, 3.4, 3.4, 3.4], "White cell count": [10.2, 9.1, 8.4, 7.8], "Neutrophils": [7.6, 6.4, 5.6, 5.0],
          "Hemoglobin": [14.8, 14.2, 14.0, 14.1], "Hematocrit": [44, 43, 42, 42], "Platelets": [244, 236, 238, 246],
          "High-sensitivity troponin T": [52, 612, 388, 164], "NT-proBNP": [420, 690, 540, 380],
          "INR": [1.0, 1.0, 1.0, 1.0], "Albumin": [4.2, 4.1, 4.1, 4.2], "ALT": [28, 34, 30, 27], "AST": [30, 58, 40, 28],
          "Total bilirubin": [0.6, 0.6, 0.5, 0.6]},
    extra_admission_labs=["High-sensitivity troponin T at 1 hour: rise of more than 6 ng/L from the first value "
                          "(rule-in by the 0/1-hour algorithm)",
                          "Lipid panel: total cholesterol 232 mg/dL, LDL cholesterol 152 mg/dL, HDL 38 mg/dL, "
                          "triglycerides 210 mg/dL", "HbA1c 6.1%", "Thyroid-stimulating hormone 1.6 mIU/L"],
    vitals={"temp": [36.8, 36.9, 36.8, 36.7], "hr": [88, 72, 66, 64], "sbp": [148, 132, 126, 124],
            "dbp": [88, 78, 74, 74], "rr": [18, 16, 16, 15], "spo2": [97, 97, 98, 98]},
    oxygen=["room air"],
    micro=lambda p: ["None sent"],
    imaging=lambda p: [
        "Chest radiograph: normal heart size, clear lungs, normal mediastinal contour.",
        "Coronary angiography (hospital day 2, right radial access): left main normal; 90% culprit stenosis of the "
        "proximal-mid left anterior descending artery with thrombus (TIMI 2 flow); 40% stenosis of the mid right "
        "coronary artery; circumflex minor irregularities. Treated with one 3.0 x 28 mm drug-eluting stent to the "
        "left anterior descending artery with TIMI 3 flow after. Radial band removed at 4 hours, no haematoma.",
        "Transthoracic echocardiogram (hospital day 3): LVEF 48%, hypokinesis of the mid and apical anterior wall "
        "and apex; no thrombus, no significant valve disease, no pericardial effusion."],
    ecg="Sinus rhythm at 86 beats per minute; horizontal ST depression of 1.5 mm in V3 to V6, I and aVL, and 1 mm "
        "ST elevation in aVR; no Q waves. Repeat during pain-free interval: partial resolution (dynamic change).",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with a type 1 non-ST-elevation myocardial infarction (rising troponin above the "
        "99th centile with ischaemic symptoms and dynamic ST depression), Killip class I, haemodynamically and "
        "electrically stable, GRACE intermediate to high risk: dual antiplatelet therapy, anticoagulation and "
        "angiography within 24 hours. Aortic dissection and pulmonary embolism considered and judged unlikely on "
        "history, examination and radiograph."],
    plan=lambda p: [
        ("NSTEMI", ["Aspirin 81 mg orally once daily (325 mg loading dose given)", "Ticagrelor 180 mg orally "
                    "loading dose, then 90 mg twice daily", _heparin(p), "Atorvastatin 80 mg orally at night",
                    "Metoprolol tartrate 25 mg orally twice daily (no heart failure, heart rate and blood pressure "
                    "allow)", "Sublingual glyceryl trinitrate 400 micrograms as needed for pain; ECG with any pain",
                    "Coronary angiography tomorrow morning; continuous ECG monitoring"]),
        ("Hypertension", ["Amlodipine continued"]), ("Pre-diabetes", ["Lifestyle advice; HbA1c in 3 months"]),
        ("Prophylaxis", ["Therapeutic heparin until angiography; no separate prophylaxis"])],
    days=lambda p, d: staged([
        ("No further pain overnight. Angiography this morning.",
         "Right radial site soft, good radial pulse. No murmur. Peak troponin this morning.",
         ["NSTEMI: culprit left anterior descending artery stented; heparin stopped after the procedure",
          "Dual antiplatelet therapy for 12 months (aspirin with ticagrelor)", "Right coronary 40% lesion: "
          "medical therapy"]),
        ("Walked the corridor without pain. Worried about returning to work.",
         "Chest clear; radial site healed.",
         ["NSTEMI: echocardiogram LVEF 48%; start lisinopril 2.5 mg once daily (reduced ejection fraction below "
          "50% and hypertension), and switch metoprolol tartrate to metoprolol succinate 50 mg once daily",
          "Amlodipine reduced to 5 mg as blood pressure is lower on the new medicines",
          "Cardiac rehabilitation referral; driving advice given: no driving for 1 week after successful stenting"]),
        ("Feels well; no pain with two flights of stairs on the physiotherapy test.",
         "Normal examination.",
         ["NSTEMI: stable; discharge today", "Lipids: target LDL cholesterol below 55 mg/dL; recheck in 6 weeks "
          "and add ezetimibe if above target", "Medicine education: do not stop the antiplatelet medicines without "
          "speaking to the cardiology team"])], d, p.los),
    discharge_diagnoses=["Non-ST-elevation myocardial infarction, culprit proximal-mid left anterior descending "
                         "artery, treated with one drug-eluting stent", "Mild left ventricular systolic dysfunction, LVEF 48%",
                         "Hypertension", "Hyperlipidaemia", "Pre-diabetes"],
    discharge_meds=lambda p: ["Aspirin 81 mg orally once daily (NEW), indefinitely",
                              "Ticagrelor 90 mg orally twice daily (NEW), for 12 months",
                              "Atorvastatin 80 mg orally at night (CHANGED from 20 mg, restarted)",
                              "Metoprolol succinate 50 mg orally once daily (NEW)",
                              "Lisinopril 2.5 mg orally once daily (NEW)", "Amlodipine 5 mg orally once daily (CHANGED from 10 mg)",
                              "Glyceryl trinitrate 400 micrograms sublingual spray as needed for chest pain (NEW)"],
    follow_up=["Cardiology clinic in 6 weeks with lipid panel, renal panel and potassium",
               "Cardiac rehabilitation programme starting within 2 weeks",
               "Primary care in 1 to 2 weeks: blood pressure, renal panel after starting lisinopril"],
    course_summary=lambda p: [
        "Treated with aspirin, ticagrelor, heparin and high-intensity statin. Angiography on day 2 found a 90% "
        "thrombotic proximal-mid left anterior descending stenosis, treated with a drug-eluting stent by radial "
        "access without complication. Troponin peaked on day 2 and fell. Echocardiogram showed LVEF 48% with "
        "anterior hypokinesis; an ACE inhibitor and beta-blocker were started. No further angina."],
    patients=[
        P("lc-nstemi-01", 58, "man", 92, 180, 1.0, 4, NKDA, "Smokes 15 cigarettes a day for 35 years; advised to "
          "stop and nicotine patches started. 8 units of alcohol a week. Married, two children.",
          "Brother had a myocardial infarction at 49; father died suddenly at 56.", occupation="retired bus driver",
          extra_history=["Tobacco dependence"]),
        P("lc-nstemi-02", 66, "woman", 70, 162, 1.1, 5, "Amoxicillin: rash.", "Never smoked. Occasional alcohol. "
          "Widowed; lives alone.", "Mother had a myocardial infarction at 60.", occupation="accountant",
          extra_history=["Hypothyroidism"], extra_meds=["Levothyroxine 100 micrograms orally once daily"]),
        P("lc-nstemi-03", 71, "man", 85, 175, 0.95, 5, NKDA, "Former smoker, 25 pack-years, stopped 10 years ago. "
          "Alcohol 10 units a week. Lives with his wife.", "Brother had a myocardial infarction at 49.", occupation="retired engineer"),
    ],
)

# ---------------------------------------------------------------- 7. upper gastrointestinal bleeding


def _gib_units(p):
    hb = panel(GIB, p, 1)["Hemoglobin"]
    return 2 if hb < 7.0 else 1


GIB = Scenario(
    key="gib", title="Admission record, upper gastrointestinal bleeding from a duodenal ulcer",
    specialty="gastroenterology", service="Gastroenterology",
    complaint="Black tarry stools for 2 days and dizziness on standing.",
    hpi=lambda p: [
        f"A {p.age}-year-old {p.sex} with 2 days of black, sticky, foul-smelling stools three times a day, "
        "light-headedness on standing and one near-faint in the bathroom this morning. Epigastric gnawing pain for 3 "
        f"weeks, worse when hungry. {p.he.capitalize()} has been taking ibuprofen 400 mg three times daily for 6 weeks for "
        "a shoulder injury, bought over the counter, without a stomach-protecting medicine. No haematemesis, no "
        "coffee-ground vomiting, no known liver disease, heavy alcohol use or previous bleeding.",
        f"In the emergency department {p.he} was tachycardic with a low-normal blood pressure; rectal examination "
        "confirmed melaena. Glasgow-Blatchford score 12 (urea nitrogen, haemoglobin, systolic pressure, pulse, "
        "melaena and syncope): high risk, needs admission and endoscopy within 24 hours."],
    history=["Osteoarthritis", "Right rotator cuff injury 6 weeks ago", "No liver disease; no previous "
             "gastrointestinal bleeding"],
    home_meds=["Ibuprofen 400 mg orally three times daily (over the counter, 6 weeks)", "Paracetamol (acetaminophen) "
               "1 g orally as needed"],
    ros="Positive for melaena, epigastric pain, postural dizziness, near-syncope and fatigue. Negative for "
        "haematemesis, weight loss, dysphagia, jaundice and chest pain.",
    exam={"General": "Pale, clammy, alert and oriented.",
          "Cardiovascular": "Tachycardic; postural drop in systolic pressure of 24 mmHg with dizziness. Capillary "
                            "refill 3 seconds.",
          "Chest": "Clear.", "Abdomen": "Mild epigastric tenderness; no guarding; no stigmata of chronic liver disease; "
                                       "no splenomegaly. Rectal: black tarry stool.",
          "Extremities": "Cool peripheries.", "Neurological": "No deficit."},
    labs={"Sodium": [138, 139, 139, 140], "Potassium": [4.3, 4.0, 4.1, 4.2], "Chloride": [104, 106, 105, 104],
          "Bicarbonate": [22, 24, 25, 25], "Urea nitrogen (BUN)": [52, 38, 22, 15], "Creatinine": [1.04, 0.98, 0.92, 0.9],
          "Glucose": [132, 108, 102, 98], "Calcium": [8.8, 8.6, 8.8, 9.0], "Magnesium": [2.0, 1.9, 2.0, 2.0],
          "Phosphate": [3.2, 3.1, 3.3, 3.4], "White cell count": [11.8, 9.6, 8.2, 7.6], "Neutrophils": [8.9, 7.0, 5.6, 5.0],
          "Hemoglobin": [7.4, 8.3, 8.4, 8.9], "Hematocrit": [22, 25, 25, 27], "Platelets": [318, 286, 292, 310],
          "INR": [1.1, 1.1, 1.1, 1.0], "Albumin": [3.6, 3.4, 3.5, 3.6], "Total bilirubin": [0.5, 0.6, 0.5, 0.5],
          "ALT": [18, 17, 17, 18], "AST": [20, 19, 19, 19], "Lactate": [2.1, 1.1, 0.9, 0.9]},
    extra_admission_labs=["Mean corpuscular volume 88 fL (normocytic: acute blood loss)",
                          "Haemoglobin 4 months ago at a health check: 14.2 g/dL", "Group and screen: O positive, no "
                          "antibodies; 2 units cross-matched", "Urea nitrogen to creatinine ratio above 30: "
                          "supports an upper gastrointestinal source"],
    vitals={"temp": [36.6, 36.8, 36.7, 36.7], "hr": [114, 92, 82, 76], "sbp": [98, 116, 122, 126],
            "dbp": [58, 68, 72, 74], "rr": [20, 16, 16, 15], "spo2": [98, 98, 98, 98]},
    oxygen=["room air"],
    micro=lambda p: ["Gastric antral biopsies (hospital day 2): Helicobacter pylori present on histology, confirmed "
                     "by rapid urease test"],
    imaging=lambda p: [
        "Oesophagogastroduodenoscopy (hospital day 2, 14 hours after arrival, after resuscitation): normal "
        "oesophagus; no varices. Stomach with altered blood, erythematous antrum (biopsies taken). A 14 mm clean-edged "
        "ulcer on the posterior wall of the duodenal bulb with a non-bleeding visible vessel (Forrest IIa, high risk "
        "of rebleeding). Treated with dilute adrenaline (1:10,000) injection, 8 mL in four quadrants, and two "
        "through-the-scope clips: haemostasis secured. No other lesion."],
    ecg="Sinus tachycardia at 112 beats per minute; no ischaemic change.",
    assessment=lambda p: [
        f"{p.age}-year-old {p.sex} with acute upper gastrointestinal bleeding (melaena, haemoglobin fall of more than "
        "5 g/dL, raised urea nitrogen to creatinine ratio), most likely peptic ulcer from NSAID use, with "
        "haemodynamic compromise responsive to fluid. Glasgow-Blatchford 12. No liver disease, so variceal bleeding "
        "is unlikely and no terlipressin or antibiotic prophylaxis is indicated."],
    plan=lambda p: [
        ("Upper gastrointestinal bleeding", [
            "Two large-bore cannulas; balanced crystalloid to restore perfusion",
            f"Restrictive transfusion: red cells for haemoglobin below 7 g/dL (below 8 g/dL if cardiovascular disease); "
            f"{_gib_units(p)} unit{'s' if _gib_units(p) > 1 else ''} given, one at a time with a check after each",
            "Pantoprazole 80 mg intravenously, then 40 mg intravenously twice daily (high-dose intermittent)",
            "Nil by mouth from midnight; endoscopy within 24 hours", "Stop ibuprofen permanently"]),
        ("Prophylaxis", ["Intermittent pneumatic compression; no pharmacological prophylaxis until 24 to 48 hours "
                         "after haemostasis"])],
    days=lambda p, d: staged([
        ("One further small melaena stool overnight, none since. No dizziness lying in bed.",
         "Warm peripheries, no postural drop. Abdomen soft.",
         ["Bleeding: endoscopy showed a Forrest IIa duodenal ulcer, treated with adrenaline and clips",
          "Pantoprazole 40 mg intravenously twice daily continued for 72 hours after endoscopy",
          "Clear fluids 6 hours after endoscopy, then diet", "Haemoglobin stable after transfusion"]),
        ("Eating normally. Stools brown-black, formed. No dizziness.",
         "No postural drop. Abdomen soft.",
         ["Bleeding: no rebleeding; haemoglobin stable", "Helicobacter pylori positive: start bismuth quadruple "
          "therapy", "Enoxaparin 40 mg subcutaneously once daily started (48 hours after haemostasis)"]),
        ("Feels well, walking around the ward.", "Normal examination.",
         ["Bleeding: stable 72 hours after endoscopy; switch to oral pantoprazole 40 mg twice daily",
          "Shoulder pain: paracetamol and physiotherapy; no NSAIDs", "Plan discharge"])], d, p.los),
    discharge_diagnoses=["Upper gastrointestinal bleeding from a Forrest IIa duodenal bulb ulcer, endoscopic "
                         "haemostasis", "NSAID use and Helicobacter pylori infection", "Acute blood loss anaemia, transfused"],
    discharge_meds=lambda p: [
        "Pantoprazole 40 mg orally twice daily for 10 days with the eradication therapy, then 40 mg once daily to "
        "complete 8 weeks (NEW)",
        "Bismuth subcitrate potassium 140 mg, metronidazole 125 mg, tetracycline 125 mg combined capsules: 3 capsules "
        "orally four times daily for 10 days (NEW; Helicobacter pylori)", "Ibuprofen (STOPPED: do not take any NSAID)",
        "Paracetamol (acetaminophen) 1 g orally up to four times daily as needed (unchanged)",
        "Ferrous sulfate 325 mg orally once daily for 3 months (NEW)"],
    follow_up=["Primary care in 1 week: full blood count", "Urea breath test for Helicobacter pylori eradication "
               "after the 8-week proton pump inhibitor course, at least 2 weeks after stopping it (and at least 4 "
               "weeks after the antibiotics)", "Repeat endoscopy not needed for a duodenal ulcer that has healed clinically"],
    course_summary=lambda p: [
        f"Resuscitated with crystalloid and {_gib_units(p)} unit{'s' if _gib_units(p) > 1 else ''} of red cells under a "
        "restrictive threshold. Endoscopy on day 2 found a Forrest IIa duodenal ulcer treated with adrenaline and "
        "clips. High-dose intravenous proton pump inhibitor for 72 hours, then oral. Helicobacter pylori positive: "
        "bismuth quadruple therapy started. No rebleeding. NSAIDs stopped permanently."],
    patients=[
        P("lc-gib-01", 58, "man", 80, 178, 1.0, 5, NKDA, "Never smoked. Alcohol 10 units a week. Lives with his wife.",
          "Father had stomach cancer at 75.", occupation="carpenter"),
        P("lc-gib-02", 49, "woman", 66, 168, 0.9, 5, "Clarithromycin: severe diarrhoea.", "Smokes 10 cigarettes a "
          "day. Alcohol 6 units a week. Lives with her partner and two teenagers.", "No relevant family history.",
          occupation="postal worker"),
        P("lc-gib-03", 67, "man", 77, 172, 1.05, 6, NKDA, "Former smoker, stopped 15 years ago. Alcohol 12 units a "
          "week. Lives with his wife.", "No relevant family history.", occupation="retired plumber"),
    ],
)


SCENARIOS = [CAP, CHF, DKA, COPD, URO, NSTEMI, GIB]
