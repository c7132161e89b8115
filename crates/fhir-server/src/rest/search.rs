//! Type-level search over the store's index: index rows on write, and `GET /{type}?…` / `POST /{type}/_search`
//! translated into a [`store::SearchQuery`], answered as a `searchset` Bundle.
//!
//! Parameters come from the R4 SearchParameter registry, so every indexed parameter of a type is searchable
//! without code per parameter. Unknown parameters are ignored and left out of the `self` link, unless the client
//! asked for `Prefer: handling=strict`, which turns them into a 400.

use std::collections::HashSet;

use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};
use store::{
    Cond, DateCond, IndexEntry, IndexRow, IndexTable, NumberCond, RangeOp, SearchQuery, SortBy, SortKey,
    StoredResource, StringMatch, SystemMatch, UriMatch, ValueTest,
};

use super::error::{FhirError, IssueType};
use super::handlers::{check_type, json_response, path_error};
use super::{Acting, FhirState, SUPPORTED_TYPES, media};
use crate::search::value::{DateQuery, NumberQuery, ReferenceQuery, StringMode, SystemConstraint, TokenQuery, UriMode};
use crate::search::{
    IndexValue, Modifier, ParamQuery, Prefix, ResourceSearchParam, SearchParamRegistry, SearchType, SearchValue,
    ValueError,
};

const DEFAULT_COUNT: u32 = 50;
const MAX_COUNT: u32 = 1000;
/// `:iterate` includes follow at most this many further hops, so a reference cycle cannot loop.
const MAX_INCLUDE_ROUNDS: usize = 3;
/// The paging parameter of `next` links: an offset into the stable (sort keys, then id) order.
const PAGE_PARAM: &str = "_offset";
/// Parameters answered from the resources table or by the server itself, not from index rows.
const NOT_FROM_INDEX: &[&str] = &["_id", "_lastUpdated"];
const SUBSETTED: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

fn registry() -> Result<&'static SearchParamRegistry, FhirError> {
    SearchParamRegistry::r4().map_err(|e| {
        tracing::error!(error = %e, "search parameter definitions failed to load");
        FhirError::new(StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, "search is unavailable")
    })
}

/// The index rows of a resource about to be stored. Unreadable values are skipped: indexing never rejects a write.
pub fn index_rows(resource: &Value) -> Vec<IndexRow> {
    let Ok(registry) = SearchParamRegistry::r4() else { return Vec::new() };
    let Ok(params) = crate::search::extract(registry, resource) else { return Vec::new() };
    let mut rows = Vec::new();
    for p in params {
        if NOT_FROM_INDEX.contains(&p.code.as_str()) {
            continue;
        }
        let mut group = 0;
        for v in &p.values {
            match v {
                IndexValue::Composite(parts) => {
                    group += 1;
                    let entries: Vec<IndexEntry> = parts.iter().filter_map(entry_of).collect();
                    // A tuple missing a component could match a composite query it does not satisfy.
                    if entries.len() == parts.len() {
                        for (i, entry) in entries.into_iter().enumerate() {
                            rows.push(IndexRow {
                                param: p.code.clone(),
                                group,
                                component: i32::try_from(i).unwrap_or(i32::MAX),
                                value: entry,
                            });
                        }
                    }
                }
                other => {
                    if let Some(entry) = entry_of(other) {
                        rows.push(IndexRow { param: p.code.clone(), group: 0, component: 0, value: entry });
                    }
                }
            }
        }
    }
    rows
}

fn entry_of(v: &IndexValue) -> Option<IndexEntry> {
    Some(match v {
        IndexValue::Token(t) => IndexEntry::Token {
            system: t.system.clone(),
            code: t.code.clone(),
            text: t.text.clone(),
            type_system: t.type_system.clone(),
            type_code: t.type_code.clone(),
        },
        IndexValue::String(s) => IndexEntry::String { normalized: s.normalized.clone(), exact: s.raw.clone() },
        IndexValue::Reference(r) => IndexEntry::Reference {
            target_type: r.resource_type.clone(),
            target_id: r.id.clone(),
            url: r.url.clone(),
            version: r.version.clone(),
            identifier_system: r.identifier_system.clone(),
            identifier_value: r.identifier_value.clone(),
        },
        IndexValue::Date(d) => IndexEntry::Date { low: d.low, high: d.high },
        IndexValue::Number(n) => IndexEntry::Number { low: n.low, high: n.high },
        IndexValue::Quantity(q) => IndexEntry::Quantity {
            low: q.value.low,
            high: q.value.high,
            system: q.system.clone(),
            code: q.code.clone(),
            unit: q.unit.clone(),
        },
        IndexValue::Uri(u) => IndexEntry::Uri(u.clone()),
        IndexValue::Composite(_) | IndexValue::Position(_) => return None,
    })
}

