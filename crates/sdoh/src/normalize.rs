//! QuestionnaireResponse -> SDOHCC screening-response Observations, health-concern Conditions and a Provenance.

use std::collections::BTreeMap;

use serde_json::{Map, Number, Value, json};

use crate::ids::derived_id;
use crate::instrument::{AnswerDef, Instrument, Instruments, ItemDef, ItemType, Rule};

const LOINC: &str = "http://loinc.org";
const SDOHCC_CODES: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/CodeSystem/SDOHCC-CodeSystemTemporaryCodes";
const OBS_CATEGORY: &str = "http://terminology.hl7.org/CodeSystem/observation-category";
const PROFILE_SCREENING: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ObservationScreeningResponse";
const PROFILE_CONDITION: &str = "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-Condition";
const EXT_ASSERTER: &str =
    "http://hl7.org/fhir/us/sdoh-clinicalcare/StructureDefinition/SDOHCC-ExtensionConditionAsserter";
const UCUM: &str = "http://unitsofmeasure.org";
/// Bounds recursion on hand-built `Value`s (serde_json's parser already stops at 128 levels).
const MAX_DEPTH: usize = 32;

/// Who derives, and when; both come from the caller so output is a pure function of its inputs.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// FHIR instant written to Provenance.recorded.
    pub recorded: &'a str,
    /// Reference to the gateway, e.g. `Device/sdoh-gateway` (a Device also becomes the Condition asserter extension).
    pub agent: &'a str,
}

/// What one QuestionnaireResponse version derives.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// Resources to create-or-update (PUT by id): Observations, panel Observation, Conditions, Provenance last.
    pub resources: Vec<Value>,
    /// Every other resource this QR could have derived under the instrument (an item no longer answered, a
    /// domain no longer at risk). Where one exists (an earlier version derived it), replace it with
    /// [`retract`]`(existing)`; where none exists, there is nothing to do. Ids only, because the normalizer is pure
    /// and cannot know which exist: building a tombstone for each possible id cost more than all the rest of the
    /// work (two thirds of the output for PRAPARE), and creating never-derived tombstones would pollute searches.
    pub retractions: Vec<Retraction>,
    /// Instrument id from its data file (e.g. `hunger-vital-sign`).
    pub instrument: String,
}

/// A derived resource that this version no longer produces.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Retraction {
    pub resource_type: &'static str,
    pub id: String,
}

/// The `entered-in-error` version of a derived resource: an Observation's status, a Condition's verification status
/// (without clinicalStatus, FHIR con-5). Everything else is kept, so the record shows what was retracted.
pub fn retract(existing: &Value) -> Value {
    let mut out = existing.clone();
    let Some(obj) = out.as_object_mut() else { return out };
    match obj.get("resourceType").and_then(Value::as_str) {
        Some("Observation") => {
            obj.insert("status".into(), json!("entered-in-error"));
        }
        Some("Condition") => {
            obj.remove("clinicalStatus");
            obj.insert(
                "verificationStatus".into(),
                cc(
                    "http://terminology.hl7.org/CodeSystem/condition-ver-status",
                    "entered-in-error",
                    "Entered in Error",
                ),
            );
        }
        _ => {}
    }
    out
}

/// Why a QuestionnaireResponse could not be normalized. Messages carry element paths and LOINC codes only,
/// never answer values or other content of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NormalizeError {
    #[error("input is not a FHIR QuestionnaireResponse")]
    NotAQuestionnaireResponse,
    #[error("missing required element {path}")]
    MissingElement { path: &'static str },
    #[error("invalid element {path}: {reason}")]
    InvalidElement { path: &'static str, reason: &'static str },
    /// `link_id` is the instrument's LOINC code for the item (not the raw linkId, which is free text).
    #[error("invalid answer to item {link_id}: {reason}")]
    InvalidAnswer { link_id: String, reason: &'static str },
}

/// Normalizes with the built-in instruments. `Ok(None)`: not a supported instrument, or still `in-progress`.
pub fn normalize(qr: &Value, ctx: &Context) -> Result<Option<Derived>, NormalizeError> {
    normalize_with(qr, Instruments::builtin(), ctx)
}

/// How the QR status maps onto derived resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// completed / stopped: Observation.status final.
    Final,
    /// amended: Observation.status `corrected` (the IG's required status set has no `amended`; `corrected` is its
    /// child in ObservationStatus).
    Corrected,
    /// entered-in-error: everything derived is retracted; unreadable answers are skipped so retraction cannot fail.
    Retract,
}

