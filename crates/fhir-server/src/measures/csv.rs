//! Measure cells as CSV (RFC 4180): one row per cell, the overall row of each measure and period first (stratifier
//! and stratum `overall`), then each stratifier's strata. A suppressed row has empty counts, rate, interval and
//! ratio, `suppressed` = `true` and the reason; `rate_ratio` is `1` for the reference stratum (when it has a rate), empty where no ratio
//! exists; `median_days` is filled for the median measure only.

use sdoh::measures::{Cell, CellValue, Comparison, Group};

use super::report::{round, suppression_code};

pub const HEADER: &str = "measure,period,stratifier,stratum,numerator,denominator,rate,ci_low,ci_high,rate_ratio,\
                          suppressed,suppression_reason,median_days";

/// A text field, quoted when it must be, and defused when a spreadsheet would read it as a formula.
fn text(field: &str) -> String {
    let defused = if field.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{field}") } else { field.into() };
    if defused.contains([',', '"', '\n', '\r']) { format!("\"{}\"", defused.replace('"', "\"\"")) } else { defused }
}

fn number(value: Option<f64>) -> String {
    value.map(|v| round(v).to_string()).unwrap_or_default()
}

/// One CSV line (without the line break) for a cell.
pub fn row(cell: &Cell) -> String {
    let (stratifier, stratum) = match &cell.group {
        Group::Overall => ("overall", "overall"),
        Group::Stratum { stratifier, value } => (stratifier.code(), value.as_str()),
    };
    let figures = match &cell.value {
        CellValue::Suppressed(why) => format!(",,,,,,true,{},", suppression_code(*why)),
        CellValue::Shown(f) => {
            let ratio = match &f.comparison {
                Comparison::Reference if f.proportion.is_some() => "1".to_owned(),
                Comparison::Ratio { ratio: Ok(r), .. } => number(Some(r.ratio)),
                _ => String::new(),
            };
            format!(
                "{},{},{},{},{},{},false,,{}",
                f.numerator,
                f.denominator,
                number(f.proportion.map(|p| p.rate)),
                number(f.proportion.map(|p| p.interval.lower)),
                number(f.proportion.map(|p| p.interval.upper)),
                ratio,
                number(f.median_days),
            )
        }
    };
    format!("{},{},{},{},{figures}", text(&cell.measure), cell.period, stratifier, text(stratum))
}

/// The whole table, header first, CRLF line ends.
pub fn table(cells: &[Cell]) -> String {
    let mut out = String::with_capacity(64 * (cells.len() + 1));
    out.push_str(HEADER);
    out.push_str("\r\n");
    for cell in cells {
        out.push_str(&row(cell));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use sdoh::measures::{Period, Stratifier, Suppression};

    #[test]
    fn labels_are_quoted_and_defused_and_suppressed_rows_carry_no_numbers() {
        assert_eq!(text("Adams"), "Adams");
        assert_eq!(text("Prince George's, MD"), "\"Prince George's, MD\"");
        assert_eq!(text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        let cell = Cell {
            measure: "m".into(),
            period: Period::parse("2026-Q1").unwrap(),
            group: Group::Stratum { stratifier: Stratifier::County, value: "Adams".into() },
            value: CellValue::Suppressed(Suppression::Complementary),
        };
        let line = row(&cell);
        assert_eq!(line, "m,2026-Q1,county,Adams,,,,,,,true,complementary,");
        assert_eq!(line.split(',').count(), HEADER.split(',').count());
    }
}
