//! ORU^R01: DiagnosticReport + Observations per OBR, and screening instruments as QuestionnaireResponses.

use crate::ctx::Ctx;
use crate::datatypes::{codeable, ei_identifier, ei_key, fixed_concept, obj, object, opt, reference, v2_concept};
use crate::error::ConversionError;
use crate::ids::resource_id;
use crate::patient::{patient, pid};
use crate::tables::{Instrument, instrument_for_panel, lookup_str};
use crate::time::Dtm;
use crate::v2::{Parts, Seg};
use serde_json::{Value, json};

const UCUM: &str = "http://unitsofmeasure.org";

/// One OBR with its ORC and OBX rows.
struct Order<'a> {
    /// Reference to the Patient of the PATIENT_RESULT group the order belongs to.
    patient: String,
    orc: Option<Seg<'a>>,
    obr: Seg<'a>,
    obx: Vec<Seg<'a>>,
    /// NTE segments following each OBX (same index).
    notes: Vec<Vec<Seg<'a>>>,
}

pub(crate) fn convert(ctx: &mut Ctx<'_>) -> Result<(), ConversionError> {
    // Fail early with the usual location when there is no PID at all.
    pid(ctx)?;
    let org = ctx.sending_organization();
    let mut orders: Vec<Order<'_>> = Vec::new();
    let mut orc = None;
    // ORU^R01 may carry several PATIENT_RESULT groups: each order belongs to the PID that precedes it, never
    // simply the message's first patient.
    let mut current_patient: Option<String> = None;
    for seg in ctx.segs.clone() {
        match seg.id() {
            "PID" => {
                let p = patient(ctx, &seg, org.as_deref())?;
                current_patient = Some(ctx.push(p));
                orc = None;
            }
            "ORC" => orc = Some(seg),
            "OBR" => {
                let patient = current_patient.clone().ok_or_else(|| ConversionError::missing("PID-3"))?;
                orders.push(Order { patient, orc: orc.take(), obr: seg, obx: Vec::new(), notes: Vec::new() });
            }
            "OBX" => match orders.last_mut() {
                Some(o) => {
                    o.obx.push(seg);
                    o.notes.push(Vec::new());
                }
                None => ctx.warn(format!("{} precedes any OBR; skipped", seg.loc(1))),
            },
            // Comments on an OBX become its notes; comments on the order itself have no home in R4 DiagnosticReport.
            "NTE" => {
                if let Some(n) = orders.last_mut().and_then(|o| o.notes.last_mut()) {
                    n.push(seg);
                }
            }
            _ => {}
        }
    }
    if orders.is_empty() {
        return Err(ConversionError::missing("OBR-4"));
    }
    for order in &orders {
        convert_order(ctx, order, &order.patient)?;
    }
    Ok(())
}

/// Namespace and value naming the order: the placer number (OBR-2, ORC-2) first, because it exists from the
/// order on, while a filler number may appear only with later results; else the filler number (OBR-3, ORC-3).
fn order_key(order: &Order<'_>) -> Option<(String, String)> {
    let orc = |n| order.orc.as_ref().and_then(|o| o.first(n));
    [order.obr.first(2), orc(2), order.obr.first(3), orc(3)].into_iter().flatten().find_map(|p| ei_key(&p))
}