/// One parsed answer.
#[derive(Debug, Clone)]
enum Val<'a> {
    Coded(&'a AnswerDef),
    Quantity(Number),
    Bool(bool),
    Str(String),
}

/// One screening-response Observation to emit.
struct Obs<'a> {
    item: &'a ItemDef,
    value: Val<'a>,
    need_domains: Vec<&'a str>,
    computed: bool,
    id: String,
}

/// Normalizes with a caller-supplied instrument set.
pub fn normalize_with(qr: &Value, instruments: &Instruments, ctx: &Context) -> Result<Option<Derived>, NormalizeError> {
    let obj = qr.as_object().ok_or(NormalizeError::NotAQuestionnaireResponse)?;
    if obj.get("resourceType").and_then(Value::as_str) != Some("QuestionnaireResponse") {
        return Err(NormalizeError::NotAQuestionnaireResponse);
    }
    let Some(instrument) = recognise(obj, instruments)? else {
        return Ok(None);
    };
    let mode = match obj.get("status").and_then(Value::as_str) {
        None => return Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.status" }),
        Some("completed" | "stopped") => Mode::Final,
        Some("amended") => Mode::Corrected,
        Some("entered-in-error") => Mode::Retract,
        Some("in-progress") => return Ok(None),
        Some(_) => {
            return Err(NormalizeError::InvalidElement {
                path: "QuestionnaireResponse.status",
                reason: "not a QuestionnaireResponse status code",
            });
        }
    };
    let qr_id = match obj.get("id").and_then(Value::as_str) {
        None => return Err(NormalizeError::MissingElement { path: "QuestionnaireResponse.id" }),
        Some(id) if !is_fhir_id(id) => {
            return Err(NormalizeError::InvalidElement { path: "QuestionnaireResponse.id", reason: "not a FHIR id" });
        }
        Some(id) => id,
    };
    let subject = reference_of(obj.get("subject"))
        .ok_or(NormalizeError::MissingElement { path: "QuestionnaireResponse.subject" })?;
    let authored = obj
        .get("authored")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or(NormalizeError::MissingElement { path: "QuestionnaireResponse.authored" })?;
    if !is_datetime(authored) {
        return Err(NormalizeError::InvalidElement {
            path: "QuestionnaireResponse.authored",
            reason: "not a FHIR dateTime",
        });
    }
    let version = obj.get("meta").and_then(|m| m.get("versionId")).and_then(Value::as_str).filter(|v| is_fhir_id(v));

    let mut found: BTreeMap<&str, &[Value]> = BTreeMap::new();
    if let Some(items) = obj.get("item") {
        collect_answers(items, instrument, &mut found, 0)?;
    }

    let observations = build_observations(qr_id, instrument, &found, mode)?;

    let b = Builder {
        instruments,
        qr_ref: format!("QuestionnaireResponse/{qr_id}"),
        subject,
        authored,
        issued: is_instant(authored).then_some(authored),
        performer: reference_of(obj.get("source")),
        mode,
    };

    let mut resources = Vec::new();
    let mut produced: Vec<String> = Vec::new();
    for o in &observations {
        resources.push(b.observation(&o.id, o.item, Some(o), !o.computed));
        produced.push(o.id.clone());
    }
    if !observations.is_empty() {
        let id = derived_id("obs", qr_id, "panel");
        resources.push(b.panel(&id, instrument, &observations));
        produced.push(id);
    }
    for domain in instrument.domains() {
        let Some(codes) = instruments.domain(domain).and_then(|d| d.condition.as_ref()) else { continue };
        let evidence = evidence_for(domain, &observations);
        if evidence.is_empty() {
            continue;
        }
        let id = derived_id("cond", qr_id, domain);
        resources.push(b.condition(&id, domain, codes, &evidence, ctx));
        produced.push(id);
    }

    let retractions = b.retractions(qr_id, instrument, &produced);

    if !resources.is_empty() {
        let targets: Vec<Value> = resources
            .iter()
            .map(|r| json!({ "reference": format!("{}/{}", r["resourceType"].as_str().unwrap_or(""), r["id"].as_str().unwrap_or("")) }))
            .collect();
        let source = match version {
            Some(v) => format!("QuestionnaireResponse/{qr_id}/_history/{v}"),
            None => b.qr_ref.clone(),
        };
        resources.push(json!({
            "resourceType": "Provenance",
            "id": derived_id("prov", qr_id, "provenance"),
            "target": targets,
            "recorded": ctx.recorded,
            "agent": [{
                "type": { "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                    "code": "assembler",
                    "display": "Assembler"
                }] },
                "who": { "reference": ctx.agent }
            }],
            "entity": [{ "role": "source", "what": { "reference": source } }]
        }));
    }

    Ok(Some(Derived { resources, retractions, instrument: instrument.id.clone() }))
}