fn table_of(ty: SearchType) -> Option<IndexTable> {
    Some(match ty {
        SearchType::Token => IndexTable::Token,
        SearchType::String => IndexTable::String,
        SearchType::Reference => IndexTable::Reference,
        SearchType::Date => IndexTable::Date,
        SearchType::Number => IndexTable::Number,
        SearchType::Quantity => IndexTable::Quantity,
        SearchType::Uri => IndexTable::Uri,
        SearchType::Composite => IndexTable::Token,
        SearchType::Special => return None,
    })
}

/// Parameter names come from the URL; only plain names are echoed.
fn printable(name: &str) -> &str {
    if name.len() <= 100 && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.')) {
        name
    } else {
        "(invalid)"
    }
}

fn invalid_value(name: &str) -> FhirError {
    FhirError::bad_request(IssueType::Invalid, format!("invalid value for search parameter '{}'", printable(name)))
        .at(printable(name).to_owned())
}

/// Why a parameter could not be turned into conditions.
enum Refusal {
    /// Not a parameter of this type (or not one this server can search by): ignored unless strict.
    Unknown,
    Invalid(FhirError),
}

fn prefix_op(p: Prefix) -> RangeOp {
    match p {
        Prefix::Eq => RangeOp::Eq,
        Prefix::Ne => RangeOp::Ne,
        Prefix::Gt => RangeOp::Gt,
        Prefix::Lt => RangeOp::Lt,
        Prefix::Ge => RangeOp::Ge,
        Prefix::Le => RangeOp::Le,
        Prefix::Sa => RangeOp::Sa,
        Prefix::Eb => RangeOp::Eb,
        Prefix::Ap => RangeOp::Ap,
    }
}

fn date_cond(q: &DateQuery) -> DateCond {
    let (mut low, mut high) = (q.range.low, q.range.high);
    if q.prefix == Prefix::Ap {
        // Same widening as the in-memory matcher: 10% of the distance from now.
        let now = chrono::Utc::now().timestamp_micros();
        let mid = low / 2 + high / 2;
        let tolerance = i64::try_from(now.saturating_sub(mid).unsigned_abs() / 10).unwrap_or(i64::MAX);
        low = low.saturating_sub(tolerance);
        high = high.saturating_add(tolerance);
    }
    DateCond { op: prefix_op(q.prefix), low, high }
}

fn number_cond(q: &NumberQuery) -> NumberCond {
    let (mut low, mut high) = (q.low, q.high);
    if q.prefix == Prefix::Ap {
        let tolerance = q.value.abs() * 0.1;
        low = low.min(q.value - tolerance);
        high = high.max(q.value + tolerance);
    }
    NumberCond { op: prefix_op(q.prefix), value: q.value, low, high }
}

fn system_match(s: &SystemConstraint) -> SystemMatch {
    match s {
        SystemConstraint::Any => SystemMatch::Any,
        SystemConstraint::NoSystem => SystemMatch::None,
        SystemConstraint::Exactly(s) => SystemMatch::Exactly(s.clone()),
    }
}

