//! ADT messages: Patient, Encounter (PV1/PV2), Coverage (IN1), RelatedPerson (NK1), and A40 merges.

use crate::ctx::Ctx;
use crate::datatypes::{
    address, codeable, contact_point, fixed_concept, hd_key, human_name, identifier, obj, object, opt, reference,
    v2_concept,
};
use crate::error::ConversionError;
use crate::ids::resource_id;
use crate::patient::{identity_key, patient, patient_id, pid};
use crate::tables::lookup;
use crate::v2::{Parts, Seg};
use serde_json::{Value, json};

/// A01/A02/A03/A04/A08/A28/A31.
pub(crate) fn convert(ctx: &mut Ctx<'_>, trigger: &str) -> Result<(), ConversionError> {
    let pid = pid(ctx)?;
    let org = ctx.sending_organization();
    let p = patient(ctx, &pid, org.as_deref())?;
    let patient_ref = ctx.push(p);
    for in1 in ctx.all("IN1") {
        coverage(ctx, &in1, &patient_ref)?;
    }
    for nk1 in ctx.all("NK1") {
        related_person(ctx, &nk1, &patient_ref);
    }
    if let Some(pv1) = ctx.first("PV1") {
        encounter(ctx, &pv1, &pid, trigger, &patient_ref, org.as_deref())?;
    }
    Ok(())
}

/// A40: the PID patient survives and replaces the MRG-1 patient. Both resources are written, linked both
/// ways, so the old id keeps resolving (to an inactive record pointing at the survivor) instead of a second
/// live copy of the person.
pub(crate) fn merge(ctx: &mut Ctx<'_>) -> Result<(), ConversionError> {
    let org = ctx.sending_organization();
    let pids = ctx.all("PID");
    let mrgs = ctx.all("MRG");
    if pids.is_empty() {
        return Err(ConversionError::missing("PID-3"));
    }
    for (i, pid) in pids.iter().enumerate() {
        let mrg = mrgs.get(i).ok_or_else(|| ConversionError::missing(format!("MRG{}-1", occ(i))))?;
        let survivor_id = patient_id(ctx, pid)?;
        let old_reps = mrg.reps(1);
        let (ns, value) = identity_key(ctx, &old_reps).ok_or_else(|| ConversionError::missing(mrg.loc(1)))?;
        let old_id = resource_id("Patient", &[&ns, &value]);
        if old_id == survivor_id {
            return Err(ConversionError::invalid(mrg.loc(1), "prior patient identifier equals the surviving one"));
        }
        let mut survivor = patient(ctx, pid, org.as_deref())?;
        survivor["link"] = json!([{"other": reference(&format!("Patient/{old_id}")), "type": "replaces"}]);
        ctx.push(survivor);
        let old = obj(vec![
            ("resourceType", json!("Patient")),
            ("id", json!(old_id)),
            ("identifier", Value::Array(old_reps.iter().filter_map(identifier).collect())),
            ("active", json!(false)),
            ("link", json!([{"other": reference(&format!("Patient/{survivor_id}")), "type": "replaced-by"}])),
        ]);
        ctx.push(old);
    }
    Ok(())
}

fn occ(i: usize) -> String {
    if i == 0 { String::new() } else { format!("[{}]", i + 1) }
}