fn convert_order(ctx: &mut Ctx<'_>, order: &Order<'_>, patient_ref: &str) -> Result<(), ConversionError> {
    let obr = &order.obr;
    let (ns, number) = order_key(order).ok_or_else(|| ConversionError::missing(obr.loc(2)))?;
    let ns = if ns.is_empty() { ctx.facility.clone() } else { ns };
    let code = obr.first(4).and_then(|p| codeable(&p)).ok_or_else(|| ConversionError::missing(obr.loc(4)))?;
    let effective = ctx.date_time(obr, 7)?;

    // Screening: the OBR-4 panel, or an OBX row carrying a panel code heading its OBX-4 sub-ID group.
    let mut screened = vec![false; order.obx.len()];
    if let Some(inst) = obr.text(4).and_then(|c| instrument_for_panel(&c)) {
        let members: Vec<usize> = (0..order.obx.len()).collect();
        screening(ctx, order, inst, &members, None, (&ns, &number), patient_ref, &effective, &mut screened)?;
    }
    for (i, obx) in order.obx.iter().enumerate() {
        if screened[i] {
            continue;
        }
        let Some(inst) = obx.text(3).and_then(|c| instrument_for_panel(&c)) else { continue };
        let sub = obx.text(4);
        let members: Vec<usize> =
            (0..order.obx.len()).filter(|&j| !screened[j] && (sub.is_none() || order.obx[j].text(4) == sub)).collect();
        screened[i] = true;
        screening(ctx, order, inst, &members, sub.as_deref(), (&ns, &number), patient_ref, &effective, &mut screened)?;
    }

    let mut results = Vec::new();
    let mut seen: Vec<String> = Vec::new();
    for (i, obx) in order.obx.iter().enumerate() {
        if screened[i] {
            continue;
        }
        // Key on code + sub-ID (+ repeat count), not the set ID, so a corrected resend updates the same rows.
        let k = format!("{}|{}", obx.text(3).unwrap_or_default(), obx.text(4).unwrap_or_default());
        let n = seen.iter().filter(|s| **s == k).count();
        seen.push(k.clone());
        let id = resource_id("Observation", &[&ns, &number, &k, &n.to_string()]);
        if let Some(mut o) = observation(ctx, obx, &id, patient_ref, &effective)? {
            let notes: Vec<Value> = order
                .notes
                .get(i)
                .into_iter()
                .flatten()
                .map(|nte| nte.reps(3).iter().map(rep_text).collect::<Vec<_>>().join("\n"))
                .filter(|t| !t.is_empty())
                .map(|t| json!({"text": t}))
                .collect();
            if !notes.is_empty() {
                o["note"] = Value::Array(notes);
            }
            results.push(reference(&ctx.push(o)));
        }
    }
    let screening_only = results.is_empty() && screened.iter().any(|s| *s);
    if screening_only {
        return Ok(());
    }
    let mut identifiers = Vec::new();
    for (n, ty) in [(2, "PLAC"), (3, "FILL")] {
        if let Some(i) = obr.first(n).and_then(|p| ei_identifier(&p, Some(ty))) {
            identifiers.push(i);
        }
    }
    let status = match obr.text(25) {
        Some(s) => lookup_str("0123", &s).unwrap_or("unknown"),
        None => "unknown",
    };
    let report = obj(vec![
        ("resourceType", json!("DiagnosticReport")),
        ("id", json!(resource_id("DiagnosticReport", &[&ns, &number]))),
        ("identifier", Value::Array(identifiers)),
        ("status", json!(status)),
        ("category", Value::Array(obr.text(24).map(|c| v2_concept("0074", &c)).into_iter().collect())),
        ("code", code),
        ("subject", reference(patient_ref)),
        ("effectiveDateTime", opt(effective)),
        ("issued", opt(ctx.instant(obr, 22)?)),
        ("result", Value::Array(results)),
    ]);
    ctx.push(report);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn screening(
    ctx: &mut Ctx<'_>,
    order: &Order<'_>,
    inst: &Instrument,
    members: &[usize],
    sub_id: Option<&str>,
    (ns, number): (&str, &str),
    patient_ref: &str,
    effective: &Option<String>,
    screened: &mut [bool],
) -> Result<(), ConversionError> {
    let mut items = Vec::new();
    let mut statuses = Vec::new();
    let mut authored = effective.clone();
    for &j in members {
        let obx = &order.obx[j];
        let Some(code) = obx.text(3) else { continue };
        if !inst.has_item(&code) {
            continue;
        }
        screened[j] = true;
        let answers = answers(ctx, obx)?;
        if authored.is_none() {
            authored = ctx.date_time(obx, 14)?;
        }
        statuses.push(obx.text(11).unwrap_or_default());
        items.push(obj(vec![
            ("linkId", json!(format!("{}{}", inst.link_id_prefix, code))),
            ("text", opt(obx.comp(3, 2))),
            ("answer", Value::Array(answers)),
        ]));
    }
    if items.is_empty() {
        return Ok(());
    }
    let status = if statuses.iter().any(|s| s == "C") {
        "amended"
    } else if statuses.iter().all(|s| s == "D" || s == "W") {
        "entered-in-error"
    } else if statuses.iter().any(|s| matches!(s.as_str(), "P" | "R" | "S" | "I" | "O")) {
        "in-progress"
    } else {
        "completed"
    };
    let identifier = order.obr.first(3).or_else(|| order.obr.first(2)).and_then(|p| ei_identifier(&p, None));
    let qr = obj(vec![
        ("resourceType", json!("QuestionnaireResponse")),
        ("id", json!(resource_id("QuestionnaireResponse", &[ns, number, &inst.panel, sub_id.unwrap_or_default()]))),
        ("identifier", identifier.unwrap_or(Value::Null)),
        ("questionnaire", json!(inst.questionnaire)),
        ("status", json!(status)),
        ("subject", reference(patient_ref)),
        ("authored", opt(authored)),
        ("item", Value::Array(items)),
    ]);
    ctx.push(qr);
    Ok(())
}

/// OBX-5 as QuestionnaireResponse answers (one per repetition, so multi-select questions keep every choice).
fn answers(ctx: &mut Ctx<'_>, obx: &Seg<'_>) -> Result<Vec<Value>, ConversionError> {
    let ty = obx.text(2).unwrap_or_default();
    let loc = obx.loc(5);
    let mut out = Vec::new();
    for p in obx.reps(5) {
        let a = match ty.as_str() {
            "CE" | "CWE" | "CNE" => match codeable(&p) {
                Some(mut c) => match c.get_mut("coding").and_then(|a| a.get_mut(0)).map(Value::take) {
                    Some(coding) => object([("valueCoding", coding)]),
                    None => object([("valueString", c["text"].take())]),
                },
                None => continue,
            },
            "NM" => {
                let n = number(&p.s(1).unwrap_or_default())
                    .ok_or_else(|| ConversionError::invalid(&loc, "NM value is not a number"))?;
                if n.is_i64() || n.is_u64() { json!({"valueInteger": n}) } else { json!({"valueDecimal": n}) }
            }
            "ST" | "TX" | "FT" => json!({"valueString": rep_text(&p)}),
            "DT" => json!({"valueDate": Dtm::parse(&p.s(1).unwrap_or_default(), &loc)?.date()}),
            "TS" | "DTM" => {
                let (s, exact) = Dtm::parse(&p.s(1).unwrap_or_default(), &loc)?.date_time();
                if !exact {
                    ctx.warn(format!("{loc} has a time without UTC offset; only the date was kept"));
                }
                if s.len() == 10 { json!({"valueDate": s}) } else { json!({"valueDateTime": s}) }
            }
            other => {
                ctx.warn(format!(
                    "{} value type {} not mapped for screening answers; answer skipped",
                    obx.loc(2),
                    ConversionError::code_for_log(other)
                ));
                continue;
            }
        };
        out.push(a);
    }
    Ok(out)
}

/// A repetition's components re-joined, for string types whose text may legitimately contain `^`.
fn rep_text(p: &Parts<'_>) -> String {
    let mut parts: Vec<String> = (1..=64).map(|n| p.s(n).unwrap_or_default()).collect();
    while parts.last().is_some_and(String::is_empty) {
        parts.pop();
    }
    parts.join("^")
}

/// A v2 NM as a JSON number (accepts a leading `+` and a bare leading `.`, which JSON does not).
fn number(s: &str) -> Option<serde_json::Number> {
    let s = s.trim();
    let (sign, digits) = match s.strip_prefix('-') {
        Some(d) => ("-", d),
        None => ("", s.strip_prefix('+').unwrap_or(s)),
    };
    if digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        || digits.bytes().filter(|&b| b == b'.').count() > 1
        || digits == "."
    {
        return None;
    }
    let digits = digits.trim_end_matches('.');
    let norm = if digits.starts_with('.') { format!("{sign}0{digits}") } else { format!("{sign}{digits}") };
    // Leading zeros are not JSON; parse integers and decimals separately to keep integers exact.
    if !norm.contains('.') {
        return norm.parse::<i64>().ok().map(serde_json::Number::from);
    }
    norm.parse::<f64>().ok().filter(|f| f.is_finite()).and_then(serde_json::Number::from_f64)
}

/// Quantity from a number and the OBX-6 units. System and code are given only when OBX-6 says UCUM.
fn quantity(value: serde_json::Number, units: Option<&Parts<'_>>) -> Value {
    let (code, text, system) = units.map_or((None, None, None), |u| (u.s(1), u.s(2), u.s(3)));
    let ucum = system.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("UCUM"));
    obj(vec![
        ("value", Value::Number(value)),
        ("unit", opt(text.or_else(|| code.clone()))),
        ("system", if ucum && code.is_some() { json!(UCUM) } else { Value::Null }),
        ("code", if ucum { opt(code.map(|c| crate::datatypes::code(&c))) } else { Value::Null }),
    ])
}

