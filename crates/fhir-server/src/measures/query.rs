//! What a measure request asks for (measures, periods, stratifiers, registry), read from query parameters, with a
//! 400 OperationOutcome naming the parameter for anything that cannot be read.

use chrono::{Datelike, NaiveDate};
use sdoh::measures::{MeasureSet, Period, PeriodKind, Stratifier, parse_iso_date};

use crate::rest::{FhirError, IssueType};

/// Most periods one request may evaluate (ten years of months).
pub const MAX_PERIODS: usize = 120;

/// One evaluation: which measures, over which periods, broken down how, over whom.
#[derive(Debug, Clone, PartialEq)]
pub struct MeasureQuery {
    /// Measure ids, known to the measure set, in the set's order.
    pub measures: Vec<String>,
    pub periods: Vec<Period>,
    pub stratifiers: Vec<Stratifier>,
    /// A registry id: only its members count.
    pub registry: Option<String>,
}

impl MeasureQuery {
    /// The last day evaluated (registry membership is taken on it).
    pub fn last_day(&self) -> Option<NaiveDate> {
        self.periods.last().map(Period::end)
    }
}

fn invalid(parameter: &str, why: impl std::fmt::Display) -> FhirError {
    FhirError::bad_request(IssueType::Invalid, format!("parameter {parameter}: {why}")).at(parameter)
}

/// The values of a parameter, repeated or comma-separated, empty ones dropped.
fn values<'a>(pairs: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    pairs
        .iter()
        .filter(|(n, _)| n == name)
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

fn single<'a>(pairs: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, FhirError> {
    let mut found = pairs.iter().filter(|(n, _)| n == name);
    let first = found.next();
    if found.next().is_some() {
        return Err(invalid(name, "given more than once"));
    }
    Ok(first.map(|(_, v)| v.trim()).filter(|v| !v.is_empty()))
}

fn refuse_unknown(pairs: &[(String, String)], known: &[&str]) -> Result<(), FhirError> {
    match pairs.iter().find(|(n, _)| !known.contains(&n.as_str())) {
        Some((name, _)) => Err(invalid(name, format!("not supported here (supported: {})", known.join(", ")))),
        None => Ok(()),
    }
}

