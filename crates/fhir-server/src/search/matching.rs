//! The reference semantics of FHIR R4 search: whether an index entry (or a resource's entries) matches a value.
//!
//! A SQL layer mirrors these rules; tests can run both and compare. Date and number comparisons work on ranges,
//! following the R4 prefix table (search value range `[sl, sh]`, target range `[tl, th]`):
//!
//! | prefix | matches when |
//! | --- | --- |
//! | eq | `sl <= tl && th <= sh` (search range contains the target) |
//! | ne | not eq |
//! | gt | `th > sh` (the range above the value overlaps the target) |
//! | lt | `tl < sl` |
//! | ge | gt or eq |
//! | le | lt or eq |
//! | sa | `tl > sh` (target starts after the value) |
//! | eb | `th < sl` (target ends before the value) |
//! | ap | the target overlaps the value widened by 10% of its distance from now (dates) or 10% of the value (numbers) |
//!
//! Numbers and quantities: the search value has its implied precision interval `[low, high)`; `eq` needs the target
//! inside it, the ordering prefixes compare against the written value itself. Target values are taken as exact
//! (a Range or a comparator widens them). Quantities compare numerically in the unit they were stored in: there is
//! no UCUM conversion.
//!
//! Not covered, by design of this layer: `:in` / `:not-in` / `:above` / `:below` on tokens (need a terminology
//! service), chaining, `_has`, and the `near` special parameter (entries are extracted, matching is not).

use super::date::DateRange;
use super::extract::{IndexValue, NumberRange, QuantityEntry, ReferenceEntry, StringEntry, TokenEntry};
use super::value::{
    DateQuery, Modifier, NumberQuery, ParamQuery, Prefix, QuantityQuery, ReferenceQuery, SearchValue, StringMode,
    StringQuery, SystemConstraint, TokenQuery, UriMode,
};

/// Whether one entry matches one value, with `ap` dates measured from the current time.
///
/// Modifiers that change how a value is read (`:exact`, `:text`, `:of-type`, `:identifier`, `:below`, ...) are
/// already in the parsed [`SearchValue`]; `:not` and `:missing` concern the whole resource, see [`resource_matches`].
pub fn matches(entry: &IndexValue, value: &SearchValue) -> bool {
    matches_at(entry, value, now_micros())
}

/// [`matches`] with an explicit "now" (epoch microseconds), so results are reproducible.
pub fn matches_at(entry: &IndexValue, value: &SearchValue, now: i64) -> bool {
    match (entry, value) {
        (IndexValue::Token(e), SearchValue::Token(q)) => token_matches(e, q),
        (IndexValue::String(e), SearchValue::String(q)) => string_matches(e, q),
        (IndexValue::Reference(e), SearchValue::Reference(q)) => reference_matches(e, q),
        (IndexValue::Date(e), SearchValue::Date(q)) => date_matches(e, q, now),
        (IndexValue::Number(e), SearchValue::Number(q)) => number_matches(e, q),
        (IndexValue::Quantity(e), SearchValue::Quantity(q)) => quantity_matches(e, q),
        (IndexValue::Uri(e), SearchValue::Uri { uri, mode }) => match mode {
            UriMode::Exact => e == uri,
            UriMode::Below => e.starts_with(uri.as_str()),
            UriMode::Above => uri.starts_with(e.as_str()),
        },
        (IndexValue::Composite(parts), SearchValue::Composite(qs)) => {
            parts.len() == qs.len() && parts.iter().zip(qs).all(|(p, q)| matches_at(p, q, now))
        }
        _ => false,
    }
}

/// Whether a resource whose entries for the parameter are `entries` satisfies one occurrence of the parameter
/// (its values ORed). `:missing` looks at whether there are entries at all; `:not` holds when no entry matches.
pub fn resource_matches(entries: &[IndexValue], query: &ParamQuery) -> bool {
    resource_matches_at(entries, query, now_micros())
}