/// OBX-5 as `value[x]` per OBX-2. `Ok(None)` for a value type with no mapping (the row is skipped).
fn value_x(ctx: &mut Ctx<'_>, obx: &Seg<'_>) -> Result<Option<(&'static str, Value)>, ConversionError> {
    let reps = obx.reps(5);
    let Some(first) = reps.first() else { return Ok(Some(("", Value::Null))) };
    let loc = obx.loc(5);
    let Some(ty) = obx.text(2) else {
        ctx.warn(format!("{} value type missing; {} skipped", obx.loc(2), obx.label()));
        return Ok(None);
    };
    let units = obx.first(6);
    let multi = |ctx: &mut Ctx<'_>| {
        if reps.len() > 1 {
            ctx.warn(format!("{loc} repeats; only the first repetition was mapped"));
        }
    };
    let v = match lookup_str("obxValueTypes", &ty) {
        Some("Quantity") => {
            multi(ctx);
            let raw = first.s(1).unwrap_or_default();
            match number(&raw) {
                Some(n) => ("valueQuantity", quantity(n, units.as_ref())),
                None => match comparator_split(&raw) {
                    Some((cmp, n)) => {
                        let mut q = quantity(n, units.as_ref());
                        q["comparator"] = json!(cmp);
                        ("valueQuantity", q)
                    }
                    None => return Err(ConversionError::invalid(loc, "NM value is not a number")),
                },
            }
        }
        Some("StructuredNumeric") => {
            multi(ctx);
            match structured_numeric(first, units.as_ref(), &loc)? {
                Some(v) => v,
                None => {
                    // Categorical results such as `^2^+` (2+) or `<>` comparators have no Quantity form; keep the text.
                    ctx.warn(format!("{loc} SN form has no FHIR numeric equivalent; kept as valueString"));
                    ("valueString", json!(rep_text(first)))
                }
            }
        }
        Some("string") => {
            let lines: Vec<String> = reps.iter().map(rep_text).collect();
            ("valueString", json!(lines.join("\n")))
        }
        Some("CodeableConcept") => {
            multi(ctx);
            match codeable(first) {
                Some(c) => ("valueCodeableConcept", c),
                None => return Ok(Some(("", Value::Null))),
            }
        }
        Some("dateTime") => {
            multi(ctx);
            let (s, exact) = Dtm::parse(&first.s(1).unwrap_or_default(), &loc)?.date_time();
            if !exact {
                ctx.warn(format!("{loc} has a time without UTC offset; only the date was kept"));
            }
            ("valueDateTime", json!(s))
        }
        Some("time") => {
            multi(ctx);
            ("valueTime", json!(time_of_day(&first.s(1).unwrap_or_default(), &loc)?))
        }
        Some("SampledData") => {
            multi(ctx);
            // NA components are the array elements; an empty element is an unknown sample ("E" in SampledData).
            let last = (1..=4096).rev().find(|&n| first.s(n).is_some()).unwrap_or(0);
            let mut data = Vec::new();
            for n in 1..=last {
                data.push(match first.s(n) {
                    Some(s) => number(&s)
                        .ok_or_else(|| ConversionError::invalid(&loc, "NA element is not a number"))?
                        .to_string(),
                    None => "E".to_owned(),
                });
            }
            // v2 NA carries no sampling interval; period 0 with dimensions 1 states a plain ordered series.
            let mut origin = quantity(serde_json::Number::from(0), units.as_ref());
            if origin.get("unit").is_none() {
                origin = json!({"value": 0});
            }
            ("valueSampledData", json!({"origin": origin, "period": 0, "dimensions": 1, "data": data.join(" ")}))
        }
        _ => {
            ctx.warn(format!(
                "{} value type {} not mapped; {} skipped",
                obx.loc(2),
                ConversionError::code_for_log(&ty),
                obx.label()
            ));
            return Ok(None);
        }
    };
    Ok(Some(v))
}

