//! REF^I12/I14: SDOHCC ServiceRequest and referral-management Task, with PRD providers and organizations.

use crate::ctx::Ctx;
use crate::datatypes::{address, codeable, contact_point, hd_key, human_name, obj, opt, reference, v2_concept};
use crate::error::ConversionError;
use crate::ids::resource_id;
use crate::patient::{patient, pid};
use crate::tables::lookup_str;
use crate::v2::{Parts, Seg};
use serde_json::{Value, json};

const SR_PROFILE: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ServiceRequest";
const TASK_PROFILE: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-TaskForReferralManagement";

pub(crate) fn convert(ctx: &mut Ctx<'_>, trigger: &str) -> Result<(), ConversionError> {
    let rf1 = ctx.first("RF1").ok_or_else(|| ConversionError::missing("RF1-6"))?;
    let referral = rf1.first(6).ok_or_else(|| ConversionError::missing(rf1.loc(6)))?;
    let ref_value = referral.s(1).ok_or_else(|| ConversionError::missing(rf1.loc(6)))?;
    let ref_ns = referral.s(3).or_else(|| referral.s(2)).unwrap_or_else(|| ctx.facility.clone());
    let pid = pid(ctx)?;
    let org = ctx.sending_organization();

    // PRD: RP (referring provider) requests, RT (referred-to provider) performs and owns the Task.
    let mut requester = None;
    let mut performer = None;
    for prd in ctx.all("PRD") {
        let role = prd.text(1).unwrap_or_default();
        let Some(r) = provider(ctx, &prd, &role, org.as_deref()) else { continue };
        match role.as_str() {
            "RP" if requester.is_none() => requester = Some(r),
            "RT" if performer.is_none() => performer = Some(r),
            _ => {}
        }
    }
    let p = patient(ctx, &pid, org.as_deref())?;
    let patient_ref = ctx.push(p);

    let obr = ctx.first("OBR");
    let code = match obr.as_ref().and_then(|o| o.first(4)).and_then(|p| codeable(&p)) {
        Some(c) => c,
        None => rf1.first(3).map(|p| table_concept(&p, "0281")).ok_or_else(|| ConversionError::missing(rf1.loc(3)))?,
    };
    let mut reasons: Vec<Value> =
        ctx.all("DG1").iter().filter_map(|dg1| dg1.first(3)).filter_map(|p| codeable(&p)).collect();
    reasons.extend(rf1.reps(10).iter().map(|p| table_concept(p, "0336")));
    let mut category: Vec<Value> = rf1.first(3).map(|p| table_concept(&p, "0281")).into_iter().collect();
    category.extend(rf1.first(5).map(|p| table_concept(&p, "0284")));
    let mut identifiers = vec![ident(&referral, "PLAC")];
    if let Some(ext) = rf1.first(11) {
        identifiers.push(ident(&ext, "FILL"));
    }
    let status_code = rf1.text(1).unwrap_or_default();
    let priority = rf1.text(2).and_then(|c| lookup_str("0280", &c));
    let start = ctx.date_time(&rf1, 7)?;
    let end = ctx.date_time(&rf1, 8)?;
    let authored = match ctx.date_time(&rf1, 9)? {
        Some(a) => Some(a),
        None => match &start {
            Some(s) => Some(s.clone()),
            None => ctx.msh().map(|m| ctx.date_time(&m, 7)).transpose()?.flatten(),
        },
    };
    // SDOHCC-TaskForReferralManagement requires requester (PractitionerRole or Organization) and authoredOn: a
    // referral without either is refused rather than stored as a Task that does not conform.
    let requester = requester.or_else(|| org.clone()).ok_or_else(|| ConversionError::missing("PRD-1"))?;
    let authored = authored.ok_or_else(|| ConversionError::missing(rf1.loc(9)))?;
    // Both carry the message they came from, so a status change can be sent back to its sender (RRI^I12).
    let source = ctx.message_source().to_uri();
    let sr_id = resource_id("ServiceRequest", &[&ref_ns, &ref_value]);
    let sr = obj(vec![
        ("resourceType", json!("ServiceRequest")),
        ("id", json!(sr_id)),
        ("meta", json!({"profile": [SR_PROFILE], "source": source})),
        ("identifier", Value::Array(identifiers.into_iter().flatten().collect())),
        ("status", json!(lookup_str("0283", &status_code).unwrap_or("active"))),
        ("intent", json!("order")),
        ("category", Value::Array(category)),
        ("priority", priority.map_or(Value::Null, |p| json!(p))),
        ("code", code),
        ("subject", reference(&patient_ref)),
        ("occurrencePeriod", obj(vec![("start", opt(start)), ("end", opt(end))])),
        ("authoredOn", json!(authored)),
        ("requester", reference(&requester)),
        ("performer", Value::Array(performer.as_deref().map(reference).into_iter().collect())),
        ("reasonCode", Value::Array(reasons)),
    ]);
    let sr_ref = ctx.push(sr);

    // I12 opens the referral; I14 carries the referred-to party's answer in RF1-1.
    let task_status =
        if trigger == "I14" { lookup_str("0283Task", &status_code).unwrap_or("requested") } else { "requested" };
    let task = obj(vec![
        ("resourceType", json!("Task")),
        ("id", json!(resource_id("Task", &[&ref_ns, &ref_value]))),
        ("meta", json!({"profile": [TASK_PROFILE], "source": source})),
        ("status", json!(task_status)),
        ("intent", json!("order")),
        ("priority", priority.map_or(Value::Null, |p| json!(p))),
        (
            "code",
            json!({"coding": [{"system": "http://hl7.org/fhir/CodeSystem/task-code", "code": "fulfill", "display": "Fulfill the focal request"}]}),
        ),
        ("focus", reference(&sr_ref)),
        ("for", reference(&patient_ref)),
        ("authoredOn", json!(authored)),
        ("requester", reference(&requester)),
        ("owner", performer.as_deref().map_or(Value::Null, reference)),
    ]);
    ctx.push(task);
    Ok(())
}