fn value_test(v: &SearchValue, base: &str) -> Option<ValueTest> {
    Some(match v {
        SearchValue::Missing(_) => return None,
        SearchValue::Token(TokenQuery::Code { system, code }) => {
            ValueTest::Token { system: system_match(system), code: code.clone() }
        }
        SearchValue::Token(TokenQuery::Text(t)) => ValueTest::TokenText(t.clone()),
        SearchValue::Token(TokenQuery::OfType { type_system, type_code, value }) => ValueTest::TokenOfType {
            type_system: type_system.clone(),
            type_code: type_code.clone(),
            value: value.clone(),
        },
        SearchValue::String(s) => match s.mode {
            StringMode::StartsWith => ValueTest::String { mode: StringMatch::Prefix, value: s.normalized.clone() },
            StringMode::Contains => ValueTest::String { mode: StringMatch::Contains, value: s.normalized.clone() },
            StringMode::Exact => ValueTest::String { mode: StringMatch::Exact, value: s.raw.clone() },
        },
        SearchValue::Reference(ReferenceQuery::Id { resource_type, id }) => {
            ValueTest::Reference { target_type: resource_type.clone(), target_id: id.clone() }
        }
        SearchValue::Reference(ReferenceQuery::Url { url, version }) => {
            // A URL on this server's own base is a literal reference in disguise.
            let local = url.strip_prefix(base).and_then(|rest| rest.strip_prefix('/')).and_then(|rest| {
                let mut parts = rest.split('/');
                match (parts.next(), parts.next()) {
                    (Some(t), Some(id)) if SUPPORTED_TYPES.contains(&t) && !id.is_empty() => {
                        Some(ValueTest::Reference { target_type: Some(t.to_owned()), target_id: id.to_owned() })
                    }
                    _ => None,
                }
            });
            local.unwrap_or_else(|| ValueTest::ReferenceUrl { url: url.clone(), version: version.clone() })
        }
        SearchValue::Reference(ReferenceQuery::Identifier { system, value }) => {
            ValueTest::ReferenceIdentifier { system: system_match(system), value: value.clone() }
        }
        SearchValue::Date(d) => ValueTest::Date(date_cond(d)),
        SearchValue::Number(n) => ValueTest::Number(number_cond(n)),
        SearchValue::Quantity(q) => {
            ValueTest::Quantity { cond: number_cond(&q.number), system: q.system.clone(), code: q.code.clone() }
        }
        SearchValue::Uri { uri, mode } => ValueTest::Uri {
            mode: match mode {
                UriMode::Exact => UriMatch::Exact,
                UriMode::Below => UriMatch::Below,
                UriMode::Above => UriMatch::Above,
            },
            value: uri.clone(),
        },
        SearchValue::Composite(_) => return None,
    })
}

/// Conditions (AND of OR lists) for one `name=value` pair on `resource_type`. `name` may carry a modifier, a chain
/// (`subject:Patient.name`) or be a `_has:Type:param:name`.
fn conditions(
    registry: &SearchParamRegistry,
    base: &str,
    resource_type: &str,
    name: &str,
    raw: &str,
    depth: usize,
) -> Result<Vec<Vec<Cond>>, Refusal> {
    if depth > 2 {
        return Err(Refusal::Invalid(FhirError::bad_request(
            IssueType::NotSupported,
            "chains and _has nest at most two levels",
        )));
    }
    if let Some(rest) = name.strip_prefix("_has:") {
        let mut parts = rest.splitn(3, ':');
        let (Some(source), Some(param), Some(inner)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(Refusal::Invalid(invalid_value(name)));
        };
        if !SUPPORTED_TYPES.contains(&source) {
            return Err(Refusal::Unknown);
        }
        let param = match registry.get(source, param) {
            Some(p) if p.search_type() == SearchType::Reference => reference_rows(p),
            _ => return Err(Refusal::Unknown),
        };
        let conds = conditions(registry, base, source, inner, raw, depth + 1)?;
        return Ok(vec![vec![Cond::Has { source_type: source.to_owned(), param: param.to_owned(), conds }]]);
    }
    if let Some((head, tail)) = name.split_once('.') {
        let (code, type_modifier) = match head.split_once(':') {
            Some((c, t)) => (c, Some(t)),
            None => (head, None),
        };
        let Some(param) = registry.get(resource_type, code).filter(|p| p.search_type() == SearchType::Reference) else {
            return Err(Refusal::Unknown);
        };
        let targets: Vec<String> = match type_modifier {
            Some(t) => vec![t.to_owned()],
            None => param.def.target.clone(),
        };
        let tail_code = tail.split(['.', ':']).next().unwrap_or(tail);
        let mut ors = Vec::new();
        for target in targets.iter().filter(|t| SUPPORTED_TYPES.contains(&t.as_str())) {
            if !tail.starts_with("_has:")
                && registry.get(target, tail_code).is_none()
                && !NOT_FROM_INDEX.contains(&tail_code)
            {
                continue;
            }
            match conditions(registry, base, target, tail, raw, depth + 1) {
                Ok(conds) => ors.push(Cond::Chain {
                    param: reference_rows(param).to_owned(),
                    target_type: target.clone(),
                    conds,
                }),
                Err(Refusal::Unknown) => {}
                Err(e) => return Err(e),
            }
        }
        if ors.is_empty() {
            return Err(Refusal::Unknown);
        }
        return Ok(vec![ors]);
    }
    let (code, modifier) = match name.split_once(':') {
        Some((c, m)) => (c, Some(m)),
        None => (name, None),
    };
    if code == "_id" || code == "_lastUpdated" {
        let ty = if code == "_id" { SearchType::Token } else { SearchType::Date };
        let mut ors = Vec::new();
        for v in crate::search::value::split_unescaped(raw, ',') {
            let value =
                crate::search::parse_value(ty, modifier.map(Modifier::parse).transpose().ok().flatten().as_ref(), v)
                    .map_err(|_| Refusal::Invalid(invalid_value(name)))?;
            match value {
                SearchValue::Token(TokenQuery::Code { code: Some(id), .. }) => ors.push(Cond::Id(id)),
                SearchValue::Date(d) => ors.push(Cond::LastUpdated(date_cond(&d))),
                _ => return Err(Refusal::Invalid(invalid_value(name))),
            }
        }
        return Ok(vec![ors]);
    }
    let Some(param) = registry.get(resource_type, code).filter(|p| p.is_indexed()) else {
        return Err(Refusal::Unknown);
    };
    let query = ParamQuery::parse(param, modifier, raw).map_err(|e| match e {
        ValueError::UnsupportedType(_) => Refusal::Unknown,
        _ => Refusal::Invalid(invalid_value(name)),
    })?;
    param_conditions(param, &query, base).ok_or_else(|| Refusal::Invalid(invalid_value(name)))
}