/// [`resource_matches`] with an explicit "now".
pub fn resource_matches_at(entries: &[IndexValue], query: &ParamQuery, now: i64) -> bool {
    let any = |entries: &[IndexValue]| {
        query.values.iter().any(|v| match v {
            SearchValue::Missing(missing) => entries.is_empty() == *missing,
            v => entries.iter().any(|e| matches_at(e, v, now)),
        })
    };
    match query.modifier {
        Some(Modifier::Not) => !any(entries),
        _ => any(entries),
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn system_ok(constraint: &SystemConstraint, system: Option<&str>) -> bool {
    match constraint {
        SystemConstraint::Any => true,
        SystemConstraint::NoSystem => system.is_none(),
        SystemConstraint::Exactly(s) => system == Some(s.as_str()),
    }
}

/// Codes compare exactly: FHIR leaves case sensitivity to each code system, and most are case-sensitive.
fn token_matches(e: &TokenEntry, q: &TokenQuery) -> bool {
    match q {
        TokenQuery::Code { system, code } => {
            system_ok(system, e.system.as_deref())
                && match code {
                    Some(c) => e.code.as_deref() == Some(c.as_str()),
                    None => e.code.is_some(),
                }
        }
        // `:text` behaves like a string search: the text starts with the query, or one of its words does.
        TokenQuery::Text(q) => {
            e.text.as_deref().is_some_and(|t| t.starts_with(q.as_str()) || t.contains(&format!(" {q}")))
        }
        TokenQuery::OfType { type_system, type_code, value } => {
            e.type_code.as_deref() == Some(type_code.as_str())
                && (type_system.is_none() || e.type_system == *type_system)
                && e.code.as_deref() == Some(value.as_str())
        }
    }
}

fn string_matches(e: &StringEntry, q: &StringQuery) -> bool {
    match q.mode {
        StringMode::StartsWith => e.normalized.starts_with(q.normalized.as_str()),
        StringMode::Contains => e.normalized.contains(q.normalized.as_str()),
        StringMode::Exact => e.raw == q.raw,
    }
}

/// Absolute-URL queries compare against the stored URL only: the REST layer is expected to turn URLs on its own
/// base into relative references before it gets here.
fn reference_matches(e: &ReferenceEntry, q: &ReferenceQuery) -> bool {
    match q {
        ReferenceQuery::Id { resource_type, id } => {
            e.id.as_deref() == Some(id.as_str())
                && (resource_type.is_none() || e.resource_type.as_deref() == resource_type.as_deref())
        }
        ReferenceQuery::Url { url, version } => {
            e.url.as_deref() == Some(url.as_str()) && (version.is_none() || e.version == *version)
        }
        ReferenceQuery::Identifier { system, value } => {
            e.identifier_value.is_some()
                && system_ok(system, e.identifier_system.as_deref())
                && (value.is_none() || e.identifier_value == *value)
        }
    }
}

/// Applies the prefix table of the module docs to a search range `s` and target range `t`.
pub fn date_range_matches(prefix: Prefix, s: &DateRange, t: &DateRange, now: i64) -> bool {
    let eq = s.low <= t.low && t.high <= s.high;
    match prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => t.high > s.high,
        Prefix::Lt => t.low < s.low,
        Prefix::Ge => t.high > s.high || eq,
        Prefix::Le => t.low < s.low || eq,
        Prefix::Sa => t.low > s.high,
        Prefix::Eb => t.high < s.low,
        Prefix::Ap => {
            let mid = s.low / 2 + s.high / 2;
            let tolerance = (now.saturating_sub(mid)).unsigned_abs() / 10;
            let tolerance = i64::try_from(tolerance).unwrap_or(i64::MAX);
            let widened = DateRange { low: s.low.saturating_sub(tolerance), high: s.high.saturating_add(tolerance) };
            widened.overlaps(t)
        }
    }
}

fn date_matches(e: &DateRange, q: &DateQuery, now: i64) -> bool {
    date_range_matches(q.prefix, &q.range, e, now)
}

fn number_matches(e: &NumberRange, q: &NumberQuery) -> bool {
    let tl = e.low.unwrap_or(f64::NEG_INFINITY);
    let th = e.high.unwrap_or(f64::INFINITY);
    let v = q.value;
    let eq = q.low <= tl && th < q.high;
    match q.prefix {
        Prefix::Eq => eq,
        Prefix::Ne => !eq,
        Prefix::Gt => th > v,
        Prefix::Lt => tl < v,
        Prefix::Ge => th >= v,
        Prefix::Le => tl <= v,
        Prefix::Sa => tl > v,
        Prefix::Eb => th < v,
        Prefix::Ap => {
            let tolerance = v.abs() * 0.1;
            let low = q.low.min(v - tolerance);
            let high = q.high.max(v + tolerance);
            tl <= high && th >= low
        }
    }
}

fn quantity_matches(e: &QuantityEntry, q: &QuantityQuery) -> bool {
    let unit_ok = match (&q.system, &q.code) {
        (Some(system), Some(code)) => {
            e.system.as_deref() == Some(system.as_str()) && e.code.as_deref() == Some(code.as_str())
        }
        (Some(system), None) => e.system.as_deref() == Some(system.as_str()),
        (None, Some(code)) => e.code.as_deref() == Some(code.as_str()) || e.unit.as_deref() == Some(code.as_str()),
        (None, None) => true,
    };
    unit_ok && number_matches(&e.value, &q.number)
}

#[cfg(test)]
mod tests {
    use super::super::date::parse_date_range;
    use super::super::params::SearchType;
    use super::super::value::parse_value;
    use super::*;

    const NOW: i64 = 1_795_000_000_000_000; // 2026-11-18

    fn date_entry(s: &str) -> IndexValue {
        IndexValue::Date(parse_date_range(s).unwrap())
    }

    fn period(start: &str, end: &str) -> IndexValue {
        IndexValue::Date(DateRange {
            low: parse_date_range(start).unwrap().low,
            high: parse_date_range(end).unwrap().high,
        })
    }

    fn q(ty: SearchType, raw: &str) -> SearchValue {
        parse_value(ty, None, raw).unwrap()
    }

    fn date_match(entry: &IndexValue, raw: &str) -> bool {
        matches_at(entry, &q(SearchType::Date, raw), NOW)
    }

    #[test]
    fn date_precision_eq() {
        let born_day = date_entry("1970-01-01");
        assert!(date_match(&born_day, "1970"), "a day in 1970 is within birthdate=1970");
        assert!(date_match(&born_day, "1970-01"));
        assert!(date_match(&born_day, "1970-01-01"));
        assert!(!date_match(&born_day, "1970-01-02"));
        let born_year = date_entry("1970");
        assert!(!date_match(&born_year, "1970-01-01"), "a year is not contained in one of its days");
        assert!(date_match(&born_year, "1970"));
        assert!(date_match(&date_entry("1970-06-15T10:00:00Z"), "1970-06-15"));
        assert!(date_match(&born_day, "ne1971"));
        assert!(!date_match(&born_day, "ne1970"));
    }

    #[test]
    fn date_ordering_prefixes() {
        let nov23 = date_entry("2026-11-23");
        assert!(date_match(&nov23, "ge2026-11"), "contained in the month");
        assert!(date_match(&nov23, "ge2026-10"), "after the month");
        assert!(!date_match(&nov23, "ge2026-12"));
        assert!(date_match(&nov23, "le2026-11"));
        assert!(!date_match(&nov23, "le2026-10"));
        assert!(date_match(&nov23, "gt2026-11-22"));
        assert!(!date_match(&nov23, "gt2026-11"), "nothing of the target is after November");
        assert!(date_match(&nov23, "lt2026-11-24"));
        assert!(!date_match(&nov23, "lt2026-11-23"));
        // A second-precision instant against a day value.
        let instant = date_entry("2026-11-23T23:59:59Z");
        assert!(date_match(&instant, "le2026-11-23"));
        assert!(!date_match(&instant, "gt2026-11-23"));
        assert!(date_match(&date_entry("2026-11-24T00:00:00+01:00"), "eq2026-11-23"), "offset converts to UTC");
    }

    #[test]
    fn periods_overlap_and_sa_eb() {
        let stay = period("2026-11-01", "2026-11-10");
        assert!(date_match(&stay, "2026-11"));
        assert!(!date_match(&stay, "2026-11-05"), "eq needs containment, not mere overlap");
        assert!(date_match(&stay, "gt2026-11-05"));
        assert!(date_match(&stay, "lt2026-11-05"));
        assert!(date_match(&stay, "sa2026-10-31"));
        assert!(!date_match(&stay, "sa2026-11-01"));
        assert!(date_match(&stay, "eb2026-11-11"));
        assert!(!date_match(&stay, "eb2026-11-10"));
        let ongoing = IndexValue::Date(DateRange { low: parse_date_range("2026-01-01").unwrap().low, high: i64::MAX });
        assert!(date_match(&ongoing, "gt2030"));
        assert!(!date_match(&ongoing, "eb2030"));
        assert!(!date_match(&ongoing, "2026"));
    }

    #[test]
    fn date_approximately() {
        // 10% of ~10 years from now is ~1 year of tolerance.
        assert!(date_match(&date_entry("2017-03-01"), "ap2016-11-18"));
        assert!(!date_match(&date_entry("2019-01-01"), "ap2016-11-18"));
        assert!(date_match(&date_entry("2016-11-18"), "ap2016-11-18"));
    }

    #[test]
    fn numbers_and_quantities() {
        let v = |x: f64| IndexValue::Number(NumberRange { low: Some(x), high: Some(x) });
        let n = |raw: &str| q(SearchType::Number, raw);
        assert!(matches_at(&v(100.2), &n("100"), NOW));
        assert!(!matches_at(&v(100.5), &n("100"), NOW));
        assert!(!matches_at(&v(100.2), &n("100.0"), NOW));
        assert!(matches_at(&v(101.0), &n("gt100"), NOW));
        assert!(!matches_at(&v(100.0), &n("gt100"), NOW));
        assert!(matches_at(&v(100.0), &n("ge100"), NOW));
        assert!(matches_at(&v(99.0), &n("lt100"), NOW));
        assert!(matches_at(&v(100.0), &n("le100"), NOW));
        assert!(matches_at(&v(95.0), &n("ap100"), NOW));
        assert!(!matches_at(&v(85.0), &n("ap100"), NOW));
        assert!(matches_at(&v(7.0), &n("ne100"), NOW));
        assert!(matches_at(&v(101.0), &n("sa100"), NOW));
        assert!(matches_at(&v(99.0), &n("eb100"), NOW));

        let qty = IndexValue::Quantity(QuantityEntry {
            value: NumberRange { low: Some(120.0), high: Some(120.0) },
            system: Some("http://unitsofmeasure.org".into()),
            code: Some("mm[Hg]".into()),
            unit: Some("mmHg".into()),
        });
        let qq = |raw: &str| q(SearchType::Quantity, raw);
        assert!(matches_at(&qty, &qq("gt100|http://unitsofmeasure.org|mm[Hg]"), NOW));
        assert!(matches_at(&qty, &qq("120||mmHg"), NOW));
        assert!(matches_at(&qty, &qq("120"), NOW));
        assert!(!matches_at(&qty, &qq("120|http://unitsofmeasure.org|kg"), NOW));
        assert!(!matches_at(&qty, &qq("lt100"), NOW));
        let below = IndexValue::Quantity(QuantityEntry {
            value: NumberRange { low: None, high: Some(5.0) },
            system: None,
            code: None,
            unit: None,
        });
        assert!(matches_at(&below, &qq("lt3"), NOW));
        assert!(!matches_at(&below, &qq("gt6"), NOW));
    }

    #[test]
    fn strings() {
        let e = IndexValue::String(StringEntry { raw: "Álvarez".into(), normalized: "alvarez".into() });
        let s = |m: Option<&Modifier>, raw: &str| parse_value(SearchType::String, m, raw).unwrap();
        assert!(matches_at(&e, &s(None, "alv"), NOW));
        assert!(matches_at(&e, &s(None, "ÁLVA"), NOW));
        assert!(!matches_at(&e, &s(None, "varez"), NOW));
        assert!(matches_at(&e, &s(Some(&Modifier::Contains), "VAREZ"), NOW));
        assert!(matches_at(&e, &s(Some(&Modifier::Exact), "Álvarez"), NOW));
        assert!(!matches_at(&e, &s(Some(&Modifier::Exact), "alvarez"), NOW));
    }

    #[test]
    fn tokens_with_modifiers() {
        let coded = vec![
            IndexValue::Token(TokenEntry {
                system: Some("http://loinc.org".into()),
                code: Some("71802-3".into()),
                text: Some("housing status".into()),
                ..TokenEntry::default()
            }),
            IndexValue::Token(TokenEntry { text: Some("housing situation".into()), ..TokenEntry::default() }),
        ];
        let pq = |m: Option<&str>, raw: &str| ParamQuery {
            modifier: m.map(|m| Modifier::parse(m).unwrap()),
            values: vec![parse_value(SearchType::Token, m.map(|m| Modifier::parse(m).unwrap()).as_ref(), raw).unwrap()],
        };
        let hit = |m: Option<&str>, raw: &str| resource_matches_at(&coded, &pq(m, raw), NOW);
        assert!(hit(None, "71802-3"));
        assert!(hit(None, "http://loinc.org|71802-3"));
        assert!(hit(None, "http://loinc.org|"));
        assert!(!hit(None, "|71802-3"));
        assert!(!hit(None, "http://snomed.info/sct|71802-3"));
        assert!(hit(Some("text"), "Situation"));
        assert!(hit(Some("text"), "hous"));
        assert!(!hit(Some("text"), "tatus"));
        assert!(hit(Some("not"), "12345-6"));
        assert!(!hit(Some("not"), "71802-3"));
        let missing = ParamQuery { modifier: Some(Modifier::Missing), values: vec![SearchValue::Missing(true)] };
        assert!(resource_matches_at(&[], &missing, NOW));
        assert!(!resource_matches_at(&coded, &missing, NOW));

        let ident = IndexValue::Token(TokenEntry {
            system: Some("urn:mrn".into()),
            code: Some("42".into()),
            type_system: Some("http://terminology.hl7.org/CodeSystem/v2-0203".into()),
            type_code: Some("MR".into()),
            ..TokenEntry::default()
        });
        let of_type = parse_value(
            SearchType::Token,
            Some(&Modifier::OfType),
            "http://terminology.hl7.org/CodeSystem/v2-0203|MR|42",
        )
        .unwrap();
        assert!(matches_at(&ident, &of_type, NOW));
        let wrong = parse_value(
            SearchType::Token,
            Some(&Modifier::OfType),
            "http://terminology.hl7.org/CodeSystem/v2-0203|SS|42",
        )
        .unwrap();
        assert!(!matches_at(&ident, &wrong, NOW));
    }

    #[test]
    fn references() {
        let e = IndexValue::Reference(ReferenceEntry {
            resource_type: Some("Patient".into()),
            id: Some("123".into()),
            identifier_system: Some("urn:mrn".into()),
            identifier_value: Some("42".into()),
            ..ReferenceEntry::default()
        });
        let r = |m: Option<&Modifier>, raw: &str| parse_value(SearchType::Reference, m, raw).unwrap();
        assert!(matches_at(&e, &r(None, "123"), NOW));
        assert!(matches_at(&e, &r(None, "Patient/123"), NOW));
        assert!(!matches_at(&e, &r(None, "Group/123"), NOW));
        assert!(matches_at(&e, &r(Some(&Modifier::Type("Patient".into())), "123"), NOW));
        assert!(matches_at(&e, &r(Some(&Modifier::Identifier), "urn:mrn|42"), NOW));
        assert!(!matches_at(&e, &r(Some(&Modifier::Identifier), "urn:other|42"), NOW));
    }

    #[test]
    fn uris() {
        let e = IndexValue::Uri("http://example.org/fhir/Questionnaire/ahc".into());
        let u = |m: Option<&Modifier>, raw: &str| parse_value(SearchType::Uri, m, raw).unwrap();
        assert!(matches_at(&e, &u(None, "http://example.org/fhir/Questionnaire/ahc"), NOW));
        assert!(matches_at(&e, &u(Some(&Modifier::Below), "http://example.org/fhir"), NOW));
        assert!(matches_at(&e, &u(Some(&Modifier::Above), "http://example.org/fhir/Questionnaire/ahc/v2"), NOW));
        assert!(!matches_at(&e, &u(None, "http://example.org/fhir"), NOW));
    }
}