/// Evidence for a domain at risk: the instrument's own risk summary (e.g. HVS 88124-3) when it is positive, as the
/// IG's ConditionFoodInsecurityExample does; otherwise every positive answer in the domain.
fn evidence_for(domain: &str, observations: &[Obs]) -> Vec<String> {
    let positive: Vec<&Obs> = observations.iter().filter(|o| o.need_domains.contains(&domain)).collect();
    let computed: Vec<String> = positive.iter().filter(|o| o.computed).map(|o| o.id.clone()).collect();
    if computed.is_empty() { positive.iter().map(|o| o.id.clone()).collect() } else { computed }
}

fn build_observations<'a>(
    qr_id: &str,
    instrument: &'a Instrument,
    found: &BTreeMap<&str, &[Value]>,
    mode: Mode,
) -> Result<Vec<Obs<'a>>, NormalizeError> {
    let lenient = mode == Mode::Retract;
    let mut out = Vec::new();
    let mut answered: BTreeMap<&str, Val<'a>> = BTreeMap::new();
    for item in &instrument.items {
        let Some(raw) = found.get(item.code.as_str()) else { continue };
        let vals = match parse_answers(item, raw) {
            Ok(v) => v,
            Err(_) if lenient => continue,
            Err(e) => return Err(e),
        };
        if item.repeats {
            let mut seen: Vec<String> = Vec::new();
            for v in vals {
                let key = match &v {
                    Val::Coded(a) => format!("{}/{}", item.code, a.code),
                    // Validation only allows `repeats` on choice items.
                    _ => continue,
                };
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key.clone());
                out.push(obs(qr_id, key, item, v, false));
            }
        } else {
            if vals.len() > 1 {
                if lenient {
                    continue;
                }
                return Err(NormalizeError::InvalidAnswer {
                    link_id: item.code.clone(),
                    reason: "several answers to a single-answer item",
                });
            }
            if let Some(v) = vals.into_iter().next() {
                answered.insert(&item.code, v.clone());
                out.push(obs(qr_id, item.code.clone(), item, v, false));
            }
        }
    }
    for item in &instrument.computed {
        // A supplied answer is checked even when we compute: a wrong code is a broken sender.
        let supplied = match found.get(item.code.as_str()).map(|raw| parse_answers(item, raw)) {
            None => None,
            Some(Ok(v)) if v.len() == 1 => v.into_iter().next(),
            Some(Ok(_)) if lenient => None,
            Some(Ok(_)) => {
                return Err(NormalizeError::InvalidAnswer {
                    link_id: item.code.clone(),
                    reason: "several answers to a single-answer item",
                });
            }
            Some(Err(_)) if lenient => None,
            Some(Err(e)) => return Err(e),
        };
        // The rule is the Questionnaire's calculatedExpression: when its inputs are present it wins over a
        // supplied value; a supplied value alone (e.g. a v2 OBX carrying only the risk result) is kept.
        if let Some(v) = compute(item, &answered).or(supplied) {
            out.push(obs(qr_id, item.code.clone(), item, v, true));
        }
    }
    Ok(out)
}