fn param_conditions(param: &ResourceSearchParam, query: &ParamQuery, base: &str) -> Option<Vec<Vec<Cond>>> {
    // A parameter whose values other parameters' rows hold matches when any of those rows matches.
    let codes = param.index_codes();
    let not = query.modifier == Some(Modifier::Not);
    let mut ors = Vec::new();
    let mut ands = Vec::new();
    for v in &query.values {
        match v {
            // Missing means missing from every parameter holding its rows; present means present in one.
            SearchValue::Missing(true) => {
                let table = table_of(param.search_type())?;
                ands.extend(codes.iter().map(|c| vec![Cond::Missing { param: c.to_string(), table, missing: true }]));
            }
            SearchValue::Missing(false) => {
                let table = table_of(param.search_type())?;
                ors.extend(codes.iter().map(|c| Cond::Missing { param: c.to_string(), table, missing: false }));
            }
            SearchValue::Composite(parts) => {
                let components = parts.iter().map(|p| value_test(p, base)).collect::<Option<Vec<_>>>()?;
                ors.extend(
                    codes.iter().map(|c| Cond::Composite { param: c.to_string(), components: components.clone() }),
                );
            }
            // `:not=a,b`: no value may match a or b, under any of the parameters.
            v if not => {
                let test = value_test(v, base)?;
                ands.extend(codes.iter().map(|c| vec![Cond::NotMatch { param: c.to_string(), test: test.clone() }]));
            }
            v => {
                let test = value_test(v, base)?;
                ors.extend(codes.iter().map(|c| Cond::Match { param: c.to_string(), test: test.clone() }));
            }
        }
    }
    if !ors.is_empty() {
        ands.push(ors);
    }
    Some(ands)
}

/// The code whose index rows a reference parameter's values are stored under (references are shared only as exact
/// copies, see [`crate::search::StoredAs`]).
fn reference_rows(param: &ResourceSearchParam) -> &str {
    param.index_codes().first().copied().unwrap_or(param.code())
}

#[derive(Debug, Clone)]
struct IncludeSpec {
    source: String,
    param: String,
    target: Option<String>,
    iterate: bool,
    reverse: bool,
}