/// `<5`, `>=10` and the like in an NM field.
fn comparator_split(raw: &str) -> Option<(&'static str, serde_json::Number)> {
    for cmp in ["<=", ">=", "<", ">"] {
        if let Some(rest) = raw.trim().strip_prefix(cmp) {
            return Some((cmp_static(cmp), number(rest)?));
        }
    }
    None
}

fn cmp_static(c: &str) -> &'static str {
    match c {
        "<=" => "<=",
        ">=" => ">=",
        "<" => "<",
        _ => ">",
    }
}

/// SN: comparator^num1^separator/suffix^num2. Ranges (`-`) become valueRange, ratios (`:` `/`) valueRatio,
/// a single number (optionally with a comparator) valueQuantity.
fn structured_numeric(
    p: &Parts<'_>,
    units: Option<&Parts<'_>>,
    loc: &str,
) -> Result<Option<(&'static str, Value)>, ConversionError> {
    let bad = |r: &str| ConversionError::invalid(loc, r);
    let cmp = p.s(1);
    // Anything else in SN-1, or no first number, is not a structured numeric: refused rather than kept as text.
    if cmp.as_deref().is_some_and(|c| !matches!(c, "<" | ">" | "<=" | ">=" | "=" | "<>")) {
        return Err(bad("SN-1 is not a comparator (<, >, <=, >=, =, <>)"));
    }
    let n1 = p.s(2).map(|s| number(&s).ok_or_else(|| bad("SN-2 is not a number"))).transpose()?;
    if n1.is_none() {
        return Err(bad("SN-2 (the number) is missing"));
    }
    let sep = p.s(3);
    let n2 = p.s(4).map(|s| number(&s).ok_or_else(|| bad("SN-4 is not a number"))).transpose()?;
    match (sep.as_deref(), n1, n2) {
        (Some("-"), Some(a), Some(b)) if cmp.is_none() => {
            Ok(Some(("valueRange", json!({"low": quantity(a, units), "high": quantity(b, units)}))))
        }
        (Some(":" | "/"), Some(a), Some(b)) if cmp.is_none() => {
            Ok(Some(("valueRatio", json!({"numerator": {"value": a}, "denominator": {"value": b}}))))
        }
        (None, Some(a), None) => {
            let mut q = quantity(a, units);
            match cmp.as_deref() {
                None | Some("=") => {}
                Some(c @ ("<" | ">" | "<=" | ">=")) => q["comparator"] = json!(cmp_static(c)),
                Some(_) => return Ok(None),
            }
            Ok(Some(("valueQuantity", q)))
        }
        _ => Ok(None),
    }
}