fn obs<'a>(qr_id: &str, key: String, item: &'a ItemDef, value: Val<'a>, computed: bool) -> Obs<'a> {
    let need_domains = match (&value, &item.rule) {
        (Val::Coded(a), _) if a.positive => item.need_domains(a).iter().map(String::as_str).collect(),
        (Val::Quantity(n), Some(Rule::Sum { positive_at_least, .. })) => {
            if n.as_f64().is_some_and(|x| x >= *positive_at_least) {
                item.domains.iter().map(String::as_str).collect()
            } else {
                Vec::new()
            }
        }
        _ => Vec::new(),
    };
    let id = derived_id("obs", qr_id, &key);
    Obs { item, value, need_domains, computed, id }
}

fn compute<'a>(item: &'a ItemDef, answered: &BTreeMap<&str, Val<'a>>) -> Option<Val<'a>> {
    match item.rule.as_ref()? {
        Rule::AnyPositive { items } => {
            let vals: Vec<&Val> = items.iter().filter_map(|c| answered.get(c.as_str())).collect();
            if vals.is_empty() {
                return None;
            }
            let any = vals.iter().any(|v| matches!(v, Val::Coded(a) if a.positive));
            item.answers.iter().find(|a| a.positive == any).map(Val::Coded)
        }
        Rule::Sum { items, .. } => {
            let mut total = 0.0;
            for c in items {
                match answered.get(c.as_str())? {
                    Val::Coded(a) => total += a.score?,
                    _ => return None,
                }
            }
            number_from_f64(total).map(Val::Quantity)
        }
    }
}

fn number_from_f64(x: f64) -> Option<Number> {
    if x.fract() == 0.0 && x.abs() < 1e15 { Some(Number::from(x as i64)) } else { Number::from_f64(x) }
}

fn parse_answers<'a>(item: &'a ItemDef, raw: &[Value]) -> Result<Vec<Val<'a>>, NormalizeError> {
    let bad = |reason: &'static str| NormalizeError::InvalidAnswer { link_id: item.code.clone(), reason };
    let mut out = Vec::with_capacity(raw.len());
    for answer in raw {
        let answer = answer.as_object().ok_or_else(|| bad("answer is not an object"))?;
        let val = match item.item_type {
            ItemType::Choice => {
                let coding = answer.get("valueCoding").ok_or_else(|| bad("expected valueCoding"))?;
                if let Some(system) = coding.get("system")
                    && system.as_str() != Some(LOINC)
                {
                    return Err(bad("answer coding is not from LOINC"));
                }
                let code =
                    coding.get("code").and_then(Value::as_str).ok_or_else(|| bad("answer coding has no code"))?;
                Val::Coded(item.answer(code).ok_or_else(|| bad("answer code is not in the instrument's answer list"))?)
            }
            ItemType::Quantity => {
                let n = if let Some(v) = answer.get("valueInteger") {
                    v.as_i64().map(Number::from)
                } else if let Some(v) = answer.get("valueDecimal") {
                    v.as_number().cloned()
                } else if let Some(q) = answer.get("valueQuantity") {
                    q.get("value").and_then(Value::as_number).cloned()
                } else {
                    return Err(bad("expected valueInteger, valueDecimal or valueQuantity"));
                };
                Val::Quantity(n.ok_or_else(|| bad("answer is not a number"))?)
            }
            ItemType::Boolean => Val::Bool(
                answer.get("valueBoolean").and_then(Value::as_bool).ok_or_else(|| bad("expected valueBoolean"))?,
            ),
            ItemType::String => Val::Str(
                answer
                    .get("valueString")
                    .and_then(Value::as_str)
                    .ok_or_else(|| bad("expected valueString"))?
                    .to_owned(),
            ),
        };
        out.push(val);
    }
    Ok(out)
}