fn include_spec(registry: &SearchParamRegistry, name: &str, value: &str) -> Option<IncludeSpec> {
    let (kind, modifier) = name.split_once(':').map_or((name, None), |(k, m)| (k, Some(m)));
    let iterate = match modifier {
        None => false,
        Some("iterate" | "recurse") => true,
        Some(_) => return None,
    };
    let mut parts = value.split(':');
    let (source, param, target) = (parts.next()?, parts.next()?, parts.next());
    if parts.next().is_some() || !SUPPORTED_TYPES.contains(&source) {
        return None;
    }
    let param = match registry.get(source, param) {
        Some(p) if p.search_type() == SearchType::Reference => reference_rows(p),
        _ => return None,
    };
    if target.is_some_and(|t| !SUPPORTED_TYPES.contains(&t)) {
        return None;
    }
    Some(IncludeSpec {
        source: source.to_owned(),
        param: param.to_owned(),
        target: target.map(str::to_owned),
        iterate,
        reverse: kind == "_revinclude",
    })
}

/// Everything a search request asked for, after validation.
struct Plan {
    query: SearchQuery,
    includes: Vec<IncludeSpec>,
    elements: Option<Vec<String>>,
    summary_count: bool,
    summary_text: Option<&'static str>,
    /// The parameters that were used, in request order, for `self` / `next` links.
    used: Vec<(String, String)>,
}

fn plan(
    registry: &SearchParamRegistry,
    base: &str,
    resource_type: &str,
    params: &[(String, String)],
    strict: bool,
) -> Result<Plan, FhirError> {
    let mut query = SearchQuery {
        resource_type: resource_type.to_owned(),
        count: DEFAULT_COUNT,
        total: true,
        ..Default::default()
    };
    let mut plan = Plan {
        query: query.clone(),
        includes: Vec::new(),
        elements: None,
        summary_count: false,
        summary_text: None,
        used: Vec::new(),
    };
    for (name, value) in params {
        let keep = match name.as_str() {
            "_format" | "_pretty" => false,
            "_count" => {
                let n: u32 = value.parse().map_err(|_| invalid_value(name))?;
                query.count = n.min(MAX_COUNT);
                true
            }
            PAGE_PARAM => {
                query.offset = value.parse().map_err(|_| invalid_value(name))?;
                false
            }
            "_total" => {
                query.total = match value.as_str() {
                    "none" => false,
                    "accurate" | "estimate" => true,
                    _ => return Err(invalid_value(name)),
                };
                true
            }
            "_summary" => {
                match value.as_str() {
                    "count" => plan.summary_count = true,
                    "false" => {}
                    "data" => plan.summary_text = Some("data"),
                    "text" => plan.summary_text = Some("text"),
                    "true" => plan.summary_text = Some("true"),
                    _ => {
                        return Err(FhirError::bad_request(
                            IssueType::NotSupported,
                            "_summary supports true, count, data, text and false",
                        )
                        .at("_summary"));
                    }
                }
                true
            }
            "_elements" => {
                let list: Vec<String> =
                    value.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect();
                plan.elements = Some(list);
                true
            }
            "_sort" => {
                for key in value.split(',').filter(|k| !k.is_empty()) {
                    let (descending, code) = match key.strip_prefix('-') {
                        Some(c) => (true, c),
                        None => (false, key),
                    };
                    let by = match code {
                        "_id" => SortBy::Id,
                        "_lastUpdated" => SortBy::LastUpdated,
                        c => match registry.get(resource_type, c).filter(|p| p.is_indexed()) {
                            Some(p) if p.search_type() != SearchType::Composite => SortBy::Param {
                                params: p.index_codes().into_iter().map(str::to_owned).collect(),
                                table: table_of(p.search_type()).ok_or_else(|| invalid_value(name))?,
                            },
                            _ => return Err(invalid_value(name)),
                        },
                    };
                    query.sort.push(SortKey { by, descending });
                }
                true
            }
            n if n == "_include"
                || n == "_revinclude"
                || n.starts_with("_include:")
                || n.starts_with("_revinclude:") =>
            {
                match include_spec(registry, n, value) {
                    Some(spec) => {
                        plan.includes.push(spec);
                        true
                    }
                    None if strict => return Err(invalid_value(name)),
                    None => false,
                }
            }
            _ => match conditions(registry, base, resource_type, name, value, 0) {
                Ok(clauses) => {
                    query.clauses.extend(clauses);
                    true
                }
                Err(Refusal::Invalid(e)) => return Err(e),
                Err(Refusal::Unknown) if strict => {
                    return Err(FhirError::bad_request(
                        IssueType::NotSupported,
                        format!("search parameter '{}' is not supported for {resource_type}", printable(name)),
                    )
                    .at(printable(name).to_owned()));
                }
                Err(Refusal::Unknown) => false,
            },
        };
        if keep {
            plan.used.push((name.clone(), value.clone()));
        }
    }
    if plan.summary_count {
        query.count = 0;
        query.total = true;
    }
    plan.query = query;
    Ok(plan)
}

