//! PID to Patient (US Core race/ethnicity, language, identifiers) and the patient identity key.

use crate::ctx::Ctx;
use crate::datatypes::{
    address, codeable, contact_point, fixed_concept, hd_key, human_name, identifier, obj, object, reference, v2_concept,
};
use crate::error::ConversionError;
use crate::ids::resource_id;
use crate::tables::{coding_system, is_cdc_race_system, lookup, lookup_str};
use crate::v2::{Parts, Seg};
use serde_json::{Value, json};

const CDC_RACE: &str = "urn:oid:2.16.840.1.113883.6.238";
const RACE_URL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-race";
const ETHNICITY_URL: &str = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-ethnicity";

/// The identifier that names the patient: the first MR-typed CX, else the first valued one. The namespace is
/// the assigning authority, else the sending facility. Preferring MR keeps the key stable when an update
/// message lists more identifiers or in another order.
pub(crate) fn identity_key(ctx: &Ctx<'_>, reps: &[Parts<'_>]) -> Option<(String, String)> {
    let chosen = reps
        .iter()
        .find(|p| p.s(1).is_some() && p.s(5).as_deref() == Some("MR"))
        .or_else(|| reps.iter().find(|p| p.s(1).is_some()))?;
    let ns = hd_key(&chosen.sub(4)).unwrap_or_else(|| ctx.facility.clone());
    Some((ns, chosen.s(1)?))
}

/// Patient id for the PID segment (or `MissingField` PID-3).
pub(crate) fn patient_id(ctx: &Ctx<'_>, pid: &Seg<'_>) -> Result<String, ConversionError> {
    let (ns, value) = identity_key(ctx, &pid.reps(3)).ok_or_else(|| ConversionError::missing(pid.loc(3)))?;
    Ok(resource_id("Patient", &[&ns, &value]))
}

/// The message's PID segment, or a `MissingField` error.
pub(crate) fn pid<'a>(ctx: &Ctx<'a>) -> Result<Seg<'a>, ConversionError> {
    ctx.first("PID").ok_or_else(|| ConversionError::missing("PID-3"))
}

/// Builds the Patient for a PID segment (not yet pushed, so a merge can add links).
pub(crate) fn patient(ctx: &mut Ctx<'_>, pid: &Seg<'_>, organization: Option<&str>) -> Result<Value, ConversionError> {
    let id = patient_id(ctx, pid)?;
    let mut extension = Vec::new();
    if let Some(e) = race_ethnicity(ctx, pid, 10, RACE_URL, "ombRace") {
        extension.push(e);
    }
    if let Some(e) = race_ethnicity(ctx, pid, 22, ETHNICITY_URL, "ombEthnicity") {
        extension.push(e);
    }
    let identifiers: Vec<Value> = pid.reps(3).iter().filter_map(identifier).collect();
    let names: Vec<Value> = pid.reps(5).iter().filter_map(|p| human_name(p, 0)).collect();
    let mut telecom: Vec<Value> = pid.reps(13).iter().filter_map(contact_point).collect();
    for mut c in pid.reps(14).iter().filter_map(contact_point) {
        if c.get("use").is_none() {
            c["use"] = json!("work");
        }
        telecom.push(c);
    }
    let county = pid.text(12);
    let addresses: Vec<Value> = pid
        .reps(11)
        .iter()
        .filter_map(address)
        .map(|mut a| {
            // PID-12 is the older home of the county code; use it only where XAD-9 did not give one.
            if let (None, Some(c)) = (a.get("district"), &county) {
                a["district"] = json!(c);
            }
            a
        })
        .collect();
    let gender = match pid.text(8) {
        Some(code) => match lookup_str("0001", &code) {
            Some(g) => json!(g),
            None => {
                ctx.warn(format!("{} administrative sex not in table 0001; gender omitted", pid.loc(8)));
                Value::Null
            }
        },
        None => Value::Null,
    };
    let birth_date = ctx.date(pid, 7)?;
    let deceased = match (ctx.date_time(pid, 29)?, pid.text(30).as_deref()) {
        (Some(dt), _) => ("deceasedDateTime", json!(dt)),
        (None, Some("Y")) => ("deceasedBoolean", json!(true)),
        (None, Some("N")) => ("deceasedBoolean", json!(false)),
        _ => ("deceasedBoolean", Value::Null),
    };
    let marital = pid.text(16).map(|code| match lookup("0002", &code) {
        Some(m) => fixed_concept(
            "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
            m["code"].as_str().unwrap_or_default(),
            m["display"].as_str(),
        ),
        None => v2_concept("0002", &code),
    });
    let communication: Vec<Value> = pid
        .first(15)
        .and_then(|p| codeable(&p))
        .map(|language| object([("language", language), ("preferred", Value::Bool(true))]))
        .into_iter()
        .collect();
    let multiple_birth = match (pid.text(25).and_then(|n| n.parse::<u32>().ok()), pid.text(24).as_deref()) {
        (Some(n), _) => ("multipleBirthInteger", json!(n)),
        (None, Some("Y")) => ("multipleBirthBoolean", json!(true)),
        (None, Some("N")) => ("multipleBirthBoolean", json!(false)),
        _ => ("multipleBirthBoolean", Value::Null),
    };
    Ok(obj(vec![
        ("resourceType", json!("Patient")),
        ("id", json!(id)),
        ("extension", Value::Array(extension)),
        ("identifier", Value::Array(identifiers)),
        ("active", json!(true)),
        ("name", Value::Array(names)),
        ("telecom", Value::Array(telecom)),
        ("gender", gender),
        ("birthDate", birth_date.map_or(Value::Null, Value::String)),
        deceased,
        ("address", Value::Array(addresses)),
        ("maritalStatus", marital.unwrap_or(Value::Null)),
        multiple_birth,
        ("communication", Value::Array(communication)),
        ("managingOrganization", organization.map_or(Value::Null, reference)),
    ]))
}

