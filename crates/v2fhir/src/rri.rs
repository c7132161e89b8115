//! FHIR -> HL7 v2: a referral Task's status as RRI^I12 (v2.5.1) to the EHR that sent the referral as REF^I12.
//!
//! | segment | from |
//! |---|---|
//! | MSH | MSH-3/4 the gateway, MSH-5/6 the REF's MSH-3/4 (the Task's `meta.source`), MSH-9 `RRI^I12^RRI_I12` |
//! | MSA | `AA` and the REF's control id (MSA-2) |
//! | RF1 | RF1-1 Task.status via `taskStatus0283` (table 0283 code, FHIR code as the alternate coding), RF1-2 Task.priority (0280), RF1-6/RF1-11 the ServiceRequest's PLAC/FILL identifiers, RF1-9 when the status was set |
//! | PRD | `RT` Task.owner (name, identifiers), `RP` Task.requester (its Practitioner's name, or the Organization's) |
//! | PID | PID-3 the Patient's identifiers only: the EHR matches on them, and no other patient data is needed |
//! | NTE | Task.statusReason.text, when given |

use hl7v2::{Delimiters, MessageBuilder, escape};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::source::{Hd, MessageSource};
use crate::tables::{lookup, lookup_str, v2_display};

/// What an RRI^I12 is made from: the Task version and the resources it references (each optional: a missing one
/// leaves its segment fields empty rather than failing the update).
#[derive(Debug, Clone, Copy)]
pub struct ReferralStatusUpdate<'a> {
    /// The Task version whose status is reported.
    pub task: &'a Value,
    /// The referral message (REF) the Task came from.
    pub source: &'a MessageSource,
    /// Task.focus.
    pub service_request: Option<&'a Value>,
    /// Task.for.
    pub patient: Option<&'a Value>,
    /// Task.owner (the referred-to organization).
    pub owner: Option<&'a Value>,
    /// Task.requester (PractitionerRole or Organization).
    pub requester: Option<&'a Value>,
    /// The Practitioner of a PractitionerRole requester.
    pub requester_practitioner: Option<&'a Value>,
    /// MSH-3: this gateway's application name.
    pub sending_application: &'a str,
    /// MSH-4: this gateway's facility name.
    pub sending_facility: &'a str,
    /// MSH-10 (see [`rri_control_id`]).
    pub control_id: &'a str,
    /// MSH-7, an HL7 DTM.
    pub timestamp: &'a str,
}

/// Why no RRI can be made for a Task version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RriError {
    /// The Task has no status code.
    #[error("the Task has no status")]
    NoStatus,
    /// The status has no referral status (e.g. entered-in-error): nothing to tell the EHR.
    #[error("Task status {0:?} has no HL7 v2 referral status (table 0283)")]
    UnmappedStatus(String),
}

/// A control id for the RRI of one Task version: `R` and 13 base-36 digits of SHA-256 over the Task id and version,
/// so building it again gives the same MSH-10 (receivers dedupe on it) and it fits the 20 characters of v2.5.1.
pub fn rri_control_id(task_id: &str, version_id: i64) -> String {
    let mut h = Sha256::new();
    h.update(b"RRI");
    h.update([0x1f]);
    h.update(task_id.as_bytes());
    h.update([0x1f]);
    h.update(version_id.to_string().as_bytes());
    let digest = h.finalize();
    let mut n = digest[..8].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b));
    const DIGITS: &[u8; 36] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = vec![b'0'; 13];
    for slot in out.iter_mut().rev() {
        *slot = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    format!("R{}", String::from_utf8_lossy(&out))
}