fn strict_handling(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split([',', ';']).any(|p| p.trim().eq_ignore_ascii_case("handling=strict")))
}

/// Percent-encodes a query component (RFC 3986 unreserved characters stay as they are).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'|' | b',') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn link(base: &str, resource_type: &str, used: &[(String, String)], offset: u64) -> String {
    let mut parts: Vec<String> = used.iter().map(|(n, v)| format!("{}={}", encode(n), encode(v))).collect();
    if offset > 0 {
        parts.push(format!("{PAGE_PARAM}={offset}"));
    }
    if parts.is_empty() {
        format!("{base}/{resource_type}")
    } else {
        format!("{base}/{resource_type}?{}", parts.join("&"))
    }
}

fn shape(content: &str, plan: &Plan) -> Option<Value> {
    let mut resource: Value = serde_json::from_str(content).ok()?;
    let keep: Option<Vec<&str>> = match (plan.summary_text, &plan.elements) {
        (Some("text"), _) => Some(vec!["text"]),
        (_, Some(list)) => Some(list.iter().map(String::as_str).collect()),
        _ => None,
    };
    let object = resource.as_object_mut()?;
    let mut subsetted = false;
    if plan.summary_text == Some("data") {
        subsetted |= object.remove("text").is_some();
    }
    if plan.summary_text == Some("true") {
        let resource_type = object.get("resourceType").and_then(Value::as_str).unwrap_or_default().to_owned();
        let before = object.len();
        object.retain(|k, _| super::summary::keeps(&resource_type, k));
        subsetted |= object.len() != before;
    }
    if let Some(keep) = keep {
        let before = object.len();
        object.retain(|k, _| matches!(k.as_str(), "resourceType" | "id" | "meta") || keep.contains(&k.as_str()));
        subsetted |= object.len() != before;
    }
    if subsetted {
        let meta = object.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Some(tags) = tags.as_array_mut() {
                tags.push(json!({ "system": SUBSETTED, "code": "SUBSETTED" }));
            }
        }
    }
    Some(resource)
}