fn encounter(
    ctx: &mut Ctx<'_>,
    pv1: &Seg<'_>,
    pid: &Seg<'_>,
    trigger: &str,
    patient_ref: &str,
    org: Option<&str>,
) -> Result<(), ConversionError> {
    let Some(class_code) = pv1.text(2) else {
        ctx.warn(format!("{} patient class missing; Encounter not created", pv1.loc(2)));
        return Ok(());
    };
    if class_code == "N" {
        return Ok(());
    }
    let visit = pv1.first(19);
    let start = ctx.date_time(pv1, 44)?;
    let end = ctx.date_time(pv1, 45)?;
    // The visit number names the encounter; without one, the patient plus admit time is the best stable key.
    let key = match visit
        .as_ref()
        .and_then(|v| Some((hd_key(&v.sub(4)).unwrap_or_else(|| ctx.facility.clone()), v.s(1)?)))
    {
        Some((ns, value)) => vec!["visit".to_owned(), ns, value],
        None => match (&start, identity_key(ctx, &pid.reps(3))) {
            (Some(s), Some((ns, value))) => vec!["admit".to_owned(), ns, value, s.clone()],
            _ => {
                ctx.warn(format!("{} visit number and PV1-44 admit time missing; Encounter not created", pv1.loc(19)));
                return Ok(());
            }
        },
    };
    let id = resource_id("Encounter", &key.iter().map(String::as_str).collect::<Vec<_>>());
    let class = match lookup("0004", &class_code) {
        Some(c) => obj(vec![
            ("system", json!("http://terminology.hl7.org/CodeSystem/v3-ActCode")),
            ("code", c["code"].clone()),
            ("display", c["display"].clone()),
        ]),
        None => v2_concept("0004", &class_code)["coding"][0].clone(),
    };
    let status = match trigger {
        "A03" => "finished",
        "A04" => "arrived",
        _ if end.is_some() => "finished",
        _ => "in-progress",
    };
    let mut identifiers = Vec::new();
    if let Some(v) = &visit
        && let Some(mut i) = identifier(v)
    {
        if i.get("type").is_none() {
            i["type"] = v2_concept("0203", "VN");
        }
        identifiers.push(i);
    }
    let mut participants = Vec::new();
    for (field, code, display) in [(7, "ATND", "attender"), (8, "REF", "referrer"), (9, "CON", "consultant")] {
        for p in pv1.reps(field) {
            let name = human_name(&p, 1);
            let display_name = name.as_ref().map(display_of);
            if let Some(n) = display_name {
                let ty =
                    fixed_concept("http://terminology.hl7.org/CodeSystem/v3-ParticipationType", code, Some(display));
                participants.push(object([("type", Value::Array(vec![ty])), ("individual", json!({"display": n}))]));
            }
        }
    }
    let place = |pl: &Parts<'_>, state: &str| {
        let text: Vec<String> = [1, 2, 3, 4].iter().filter_map(|&n| pl.s(n)).collect();
        json!({"location": {"display": text.join(" ")}, "status": state})
    };
    // A transfer (A02) names the bed left in PV1-6; keeping it as a completed location preserves the movement.
    let mut location: Vec<Value> = Vec::new();
    if trigger == "A02"
        && let Some(prior) = pv1.first(6)
    {
        location.push(place(&prior, "completed"));
    }
    if let Some(current) = pv1.first(3) {
        location.push(place(&current, if status == "finished" { "completed" } else { "active" }));
    }
    let hospitalization = obj(vec![
        ("admitSource", pv1.text(14).map_or(Value::Null, |c| v2_concept("0023", &c))),
        ("dischargeDisposition", pv1.text(36).map_or(Value::Null, |c| v2_concept("0112", &c))),
    ]);
    let reason: Vec<Value> =
        ctx.first("PV2").and_then(|pv2| pv2.first(3)).and_then(|p| codeable(&p)).into_iter().collect();
    let enc = obj(vec![
        ("resourceType", json!("Encounter")),
        ("id", json!(id)),
        ("identifier", Value::Array(identifiers)),
        ("status", json!(status)),
        ("class", class),
        ("type", Value::Array(pv1.text(4).map(|c| v2_concept("0007", &c)).into_iter().collect())),
        ("subject", reference(patient_ref)),
        ("participant", Value::Array(participants)),
        ("period", obj(vec![("start", opt(start)), ("end", opt(end))])),
        ("reasonCode", Value::Array(reason)),
        ("hospitalization", hospitalization),
        ("location", Value::Array(location)),
        ("serviceProvider", org.map_or(Value::Null, reference)),
    ]);
    ctx.push(enc);
    Ok(())
}