fn ident(p: &Parts<'_>, ty: &str) -> Option<Value> {
    crate::datatypes::ei_identifier(p, Some(ty))
}

/// A CWE from an HL7 table; a code without a named system is taken to be from `table`.
fn table_concept(p: &Parts<'_>, table: &str) -> Value {
    let mut c = codeable(p).unwrap_or_else(|| json!({}));
    let named = p.s(3).is_some_and(|s| s != format!("HL7{table}"));
    if !named && let Some(code) = p.s(1) {
        // A table code gets the table's system only when the table defines it ("SO" is not in 0281).
        c["coding"][0] = v2_concept(table, &code)["coding"][0].clone();
        if let Some(d) = p.s(2) {
            c["coding"][0]["display"] = json!(d);
        }
    }
    c
}

/// PRD to Organization, or to Practitioner plus a PractitionerRole at the sending facility (Task.requester and
/// owner may reference a PractitionerRole or Organization, not a bare Practitioner). A PRD-2 name with a given
/// name is a person; one with only the first component is an organization.
fn provider(ctx: &mut Ctx<'_>, prd: &Seg<'_>, role: &str, org: Option<&str>) -> Option<String> {
    let name = prd.first(2);
    let ids = prd.reps(7);
    // PRD-7 is CX-shaped in practice (value^^^authority); its authority namespaces the key.
    let id_key = ids.first().and_then(|p| Some((hd_key(&p.sub(4)).or_else(|| p.s(2)).unwrap_or_default(), p.s(1)?)));
    let identifiers: Vec<Value> = ids.iter().filter_map(provider_identifier).collect();
    let person = name.as_ref().is_some_and(|n| n.s(2).is_some());
    let key = match (&id_key, &name) {
        (Some((ns, v)), _) => format!("id|{ns}|{v}"),
        (None, Some(n)) => {
            format!("name|{}", (1..=6).map(|i| n.s(i).unwrap_or_default()).collect::<Vec<_>>().join("^"))
        }
        (None, None) => {
            ctx.warn(format!("{} provider has neither name nor identifier; skipped", prd.loc(2)));
            return None;
        }
    };
    let telecom: Vec<Value> = prd.reps(5).iter().filter_map(contact_point).collect();
    let addresses: Vec<Value> = prd.reps(3).iter().filter_map(address).collect();
    if !person {
        let o = obj(vec![
            ("resourceType", json!("Organization")),
            ("id", json!(resource_id("Organization", &["PRD", &key]))),
            ("identifier", Value::Array(identifiers)),
            ("active", json!(true)),
            ("name", opt(name.as_ref().and_then(|n| n.s(1)))),
            ("telecom", Value::Array(telecom)),
            ("address", Value::Array(addresses)),
        ]);
        return Some(ctx.push(o));
    }
    let practitioner = obj(vec![
        ("resourceType", json!("Practitioner")),
        ("id", json!(resource_id("Practitioner", &["PRD", &key]))),
        ("identifier", Value::Array(identifiers)),
        ("active", json!(true)),
        ("name", Value::Array(name.as_ref().and_then(|n| human_name(n, 0)).into_iter().collect())),
        ("telecom", Value::Array(telecom)),
        ("address", Value::Array(addresses)),
    ]);
    let practitioner_ref = ctx.push(practitioner);
    let role_concept = (!role.is_empty()).then(|| v2_concept("0286", role));
    let pr = obj(vec![
        ("resourceType", json!("PractitionerRole")),
        ("id", json!(resource_id("PractitionerRole", &["PRD", &key, org.unwrap_or_default()]))),
        ("active", json!(true)),
        ("practitioner", reference(&practitioner_ref)),
        ("organization", org.map_or(Value::Null, reference)),
        ("code", Value::Array(role_concept.into_iter().collect())),
    ]);
    Some(ctx.push(pr))
}

/// PRD-7 identifier. `1234^^^NPI` names NPI as the authority; the NPI system URI is well known.
fn provider_identifier(p: &Parts<'_>) -> Option<Value> {
    let mut i = crate::datatypes::identifier(p)?;
    let authority = p.sub(4).s(1).or_else(|| p.s(2));
    if i.get("system").is_none() && authority.as_deref() == Some("NPI") {
        i["system"] = json!("http://hl7.org/fhir/sid/us-npi");
    }
    Some(i)
}
