//! v2 composite data types (CWE, CX, EI, HD, XPN/XCN, XAD, XTN) to FHIR R4 data types.

use crate::tables::{coding_system, lookup, lookup_str, v2_display};
use crate::v2::Parts;
use serde_json::{Map, Value, json};

/// Builds a JSON object from pairs, leaving out nulls, empty strings and empty arrays/objects so that
/// resources never carry empty elements (FHIR forbids them).
pub(crate) fn obj(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        let empty = match &v {
            Value::Null => true,
            Value::String(s) => s.is_empty(),
            Value::Array(a) => a.is_empty(),
            Value::Object(o) => o.is_empty(),
            _ => false,
        };
        if !empty {
            m.insert(k.to_owned(), v);
        }
    }
    Value::Object(m)
}

/// A JSON object of exactly these pairs (nulls and empties kept). Unlike `json!`, values that are already
/// `Value`s are moved in rather than serialized again.
pub(crate) fn object<const N: usize>(pairs: [(&str, Value); N]) -> Value {
    Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Option<String> as JSON (null when absent).
pub(crate) fn opt(s: Option<String>) -> Value {
    s.map_or(Value::Null, Value::String)
}

/// System URI from an HD (namespace, universal id, universal id type): the universal id names the system;
/// a bare namespace does not, so it is left to the assigner display instead of inventing a URI.
pub(crate) fn hd_system(hd: &Parts<'_>) -> Option<String> {
    uid_system(hd.s(2)?, hd.s(3).as_deref())
}

fn uid_system(uid: String, uid_type: Option<&str>) -> Option<String> {
    match uid_type {
        Some("ISO") => Some(format!("urn:oid:{uid}")),
        Some("UUID") => Some(format!("urn:uuid:{}", uid.to_ascii_lowercase())),
        Some("URI" | "URL") => Some(uid),
        _ if uid.contains(':') => Some(uid),
        _ if uid.bytes().all(|b| b.is_ascii_digit() || b == b'.') && uid.contains('.') => {
            Some(format!("urn:oid:{uid}"))
        }
        _ => None,
    }
}

/// A stable namespace key for an HD: the universal id when given, otherwise the namespace id.
pub(crate) fn hd_key(hd: &Parts<'_>) -> Option<String> {
    hd.s(2).or_else(|| hd.s(1))
}

/// A FHIR `code`: internal whitespace runs collapsed to one space, as the `code` type requires.
pub(crate) fn code(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One Coding; the v2 system name is translated, unknown local systems are left without a system.
pub(crate) fn coding(code: Option<String>, display: Option<String>, system: Option<String>) -> Option<Value> {
    let code = code?;
    let system = system.as_deref().and_then(coding_system);
    Some(obj(vec![("system", opt(system)), ("code", Value::String(self::code(&code))), ("display", opt(display))]))
}

/// CWE/CE/CNE to CodeableConcept: primary and alternate codings, original text (CWE-9) as text, or the
/// display as text when nothing is coded.
pub(crate) fn codeable(p: &Parts<'_>) -> Option<Value> {
    let codings: Vec<Value> =
        [coding(p.s(1), p.s(2), p.s(3)), coding(p.s(4), p.s(5), p.s(6))].into_iter().flatten().collect();
    let text = p.s(9).or_else(|| if codings.is_empty() { p.s(2) } else { None });
    if codings.is_empty() && text.is_none() {
        return None;
    }
    Some(obj(vec![("coding", Value::Array(codings)), ("text", opt(text))]))
}

/// CodeableConcept with one coding in a fixed system (used for HL7-defined tables).
pub(crate) fn fixed_concept(system: &str, code: &str, display: Option<&str>) -> Value {
    let coding = obj(vec![
        ("system", Value::String(system.to_owned())),
        ("code", Value::String(self::code(code))),
        ("display", display.map_or(Value::Null, |d| Value::String(d.to_owned()))),
    ]);
    object([("coding", Value::Array(vec![coding]))])
}

/// CodeableConcept for a code from HL7 v2 table `table`. The terminology.hl7.org system is used only for codes
/// that table defines (vendored `v2-tables.json`); local extensions and user-defined tables keep the bare code.
pub(crate) fn v2_concept(table: &str, code: &str) -> Value {
    match v2_display(table, code) {
        Some(display) => {
            fixed_concept(&format!("http://terminology.hl7.org/CodeSystem/v2-{table}"), code, Some(display))
        }
        None => json!({"coding": [{"code": self::code(code)}]}),
    }
}

/// CX to Identifier: system from the assigning authority's universal id, type from table 0203, assigner display
/// from the assigning authority's namespace.
pub(crate) fn identifier(p: &Parts<'_>) -> Option<Value> {
    let value = p.s(1)?;
    let authority = p.sub(4);
    let type_code = p.s(5);
    let ty = type_code.as_deref().map(|t| v2_concept("0203", t));
    let assigner = authority.s(1).map(|ns| json!({"display": ns}));
    Some(obj(vec![
        ("type", ty.unwrap_or(Value::Null)),
        ("system", opt(hd_system(&authority))),
        ("value", Value::String(value)),
        ("assigner", assigner.unwrap_or(Value::Null)),
    ]))
}

/// EI to Identifier, optionally typed (e.g. PLAC/FILL from table 0203).
pub(crate) fn ei_identifier(p: &Parts<'_>, type_code: Option<&str>) -> Option<Value> {
    let value = p.s(1)?;
    // EI-2..4 are an HD flattened into components.
    let system = p.s(3).and_then(|uid| uid_system(uid, p.s(4).as_deref()));
    let ty = type_code.map(|t| v2_concept("0203", t));
    let assigner = p.s(2).map(|ns| json!({"display": ns}));
    Some(obj(vec![
        ("type", ty.unwrap_or(Value::Null)),
        ("system", opt(system)),
        ("value", Value::String(value)),
        ("assigner", assigner.unwrap_or(Value::Null)),
    ]))
}

/// A stable key for an EI: namespace (universal id or namespace id) plus value.
pub(crate) fn ei_key(p: &Parts<'_>) -> Option<(String, String)> {
    Some((p.s(3).or_else(|| p.s(2)).unwrap_or_default(), p.s(1)?))
}

/// XPN (offset 0) or XCN (offset 1, after the id number) to HumanName.
pub(crate) fn human_name(p: &Parts<'_>, offset: usize) -> Option<Value> {
    let family = p.sub(1 + offset).s(1);
    let given: Vec<Value> = [p.s(2 + offset), p.s(3 + offset)].into_iter().flatten().map(Value::String).collect();
    let suffix: Vec<Value> = p.s(4 + offset).into_iter().map(Value::String).collect();
    let prefix: Vec<Value> = p.s(5 + offset).into_iter().map(Value::String).collect();
    let name_type = if offset == 0 { p.s(7) } else { p.s(10) };
    if family.is_none() && given.is_empty() {
        return None;
    }
    let use_ = name_type.as_deref().and_then(|t| lookup_str("0200", t));
    Some(obj(vec![
        ("use", use_.map_or(Value::Null, |u| json!(u))),
        ("family", opt(family)),
        ("given", Value::Array(given)),
        ("prefix", Value::Array(prefix)),
        ("suffix", Value::Array(suffix)),
    ]))
}

/// XAD to Address; XAD-9 county becomes `district` (US Core uses it for county).
pub(crate) fn address(p: &Parts<'_>) -> Option<Value> {
    let line: Vec<Value> = [p.sub(1).s(1), p.s(2)].into_iter().flatten().map(Value::String).collect();
    let kind = p.s(7).as_deref().and_then(|t| lookup("0190", t)).cloned().unwrap_or(Value::Null);
    let a = obj(vec![
        ("use", kind.get("use").cloned().unwrap_or(Value::Null)),
        ("type", kind.get("type").cloned().unwrap_or(Value::Null)),
        ("line", Value::Array(line)),
        ("city", opt(p.s(3))),
        ("district", opt(p.s(9))),
        ("state", opt(p.s(4))),
        ("postalCode", opt(p.s(5))),
        ("country", opt(p.s(6))),
    ]);
    (a.as_object().is_some_and(|o| o.keys().any(|k| k != "use" && k != "type"))).then_some(a)
}

/// XTN to ContactPoint. The number is taken from XTN-12 (unformatted), else built from country/area/local/
/// extension, else the legacy XTN-1; email from XTN-4.
pub(crate) fn contact_point(p: &Parts<'_>) -> Option<Value> {
    let use_code = p.s(2);
    let equip = p.s(3);
    let by_use = use_code.as_deref().and_then(|c| lookup("0201", c));
    let by_equip = equip.as_deref().and_then(|c| lookup("0202", c));
    let pick = |k: &str| by_equip.and_then(|v| v.get(k)).or_else(|| by_use.and_then(|v| v.get(k))).cloned();
    let mut system = pick("system");
    let email = p.s(4);
    let value = if system.as_ref().and_then(Value::as_str) == Some("email") || (email.is_some() && p.s(7).is_none()) {
        system = Some(json!("email"));
        email.or_else(|| p.s(1))
    } else {
        let built = p.s(7).map(|local| {
            let mut s = String::new();
            if let Some(c) = p.s(5) {
                s.push_str(&format!("+{c} "));
            }
            if let Some(a) = p.s(6) {
                s.push_str(&format!("({a}) "));
            }
            s.push_str(&local);
            if let Some(x) = p.s(8) {
                s.push_str(&format!(" ext. {x}"));
            }
            s
        });
        p.s(12).or(built).or_else(|| p.s(1))
    }?;
    let use_ = by_equip.and_then(|v| v.get("use")).or_else(|| by_use.and_then(|v| v.get("use"))).cloned();
    Some(obj(vec![
        ("system", system.unwrap_or_else(|| json!("phone"))),
        ("value", Value::String(value)),
        ("use", use_.unwrap_or(Value::Null)),
    ]))
}

/// A Reference object.
pub(crate) fn reference(target: &str) -> Value {
    json!({ "reference": target })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hl7v2::Message;

    fn parts(field: &str) -> Value {
        let raw = format!("MSH|^~\\&|A|B|C|D|20240101||ADT^A01|1|P|2.5.1\rZZZ|{field}\r");
        let m = Message::parse(raw.as_bytes()).unwrap();
        let seg = crate::v2::segments(&m)[1];
        let p = seg.first(1).unwrap();
        json!({
            "cwe": codeable(&p), "cx": identifier(&p), "xpn": human_name(&p, 0),
            "xad": address(&p), "xtn": contact_point(&p)
        })
    }

    #[test]
    fn composites() {
        let v = parts("2106-3^White^CDCREC^W^Wht^99LOC^^^Orig");
        assert_eq!(v["cwe"]["coding"][0]["system"], "urn:oid:2.16.840.1.113883.6.238");
        assert_eq!(v["cwe"]["coding"][1].get("system"), None);
        assert_eq!(v["cwe"]["text"], "Orig");
        let v = parts("123^^^HOSP&1.2.3&ISO^MR");
        assert_eq!(v["cx"]["system"], "urn:oid:1.2.3");
        assert_eq!(v["cx"]["assigner"]["display"], "HOSP");
        assert_eq!(v["cx"]["type"]["coding"][0]["code"], "MR");
        let v = parts("Doe&van^Jane^Q^Jr^Dr^^L");
        assert_eq!(
            v["xpn"],
            json!({"use":"official","family":"Doe","given":["Jane","Q"],"prefix":["Dr"],"suffix":["Jr"]})
        );
        let v = parts("1 Main St^Apt 2^Portland^OR^97201^USA^H^^Multnomah");
        assert_eq!(v["xad"]["district"], "Multnomah");
        assert_eq!(v["xad"]["line"], json!(["1 Main St", "Apt 2"]));
        let v = parts("^PRN^PH^^1^503^5551234");
        assert_eq!(v["xtn"], json!({"system":"phone","value":"+1 (503) 5551234","use":"home"}));
        let v = parts("^NET^Internet^a@example.org");
        assert_eq!(v["xtn"], json!({"system":"email","value":"a@example.org"}));
    }
}