/// Stratifier codes (`race`, `ethnicity`, `language`, `payer`, `county`, `age-band`, `sex`); none given means all,
/// `none` means the overall figures only.
pub fn stratifiers(pairs: &[(String, String)]) -> Result<Vec<Stratifier>, FhirError> {
    let given = values(pairs, "stratifier");
    if given.is_empty() {
        return Ok(Stratifier::ALL.to_vec());
    }
    if given == ["none"] {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for code in given {
        let stratifier = Stratifier::ALL.into_iter().find(|s| s.code() == code).ok_or_else(|| {
            let known: Vec<&str> = Stratifier::ALL.iter().map(|s| s.code()).collect();
            invalid("stratifier", format!("unknown stratifier {code:?} (known: {}, or none)", known.join(", ")))
        })?;
        if !out.contains(&stratifier) {
            out.push(stratifier);
        }
    }
    Ok(out)
}

/// A `from` or `to` bound: an ISO date, or a period label (`2026-03`, `2026-Q1`) meaning its first (`from`) or last
/// (`to`) day.
fn bound(pairs: &[(String, String)], name: &str, last: bool) -> Result<NaiveDate, FhirError> {
    let text = single(pairs, name)?.ok_or_else(|| invalid(name, "required (YYYY-MM-DD, YYYY-MM or YYYY-Qn)"))?;
    if let Ok(period) = Period::parse(text) {
        return Ok(if last { period.end() } else { period.start() });
    }
    parse_iso_date(text).map_err(|e| invalid(name, e))
}

fn covering(kind: PeriodKind, from: NaiveDate, to: NaiveDate, names: &str) -> Result<Vec<Period>, FhirError> {
    if to < from {
        return Err(invalid(names, "the end is before the start"));
    }
    // Counted before listing them, so a request for millennia costs nothing.
    let months =
        (i64::from(to.year()) - i64::from(from.year())) * 12 + i64::from(to.month0()) - i64::from(from.month0());
    let per_period = if kind == PeriodKind::Month { 1 } else { 3 };
    if months / per_period >= MAX_PERIODS as i64 {
        return Err(invalid(names, format!("more than {MAX_PERIODS} periods")));
    }
    Ok(Period::covering(kind, from, to))
}

/// `measure` (optional, repeatable: all measures when absent), `period` (`month` or `quarter`, default `month`),
/// `from`, `to`, `stratifier`, `registry`: the parameters of `/measures.csv` and the dashboard's data.
pub fn table_query(pairs: &[(String, String)], set: &MeasureSet) -> Result<MeasureQuery, FhirError> {
    refuse_unknown(pairs, &["measure", "period", "from", "to", "stratifier", "registry"])?;
    let asked = values(pairs, "measure");
    for id in &asked {
        if set.get(id).is_none() {
            return Err(FhirError::not_found(format!("no measure {id:?}; GET /fhir/Measure lists them")).at("measure"));
        }
    }
    let measures = set
        .definitions()
        .iter()
        .filter(|m| asked.is_empty() || asked.contains(&m.id.as_str()))
        .map(|m| m.id.clone())
        .collect();
    let kind = match single(pairs, "period")? {
        None | Some("month") => PeriodKind::Month,
        Some("quarter") => PeriodKind::Quarter,
        Some(other) => return Err(invalid("period", format!("{other:?} is neither month nor quarter"))),
    };
    let from = bound(pairs, "from", false)?;
    let to = bound(pairs, "to", true)?;
    Ok(MeasureQuery {
        measures,
        periods: covering(kind, from, to, "from/to")?,
        stratifiers: stratifiers(pairs)?,
        registry: single(pairs, "registry")?.map(str::to_owned),
    })
}

/// The parameters of `Measure/{id}/$evaluate-measure` (FHIR R4 operation): `periodStart` and `periodEnd` (dates
/// covering exactly one calendar month or quarter, the periods these measures are defined over), `reportType`
/// (`summary` only), and the gateway's `stratifier` and `registry`.
pub fn evaluate_query(pairs: &[(String, String)], measure: &str) -> Result<MeasureQuery, FhirError> {
    refuse_unknown(pairs, &["periodStart", "periodEnd", "reportType", "stratifier", "registry", "_format"])?;
    match single(pairs, "reportType")? {
        None | Some("summary") => {}
        Some(other) => {
            return Err(FhirError::bad_request(
                IssueType::NotSupported,
                format!("reportType {other:?} is not supported: only summary reports are produced (no patient lists)"),
            )
            .at("reportType"));
        }
    }
    let date = |name: &str| -> Result<NaiveDate, FhirError> {
        let text = single(pairs, name)?.ok_or_else(|| invalid(name, "required (YYYY-MM-DD)"))?;
        parse_iso_date(text).map_err(|e| invalid(name, e))
    };
    let (start, end) = (date("periodStart")?, date("periodEnd")?);
    let period = [PeriodKind::Month, PeriodKind::Quarter]
        .into_iter()
        .map(|kind| Period::containing(kind, start))
        .find(|p| p.start() == start && p.end() == end)
        .ok_or_else(|| {
            invalid(
                "periodStart/periodEnd",
                "must cover exactly one calendar month or quarter (e.g. 2026-01-01 to 2026-03-31); \
                 /measures.csv gives several periods at once",
            )
        })?;
    Ok(MeasureQuery {
        measures: vec![measure.to_owned()],
        periods: vec![period],
        stratifiers: stratifiers(pairs)?,
        registry: single(pairs, "registry")?.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(n, v)| ((*n).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn table_queries_read_labels_dates_and_lists() {
        let set = MeasureSet::builtin();
        let q = table_query(
            &pairs(&[
                ("measure", "hrsn-screening-rate"),
                ("period", "quarter"),
                ("from", "2026-01-15"),
                ("to", "2026-Q2"),
                ("stratifier", "race,sex"),
                ("stratifier", "race"),
            ]),
            set,
        )
        .unwrap();
        assert_eq!(q.measures, ["hrsn-screening-rate"]);
        assert_eq!(q.periods, [Period::parse("2026-Q1").unwrap(), Period::parse("2026-Q2").unwrap()]);
        assert_eq!(q.stratifiers, [Stratifier::Race, Stratifier::Sex]);
        assert_eq!(q.last_day(), Some(NaiveDate::from_ymd_opt(2026, 6, 30).unwrap()));

        let all = table_query(&pairs(&[("from", "2026-01"), ("to", "2026-01"), ("stratifier", "none")]), set).unwrap();
        assert_eq!(all.measures.len(), set.definitions().len());
        assert!(all.stratifiers.is_empty());
    }

    #[test]
    fn bad_table_queries_name_the_parameter() {
        let set = MeasureSet::builtin();
        let err = |list: &[(&str, &str)]| table_query(&pairs(list), set).unwrap_err();
        assert_eq!(err(&[("from", "2026-01-01")]).expression.as_deref(), Some("to"));
        assert_eq!(err(&[("from", "2026-13-01"), ("to", "2026-01")]).expression.as_deref(), Some("from"));
        assert_eq!(err(&[("from", "2026-02"), ("to", "2026-01")]).expression.as_deref(), Some("from/to"));
        assert_eq!(err(&[("from", "1900-01"), ("to", "2026-01")]).expression.as_deref(), Some("from/to"));
        assert_eq!(err(&[("from", "2026-01"), ("to", "2026-01"), ("stratifier", "shoe-size")]).status, 400);
        assert_eq!(err(&[("from", "2026-01"), ("to", "2026-01"), ("period", "week")]).status, 400);
        assert_eq!(err(&[("from", "2026-01"), ("to", "2026-01"), ("stratifer", "race")]).status, 400);
        assert_eq!(err(&[("from", "2026-01"), ("to", "2026-01"), ("measure", "nope")]).status, 404);
    }

    #[test]
    fn evaluate_queries_take_exactly_one_month_or_quarter() {
        let q = evaluate_query(&pairs(&[("periodStart", "2026-01-01"), ("periodEnd", "2026-03-31")]), "m").unwrap();
        assert_eq!(q.periods, [Period::parse("2026-Q1").unwrap()]);
        let q = evaluate_query(&pairs(&[("periodStart", "2026-02-01"), ("periodEnd", "2026-02-28")]), "m").unwrap();
        assert_eq!(q.periods, [Period::parse("2026-02").unwrap()]);
        for bad in [
            vec![("periodStart", "2026-01-01"), ("periodEnd", "2026-12-31")],
            vec![("periodStart", "2026-01-02"), ("periodEnd", "2026-01-31")],
            vec![("periodStart", "2026-01"), ("periodEnd", "2026-01-31")],
            vec![("periodEnd", "2026-01-31")],
            vec![("periodStart", "2026-01-01"), ("periodEnd", "2026-01-31"), ("reportType", "subject-list")],
            vec![("periodStart", "2026-01-01"), ("periodEnd", "2026-01-31"), ("subject", "Patient/x")],
        ] {
            assert_eq!(evaluate_query(&pairs(&bad), "m").unwrap_err().status, 400, "{bad:?}");
        }
    }
}