/// US Core race (PID-10) or ethnicity (PID-22) extension. CDC codes in the OMB minimum set go to
/// `ombCategory`, other CDC codes to `detailed`; codes from other systems only contribute to the text.
fn race_ethnicity(ctx: &mut Ctx<'_>, pid: &Seg<'_>, field: usize, url: &str, omb_table: &str) -> Option<Value> {
    let mut omb = Vec::new();
    let mut detailed = Vec::new();
    let mut texts = Vec::new();
    let mut foreign = false;
    for p in pid.reps(field) {
        for (c, d, s) in [(1, 2, 3), (4, 5, 6)] {
            let Some(code) = p.s(c) else { continue };
            let display = p.s(d);
            if let Some(t) = &display
                && !texts.contains(t)
            {
                texts.push(t.clone());
            }
            let system = p.s(s);
            let cdc_shaped = code.len() == 6 && code.as_bytes()[4] == b'-';
            let is_cdc = match system.as_deref() {
                Some(name) => is_cdc_race_system(name) || coding_system(name).as_deref() == Some(CDC_RACE),
                None => cdc_shaped,
            };
            let null_flavor = lookup("nullFlavor", &code);
            let coding = |sys: &str, display: Option<&str>| {
                obj(vec![
                    ("system", json!(sys)),
                    ("code", json!(code)),
                    ("display", display.map_or(Value::Null, |d| json!(d))),
                ])
            };
            if let Some(nf) = null_flavor {
                omb.push(coding("http://terminology.hl7.org/CodeSystem/v3-NullFlavor", nf.as_str()));
            } else if is_cdc && let Some(name) = lookup_str(omb_table, &code) {
                omb.push(coding(CDC_RACE, Some(name)));
            } else if is_cdc && cdc_shaped {
                detailed.push(coding(CDC_RACE, display.as_deref()));
            } else {
                foreign = true;
            }
        }
    }
    if foreign {
        ctx.warn(format!(
            "{} has codes outside the CDC race and ethnicity code set; kept as text only",
            pid.loc(field)
        ));
    }
    if omb_table == "ombEthnicity" && omb.len() > 1 {
        ctx.warn(format!("{} has more than one OMB ethnicity category; only the first was kept", pid.loc(field)));
        omb.truncate(1);
    }
    if omb.is_empty() && detailed.is_empty() && texts.is_empty() {
        return None;
    }
    let text = if texts.is_empty() {
        omb.iter()
            .chain(&detailed)
            .filter_map(|c| c["display"].as_str().or(c["code"].as_str()))
            .collect::<Vec<_>>()
            .join(", ")
    } else {
        texts.join(", ")
    };
    let mut ext: Vec<Value> =
        omb.into_iter().map(|c| object([("url", json!("ombCategory")), ("valueCoding", c)])).collect();
    ext.extend(detailed.into_iter().map(|c| object([("url", json!("detailed")), ("valueCoding", c)])));
    ext.push(object([("url", json!("text")), ("valueString", Value::String(text))]));
    Some(object([("url", json!(url)), ("extension", Value::Array(ext))]))
}