/// Records the answer list of every instrument item found anywhere in the (possibly nested) item tree.
fn collect_answers<'v, 'i>(
    items: &'v Value,
    instrument: &'i Instrument,
    found: &mut BTreeMap<&'i str, &'v [Value]>,
    depth: usize,
) -> Result<(), NormalizeError> {
    let invalid = |reason| NormalizeError::InvalidElement { path: "QuestionnaireResponse.item", reason };
    if depth > MAX_DEPTH {
        return Err(invalid("items nested too deeply"));
    }
    let items = items.as_array().ok_or_else(|| invalid("item is not a list"))?;
    for item in items {
        let Some(code) = item_code(item) else {
            return Err(invalid("item has no linkId"));
        };
        let answers = match item.get("answer") {
            None => &[][..],
            Some(Value::Array(a)) => a.as_slice(),
            Some(_) => return Err(invalid("answer is not a list")),
        };
        if let Some(def) = instrument.items.iter().chain(instrument.computed.iter()).find(|d| d.code == code)
            && !answers.is_empty()
            && found.insert(def.code.as_str(), answers).is_some()
        {
            return Err(NormalizeError::InvalidAnswer {
                link_id: def.code.clone(),
                reason: "item answered more than once",
            });
        }
        if let Some(children) = item.get("item") {
            collect_answers(children, instrument, found, depth + 1)?;
        }
        for answer in answers {
            if let Some(children) = answer.get("item") {
                collect_answers(children, instrument, found, depth + 1)?;
            }
        }
    }
    Ok(())
}

/// The LOINC code of a QR item: a LOINC `item.code` if present, else the last segment of the linkId, so
/// `/88122-7`, `88122-7` and `/93042-0/71802-3` all work.
fn item_code(item: &Value) -> Option<&str> {
    if let Some(codes) = item.get("code").and_then(Value::as_array)
        && let Some(code) = codes
            .iter()
            .find(|c| c.get("system").and_then(Value::as_str) == Some(LOINC))
            .and_then(|c| c.get("code").and_then(Value::as_str))
    {
        return Some(code);
    }
    let link = item.get("linkId").and_then(Value::as_str)?;
    Some(link.rsplit('/').next().unwrap_or(link).trim())
}

/// Picks the instrument: by Questionnaire canonical first, else by the item codes (and answer codes) present.
fn recognise<'i>(
    obj: &Map<String, Value>,
    instruments: &'i Instruments,
) -> Result<Option<&'i Instrument>, NormalizeError> {
    if let Some(q) = obj.get("questionnaire").and_then(Value::as_str) {
        let canonical = q.split('|').next().unwrap_or(q);
        if let Some(i) = instruments.iter().find(|i| i.questionnaires.iter().any(|c| c == canonical)) {
            return Ok(Some(i));
        }
    }
    let mut seen: Vec<(&str, &[Value])> = Vec::new();
    if let Some(items) = obj.get("item") {
        gather_codes(items, &mut seen, 0);
    }
    let seen: Vec<(&str, &[Value])> = seen.into_iter().filter(|(c, _)| is_loinc_code(c)).collect();
    let mut best: Option<(usize, usize, &Instrument)> = None;
    for ins in instruments.iter() {
        let known = ins.known_codes();
        let mut matched = 0;
        let mut unknown = 0;
        for (code, answers) in &seen {
            if !known.contains(code) {
                unknown += 1;
            } else if ins.item(code).is_none_or(|def| answers_fit(def, answers)) {
                matched += 1;
            }
        }
        // Require that at least half of the LOINC-coded items are this instrument's, so a foreign form that
        // happens to reuse one LOINC question is not taken over.
        if matched == 0 || matched < unknown {
            continue;
        }
        let size = known.len();
        if best.is_none_or(|(m, s, _)| matched > m || (matched == m && size < s)) {
            best = Some((matched, size, ins));
        }
    }
    Ok(best.map(|(_, _, i)| i))
}

fn answers_fit(def: &ItemDef, answers: &[Value]) -> bool {
    def.item_type != ItemType::Choice
        || answers.iter().all(|a| {
            a.get("valueCoding")
                .and_then(|c| c.get("code"))
                .and_then(Value::as_str)
                .is_some_and(|code| def.answer(code).is_some())
        })
}

fn gather_codes<'v>(items: &'v Value, out: &mut Vec<(&'v str, &'v [Value])>, depth: usize) {
    let Some(items) = items.as_array() else { return };
    if depth > MAX_DEPTH {
        return;
    }
    for item in items {
        let answers = item.get("answer").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
        if let Some(code) = item_code(item) {
            out.push((code, answers));
        }
        if let Some(children) = item.get("item") {
            gather_codes(children, out, depth + 1);
        }
        for a in answers {
            if let Some(children) = a.get("item") {
                gather_codes(children, out, depth + 1);
            }
        }
    }
}