async fn run(
    state: &FhirState,
    resource_type: &str,
    params: &[(String, String)],
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    check_type(resource_type)?;
    let registry = registry()?;
    let mut plan = plan(registry, state.base(), resource_type, params, strict_handling(headers))?;
    plan.query.scope = state.scope();
    let page = state.store.search(&plan.query).await?;
    let mut entries = Vec::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let mut entry = |stored: &StoredResource, mode: &str, entries: &mut Vec<Value>| {
        if !seen.insert((stored.resource_type.clone(), stored.id.clone())) {
            return;
        }
        if let Some(resource) = stored.content.as_deref().and_then(|c| shape(c, &plan)) {
            entries.push(json!({
                "fullUrl": format!("{}/{}/{}", state.base(), stored.resource_type, stored.id),
                "resource": resource,
                "search": { "mode": mode },
            }));
        }
    };
    for stored in &page.resources {
        entry(stored, "match", &mut entries);
    }
    let mut frontier: Vec<(String, String)> =
        page.resources.iter().map(|r| (r.resource_type.clone(), r.id.clone())).collect();
    for round in 0..MAX_INCLUDE_ROUNDS {
        if frontier.is_empty() {
            break;
        }
        let mut next = Vec::new();
        for spec in plan.includes.iter().filter(|s| round == 0 || s.iterate) {
            let found = if spec.reverse {
                let targets: Vec<(String, String)> = frontier
                    .iter()
                    .filter(|(t, _)| spec.target.as_ref().is_none_or(|want| want == t))
                    .cloned()
                    .collect();
                state.store.revincluded(&state.scope(), &spec.source, &spec.param, &targets).await?
            } else {
                let ids: Vec<String> =
                    frontier.iter().filter(|(t, _)| *t == spec.source).map(|(_, id)| id.clone()).collect();
                state.store.included(&state.scope(), &spec.source, &ids, &spec.param, spec.target.as_deref()).await?
            };
            for stored in &found {
                let before = entries.len();
                entry(stored, "include", &mut entries);
                if entries.len() > before {
                    next.push((stored.resource_type.clone(), stored.id.clone()));
                }
            }
        }
        frontier = next;
    }
    let mut links = vec![json!({
        "relation": "self",
        "url": link(state.base(), resource_type, &plan.used, plan.query.offset),
    })];
    if page.more {
        links.push(json!({
            "relation": "next",
            "url": link(state.base(), resource_type, &plan.used, plan.query.offset + u64::from(plan.query.count)),
        }));
    }
    tracing::debug!(resource_type = %resource_type, matches = page.resources.len(), entries = entries.len(), "search");
    let mut bundle = json!({ "resourceType": "Bundle", "type": "searchset", "link": links });
    if let Some(total) = page.total {
        bundle["total"] = json!(total);
    }
    if !entries.is_empty() {
        bundle["entry"] = Value::Array(entries);
    }
    Ok(json_response(StatusCode::OK, &bundle))
}

/// Splits and decodes an `application/x-www-form-urlencoded` string (query strings use the same rules).
pub(crate) fn form_pairs(text: &str) -> Result<Vec<(String, String)>, FhirError> {
    let decode = |s: &str| -> Option<String> {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' => {
                    let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                    out.push(u8::from_str_radix(hex, 16).ok()?);
                    i += 2;
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8(out).ok()
    };
    text.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (n, v) = pair.split_once('=').unwrap_or((pair, ""));
            match (decode(n), decode(v)) {
                (Some(n), Some(v)) => Ok((n, v)),
                _ => Err(FhirError::bad_request(IssueType::Invalid, "the query string could not be decoded")),
            }
        })
        .collect()
}

/// `GET /{type}?…`.
pub async fn search_get(
    Acting(state): Acting,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let Path(resource_type) = path.map_err(path_error)?;
    let params = form_pairs(query.as_deref().unwrap_or(""))?;
    run(&state, &resource_type, &params, &headers).await
}

