//! Every resource derived from every conformance case carries what its SDOHCC profile requires. The rules are data
//! (`profiles/sdoh/required-elements.json`, derived from the IG reference section 1); this file only interprets them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use sdoh::{Context, normalize};
use serde::Deserialize;
use serde_json::{Value, json};

const CTX: Context<'static> = Context { recorded: "2026-01-01T00:00:00Z", agent: "Device/sdoh-gateway" };

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read_json(rel: &str) -> Value {
    let p = root().join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rules {
    #[serde(rename = "_source")]
    _source: String,
    #[serde(rename = "_vocabulary")]
    _vocabulary: BTreeMap<String, String>,
    systems: BTreeMap<String, String>,
    value_sets: BTreeMap<String, Vec<String>>,
    profiles: Vec<Profile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Selector {
    #[serde(rename = "resourceType")]
    resource_type: String,
    #[serde(default)]
    has: Vec<String>,
    #[serde(default)]
    lacks: Vec<String>,
}

/// A list of codes, or the name of a `value_sets` entry.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Codes {
    Named(String),
    List(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CodingSlice {
    path: String,
    system: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    value_set: Option<String>,
    #[serde(default)]
    min: usize,
    #[serde(default)]
    max: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StateRules {
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    one_of: Vec<Vec<String>>,
    #[serde(default)]
    forbidden: Vec<String>,
    #[serde(default)]
    required_if_present: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    fixed: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Profile {
    name: String,
    selector: Selector,
    #[serde(default)]
    meta_profile: Option<Vec<String>>,
    #[serde(default)]
    status_path: Option<String>,
    #[serde(default)]
    required: Vec<String>,
    #[serde(default)]
    forbidden: Vec<String>,
    #[serde(default)]
    code_in: BTreeMap<String, Codes>,
    #[serde(default)]
    codings: Vec<CodingSlice>,
    #[serde(default)]
    systems: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    reference_types: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    at_most_one_of: Vec<Vec<String>>,
    #[serde(default)]
    extensions: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    code_matches_domain_table: bool,
    #[serde(default)]
    when_active: StateRules,
    #[serde(default)]
    when_retracted: StateRules,
    #[serde(default)]
    members_resolve: bool,
    #[serde(default)]
    evidence_resolves: bool,
    #[serde(default)]
    targets_are_all_other_resources: bool,
}

fn rules() -> Rules {
    serde_json::from_value(read_json("profiles/sdoh/required-elements.json")).expect("required-elements.json schema")
}

/// Values at a dotted path; arrays are walked; a `name[x]` segment matches any `nameFoo` choice key.
fn values<'a>(v: &'a Value, path: &str) -> Vec<&'a Value> {
    let mut cur = vec![v];
    for seg in path.split('.') {
        let mut next = Vec::new();
        for c in flatten(cur) {
            let Some(obj) = c.as_object() else { continue };
            if let Some(prefix) = seg.strip_suffix("[x]") {
                for (k, val) in obj {
                    if k.strip_prefix(prefix).is_some_and(|rest| rest.starts_with(|ch: char| ch.is_ascii_uppercase())) {
                        next.push(val);
                    }
                }
            } else if let Some(val) = obj.get(seg) {
                next.push(val);
            }
        }
        cur = next;
    }
    flatten(cur)
}

fn flatten(vals: Vec<&Value>) -> Vec<&Value> {
    let mut out = Vec::new();
    for v in vals {
        match v {
            Value::Array(a) => out.extend(a.iter()),
            other => out.push(other),
        }
    }
    out
}

fn non_empty(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn present(res: &Value, path: &str) -> bool {
    values(res, path).into_iter().any(non_empty)
}

fn codings(cc: &Value) -> Vec<&Value> {
    cc.get("coding").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
}

impl Rules {
    fn system(&self, key: &str) -> &str {
        self.systems.get(key).unwrap_or_else(|| panic!("unknown system key {key}"))
    }

    fn codes<'a>(&'a self, c: &'a Codes) -> &'a [String] {
        match c {
            Codes::Named(n) => self.value_sets.get(n).unwrap_or_else(|| panic!("unknown value set {n}")),
            Codes::List(l) => l,
        }
    }

    fn profile_for(&self, res: &Value) -> Vec<&Profile> {
        self.profiles
            .iter()
            .filter(|p| {
                res["resourceType"] == p.selector.resource_type.as_str()
                    && p.selector.has.iter().all(|h| present(res, h))
                    && p.selector.lacks.iter().all(|h| !present(res, h))
            })
            .collect()
    }

    /// Element-level checks of one resource; returns the violations.
    fn check(&self, res: &Value, domains: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        let profiles = self.profile_for(res);
        let p = match profiles.as_slice() {
            [p] => *p,
            other => return vec![format!("matches {} rule sets, expected exactly one", other.len())],
        };
        let mut err = |m: String| errs.push(format!("[{}] {m}", p.name));
        let retracted = p
            .status_path
            .as_deref()
            .is_some_and(|sp| values(res, sp).iter().any(|v| v.as_str() == Some("entered-in-error")));

        match &p.meta_profile {
            Some(want) => {
                if res["meta"]["profile"] != json!(want) {
                    err(format!("meta.profile {} != {want:?}", res["meta"]["profile"]));
                }
            }
            None => {
                if present(res, "meta.profile") {
                    err("meta.profile claims a profile the rules do not define".into());
                }
            }
        }
        let state = if retracted { &p.when_retracted } else { &p.when_active };
        for path in p.required.iter().chain(state.required.iter()) {
            if !present(res, path) {
                err(format!("missing required {path}"));
            }
        }
        for path in p.forbidden.iter().chain(state.forbidden.iter()) {
            if present(res, path) {
                err(format!("forbidden element {path} present"));
            }
        }
        for group in &state.one_of {
            if !group.iter().any(|g| present(res, g)) {
                err(format!("needs one of {group:?}"));
            }
        }
        for group in &p.at_most_one_of {
            if group.iter().filter(|g| present(res, g)).count() > 1 {
                err(format!("at most one of {group:?}"));
            }
        }
        for (key, paths) in &state.required_if_present {
            if present(res, key) {
                for path in paths {
                    if !present(res, path) {
                        err(format!("{key} present but {path} missing"));
                    }
                }
            }
        }
        for (path, system) in &state.fixed {
            for v in values(res, path) {
                if v.as_str() != Some(self.system(system)) {
                    err(format!("{path} = {v}, expected {}", self.system(system)));
                }
            }
        }
        for (path, codes) in &p.code_in {
            let allowed = self.codes(codes);
            for v in values(res, path) {
                let got: Vec<&Value> =
                    if v.is_string() { vec![v] } else { codings(v).into_iter().map(|c| &c["code"]).collect() };
                for g in got {
                    if !g.as_str().is_some_and(|s| allowed.iter().any(|a| a == s)) {
                        err(format!("{path} code {g} not in {allowed:?}"));
                    }
                }
            }
        }
        for slice in &p.codings {
            let system = self.system(&slice.system);
            let allowed = slice.value_set.as_ref().map(|vs| self.codes(&Codes::Named(vs.clone())).to_vec());
            let n = values(res, &slice.path)
                .into_iter()
                .filter(|cc| {
                    codings(cc).iter().any(|c| {
                        c["system"] == system
                            && slice.code.as_ref().is_none_or(|code| c["code"] == code.as_str())
                            && allowed
                                .as_ref()
                                .is_none_or(|a| c["code"].as_str().is_some_and(|s| a.iter().any(|x| x == s)))
                    })
                })
                .count();
            let what = format!("{}|{}", system, slice.code.as_deref().or(slice.value_set.as_deref()).unwrap_or("*"));
            if n < slice.min {
                err(format!("{}: {n} codings of {what}, need at least {}", slice.path, slice.min));
            }
            if slice.max.is_some_and(|m| n > m) {
                err(format!("{}: {n} codings of {what}, at most {:?}", slice.path, slice.max));
            }
        }
        for (path, systems) in &p.systems {
            let allowed: Vec<&str> = systems.iter().map(|s| self.system(s)).collect();
            for cc in values(res, path) {
                let cs = codings(cc);
                if cs.is_empty() {
                    err(format!("{path} has no coding"));
                }
                for c in cs {
                    if !c["system"].as_str().is_some_and(|s| allowed.contains(&s)) {
                        err(format!("{path} coding system {} not in {allowed:?}", c["system"]));
                    }
                    if c["code"].as_str().is_none_or(str::is_empty) {
                        err(format!("{path} coding without code"));
                    }
                }
            }
        }
        for (path, types) in &p.reference_types {
            for r in values(res, path) {
                let ok = r["reference"]
                    .as_str()
                    .and_then(|s| s.split_once('/'))
                    .is_some_and(|(t, id)| types.iter().any(|x| x == t) && !id.is_empty());
                if !ok {
                    err(format!("{path} reference {} not to {types:?}", r["reference"]));
                }
            }
        }
        for ext in values(res, "extension") {
            match ext["url"].as_str().and_then(|u| p.extensions.get(u)) {
                None => err(format!("extension {} not allowed", ext["url"])),
                Some(types) => {
                    let ok = ext["valueReference"]["reference"]
                        .as_str()
                        .and_then(|s| s.split_once('/'))
                        .is_some_and(|(t, _)| types.iter().any(|x| x == t));
                    if !ok {
                        err(format!("extension {} value not a reference to {types:?}", ext["url"]));
                    }
                }
            }
        }
        if p.code_matches_domain_table {
            let sdohcc = self.system("sdohcc");
            let domain: Vec<&Value> = values(res, "category")
                .into_iter()
                .flat_map(codings)
                .filter(|c| c["system"] == sdohcc)
                .map(|c| &c["code"])
                .collect();
            match domain.as_slice() {
                [d] => {
                    let entry = domains["domains"].as_array().unwrap().iter().find(|e| &e["code"] == *d);
                    match entry.map(|e| &e["condition"]) {
                        Some(want @ Value::Array(_)) => {
                            if &res["code"]["coding"] != want {
                                err(format!("code {} != domains.json {want}", res["code"]["coding"]));
                            }
                        }
                        _ => err(format!("domain {d} has no Condition codes in domains.json")),
                    }
                }
                other => err(format!("expected one SDOHCC category, found {other:?}")),
            }
        }
        errs
    }

    /// Cross-resource checks of one derivation: references resolve, the Provenance targets everything.
    fn check_derivation(&self, resources: &[Value], retractions: &[Value]) -> Vec<String> {
        let mut errs = Vec::new();
        let key =
            |r: &Value| format!("{}/{}", r["resourceType"].as_str().unwrap_or("?"), r["id"].as_str().unwrap_or("?"));
        let all: BTreeSet<String> = resources.iter().chain(retractions).map(key).collect();
        if all.len() != resources.len() + retractions.len() {
            errs.push("duplicate ids across resources and retractions".into());
        }
        for res in resources.iter().chain(retractions) {
            for p in self.profile_for(res) {
                let mut refs = Vec::new();
                if p.members_resolve {
                    refs.extend(values(res, "hasMember.reference"));
                }
                if p.evidence_resolves {
                    refs.extend(values(res, "evidence.detail.reference"));
                }
                for r in refs {
                    if !r.as_str().is_some_and(|s| all.contains(s)) {
                        errs.push(format!("{}: {r} does not resolve within the derivation", key(res)));
                    }
                }
                if p.targets_are_all_other_resources {
                    let targets: Vec<&str> =
                        values(res, "target.reference").into_iter().filter_map(Value::as_str).collect();
                    let want: BTreeSet<String> =
                        resources.iter().filter(|r| r["resourceType"] != "Provenance").map(key).collect();
                    let got: BTreeSet<String> = targets.iter().map(|s| s.to_string()).collect();
                    if got != want || targets.len() != got.len() {
                        errs.push(format!("{}: targets {targets:?} != every other resource", key(res)));
                    }
                }
            }
        }
        let provs = resources.iter().filter(|r| r["resourceType"] == "Provenance").count();
        if !resources.is_empty() && (provs != 1 || resources.last().unwrap()["resourceType"] != "Provenance") {
            errs.push(format!("expected exactly one Provenance, last; found {provs}"));
        }
        if retractions.iter().any(|r| r["resourceType"] == "Provenance") {
            errs.push("a Provenance among retractions".into());
        }
        errs
    }
}

fn cases() -> Vec<(String, Value)> {
    let dir = root().join("conformance/sdoh");
    let mut out: Vec<(String, Value)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".input.json"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().trim_end_matches(".input.json").to_owned();
            (name, serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap())
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_emitted_resource_meets_its_profile() {
    let rules = rules();
    let domains = read_json("profiles/sdoh/domains.json");
    let mut failures = Vec::new();
    let mut checked: BTreeMap<String, usize> = BTreeMap::new();
    let cases = cases();
    assert!(cases.len() >= 30, "conformance cases missing: {}", cases.len());
    for (name, qr) in &cases {
        let d = normalize(qr, &CTX)
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .unwrap_or_else(|| panic!("{name}: not normalized"));
        // Derived resources as written, and each as it would be retracted by a later version.
        let retracted: Vec<Value> =
            d.resources.iter().filter(|r| r["resourceType"] != "Provenance").map(sdoh::retract).collect();
        for (i, res) in d.resources.iter().chain(retracted.iter()).enumerate() {
            for e in rules.check(res, &domains) {
                failures.push(format!("{name} #{i} {}/{}: {e}", res["resourceType"], res["id"]));
            }
            if let Some(p) = rules.profile_for(res).first() {
                *checked.entry(p.name.clone()).or_default() += 1;
            }
        }
        for e in rules.check_derivation(&d.resources, &retraction_keys(&d)) {
            failures.push(format!("{name}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{} violations:\n{}", failures.len(), failures.join("\n"));
    // Every rule set was exercised.
    for p in &rules.profiles {
        assert!(checked.get(&p.name).copied().unwrap_or(0) > 0, "no resource checked against {}", p.name);
    }
}

/// The checker is not vacuous: each kind of defect in an otherwise valid derivation is reported.
#[test]
fn rules_detect_violations() {
    let rules = rules();
    let domains = read_json("profiles/sdoh/domains.json");
    let qr = read_json("conformance/sdoh/ig-hvs-example.input.json");
    let d = normalize(&qr, &CTX).unwrap().unwrap();
    let find = |rt: &str, has: &str| {
        d.resources.iter().find(|r| r["resourceType"] == rt && present(r, has)).cloned().expect("resource")
    };
    let obs = find("Observation", "valueCodeableConcept");
    let panel = find("Observation", "hasMember");
    let cond = find("Condition", "evidence");
    let prov = find("Provenance", "target");
    for r in [&obs, &panel, &cond, &prov] {
        assert!(rules.check(r, &domains).is_empty(), "{r}");
    }

    type Breakage = (&'static str, Value, fn(&mut Value));
    let broken: Vec<Breakage> = vec![
        ("no subject", obs.clone(), |r| {
            r.as_object_mut().unwrap().remove("subject");
        }),
        ("no effective", obs.clone(), |r| {
            r.as_object_mut().unwrap().remove("effectiveDateTime");
        }),
        ("no value", obs.clone(), |r| {
            r.as_object_mut().unwrap().remove("valueCodeableConcept");
        }),
        ("value and dataAbsentReason", obs.clone(), |r| {
            r["dataAbsentReason"] = json!({ "coding": [{ "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown" }] });
        }),
        ("no survey category", obs.clone(), |r| {
            r["category"].as_array_mut().unwrap().remove(1);
        }),
        ("no SDOH category", obs.clone(), |r| {
            r["category"].as_array_mut().unwrap().remove(2);
        }),
        ("unknown SDOH category", obs.clone(), |r| {
            r["category"][2]["coding"][0]["code"] = json!("risk-assessment");
        }),
        ("wrong category system", obs.clone(), |r| {
            r["category"][0]["coding"][0]["system"] = json!("http://hl7.org/fhir/observation-category");
        }),
        ("NEG interpretation", obs.clone(), |r| {
            r["interpretation"][0]["coding"][0]["code"] = json!("NEG");
        }),
        ("amended status", obs.clone(), |r| r["status"] = json!("amended")),
        ("profile with version", obs.clone(), |r| {
            r["meta"]["profile"][0] = json!(
                "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ObservationScreeningResponse|2.2.0"
            );
        }),
        ("derivedFrom not a QR", obs.clone(), |r| r["derivedFrom"][0]["reference"] = json!("Observation/x")),
        ("bodySite", obs.clone(), |r| r["bodySite"] = json!({ "text": "arm" })),
        ("panel with value", panel.clone(), |r| {
            r["valueString"] = json!("x");
        }),
        ("clinicalStatus on entered-in-error", cond.clone(), |r| {
            r["verificationStatus"]["coding"][0]["code"] = json!("entered-in-error");
        }),
        ("no clinicalStatus", cond.clone(), |r| {
            r.as_object_mut().unwrap().remove("clinicalStatus");
        }),
        ("problem-list category", cond.clone(), |r| {
            r["category"][0]["coding"][0]["code"] = json!("problem-list-item");
        }),
        ("ICD-10-CM coding dropped", cond.clone(), |r| {
            r["code"]["coding"].as_array_mut().unwrap().pop();
        }),
        ("no evidence", cond.clone(), |r| {
            r.as_object_mut().unwrap().remove("evidence");
        }),
        ("asserter and extension", cond.clone(), |r| r["asserter"] = json!({ "reference": "Patient/pat-53234" })),
        ("asserter extension to a Patient", cond.clone(), |r| {
            r["extension"][0]["valueReference"]["reference"] = json!("Patient/p");
        }),
        ("no recorded", prov.clone(), |r| {
            r.as_object_mut().unwrap().remove("recorded");
        }),
        ("agent without who", prov.clone(), |r| {
            r["agent"][0].as_object_mut().unwrap().remove("who");
        }),
        ("entity role derivation", prov.clone(), |r| r["entity"][0]["role"] = json!("derivation")),
    ];
    for (what, mut r, f) in broken {
        f(&mut r);
        assert!(!rules.check(&r, &domains).is_empty(), "not detected: {what}");
    }

    let mut missing_target = d.resources.clone();
    missing_target.last_mut().unwrap()["target"].as_array_mut().unwrap().pop();
    assert!(!rules.check_derivation(&missing_target, &retraction_keys(&d)).is_empty());
    let mut dangling = d.resources.clone();
    let i = dangling.iter().position(|r| r["resourceType"] == "Condition").unwrap();
    dangling[i]["evidence"][0]["detail"][0]["reference"] = json!("Observation/nowhere");
    assert!(!rules.check_derivation(&dangling, &retraction_keys(&d)).is_empty());
}

/// Retractions as `{resourceType, id}` objects, for the id checks of `check_derivation`.
fn retraction_keys(d: &sdoh::Derived) -> Vec<Value> {
    d.retractions.iter().map(|r| json!({"resourceType": r.resource_type, "id": r.id})).collect()
}