/// Builds the RRI^I12 (ER7, UTF-8, CR-terminated segments) for one Task version.
pub fn build_rri(update: &ReferralStatusUpdate<'_>) -> Result<Vec<u8>, RriError> {
    let task = update.task;
    let status = str_at(task, &["status"]).ok_or(RriError::NoStatus)?;
    let mapped = lookup("taskStatus0283", status)
        .filter(|m| m.is_object())
        .ok_or_else(|| RriError::UnmappedStatus(status.to_owned()))?;
    let code = mapped.get("code").and_then(Value::as_str).unwrap_or_default();
    let display = mapped.get("display").and_then(Value::as_str).unwrap_or_default();
    let alternate_system = lookup_str("taskStatus0283", "alternateSystem").unwrap_or_default();

    let d = Delimiters::default();
    let mut b = MessageBuilder::new(d);
    let source = update.source;
    b.segment("MSH")
        .field(3, update.sending_application)
        .field(4, update.sending_facility)
        .field_raw(5, &composite(&d, &hd(&source.sending_application)))
        .field_raw(6, &composite(&d, &hd(&source.sending_facility)))
        .field(7, update.timestamp)
        .components(9, &["RRI", "I12", "RRI_I12"])
        .field(10, update.control_id)
        .field(11, "P")
        .field(12, "2.5.1")
        .field(18, "UNICODE UTF-8");
    b.segment("MSA").field(1, "AA").field(2, &source.control_id);

    let identifiers = update.service_request.map(|sr| array(sr, "identifier")).unwrap_or_default();
    let typed = |ty: &str| identifiers.iter().find(|i| has_type(i, ty)).map(|i| ei(&d, i)).unwrap_or_default();
    let priority = str_at(task, &["priority"]).and_then(|p| reverse_lookup("0280", p)).unwrap_or_default();
    let changed = str_at(task, &["lastModified"]).or_else(|| str_at(task, &["meta", "lastUpdated"]));
    {
        let mut rf1 = b.segment("RF1");
        rf1.components(
            1,
            &[code, v2_display("0283", code).unwrap_or_default(), "HL70283", status, display, alternate_system],
        )
        .components(2, &[&priority, v2_display("0280", &priority).unwrap_or_default(), "HL70280"])
        .field_raw(6, &typed("PLAC"))
        .field(9, &changed.map(dtm).unwrap_or_default())
        .field_raw(11, &typed("FILL"));
    }
    provider(&mut b, "RT", update.owner, None);
    provider(&mut b, "RP", update.requester, update.requester_practitioner);
    let patient_ids: Vec<Vec<u8>> =
        update.patient.map(|p| array(p, "identifier")).unwrap_or_default().iter().map(|i| cx(&d, i)).collect();
    b.segment("PID").field(1, "1").field_raw(3, &patient_ids.join(&d.repetition));
    if let Some(reason) = str_at(task, &["statusReason", "text"]).filter(|t| !t.trim().is_empty()) {
        b.segment("NTE").field(1, "1").field(2, "L").field(3, reason);
    }
    Ok(b.build())
}

/// A PRD segment for a provider: an Organization's name and identifiers, or a PractitionerRole's Practitioner's.
fn provider(b: &mut MessageBuilder, role: &str, resource: Option<&Value>, practitioner: Option<&Value>) {
    let d = b.delimiters();
    let person = practitioner.or(resource.filter(|r| str_at(r, &["resourceType"]) == Some("Practitioner")));
    let named = person.or(resource);
    let name: Vec<u8> = match named.and_then(|r| r.get("name")) {
        Some(Value::String(org)) => escape(org, &d).into_owned().into_bytes(),
        Some(Value::Array(names)) => names.first().map(|n| xpn(&d, n)).unwrap_or_default(),
        _ => Vec::new(),
    };
    let ids: Vec<Vec<u8>> =
        named.map(|r| array(r, "identifier")).unwrap_or_default().iter().map(|i| pi(&d, i)).collect();
    b.segment("PRD").field(1, role).field_raw(2, &name).field_raw(7, &ids.join(&d.repetition));
}

/// HumanName -> XPN: family ^ given ^ further given names ^ suffix ^ prefix.
fn xpn(d: &Delimiters, name: &Value) -> Vec<u8> {
    let given: Vec<&str> = array(name, "given").iter().filter_map(|g| g.as_str()).collect();
    let first = |key: &str| array(name, key).iter().find_map(|v| v.as_str()).unwrap_or_default();
    let family = str_at(name, &["family"]).unwrap_or_default();
    let middle = given.get(1..).map(|g| g.join(" ")).unwrap_or_default();
    composite(
        d,
        &[
            vec![family.to_owned()],
            vec![given.first().copied().unwrap_or_default().to_owned()],
            vec![middle],
            vec![first("suffix").to_owned()],
            vec![first("prefix").to_owned()],
        ],
    )
}