/// `POST /{type}/_search` with a form-encoded body; parameters in the URL count too.
pub async fn search_post(
    Acting(state): Acting,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, FhirError> {
    let Path(resource_type) = path.map_err(path_error)?;
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/x-www-form-urlencoded"));
    if !form {
        return Err(FhirError::unsupported_media_type("POST _search needs an application/x-www-form-urlencoded body"));
    }
    let bytes = media::read_body(body, state.max_body_bytes).await?;
    let text = std::str::from_utf8(&bytes)
        .map_err(|_| FhirError::bad_request(IssueType::Invalid, "the form body is not UTF-8"))?;
    let mut params = form_pairs(query.as_deref().unwrap_or(""))?;
    params.extend(form_pairs(text)?);
    run(&state, &resource_type, &params, &headers).await
}

/// The search parameters a type supports, for the CapabilityStatement.
pub fn capability_params(resource_type: &str) -> Vec<Value> {
    let Ok(registry) = SearchParamRegistry::r4() else { return Vec::new() };
    let mut out = vec![
        json!({ "name": "_id", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id", "type": "token" }),
        json!({
            "name": "_lastUpdated",
            "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
            "type": "date",
        }),
    ];
    for p in registry.params_for(resource_type) {
        if !p.is_indexed() || NOT_FROM_INDEX.contains(&p.code()) || p.search_type() == SearchType::Special {
            continue;
        }
        out.push(json!({ "name": p.code(), "definition": p.def.url, "type": p.search_type().as_str() }));
    }
    out
}

/// `_include` / `_revinclude` values for the CapabilityStatement: every reference parameter of and to the type.
pub fn capability_includes(resource_type: &str) -> (Vec<String>, Vec<String>) {
    let Ok(registry) = SearchParamRegistry::r4() else { return (Vec::new(), Vec::new()) };
    let includes = registry
        .params_for(resource_type)
        .filter(|p| p.is_indexed() && p.search_type() == SearchType::Reference)
        .map(|p| format!("{resource_type}:{}", p.code()))
        .collect();
    let mut revincludes = Vec::new();
    for source in SUPPORTED_TYPES {
        for p in registry.params_for(source) {
            if p.is_indexed()
                && p.search_type() == SearchType::Reference
                && p.def.target.iter().any(|t| t == resource_type)
            {
                revincludes.push(format!("{source}:{}", p.code()));
            }
        }
    }
    (includes, revincludes)
}

/// What the search of a conditional interaction found.
#[derive(Debug)]
pub(crate) enum Matches {
    None,
    One(StoredResource),
    Several,
}

/// The parameters of a conditional query: `If-None-Exist`, the query of a conditional URL or a conditional reference.
/// A leading `?` and a `Type?` prefix naming `resource_type` are tolerated, since clients send both forms.
fn conditional_params(resource_type: &str, query: &str) -> Result<Vec<(String, String)>, FhirError> {
    let query = match query.split_once('?') {
        Some(("", rest)) => rest,
        Some((prefix, rest)) if prefix == resource_type => rest,
        // A `?` inside a value (`name=a?b`) belongs to the query; only a bare type name before it is a prefix.
        Some((prefix, _)) if prefix.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            return Err(FhirError::bad_request(
                IssueType::Invalid,
                format!("the conditional query must be search parameters for {resource_type}"),
            ));
        }
        _ => query,
    };
    form_pairs(query)
}

/// Evaluates the search criteria of a conditional interaction. Unknown parameters are refused rather than ignored
/// (as `handling=strict` would): silently dropping a misspelt criterion could widen the match onto the wrong
/// resource, and a conditional write acts on what it matches. Criteria that select nothing (only `_count`, `_sort`,
/// …) are refused too, for the same reason.
pub(crate) async fn conditional_matches(
    state: &FhirState,
    tx: &mut store::StoreTx,
    resource_type: &str,
    query: &str,
) -> Result<Matches, FhirError> {
    check_type(resource_type)?;
    let params = conditional_params(resource_type, query)?;
    let registry = registry()?;
    let mut plan = plan(registry, state.base(), resource_type, &params, true)?;
    if plan.query.clauses.is_empty() {
        return Err(FhirError::bad_request(
            IssueType::Invalid,
            "a conditional interaction needs at least one search criterion",
        ));
    }
    // Two rows are enough to tell one match from several.
    plan.query.count = 2;
    plan.query.offset = 0;
    plan.query.total = false;
    plan.query.sort.clear();
    plan.query.scope = state.scope();
    // On the write transaction's own connection: it sees the transaction's writes, and a request waiting for the
    // conditional-write lock never needs a second pooled connection.
    let page = tx.search(&plan.query).await?;
    let mut found = page.resources;
    tracing::debug!(resource_type = %resource_type, matches = found.len(), "conditional search");
    Ok(match found.len() {
        0 => Matches::None,
        1 => found.pop().map_or(Matches::None, Matches::One),
        _ => Matches::Several,
    })
}

/// The 412 for a conditional interaction whose criteria match more than one resource.
pub(crate) fn several_matches(resource_type: &str) -> FhirError {
    FhirError::precondition_failed(format!(
        "the conditional criteria match more than one {resource_type}; they must select at most one"
    ))
}

/// Key every conditional write serializes on (see [`begin_conditional_tx`]).
pub(crate) const CONDITIONAL_LOCK: &str = "sdoh-gateway:conditional-writes";

/// Begins the write transaction of a conditional interaction before its search, serialized with every other
/// conditional write: on SQLite by the single writer, on PostgreSQL by a transaction-scoped advisory lock shared by
/// all replicas. Searches read committed data, so without this two simultaneous conditional creates could both
/// find nothing and both create. Plain writes are not affected.
pub(crate) async fn begin_conditional_tx(state: &FhirState) -> Result<store::StoreTx, FhirError> {
    let mut tx = state.store.begin().await?;
    tx.serialize_on(CONDITIONAL_LOCK).await?;
    Ok(tx)
}
