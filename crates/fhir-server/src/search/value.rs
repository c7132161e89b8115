//! Parsing of search *values* (`birthdate=ge1970-01`, `code=http://loinc.org|1234-5`, ...) into typed queries.
//!
//! The HTTP layer has already split the query string into parameter name, modifier and (URL-decoded) value;
//! this module splits OR lists on unescaped commas, reads prefixes, turns dates into precision ranges and numbers
//! into their implied precision interval, and honours the `\,` `\|` `\$` `\\` escapes of the FHIR search syntax.

use serde::{Deserialize, Serialize};

use super::date::{DateRange, parse_date_range};
use super::params::{ResourceSearchParam, SearchType};
use super::text::normalize;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ValueError {
    #[error("empty search value")]
    Empty,
    #[error("invalid {kind} search value {value:?}")]
    Invalid { kind: &'static str, value: String },
    #[error("modifier :{modifier} is not supported for {kind} parameters")]
    UnsupportedModifier { modifier: String, kind: &'static str },
    #[error("unknown modifier :{0}")]
    UnknownModifier(String),
    #[error("composite value needs {expected} `$`-separated parts, got {found}")]
    CompositeArity { expected: usize, found: usize },
    #[error("{0} parameters cannot be searched by value here")]
    UnsupportedType(&'static str),
}

/// Comparison prefixes of number, date and quantity values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Prefix {
    #[default]
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
    Sa,
    Eb,
    Ap,
}

impl Prefix {
    /// Splits a leading two-letter prefix off `s` (`ge2026` gives `(Ge, "2026")`); no prefix means `eq`.
    pub fn split(s: &str) -> (Prefix, &str) {
        let prefix = match s.get(..2) {
            Some("eq") => Prefix::Eq,
            Some("ne") => Prefix::Ne,
            Some("gt") => Prefix::Gt,
            Some("lt") => Prefix::Lt,
            Some("ge") => Prefix::Ge,
            Some("le") => Prefix::Le,
            Some("sa") => Prefix::Sa,
            Some("eb") => Prefix::Eb,
            Some("ap") => Prefix::Ap,
            _ => return (Prefix::Eq, s),
        };
        (prefix, &s[2..])
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Modifier {
    Missing,
    Exact,
    Contains,
    Text,
    Not,
    Above,
    Below,
    In,
    NotIn,
    OfType,
    Identifier,
    /// `subject:Patient=123`: restricts a reference to one target type.
    Type(String),
}

impl Modifier {
    pub fn parse(s: &str) -> Result<Modifier, ValueError> {
        Ok(match s {
            "missing" => Modifier::Missing,
            "exact" => Modifier::Exact,
            "contains" => Modifier::Contains,
            "text" => Modifier::Text,
            "not" => Modifier::Not,
            "above" => Modifier::Above,
            "below" => Modifier::Below,
            "in" => Modifier::In,
            "not-in" => Modifier::NotIn,
            "of-type" => Modifier::OfType,
            "identifier" => Modifier::Identifier,
            t if t.chars().next().is_some_and(|c| c.is_ascii_uppercase())
                && t.chars().all(|c| c.is_ascii_alphanumeric()) =>
            {
                Modifier::Type(t.to_owned())
            }
            other => return Err(ValueError::UnknownModifier(other.to_owned())),
        })
    }

    fn name(&self) -> String {
        match self {
            Modifier::Missing => "missing".into(),
            Modifier::Exact => "exact".into(),
            Modifier::Contains => "contains".into(),
            Modifier::Text => "text".into(),
            Modifier::Not => "not".into(),
            Modifier::Above => "above".into(),
            Modifier::Below => "below".into(),
            Modifier::In => "in".into(),
            Modifier::NotIn => "not-in".into(),
            Modifier::OfType => "of-type".into(),
            Modifier::Identifier => "identifier".into(),
            Modifier::Type(t) => t.clone(),
        }
    }
}

/// Which systems a token query accepts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SystemConstraint {
    /// `code`: any system.
    Any,
    /// `|code`: only values without a system.
    NoSystem,
    /// `system|code` or `system|`.
    Exactly(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenQuery {
    /// `code`, `system|code`, `|code`, `system|` (then `code` is `None`: any code of that system).
    Code { system: SystemConstraint, code: Option<String> },
    /// `:text`: the normalised text, matched against display / CodeableConcept.text / Identifier.type.text.
    Text(String),
    /// `:of-type` `type-system|type-code|identifier-value`.
    OfType { type_system: Option<String>, type_code: String, value: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum StringMode {
    StartsWith,
    Exact,
    Contains,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct StringQuery {
    pub raw: String,
    pub normalized: String,
    pub mode: StringMode,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ReferenceQuery {
    /// `123`, `Patient/123` or `subject:Patient=123`.
    Id { resource_type: Option<String>, id: String },
    /// An absolute URL or canonical, optionally `|version`.
    Url { url: String, version: Option<String> },
    /// `:identifier` `system|value`.
    Identifier { system: SystemConstraint, value: Option<String> },
}

/// A number with the interval its written precision implies: `100` is `[99.5, 100.5)`, `100.00` is
/// `[99.995, 100.005)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NumberQuery {
    pub prefix: Prefix,
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QuantityQuery {
    pub number: NumberQuery,
    /// `None` when the system part was empty or absent.
    pub system: Option<String>,
    /// With a system: the code; without one: matched against code or unit.
    pub code: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DateQuery {
    pub prefix: Prefix,
    pub range: DateRange,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum UriMode {
    Exact,
    /// The indexed URI starts with the query.
    Below,
    /// The query starts with the indexed URI.
    Above,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SearchValue {
    /// `:missing=true|false`, decided per resource.
    Missing(bool),
    Token(TokenQuery),
    String(StringQuery),
    Reference(ReferenceQuery),
    Date(DateQuery),
    Number(NumberQuery),
    Quantity(QuantityQuery),
    Uri {
        uri: String,
        mode: UriMode,
    },
    Composite(Vec<SearchValue>),
}

/// One `name[:modifier]=v1,v2,...` occurrence: the values are ORed; repeating the parameter ANDs occurrences.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParamQuery {
    pub modifier: Option<Modifier>,
    pub values: Vec<SearchValue>,
}

impl ParamQuery {
    /// Parses the (URL-decoded) value of one occurrence of `param`, with its modifier text if any.
    pub fn parse(param: &ResourceSearchParam, modifier: Option<&str>, raw: &str) -> Result<ParamQuery, ValueError> {
        let modifier = modifier.map(Modifier::parse).transpose()?;
        let values = split_unescaped(raw, ',')
            .into_iter()
            .map(|v| parse_for_param(param, modifier.as_ref(), v))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ParamQuery { modifier, values })
    }
}

/// Parses one value (no OR list) for `param`, composites included.
pub fn parse_for_param(
    param: &ResourceSearchParam,
    modifier: Option<&Modifier>,
    raw: &str,
) -> Result<SearchValue, ValueError> {
    if param.search_type() != SearchType::Composite || modifier == Some(&Modifier::Missing) {
        return parse_value(param.search_type(), modifier, raw);
    }
    if let Some(m) = modifier {
        return Err(ValueError::UnsupportedModifier { modifier: m.name(), kind: "composite" });
    }
    let parts = split_unescaped(raw, '$');
    if parts.len() != param.components.len() {
        return Err(ValueError::CompositeArity { expected: param.components.len(), found: parts.len() });
    }
    param
        .components
        .iter()
        .zip(parts)
        .map(|(c, part)| parse_value(c.search_type, None, part))
        .collect::<Result<Vec<_>, _>>()
        .map(SearchValue::Composite)
}

/// Parses one value of a non-composite type. Escapes are resolved here, after the caller split the OR list.
pub fn parse_value(ty: SearchType, modifier: Option<&Modifier>, raw: &str) -> Result<SearchValue, ValueError> {
    let kind = ty.as_str();
    let invalid = || ValueError::Invalid { kind, value: raw.to_owned() };
    let unsupported = |m: &Modifier| ValueError::UnsupportedModifier { modifier: m.name(), kind };
    if raw.is_empty() {
        return Err(ValueError::Empty);
    }
    if modifier == Some(&Modifier::Missing) {
        return match raw {
            "true" => Ok(SearchValue::Missing(true)),
            "false" => Ok(SearchValue::Missing(false)),
            _ => Err(invalid()),
        };
    }
    match ty {
        SearchType::Token => {
            let parts = split_unescaped(raw, '|');
            match modifier {
                None | Some(Modifier::Not) => {
                    let (system, code) = match parts.as_slice() {
                        [code] => (SystemConstraint::Any, Some(unescape(code))),
                        [system, code] => {
                            let system = if system.is_empty() {
                                SystemConstraint::NoSystem
                            } else {
                                SystemConstraint::Exactly(unescape(system))
                            };
                            (system, Some(unescape(code)).filter(|c| !c.is_empty()))
                        }
                        _ => return Err(invalid()),
                    };
                    if system == SystemConstraint::NoSystem && code.is_none() {
                        return Err(invalid());
                    }
                    Ok(SearchValue::Token(TokenQuery::Code { system, code }))
                }
                Some(Modifier::Text) => Ok(SearchValue::Token(TokenQuery::Text(normalize(&unescape(raw))))),
                Some(Modifier::OfType) => match parts.as_slice() {
                    [ts, tc, v] if !tc.is_empty() && !v.is_empty() => Ok(SearchValue::Token(TokenQuery::OfType {
                        type_system: Some(unescape(ts)).filter(|s| !s.is_empty()),
                        type_code: unescape(tc),
                        value: unescape(v),
                    })),
                    _ => Err(invalid()),
                },
                Some(m) => Err(unsupported(m)),
            }
        }
        SearchType::String => {
            let mode = match modifier {
                None => StringMode::StartsWith,
                Some(Modifier::Exact) => StringMode::Exact,
                Some(Modifier::Contains) => StringMode::Contains,
                Some(m) => return Err(unsupported(m)),
            };
            let raw = unescape(raw);
            Ok(SearchValue::String(StringQuery { normalized: normalize(&raw), raw, mode }))
        }
        SearchType::Reference => {
            let value = unescape(raw);
            match modifier {
                Some(Modifier::Identifier) => {
                    let parts = split_unescaped(raw, '|');
                    let (system, value) = match parts.as_slice() {
                        [v] => (SystemConstraint::Any, Some(unescape(v))),
                        ["", v] => (SystemConstraint::NoSystem, Some(unescape(v))),
                        [s, v] => (SystemConstraint::Exactly(unescape(s)), Some(unescape(v)).filter(|v| !v.is_empty())),
                        _ => return Err(invalid()),
                    };
                    Ok(SearchValue::Reference(ReferenceQuery::Identifier { system, value }))
                }
                None | Some(Modifier::Not) | Some(Modifier::Type(_)) => {
                    let type_modifier = match modifier {
                        Some(Modifier::Type(t)) => Some(t.clone()),
                        _ => None,
                    };
                    if value.contains(':') {
                        let (url, version) = match value.split_once('|') {
                            Some((u, v)) => (u.to_owned(), Some(v.to_owned()).filter(|v| !v.is_empty())),
                            None => (value.clone(), None),
                        };
                        return Ok(SearchValue::Reference(ReferenceQuery::Url { url, version }));
                    }
                    let segments: Vec<&str> = value.split('/').collect();
                    let (resource_type, id) = match segments.as_slice() {
                        [id] => (type_modifier, *id),
                        [ty, id] | [ty, id, "_history", _] => {
                            if type_modifier.as_deref().is_some_and(|t| t != *ty) {
                                return Err(invalid());
                            }
                            (Some((*ty).to_owned()), *id)
                        }
                        _ => return Err(invalid()),
                    };
                    if id.is_empty() {
                        return Err(invalid());
                    }
                    Ok(SearchValue::Reference(ReferenceQuery::Id { resource_type, id: id.to_owned() }))
                }
                Some(m) => Err(unsupported(m)),
            }
        }
        SearchType::Date => {
            if let Some(m) = modifier.filter(|m| **m != Modifier::Not) {
                return Err(unsupported(m));
            }
            let (prefix, rest) = Prefix::split(raw);
            let range = parse_date_range(rest).map_err(|_| invalid())?;
            Ok(SearchValue::Date(DateQuery { prefix, range }))
        }
        SearchType::Number => {
            if let Some(m) = modifier.filter(|m| **m != Modifier::Not) {
                return Err(unsupported(m));
            }
            parse_number(raw).map(SearchValue::Number).ok_or_else(invalid)
        }
        SearchType::Quantity => {
            if let Some(m) = modifier.filter(|m| **m != Modifier::Not) {
                return Err(unsupported(m));
            }
            let parts = split_unescaped(raw, '|');
            let (number, system, code) = match parts.as_slice() {
                [n] => (*n, None, None),
                [n, s, c] => (*n, Some(unescape(s)), Some(unescape(c))),
                _ => return Err(invalid()),
            };
            let number = parse_number(number).ok_or_else(invalid)?;
            Ok(SearchValue::Quantity(QuantityQuery {
                number,
                system: system.filter(|s| !s.is_empty()),
                code: code.filter(|c| !c.is_empty()),
            }))
        }
        SearchType::Uri => {
            let mode = match modifier {
                None | Some(Modifier::Not) => UriMode::Exact,
                Some(Modifier::Below) => UriMode::Below,
                Some(Modifier::Above) => UriMode::Above,
                Some(m) => return Err(unsupported(m)),
            };
            Ok(SearchValue::Uri { uri: unescape(raw), mode })
        }
        SearchType::Composite | SearchType::Special => Err(ValueError::UnsupportedType(kind)),
    }
}

/// Reads `[prefix]number` with its implied precision: half a unit of the last written digit either side.
pub fn parse_number(raw: &str) -> Option<NumberQuery> {
    let (prefix, s) = Prefix::split(raw);
    let bytes = s.as_bytes();
    let valid = !s.is_empty()
        && bytes.iter().all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
        && bytes.iter().any(u8::is_ascii_digit);
    if !valid {
        return None;
    }
    let value: f64 = s.parse().ok().filter(|v: &f64| v.is_finite())?;
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(pos) => (&s[..pos], s[pos + 1..].parse::<i32>().ok()?),
        None => (s, 0),
    };
    let decimals = mantissa.split_once('.').map_or(0, |(_, frac)| frac.len() as i32);
    let half_unit = 0.5 * 10f64.powi(exponent.saturating_sub(decimals));
    Some(NumberQuery { prefix, value, low: value - half_unit, high: value + half_unit })
}

/// Splits on `sep` where it is not escaped with a backslash; the pieces keep their escapes.
pub fn split_unescaped(s: &str, sep: char) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in s.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            out.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    out.push(&s[start..]);
    out
}

/// Resolves `\,` `\|` `\$` `\\` (and any other `\x` to `x`).
pub fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_and_precision() {
        let n = parse_number("100").unwrap();
        assert_eq!((n.prefix, n.low, n.high), (Prefix::Eq, 99.5, 100.5));
        let n = parse_number("ge100.00").unwrap();
        assert_eq!(n.prefix, Prefix::Ge);
        assert!((n.low - 99.995).abs() < 1e-9 && (n.high - 100.005).abs() < 1e-9);
        let n = parse_number("1e2").unwrap();
        assert_eq!((n.value, n.low, n.high), (100.0, 50.0, 150.0));
        assert!(parse_number("1.5e-2147483648").is_some(), "extreme exponents must not overflow");
        for bad in ["", "ge", "abc", "1..2", "1e", "NaN", "inf", "--1", "1e99999"] {
            assert!(parse_number(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        let t = |raw: &str| parse_value(SearchType::Token, None, raw).unwrap();
        assert_eq!(
            t("x"),
            SearchValue::Token(TokenQuery::Code { system: SystemConstraint::Any, code: Some("x".into()) })
        );
        assert_eq!(
            t("http://s|x"),
            SearchValue::Token(TokenQuery::Code {
                system: SystemConstraint::Exactly("http://s".into()),
                code: Some("x".into())
            })
        );
        assert_eq!(
            t("|x"),
            SearchValue::Token(TokenQuery::Code { system: SystemConstraint::NoSystem, code: Some("x".into()) })
        );
        assert_eq!(
            t("http://s|"),
            SearchValue::Token(TokenQuery::Code { system: SystemConstraint::Exactly("http://s".into()), code: None })
        );
        assert_eq!(
            t("a\\|b"),
            SearchValue::Token(TokenQuery::Code { system: SystemConstraint::Any, code: Some("a|b".into()) })
        );
        assert!(parse_value(SearchType::Token, None, "a|b|c").is_err());
        assert!(parse_value(SearchType::Token, Some(&Modifier::In), "http://vs").is_err());
        let of_type = parse_value(SearchType::Token, Some(&Modifier::OfType), "http://t|MR|123").unwrap();
        assert!(matches!(of_type, SearchValue::Token(TokenQuery::OfType { .. })));
    }

    #[test]
    fn references_and_quantities() {
        let r = |m: Option<&Modifier>, raw: &str| parse_value(SearchType::Reference, m, raw).unwrap();
        assert_eq!(
            r(None, "Patient/1"),
            SearchValue::Reference(ReferenceQuery::Id { resource_type: Some("Patient".into()), id: "1".into() })
        );
        assert_eq!(
            r(Some(&Modifier::Type("Patient".into())), "1"),
            SearchValue::Reference(ReferenceQuery::Id { resource_type: Some("Patient".into()), id: "1".into() })
        );
        assert!(matches!(
            r(None, "http://x/Questionnaire/q|1"),
            SearchValue::Reference(ReferenceQuery::Url { version: Some(_), .. })
        ));
        let q = parse_value(SearchType::Quantity, None, "gt5.4|http://unitsofmeasure.org|mg").unwrap();
        let SearchValue::Quantity(q) = q else { panic!() };
        assert_eq!(
            (q.number.prefix, q.system.as_deref(), q.code.as_deref()),
            (Prefix::Gt, Some("http://unitsofmeasure.org"), Some("mg"))
        );
        let SearchValue::Quantity(q) = parse_value(SearchType::Quantity, None, "5.4||mg").unwrap() else { panic!() };
        assert_eq!((q.system, q.code.as_deref()), (None, Some("mg")));
    }

    #[test]
    fn arbitrary_input_never_panics() {
        let samples =
            ["", "\\", "|", "||", "$", "a$b", "\\|", "ge", "ap-", "é|ü", "1e-2147483648", "Patient/", "/", "a/b/c/d"];
        for ty in [
            SearchType::Token,
            SearchType::String,
            SearchType::Reference,
            SearchType::Date,
            SearchType::Number,
            SearchType::Quantity,
            SearchType::Uri,
            SearchType::Composite,
            SearchType::Special,
        ] {
            for m in
                [None, Some(Modifier::Not), Some(Modifier::Text), Some(Modifier::Missing), Some(Modifier::Identifier)]
            {
                for s in samples {
                    let _ = parse_value(ty, m.as_ref(), s);
                }
            }
        }
    }

    #[test]
    fn splitting_respects_escapes() {
        assert_eq!(split_unescaped("a,b\\,c,d", ','), vec!["a", "b\\,c", "d"]);
        assert_eq!(unescape("b\\,c\\\\"), "b,c\\");
        assert_eq!(split_unescaped("", ','), vec![""]);
    }
}