/// v2 TM `HH[MM[SS[.S…]]]` to FHIR time `hh:mm:ss`.
fn time_of_day(s: &str, loc: &str) -> Result<String, ConversionError> {
    let main = s.split(['+', '-', '.']).next().unwrap_or_default();
    let ok = matches!(main.len(), 2 | 4 | 6) && main.bytes().all(|b| b.is_ascii_digit());
    let part = |i: usize| main.get(i..i + 2).and_then(|x| x.parse::<u8>().ok()).unwrap_or(0);
    if !ok || part(0) > 23 || part(2) > 59 || part(4) > 59 {
        return Err(ConversionError::invalid(loc, "not a v2 time (HH[MM[SS]])"));
    }
    Ok(format!("{:02}:{:02}:{:02}", part(0), part(2), part(4)))
}

fn observation(
    ctx: &mut Ctx<'_>,
    obx: &Seg<'_>,
    id: &str,
    patient_ref: &str,
    obr_effective: &Option<String>,
) -> Result<Option<Value>, ConversionError> {
    let code = obx.first(3).and_then(|p| codeable(&p)).ok_or_else(|| ConversionError::missing(obx.loc(3)))?;
    let Some((value_key, value)) = value_x(ctx, obx)? else { return Ok(None) };
    let status = match obx.text(11) {
        Some(s) => lookup_str("0085", &s).unwrap_or("unknown"),
        None => "unknown",
    };
    let effective = match ctx.date_time(obx, 14)? {
        Some(e) => Some(e),
        None => obr_effective.clone(),
    };
    let interpretation: Vec<Value> = obx
        .rep_texts(8)
        .into_iter()
        .map(|c| {
            fixed_concept(
                "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                &c,
                lookup_str("0078", &c),
            )
        })
        .collect();
    let range: Vec<Value> = obx.text(7).map(|r| reference_range(&r)).into_iter().collect();
    let mut pairs = vec![
        ("resourceType", json!("Observation")),
        ("id", json!(id)),
        ("status", json!(status)),
        ("code", code),
        ("subject", reference(patient_ref)),
        ("effectiveDateTime", opt(effective)),
        ("interpretation", Value::Array(interpretation)),
        ("referenceRange", Value::Array(range)),
    ];
    if !value_key.is_empty() {
        pairs.push((value_key, value));
    }
    Ok(Some(obj(pairs)))
}

/// OBX-7: `low-high` gives low/high; anything else stays as text.
fn reference_range(r: &str) -> Value {
    let mut it = r.splitn(2, '-');
    if let (Some(a), Some(b)) = (it.next(), it.next())
        && let (Some(lo), Some(hi)) = (number(a), number(b))
    {
        return json!({"low": {"value": lo}, "high": {"value": hi}, "text": r});
    }
    json!({"text": r})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        assert_eq!(number("+1.50").map(|n| n.to_string()).as_deref(), Some("1.5"));
        assert_eq!(number(".5").map(|n| n.to_string()).as_deref(), Some("0.5"));
        assert_eq!(number("-007").map(|n| n.to_string()).as_deref(), Some("-7"));
        assert_eq!(number("12."), number("12"));
        for bad in ["", ".", "1.2.3", "abc", "1e5", "-", "+"] {
            assert_eq!(number(bad), None, "{bad}");
        }
    }

    #[test]
    fn times() {
        assert_eq!(time_of_day("0930", "X").unwrap(), "09:30:00");
        assert!(time_of_day("2460", "X").is_err());
    }
}