/// LOINC codes look like `12345-6`: digits, a dash, one check digit.
fn is_loinc_code(s: &str) -> bool {
    match s.split_once('-') {
        Some((num, check)) => {
            !num.is_empty()
                && num.len() <= 7
                && num.bytes().all(|b| b.is_ascii_digit())
                && check.len() == 1
                && check.bytes().all(|b| b.is_ascii_digit())
        }
        None => false,
    }
}

fn is_fhir_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// FHIR `dateTime`: `YYYY`, `YYYY-MM`, `YYYY-MM-DD` or `YYYY-MM-DDThh:mm:ss[.f+](Z|+hh:mm|-hh:mm)`.
fn is_datetime(s: &str) -> bool {
    let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
    let (date, time) = match s.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let date_ok = match parts.as_slice() {
        [y] => digits(y, 4),
        [y, m] => digits(y, 4) && digits(m, 2),
        [y, m, d] => digits(y, 4) && digits(m, 2) && digits(d, 2),
        _ => false,
    };
    match time {
        None => date_ok,
        Some(t) => date_ok && parts.len() == 3 && is_time_with_zone(t),
    }
}

fn is_time_with_zone(t: &str) -> bool {
    let digits = |t: &str, n: usize| t.len() == n && t.bytes().all(|b| b.is_ascii_digit());
    let (clock, zone) = if let Some(c) = t.strip_suffix('Z') {
        (c, None)
    } else if t.len() > 6 && matches!(t.as_bytes()[t.len() - 6], b'+' | b'-') && t.is_char_boundary(t.len() - 6) {
        (&t[..t.len() - 6], Some(&t[t.len() - 5..]))
    } else {
        return false;
    };
    let zone_ok = zone.is_none_or(|z| z.split_once(':').is_some_and(|(h, m)| digits(h, 2) && digits(m, 2)));
    let (hms, frac) = match clock.split_once('.') {
        Some((h, f)) => (h, Some(f)),
        None => (clock, None),
    };
    let hms_ok = matches!(hms.split(':').collect::<Vec<_>>().as_slice(), [h, m, s] if digits(h, 2) && digits(m, 2) && digits(s, 2));
    zone_ok && hms_ok && frac.is_none_or(|f| !f.is_empty() && f.bytes().all(|b| b.is_ascii_digit()))
}

/// A dateTime precise enough to also be an `instant` (Observation.issued): it has a time, which FHIR dateTime
/// only allows with seconds and a zone.
fn is_instant(s: &str) -> bool {
    is_datetime(s) && s.contains('T')
}

/// Copies `reference` (and `display`) of a Reference; `None` when there is no usable reference.
fn reference_of(v: Option<&Value>) -> Option<Value> {
    let v = v?.as_object()?;
    let reference = v.get("reference")?.as_str().filter(|r| !r.is_empty())?;
    let mut out = Map::new();
    out.insert("reference".into(), Value::String(reference.to_owned()));
    if let Some(d) = v.get("display").and_then(Value::as_str) {
        out.insert("display".into(), Value::String(d.to_owned()));
    }
    Some(Value::Object(out))
}

fn cc(system: &str, code: &str, display: &str) -> Value {
    json!({ "coding": [{ "system": system, "code": code, "display": display }] })
}

struct Builder<'a> {
    instruments: &'a Instruments,
    qr_ref: String,
    subject: Value,
    authored: &'a str,
    issued: Option<&'a str>,
    performer: Option<Value>,
    mode: Mode,
}