/// "Given Family" for a display-only reference.
fn display_of(name: &Value) -> String {
    let mut parts: Vec<&str> =
        name["given"].as_array().map(|g| g.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    if let Some(f) = name["family"].as_str() {
        parts.push(f);
    }
    parts.join(" ")
}

fn coverage(ctx: &mut Ctx<'_>, in1: &Seg<'_>, patient_ref: &str) -> Result<(), ConversionError> {
    let company_id = in1.first(3);
    let company_name = in1.comp(4, 1);
    let payer_key = company_id.as_ref().and_then(|c| c.s(1)).or_else(|| company_name.clone());
    let Some(payer_key) = payer_key else {
        ctx.warn(format!("{} insurance company missing; Coverage not created", in1.loc(3)));
        return Ok(());
    };
    let payer = obj(vec![
        ("resourceType", json!("Organization")),
        ("id", json!(resource_id("Organization", &["IN1-3", &payer_key]))),
        ("identifier", Value::Array(company_id.as_ref().and_then(identifier).into_iter().collect())),
        ("active", json!(true)),
        ("name", opt(company_name)),
        ("address", Value::Array(in1.reps(5).iter().filter_map(address).collect())),
        ("telecom", Value::Array(in1.reps(7).iter().filter_map(contact_point).collect())),
    ]);
    let payer_ref = ctx.push(payer);
    let plan = in1.first(2);
    let policy = in1.text(36);
    let member = in1.first(49).and_then(|p| p.s(1));
    let plan_code = plan.as_ref().and_then(|p| p.s(1));
    let id_part = policy.clone().or_else(|| member.clone()).or_else(|| plan_code.clone()).unwrap_or_default();
    let id = resource_id("Coverage", &[patient_ref, &payer_key, &id_part]);
    let mut identifiers = Vec::new();
    if let Some(p) = &policy {
        identifiers.push(json!({"value": p}));
    }
    if let Some(i) = in1.first(49).as_ref().and_then(identifier) {
        identifiers.push(i);
    }
    let mut class = Vec::new();
    if let Some(p) = &plan
        && let Some(code) = p.s(1)
    {
        class.push(obj(vec![
            ("type", fixed_concept("http://terminology.hl7.org/CodeSystem/coverage-class", "plan", Some("Plan"))),
            ("value", json!(code)),
            ("name", opt(p.s(2))),
        ]));
    }
    if let Some(group) = in1.text(8) {
        class.push(obj(vec![
            ("type", fixed_concept("http://terminology.hl7.org/CodeSystem/coverage-class", "group", Some("Group"))),
            ("value", json!(group)),
            ("name", opt(in1.comp(9, 1))),
        ]));
    }
    let relationship = in1.text(17).and_then(|c| {
        let code = match c.as_str() {
            "SEL" => "self",
            "SPO" => "spouse",
            "CHD" => "child",
            "DOM" => "common",
            "PAR" => "parent",
            "OTH" => "other",
            _ => return None,
        };
        Some(fixed_concept("http://terminology.hl7.org/CodeSystem/subscriber-relationship", code, None))
    });
    let start = ctx.date_time(in1, 12)?;
    let end = ctx.date_time(in1, 13)?;
    let cov = obj(vec![
        ("resourceType", json!("Coverage")),
        ("id", json!(id)),
        ("identifier", Value::Array(identifiers)),
        ("status", json!("active")),
        ("type", in1.text(15).map_or(Value::Null, |c| v2_concept("0086", &c))),
        ("subscriberId", opt(policy.or(member))),
        ("beneficiary", reference(patient_ref)),
        ("relationship", relationship.unwrap_or(Value::Null)),
        ("period", obj(vec![("start", opt(start)), ("end", opt(end))])),
        ("payor", Value::Array(vec![reference(&payer_ref)])),
        ("class", Value::Array(class)),
    ]);
    ctx.push(cov);
    Ok(())
}

fn related_person(ctx: &mut Ctx<'_>, nk1: &Seg<'_>, patient_ref: &str) {
    let names: Vec<Value> = nk1.reps(2).iter().filter_map(|p| human_name(p, 0)).collect();
    let relationship = nk1.first(3).and_then(|p| relationship_concept(&p));
    if names.is_empty() && relationship.is_none() {
        ctx.warn(format!("{} next of kin has neither name nor relationship; RelatedPerson not created", nk1.loc(2)));
        return;
    }
    // Set IDs are positional and may shift between messages; name and relationship identify the person.
    let key = format!("{}|{}", serde_json::to_string(&names).unwrap_or_default(), nk1.comp(3, 1).unwrap_or_default());
    let mut telecom: Vec<Value> = nk1.reps(5).iter().filter_map(contact_point).collect();
    for mut c in nk1.reps(6).iter().filter_map(contact_point) {
        if c.get("use").is_none() {
            c["use"] = json!("work");
        }
        telecom.push(c);
    }
    let rp = obj(vec![
        ("resourceType", json!("RelatedPerson")),
        ("id", json!(resource_id("RelatedPerson", &[patient_ref, &key]))),
        ("active", json!(true)),
        ("patient", reference(patient_ref)),
        ("relationship", Value::Array(relationship.into_iter().collect())),
        ("name", Value::Array(names)),
        ("telecom", Value::Array(telecom)),
        ("address", Value::Array(nk1.reps(4).iter().filter_map(address).collect())),
    ]);
    ctx.push(rp);
}

/// NK1-3 relationship; a code without a named system is from HL7 table 0063.
fn relationship_concept(p: &Parts<'_>) -> Option<Value> {
    let mut c = codeable(p)?;
    if p.s(3).is_none()
        && let Some(code) = p.s(1)
    {
        c["coding"][0] = v2_concept("0063", &code)["coding"][0].clone();
    }
    Some(c)
}