/// The assigning authority of an Identifier as an HD: the assigner's display as namespace, the system as
/// universal id (an OID or UUID unwrapped, any other URI as is), the way the conversion reads them.
fn authority(identifier: &Value) -> Hd {
    let system = str_at(identifier, &["system"]).unwrap_or_default();
    let mut namespace_id = str_at(identifier, &["assigner", "display"]).unwrap_or_default().to_owned();
    let (universal_id, universal_id_type) = if system == "http://hl7.org/fhir/sid/us-npi" {
        if namespace_id.is_empty() {
            namespace_id = "NPI".into();
        }
        (String::new(), String::new())
    } else if let Some(oid) = system.strip_prefix("urn:oid:") {
        (oid.to_owned(), "ISO".to_owned())
    } else if let Some(uuid) = system.strip_prefix("urn:uuid:") {
        (uuid.to_owned(), "UUID".to_owned())
    } else if !system.is_empty() {
        (system.to_owned(), "URI".to_owned())
    } else {
        (String::new(), String::new())
    };
    Hd { namespace_id, universal_id, universal_id_type }
}

fn hd(h: &Hd) -> Vec<Vec<String>> {
    h.components().iter().map(|c| vec![(*c).to_owned()]).collect()
}

/// Identifier -> EI: value ^ namespace ^ universal id ^ type.
fn ei(d: &Delimiters, identifier: &Value) -> Vec<u8> {
    let Some(value) = str_at(identifier, &["value"]) else { return Vec::new() };
    let h = authority(identifier);
    let mut parts = vec![vec![value.to_owned()]];
    parts.extend(hd(&h));
    composite(d, &parts)
}

/// Identifier -> CX: value ^^^ assigning authority (HD as subcomponents) ^ identifier type (table 0203).
fn cx(d: &Delimiters, identifier: &Value) -> Vec<u8> {
    let Some(value) = str_at(identifier, &["value"]) else { return Vec::new() };
    let h = authority(identifier);
    let type_code = array(identifier.get("type").unwrap_or(&Value::Null), "coding")
        .iter()
        .find_map(|c| str_at(c, &["code"]))
        .unwrap_or_default();
    composite(
        d,
        &[
            vec![value.to_owned()],
            vec![],
            vec![],
            h.components().iter().map(|c| (*c).to_owned()).collect(),
            vec![type_code.to_owned()],
        ],
    )
}

/// Identifier -> PRD-7 in the shape the conversion reads it: value ^^^ authority namespace.
fn pi(d: &Delimiters, identifier: &Value) -> Vec<u8> {
    let Some(value) = str_at(identifier, &["value"]) else { return Vec::new() };
    let h = authority(identifier);
    let namespace = if h.namespace_id.is_empty() { h.universal_id } else { h.namespace_id };
    composite(d, &[vec![value.to_owned()], vec![], vec![], vec![namespace]])
}

/// Escaped components (each a list of subcomponents), trailing empty parts dropped at both levels.
fn composite(d: &Delimiters, parts: &[Vec<String>]) -> Vec<u8> {
    let encoded: Vec<Vec<u8>> = parts
        .iter()
        .map(|subs| {
            let keep = subs.iter().rposition(|s| !s.is_empty()).map_or(0, |i| i + 1);
            let subs: Vec<Vec<u8>> = subs[..keep].iter().map(|s| escape(s, d).into_owned().into_bytes()).collect();
            subs.join(&d.subcomponent)
        })
        .collect();
    let keep = encoded.iter().rposition(|c| !c.is_empty()).map_or(0, |i| i + 1);
    encoded[..keep].join(&d.component)
}

/// FHIR dateTime/instant -> HL7 DTM, keeping the given precision (fractions to four digits).
fn dtm(text: &str) -> String {
    let (date, time) = text.split_once('T').unwrap_or((text, ""));
    let mut out: String = date.chars().filter(char::is_ascii_digit).collect();
    if time.is_empty() {
        return out;
    }
    let (clock, zone) = match time.find(['Z', '+', '-']) {
        Some(i) => time.split_at(i),
        None => (time, ""),
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    out.extend(whole.chars().filter(char::is_ascii_digit));
    if !fraction.is_empty() {
        out.push('.');
        out.extend(fraction.chars().take(4));
    }
    match zone {
        "" => {}
        "Z" => out.push_str("+0000"),
        z => out.extend(z.chars().filter(|c| *c != ':')),
    }
    out
}

fn reverse_lookup(table: &str, fhir_code: &str) -> Option<String> {
    crate::tables::entries(table)?.find(|(_, v)| v.as_str() == Some(fhir_code)).map(|(k, _)| k.to_owned())
}

fn has_type(identifier: &Value, code: &str) -> bool {
    array(identifier.get("type").unwrap_or(&Value::Null), "coding").iter().any(|c| str_at(c, &["code"]) == Some(code))
}

fn array<'v>(v: &'v Value, key: &str) -> Vec<&'v Value> {
    v.get(key).and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