impl Builder<'_> {
    fn obs_status(&self) -> &'static str {
        match self.mode {
            Mode::Final => "final",
            Mode::Corrected => "corrected",
            Mode::Retract => "entered-in-error",
        }
    }

    fn categories<'d>(&self, domains: impl IntoIterator<Item = &'d str>) -> Vec<Value> {
        let mut cats = vec![cc(OBS_CATEGORY, "social-history", "Social History"), cc(OBS_CATEGORY, "survey", "Survey")];
        for d in domains {
            let display = self.instruments.domain(d).map_or(d, |dd| dd.display.as_str());
            cats.push(cc(SDOHCC_CODES, d, display));
        }
        cats
    }

    fn observation_base(
        &self,
        id: &str,
        status: &str,
        item_code: &str,
        display: &str,
        domains: &[String],
    ) -> Map<String, Value> {
        let mut o = Map::new();
        o.insert("resourceType".into(), json!("Observation"));
        o.insert("id".into(), json!(id));
        o.insert("meta".into(), json!({ "profile": [PROFILE_SCREENING] }));
        o.insert("status".into(), json!(status));
        o.insert("category".into(), Value::Array(self.categories(domains.iter().map(String::as_str))));
        o.insert("code".into(), cc(LOINC, item_code, display));
        o.insert("subject".into(), self.subject.clone());
        o.insert("effectiveDateTime".into(), json!(self.authored));
        o
    }

    /// A screening-response Observation; `answer == None` builds the retraction shape (no value).
    fn observation(&self, id: &str, item: &ItemDef, answer: Option<&Obs>, with_performer: bool) -> Value {
        let status = if answer.is_some() { self.obs_status() } else { "entered-in-error" };
        let mut o = self.observation_base(id, status, &item.code, &item.display, &item.domains);
        if let Some(a) = answer {
            if let Some(issued) = self.issued {
                o.insert("issued".into(), json!(issued));
            }
            if with_performer && let Some(p) = &self.performer {
                o.insert("performer".into(), json!([p]));
            }
            match &a.value {
                Val::Coded(ans) => {
                    o.insert("valueCodeableConcept".into(), cc(LOINC, &ans.code, &ans.display));
                }
                Val::Quantity(n) => {
                    let mut q = Map::new();
                    q.insert("value".into(), Value::Number(n.clone()));
                    if let Some(unit) = &item.unit {
                        q.insert("unit".into(), json!(unit));
                        q.insert("system".into(), json!(UCUM));
                        q.insert("code".into(), json!(unit));
                    }
                    o.insert("valueQuantity".into(), Value::Object(q));
                }
                Val::Bool(b) => {
                    o.insert("valueBoolean".into(), json!(b));
                }
                Val::Str(s) => {
                    o.insert("valueString".into(), json!(s));
                }
            }
            // IG: POS only when the answer signals a need; never NEG.
            if !a.need_domains.is_empty() && self.mode != Mode::Retract {
                o.insert(
                    "interpretation".into(),
                    json!([cc(
                        "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "POS",
                        "Positive"
                    )]),
                );
            }
        }
        o.insert("derivedFrom".into(), json!([{ "reference": self.qr_ref }]));
        Value::Object(o)
    }

    fn panel(&self, id: &str, instrument: &Instrument, members: &[Obs]) -> Value {
        let domains: Vec<String> = instrument
            .domains()
            .into_iter()
            .filter(|d| members.iter().any(|m| m.item.domains.iter().any(|md| md == d)))
            .map(str::to_owned)
            .collect();
        let mut o =
            self.observation_base(id, self.obs_status(), &instrument.panel.code, &instrument.panel.display, &domains);
        if let Some(issued) = self.issued {
            o.insert("issued".into(), json!(issued));
        }
        let members: Vec<Value> =
            members.iter().map(|m| json!({ "reference": format!("Observation/{}", m.id) })).collect();
        o.insert("hasMember".into(), Value::Array(members));
        o.insert("derivedFrom".into(), json!([{ "reference": self.qr_ref }]));
        Value::Object(o)
    }

    fn condition_base(
        &self,
        id: &str,
        domain: &str,
        codes: &[crate::instrument::Coding],
        retract: bool,
        ctx: &Context,
    ) -> Map<String, Value> {
        let display = self.instruments.domain(domain).map_or(domain, |d| d.display.as_str());
        let mut c = Map::new();
        c.insert("resourceType".into(), json!("Condition"));
        c.insert("id".into(), json!(id));
        c.insert("meta".into(), json!({ "profile": [PROFILE_CONDITION] }));
        if ctx.agent.starts_with("Device/") {
            c.insert(
                "extension".into(),
                json!([{ "url": EXT_ASSERTER, "valueReference": { "reference": ctx.agent } }]),
            );
        }
        // con-5: an entered-in-error Condition carries no clinicalStatus.
        if !retract {
            c.insert(
                "clinicalStatus".into(),
                cc("http://terminology.hl7.org/CodeSystem/condition-clinical", "active", "Active"),
            );
        }
        let (vs, vs_display) =
            if retract { ("entered-in-error", "Entered in Error") } else { ("unconfirmed", "Unconfirmed") };
        c.insert(
            "verificationStatus".into(),
            cc("http://terminology.hl7.org/CodeSystem/condition-ver-status", vs, vs_display),
        );
        c.insert(
            "category".into(),
            json!([
                cc("http://hl7.org/fhir/us/core/CodeSystem/condition-category", "health-concern", "Health Concern"),
                cc(SDOHCC_CODES, domain, display)
            ]),
        );
        let coding: Vec<Value> =
            codes.iter().map(|k| json!({ "system": k.system, "code": k.code, "display": k.display })).collect();
        c.insert("code".into(), json!({ "coding": coding }));
        c.insert("subject".into(), self.subject.clone());
        c
    }

    fn condition(
        &self,
        id: &str,
        domain: &str,
        codes: &[crate::instrument::Coding],
        evidence: &[String],
        ctx: &Context,
    ) -> Value {
        let mut c = self.condition_base(id, domain, codes, self.mode == Mode::Retract, ctx);
        c.insert("onsetPeriod".into(), json!({ "start": self.authored }));
        let detail: Vec<Value> = evidence.iter().map(|e| json!({ "reference": format!("Observation/{e}") })).collect();
        c.insert("evidence".into(), json!([{ "detail": detail }]));
        Value::Object(c)
    }

    /// Every id the instrument could derive from this QR that this version did not produce.
    fn retractions(&self, qr_id: &str, instrument: &Instrument, produced: &[String]) -> Vec<Retraction> {
        let mut out = Vec::new();
        let mut push = |resource_type: &'static str, id: String| {
            if !produced.contains(&id) {
                out.push(Retraction { resource_type, id });
            }
        };
        for item in &instrument.items {
            if item.repeats {
                for a in &item.answers {
                    push("Observation", derived_id("obs", qr_id, &format!("{}/{}", item.code, a.code)));
                }
            } else {
                push("Observation", derived_id("obs", qr_id, &item.code));
            }
        }
        for item in &instrument.computed {
            push("Observation", derived_id("obs", qr_id, &item.code));
        }
        push("Observation", derived_id("obs", qr_id, "panel"));
        for domain in instrument.domains() {
            if self.instruments.domain(domain).and_then(|d| d.condition.as_ref()).is_some() {
                push("Condition", derived_id("cond", qr_id, domain));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_code_forms() {
        assert_eq!(item_code(&json!({"linkId": "/88122-7"})), Some("88122-7"));
        assert_eq!(item_code(&json!({"linkId": "88122-7"})), Some("88122-7"));
        assert_eq!(item_code(&json!({"linkId": "/93042-0/71802-3"})), Some("71802-3"));
        assert_eq!(
            item_code(&json!({"linkId": "q1", "code": [{"system": LOINC, "code": "88123-5"}]})),
            Some("88123-5")
        );
    }

    #[test]
    fn loinc_shape() {
        assert!(is_loinc_code("88122-7"));
        assert!(!is_loinc_code("LA28397-0"));
        assert!(!is_loinc_code("88122-"));
        assert!(!is_loinc_code("q1"));
    }

    #[test]
    fn datetime_shapes() {
        for ok in ["2020", "2020-09", "2020-09-10", "2020-09-10T21:56:54Z", "2020-09-10T21:56:54.671+02:00"] {
            assert!(is_datetime(ok), "{ok}");
        }
        for bad in [
            "",
            "20",
            "2020-9-10",
            "2020-09-10T21:56",
            "2020-09-10T21:56:54",
            "2020-09T10:00:00Z",
            "x",
            "2020-09-10T21:56:54.Z",
            "2020-09-10T21:56:54+0200",
        ] {
            assert!(!is_datetime(bad), "{bad}");
        }
    }

    #[test]
    fn instant_detection() {
        assert!(is_instant("2020-09-10T21:56:54.671Z"));
        assert!(is_instant("2020-09-10T21:56:54+02:00"));
        assert!(!is_instant("2020-09-10"));
        assert!(!is_instant("2020-09-10T21:56"));
    }
}