fn str_at<'v>(v: &'v Value, path: &[&str]) -> Option<&'v str> {
    path.iter().try_fold(v, |v, k| v.get(*k))?.as_str()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn source() -> MessageSource {
        MessageSource {
            sending_application: Hd { namespace_id: "EPIC".into(), ..Hd::default() },
            sending_facility: Hd {
                namespace_id: "CLINIC-1".into(),
                universal_id: "2.16.840.1.113883.19.5".into(),
                universal_id_type: "ISO".into(),
            },
            control_id: "REF-0001".into(),
        }
    }

    fn task(status: &str) -> Value {
        json!({
            "resourceType": "Task", "id": "t1", "status": status, "priority": "routine",
            "meta": {"versionId": "3", "lastUpdated": "2026-11-23T16:30:05.123456Z"},
            "statusReason": {"text": "Client enrolled | food box weekly"},
        })
    }

    fn service_request() -> Value {
        json!({"resourceType": "ServiceRequest", "identifier": [
            {"type": {"coding": [{"code": "PLAC"}]}, "value": "REF00000001", "assigner": {"display": "CLINIC"}},
            {"type": {"coding": [{"code": "FILL"}]}, "value": "EXT-9", "system": "urn:oid:1.2.3"},
        ]})
    }

    fn build(task: &Value) -> Result<Vec<u8>, RriError> {
        let source = source();
        let sr = service_request();
        let patient = json!({"resourceType": "Patient", "name": [{"family": "Sample"}], "birthDate": "1975",
        "identifier": [
            {"type": {"coding": [{"code": "MR"}]}, "value": "MRN00000002", "assigner": {"display": "CLINIC"}},
            {"value": "999-00-1111", "system": "urn:oid:2.16.840.1.113883.4.1"},
        ]});
        let owner = json!({"resourceType": "Organization", "name": "Community Food Bank",
            "identifier": [{"value": "CBO-FOODBANK", "assigner": {"display": "LOCAL"}}]});
        let role = json!({"resourceType": "PractitionerRole", "practitioner": {"reference": "Practitioner/p"}});
        let practitioner = json!({"resourceType": "Practitioner",
            "name": [{"family": "Welby", "given": ["Marcus"], "prefix": ["Dr"]}],
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]});
        build_rri(&ReferralStatusUpdate {
            task,
            source: &source,
            service_request: Some(&sr),
            patient: Some(&patient),
            owner: Some(&owner),
            requester: Some(&role),
            requester_practitioner: Some(&practitioner),
            sending_application: "SDOH-GATEWAY",
            sending_facility: "SDOH-HUB",
            control_id: &rri_control_id("t1", 3),
            timestamp: "20261123163006+0000",
        })
    }

    #[test]
    fn the_rri_parses_back_with_the_referral_facts() {
        let bytes = build(&task("completed")).unwrap();
        let m = hl7v2::Message::parse(&bytes).unwrap();
        let text = |path: &str| m.text(path).map(|t| t.into_owned()).unwrap_or_default();
        let header = m.header();
        assert_eq!((header.message_type.as_str(), header.trigger_event.as_str()), ("RRI", "I12"));
        assert_eq!(header.message_structure, "RRI_I12");
        assert_eq!(header.control_id, rri_control_id("t1", 3));
        assert_eq!(text("MSH-3"), "SDOH-GATEWAY");
        assert_eq!(text("MSH-5.1"), "EPIC");
        assert_eq!(text("MSH-6.1"), "CLINIC-1");
        assert_eq!(text("MSH-6.2"), "2.16.840.1.113883.19.5");
        assert_eq!(text("MSH-6.3"), "ISO");
        assert_eq!(text("MSH-12"), "2.5.1");
        assert_eq!(text("MSA-1"), "AA");
        assert_eq!(text("MSA-2"), "REF-0001");
        assert_eq!(text("RF1-1.1"), "A");
        assert_eq!(text("RF1-1.2"), "Accepted");
        assert_eq!(text("RF1-1.3"), "HL70283");
        assert_eq!(text("RF1-1.4"), "completed");
        assert_eq!(text("RF1-1.6"), "99FHIRTaskStatus");
        assert_eq!(text("RF1-2.1"), "R");
        assert_eq!(text("RF1-6.1"), "REF00000001");
        assert_eq!(text("RF1-6.2"), "CLINIC");
        assert_eq!(text("RF1-9"), "20261123163005.1234+0000");
        assert_eq!(text("RF1-11.1"), "EXT-9");
        assert_eq!(text("RF1-11.3"), "1.2.3");
        assert_eq!(text("RF1-11.4"), "ISO");
        assert_eq!(text("PRD-1"), "RT");
        assert_eq!(text("PRD-2.1"), "Community Food Bank");
        assert_eq!(text("PRD-7.1"), "CBO-FOODBANK");
        assert_eq!(text("PRD-7.4"), "LOCAL");
        assert_eq!(text("PRD[2]-1"), "RP");
        assert_eq!(text("PRD[2]-2.1"), "Welby");
        assert_eq!(text("PRD[2]-2.2"), "Marcus");
        assert_eq!(text("PRD[2]-2.5"), "Dr");
        assert_eq!(text("PRD[2]-7.1"), "1234567893");
        assert_eq!(text("PRD[2]-7.4"), "NPI");
        assert_eq!(text("PID-3.1"), "MRN00000002");
        assert_eq!(text("PID-3.4"), "CLINIC");
        assert_eq!(text("PID-3.5"), "MR");
        assert_eq!(text("PID-3[2].1"), "999-00-1111");
        assert_eq!(text("PID-3[2].4.2"), "2.16.840.1.113883.4.1");
        assert_eq!(text("PID-3[2].4.3"), "ISO");
        assert_eq!(text("PID-5"), "", "no patient data beyond identifiers");
        assert_eq!(text("PID-7"), "");
        assert_eq!(text("NTE-3"), "Client enrolled | food box weekly", "escaped and read back");
        let ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "MSA", "RF1", "PRD", "PRD", "PID", "NTE"], "RRI_I12 segment order");
    }

    #[test]
    fn statuses_map_to_table_0283_and_unmapped_ones_are_refused() {
        for (status, code) in [
            ("requested", "P"),
            ("accepted", "A"),
            ("in-progress", "A"),
            ("on-hold", "A"),
            ("completed", "A"),
            ("rejected", "R"),
            ("cancelled", "E"),
            ("failed", "E"),
        ] {
            let bytes = build(&task(status)).unwrap();
            let m = hl7v2::Message::parse(&bytes).unwrap();
            assert_eq!(m.text("RF1-1.1").unwrap(), code, "{status}");
            assert_eq!(m.text("RF1-1.4").unwrap(), status);
        }
        assert_eq!(build(&task("entered-in-error")), Err(RriError::UnmappedStatus("entered-in-error".into())));
        assert_eq!(build(&task("alternateSystem")), Err(RriError::UnmappedStatus("alternateSystem".into())));
        assert_eq!(build(&json!({"resourceType": "Task"})), Err(RriError::NoStatus));
    }

    #[test]
    fn missing_references_leave_fields_empty_and_no_reason_no_nte() {
        let source = source();
        let mut t = task("accepted");
        t.as_object_mut().unwrap().remove("statusReason");
        let bytes = build_rri(&ReferralStatusUpdate {
            task: &t,
            source: &source,
            service_request: None,
            patient: None,
            owner: None,
            requester: None,
            requester_practitioner: None,
            sending_application: "GW",
            sending_facility: "HUB",
            control_id: "C1",
            timestamp: "20261123",
        })
        .unwrap();
        let m = hl7v2::Message::parse(&bytes).unwrap();
        assert_eq!(m.text("RF1-1.1").unwrap(), "A");
        assert!(m.text("RF1-6.1").is_none_or(|t| t.is_empty()));
        let ids: Vec<&str> = m.segments().map(|s| s.id()).collect();
        assert_eq!(ids, ["MSH", "MSA", "RF1", "PRD", "PRD", "PID"]);
    }

    #[test]
    fn control_ids_are_stable_short_and_distinct() {
        let a = rri_control_id("t1", 3);
        assert_eq!(a, rri_control_id("t1", 3));
        assert_ne!(a, rri_control_id("t1", 4));
        assert_ne!(a, rri_control_id("t2", 3));
        assert_eq!(a.len(), 14);
        assert!(a.bytes().all(|b| b.is_ascii_alphanumeric()));
    }

    #[test]
    fn fhir_times_become_dtm() {
        assert_eq!(dtm("2026-11-23"), "20261123");
        assert_eq!(dtm("2026-11-23T08:00:00-08:00"), "20261123080000-0800");
        assert_eq!(dtm("2026-11-23T16:30:05.123456Z"), "20261123163005.1234+0000");
    }
}
