//! Equity measures on a synthetic population whose answers can be worked out by reading it, plus the statistics
//! (Wilson intervals against published values, rate ratios, medians, p-charts, run rules), suppression, periods and
//! bad definition files.

use chrono::NaiveDate;
use sdoh::measures::stats::{self, RatioUndefined, RunSignal, Subgroup};
use sdoh::measures::suppression::{self, Counts};
use sdoh::measures::{
    Cell, CellValue, Comparison, Figures, Group, HrsnDomain, MeasureSet, PatientFacts, Period, PeriodError, PeriodKind,
    Referral, Screening, Stratifier, StratifierSpec, Suppression, evaluate, parse_iso_date,
};

fn date(text: &str) -> NaiveDate {
    parse_iso_date(text).unwrap()
}

fn close(actual: f64, expected: f64, tolerance: f64) -> bool {
    (actual - expected).abs() <= tolerance
}

// ---------------------------------------------------------------------------------------------------------------
// The population (all in 2026-Q1 unless said otherwise)
//
// A: 40 adults, White, English, Medicaid, county Alpha, female, born 1980-06-01 (45 -> band 45-64).
//    Encounter and screening of all five domains on 2026-01-15. 20 screen positive for food.
//    Of those 20: 10 referred for food on 2026-01-20 (5 days later; 6 completed 2026-02-03 = 14 days, 4 open),
//    2 referred for housing on 2026-01-20 (not the positive domain), 2 referred for food on 2026-02-24 (40 days
//    later, outside the 30-day window), 6 not referred.
// B: 30 adults, Black, Spanish, Medicare, county Beta, male, born 1950-03-10 (75 -> band 65+).
//    Encounter 2026-02-10. 15 screened in all five domains, 15 only for food, all on 2026-02-10.
//    12 screen positive for food (6 of each half), all referred for food on 2026-02-12 (2 days later):
//    8 completed 2026-03-14 (30 days, inside the window), 4 completed 2026-04-13 (60 days, outside).
// C: 5 adults, Asian, English, Private, county Alpha, female, born 2000-01-01 (26 -> band 18-44).
//    Encounter and all five domains screened on 2026-03-01, no positives.
// D: 3 adults, no race recorded, no language recorded, Medicaid, county Beta, female, born 1990-01-01 (36 ->
//    18-44). Encounter 2026-03-05, never screened.
// E: 4 patients born 2008-06-01 (17 on 2026-01-01): encounter and full screening on 2026-01-15 with a food
//    positive. Too young for every patient measure.
// F: 6 adults (White, ...) screened on 2026-01-15 but whose only encounter was 2025-12-20: not in the
//    denominator.
//
// Worked answers for 2026-Q1:
// - screening rate: denominator A40 + B30 + C5 + D3 = 78; numerator A40 + B15 + C5 = 60.
// - food positive: denominator (screened for food) A40 + B30 + C5 = 75; numerator A20 + B12 = 32.
// - housing positive: denominator A40 + B15 + C5 = 60; numerator 0.
// - referral rate: denominator (positive) A20 + B12 = 32; numerator A10 + B12 = 22.
// - closed loop: referrals created A10 + A2 + A2 + B12 = 26; completed within 30 days A6 + B8 = 14.
// - days to closure: completed referrals 6 x 14, 8 x 30, 4 x 60 days = 18; the 9th and 10th are 30 -> 30.
// ---------------------------------------------------------------------------------------------------------------

fn five(day: NaiveDate, positive_food: bool) -> Vec<Screening> {
    HrsnDomain::ALL
        .iter()
        .map(|&domain| Screening { domain, date: day, positive: positive_food && domain == HrsnDomain::Food })
        .collect()
}

fn person(
    race: Option<&str>,
    language: Option<&str>,
    payer: &str,
    county: &str,
    sex: &str,
    born: &str,
) -> PatientFacts {
    PatientFacts {
        birth_date: Some(date(born)),
        sex: Some(sex.into()),
        race: race.map(Into::into),
        ethnicity: Some("Not Hispanic or Latino".into()),
        language: language.map(Into::into),
        payer: Some(payer.into()),
        county: Some(county.into()),
        ..PatientFacts::default()
    }
}

fn referral(domain: HrsnDomain, created: &str, completed: Option<&str>) -> Referral {
    Referral { domain, created: date(created), completed: completed.map(date) }
}

fn population() -> Vec<PatientFacts> {
    let mut patients = Vec::new();
    for i in 0..40 {
        let mut p = person(Some("White"), Some("English"), "Medicaid", "Alpha", "female", "1980-06-01");
        p.encounters.push(date("2026-01-15"));
        p.screenings = five(date("2026-01-15"), i < 20);
        match i {
            0..6 => p.referrals.push(referral(HrsnDomain::Food, "2026-01-20", Some("2026-02-03"))),
            6..10 => p.referrals.push(referral(HrsnDomain::Food, "2026-01-20", None)),
            10..12 => p.referrals.push(referral(HrsnDomain::Housing, "2026-01-20", None)),
            12..14 => p.referrals.push(referral(HrsnDomain::Food, "2026-02-24", None)),
            _ => {}
        }
        patients.push(p);
    }
    for i in 0..30 {
        let mut p = person(Some("Black"), Some("Spanish"), "Medicare", "Beta", "male", "1950-03-10");
        p.encounters.push(date("2026-02-10"));
        let positive = i % 15 < 6;
        if i < 15 {
            p.screenings = five(date("2026-02-10"), positive);
        } else {
            p.screenings = vec![Screening { domain: HrsnDomain::Food, date: date("2026-02-10"), positive }];
        }
        if positive {
            let completed = if i % 15 < 4 { "2026-03-14" } else { "2026-04-13" };
            p.referrals.push(referral(HrsnDomain::Food, "2026-02-12", Some(completed)));
        }
        patients.push(p);
    }
    for _ in 0..5 {
        let mut p = person(Some("Asian"), Some("English"), "Private", "Alpha", "female", "2000-01-01");
        p.encounters.push(date("2026-03-01"));
        p.screenings = five(date("2026-03-01"), false);
        patients.push(p);
    }
    for _ in 0..3 {
        let mut p = person(None, None, "Medicaid", "Beta", "female", "1990-01-01");
        p.encounters.push(date("2026-03-05"));
        patients.push(p);
    }
    for _ in 0..4 {
        let mut p = person(Some("White"), Some("English"), "Medicaid", "Alpha", "female", "2008-06-01");
        p.encounters.push(date("2026-01-15"));
        p.screenings = five(date("2026-01-15"), true);
        patients.push(p);
    }
    for _ in 0..6 {
        let mut p = person(Some("White"), Some("English"), "Medicaid", "Alpha", "female", "1970-01-01");
        p.encounters.push(date("2025-12-20"));
        p.screenings = five(date("2026-01-15"), false);
        patients.push(p);
    }
    patients
}

fn q1() -> Period {
    Period::parse("2026-Q1").unwrap()
}

fn all_stratifiers() -> Vec<StratifierSpec> {
    Stratifier::ALL.iter().map(|&s| StratifierSpec::new(s)).collect()
}

fn find<'a>(cells: &'a [Cell], measure: &str, period: Period, group: &Group) -> &'a Cell {
    cells
        .iter()
        .find(|c| c.measure == measure && c.period == period && &c.group == group)
        .unwrap_or_else(|| panic!("no cell {measure} {period} {group:?}"))
}

fn stratum(stratifier: Stratifier, value: &str) -> Group {
    Group::Stratum { stratifier, value: value.into() }
}

fn shown(cell: &Cell) -> &Figures {
    match &cell.value {
        CellValue::Shown(figures) => figures,
        CellValue::Suppressed(reason) => panic!("{cell:?} is suppressed ({reason:?})"),
    }
}

fn counts(cell: &Cell) -> (u64, u64) {
    let figures = shown(cell);
    (figures.numerator, figures.denominator)
}

fn suppressed(cell: &Cell) -> Suppression {
    match cell.value {
        CellValue::Suppressed(reason) => reason,
        CellValue::Shown(_) => panic!("{cell:?} should be suppressed"),
    }
}

fn q1_cells() -> Vec<Cell> {
    evaluate(MeasureSet::builtin().definitions(), &population(), &[q1()], &all_stratifiers())
}

#[test]
fn overall_numerators_and_denominators_match_the_worked_answers() {
    let cells = q1_cells();
    let overall = |measure| counts(find(&cells, measure, q1(), &Group::Overall));
    assert_eq!(overall("hrsn-screening-rate"), (60, 78));
    assert_eq!(overall("hrsn-screen-positive-food"), (32, 75));
    assert_eq!(overall("hrsn-screen-positive-housing"), (0, 60));
    assert_eq!(overall("hrsn-referral-rate"), (22, 32));
    assert_eq!(overall("hrsn-closed-loop-rate"), (14, 26));
    assert_eq!(overall("hrsn-days-to-closure"), (18, 26));

    let days = shown(find(&cells, "hrsn-days-to-closure", q1(), &Group::Overall));
    assert_eq!(days.median_days, Some(30.0));
    assert_eq!(days.proportion, None);

    // 60/78 with its Wilson interval (computed from Wilson's formula; see the published values below).
    let screening = shown(find(&cells, "hrsn-screening-rate", q1(), &Group::Overall));
    let proportion = screening.proportion.unwrap();
    assert!(close(proportion.rate, 60.0 / 78.0, 1e-12));
    assert!(close(proportion.interval.lower, 0.66444, 1e-5), "{proportion:?}");
    assert!(close(proportion.interval.upper, 0.84874, 1e-5), "{proportion:?}");
    assert_eq!(screening.comparison, Comparison::NotApplicable);

    // A zero numerator is shown, not suppressed.
    let housing = shown(find(&cells, "hrsn-screen-positive-housing", q1(), &Group::Overall));
    assert_eq!(housing.proportion.unwrap().rate, 0.0);
}

#[test]
fn every_stratifier_partitions_the_overall() {
    let population = population();
    let cells = evaluate(MeasureSet::builtin().definitions(), &population, &[q1()], &all_stratifiers());
    // Evaluated without suppression's effect: compare raw counts through a population that is never small.
    let mut large = Vec::new();
    for _ in 0..11 {
        large.extend(population.iter().cloned());
    }
    let large_cells = evaluate(MeasureSet::builtin().definitions(), &large, &[q1()], &all_stratifiers());
    for measure in MeasureSet::builtin().definitions() {
        let (numerator, denominator) = counts(find(&large_cells, &measure.id, q1(), &Group::Overall));
        for stratifier in Stratifier::ALL {
            let strata: Vec<&Cell> = large_cells
                .iter()
                .filter(|c| {
                    c.measure == measure.id
                        && matches!(&c.group, Group::Stratum { stratifier: s, .. } if *s == stratifier)
                })
                .collect();
            let sum = strata.iter().map(|c| counts(c)).fold((0, 0), |(n, d), (a, b)| (n + a, d + b));
            assert_eq!(sum, (numerator, denominator), "{} by {stratifier:?}", measure.id);
        }
        // The population's overall is a twelfth of the large one: evaluation is additive over patients.
        let small = find(&cells, &measure.id, q1(), &Group::Overall);
        if let CellValue::Shown(f) = &small.value {
            assert_eq!((f.numerator * 11, f.denominator * 11), (numerator, denominator));
        }
    }
}

#[test]
fn screening_rate_by_race_with_rate_ratios_against_the_largest_group() {
    let cells = q1_cells();
    let by_race = |value| find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::Race, value));
    assert_eq!(counts(by_race("White")), (40, 40));
    assert_eq!(shown(by_race("White")).comparison, Comparison::Reference);
    assert_eq!(counts(by_race("Black")), (15, 30));
    // Asian 5/5 and unknown 0/3 are both small: two primaries hide each other, nothing complementary.
    assert_eq!(suppressed(by_race("Asian")), Suppression::Primary);
    assert_eq!(suppressed(by_race("unknown")), Suppression::Primary);

    // RR = (15/30) / (40/40) = 0.5; SE(ln RR) = sqrt(1/15 - 1/30 + 1/40 - 1/40) = sqrt(1/30) = 0.182574;
    // 0.5 * exp(±1.959964 * 0.182574) = 0.349593 .. 0.715118.
    let Comparison::Ratio { reference, ratio } = &shown(by_race("Black")).comparison else {
        panic!("Black compares with the reference");
    };
    assert_eq!(reference, "White");
    let ratio = ratio.unwrap();
    assert!(close(ratio.ratio, 0.5, 1e-12));
    assert!(close(ratio.interval.lower, 0.349593, 1e-6), "{ratio:?}");
    assert!(close(ratio.interval.upper, 0.715118, 1e-6), "{ratio:?}");

    // Age bands: 45-64 = A (40/40), 65+ = B (15/30), 18-44 = C + D (5/8, small), 0-17 = E (never eligible: 0/0).
    let by_age = |value| find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::AgeBand, value));
    assert_eq!(counts(by_age("45-64")), (40, 40));
    assert_eq!(suppressed(by_age("18-44")), Suppression::Primary);
    // The empty 0-17 stratum is known to be empty, so the complement is the next smallest non-empty one.
    assert_eq!(counts(by_age("0-17")), (0, 0));
    assert_eq!(shown(by_age("0-17")).proportion, None);
    assert_eq!(suppressed(by_age("65+")), Suppression::Complementary);

    // County: Alpha = A + C (45/45), Beta = B + D (15/33); RR = (15/33)/(45/45) = 0.454545.
    let beta = shown(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::County, "Beta")));
    assert_eq!((beta.numerator, beta.denominator), (15, 33));
    let Comparison::Ratio { reference, ratio } = &beta.comparison else { panic!("{beta:?}") };
    assert_eq!(reference, "Alpha");
    assert!(close(ratio.unwrap().ratio, 15.0 / 33.0, 1e-12));
}

#[test]
fn complementary_suppression_hides_the_next_smallest_stratum() {
    let cells = q1_cells();
    // Language: English = A + C (45/45), Spanish = B (15/30), unknown = D (0/3). Only unknown is small; shown
    // with the overall (60/78) it would be 60 - 45 - 15 = 0 of 78 - 45 - 30 = 3, so Spanish goes too.
    let by_language = |value| find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::Language, value));
    assert_eq!(suppressed(by_language("unknown")), Suppression::Primary);
    assert_eq!(suppressed(by_language("Spanish")), Suppression::Complementary);
    assert_eq!(counts(by_language("English")), (45, 45));
    // The reference (English, the largest) is shown, so its own cell says so.
    assert_eq!(shown(by_language("English")).comparison, Comparison::Reference);

    // Payer: Medicaid = A + D (40/43), Medicare = B (15/30), Private = C (5/5, small) -> Medicare complementary.
    let by_payer = |value| find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::Payer, value));
    assert_eq!(suppressed(by_payer("Private")), Suppression::Primary);
    assert_eq!(suppressed(by_payer("Medicare")), Suppression::Complementary);
    assert_eq!(counts(by_payer("Medicaid")), (40, 43));

    // A small numerator suppresses a cell whatever its denominator: closed loop White 6/14, Black 8/12.
    let closed = |value| find(&cells, "hrsn-closed-loop-rate", q1(), &stratum(Stratifier::Race, value));
    assert_eq!(suppressed(closed("White")), Suppression::Primary);
    assert_eq!(suppressed(closed("Black")), Suppression::Primary);
    assert_eq!(counts(closed("Asian")), (0, 0));
}

#[test]
fn a_configured_reference_group_is_used_and_a_suppressed_one_reveals_nothing() {
    let specs = [
        StratifierSpec { stratifier: Stratifier::Race, reference: Some("Black".into()) },
        StratifierSpec { stratifier: Stratifier::Payer, reference: Some("Private".into()) },
    ];
    let cells = evaluate(MeasureSet::builtin().definitions(), &population(), &[q1()], &specs);
    let white = shown(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::Race, "White")));
    // (40/40) / (15/30) = 2; SE = sqrt(1/40 - 1/40 + 1/15 - 1/30) = sqrt(1/30); 2 * exp(±0.357834).
    let Comparison::Ratio { reference, ratio } = &white.comparison else { panic!("{white:?}") };
    assert_eq!(reference, "Black");
    let ratio = ratio.unwrap();
    assert!(close(ratio.ratio, 2.0, 1e-12));
    assert!(close(ratio.interval.lower, 1.398372, 1e-6) && close(ratio.interval.upper, 2.860470, 1e-6));

    let medicaid = shown(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::Payer, "Medicaid")));
    assert_eq!(medicaid.comparison, Comparison::ReferenceSuppressed { reference: "Private".into() });
}

#[test]
fn undefined_rate_ratios_are_explicit() {
    let cells = q1_cells();
    // Food positive by county: Alpha = A + C: 20/45; Beta = B: 12/30 (D never screened).
    let beta = shown(find(&cells, "hrsn-screen-positive-food", q1(), &stratum(Stratifier::County, "Beta")));
    assert_eq!((beta.numerator, beta.denominator), (12, 30));
    // The population twice over, so that both sexes' referral cells are large enough to show.
    let twice: Vec<PatientFacts> = population().into_iter().flat_map(|p| [p.clone(), p]).collect();
    let specs = [StratifierSpec::new(Stratifier::Sex)];
    let cells = evaluate(MeasureSet::builtin().definitions(), &twice, &[q1()], &specs);
    // Housing positive is 0 everywhere: female (A + C, 0/90) is the reference, male (B, 0/30) cannot be compared
    // with a zero rate.
    let male = shown(find(&cells, "hrsn-screen-positive-housing", q1(), &stratum(Stratifier::Sex, "male")));
    assert_eq!((male.numerator, male.denominator), (0, 30));
    assert_eq!(
        male.comparison,
        Comparison::Ratio { reference: "female".into(), ratio: Err(RatioUndefined::ZeroReferenceRate) }
    );
    // Median measures have no ratio. Male = B's completions: 16 x 30 and 8 x 60 days -> the 12th and 13th of 24
    // are 30. Female = A's: 12 completed (14 days) of 28 referrals.
    let days = shown(find(&cells, "hrsn-days-to-closure", q1(), &stratum(Stratifier::Sex, "male")));
    assert_eq!(days.comparison, Comparison::NotApplicable);
    assert_eq!((days.numerator, days.denominator, days.median_days), (24, 24, Some(30.0)));
    let days = shown(find(&cells, "hrsn-days-to-closure", q1(), &stratum(Stratifier::Sex, "female")));
    assert_eq!((days.numerator, days.denominator, days.median_days), (12, 28, Some(14.0)));
}

#[test]
fn months_split_the_quarter() {
    let months = Period::covering(PeriodKind::Month, date("2026-01-01"), date("2026-03-31"));
    assert_eq!(months.iter().map(Period::label).collect::<Vec<_>>(), ["2026-01", "2026-02", "2026-03"]);
    let cells = evaluate(MeasureSet::builtin().definitions(), &population(), &months, &[]);
    // January: A only (40/40). February: B (15/30). March: C + D (5/8): small, suppressed.
    assert_eq!(counts(find(&cells, "hrsn-screening-rate", months[0], &Group::Overall)), (40, 40));
    assert_eq!(counts(find(&cells, "hrsn-screening-rate", months[1], &Group::Overall)), (15, 30));
    assert_eq!(suppressed(find(&cells, "hrsn-screening-rate", months[2], &Group::Overall)), Suppression::Primary);
    // Referrals: January A10 + A2 = 12 created, 6 closed in time (small numerator); February A2 + B12 = 14, 8.
    assert_eq!(suppressed(find(&cells, "hrsn-closed-loop-rate", months[0], &Group::Overall)), Suppression::Primary);
    // One cell per measure and period when no stratifier is asked for.
    assert_eq!(cells.len(), MeasureSet::builtin().definitions().len() * 3);
}

#[test]
fn age_is_taken_at_the_start_of_the_period() {
    let measures = MeasureSet::builtin();
    let mut patients = Vec::new();
    // Eleven turn 18 on the first day of the quarter, eleven the day after: only the first are adults in Q1.
    for born in ["2008-01-01", "2008-01-02"] {
        for _ in 0..11 {
            let mut p = person(Some("White"), Some("English"), "Medicaid", "Alpha", "female", born);
            p.encounters.push(date("2026-02-01"));
            patients.push(p);
        }
    }
    let cells = evaluate(measures.definitions(), &patients, &[q1()], &[StratifierSpec::new(Stratifier::AgeBand)]);
    assert_eq!(counts(find(&cells, "hrsn-screening-rate", q1(), &Group::Overall)), (0, 11));
    assert_eq!(counts(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::AgeBand, "18-44"))), (0, 11));
    assert_eq!(counts(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::AgeBand, "0-17"))), (0, 0));
}

#[test]
fn the_completion_window_is_configurable() {
    let mut measures = MeasureSet::builtin().clone();
    measures.set_completion_window(14);
    let cells = evaluate(measures.definitions(), &population(), &[q1()], &[]);
    // Within 14 days: only A's six (exactly 14 days); B's 30-day completions no longer count.
    let closed = find(&cells, "hrsn-closed-loop-rate", q1(), &Group::Overall);
    assert_eq!(suppressed(closed), Suppression::Primary);
    measures.set_completion_window(60);
    let cells = evaluate(measures.definitions(), &population(), &[q1()], &[]);
    assert_eq!(counts(find(&cells, "hrsn-closed-loop-rate", q1(), &Group::Overall)), (18, 26));
    // The median's criterion has no window and is left alone.
    assert_eq!(counts(find(&cells, "hrsn-days-to-closure", q1(), &Group::Overall)), (18, 26));
}

// --- statistics --------------------------------------------------------------------------------------------------

#[test]
fn wilson_intervals_match_published_values() {
    // 5/10 -> 0.2366 .. 0.7634 (Wilson score interval, e.g. Agresti & Coull 1998).
    let p = stats::proportion(5, 10).unwrap();
    assert!(close(p.rate, 0.5, 1e-12));
    assert!(close(p.interval.lower, 0.2366, 5e-5) && close(p.interval.upper, 0.7634, 5e-5), "{p:?}");
    // Newcombe (1998), Statistics in Medicine 17:857-872, table I, method 3 (score interval).
    for (x, n, lower, upper) in
        [(81, 263, 0.2553, 0.3662), (15, 148, 0.0624, 0.1605), (0, 20, 0.0, 0.1611), (1, 29, 0.0061, 0.1718)]
    {
        let p = stats::proportion(x, n).unwrap();
        assert!(close(p.interval.lower, lower, 5e-5) && close(p.interval.upper, upper, 5e-5), "{x}/{n}: {p:?}");
    }
    // n/n ends exactly at 1, and no rate exists without a denominator.
    assert_eq!(stats::proportion(40, 40).unwrap().interval.upper, 1.0);
    assert_eq!(stats::proportion(0, 0), None);
    assert_eq!(stats::proportion(3, 2), None);
}

#[test]
fn rate_ratio_with_log_interval_and_undefined_cases() {
    // 20/100 vs 10/100: RR 2, SE = sqrt(1/20 - 1/100 + 1/10 - 1/100) = sqrt(0.13) = 0.360555;
    // 2 * exp(±1.959964 * 0.360555) = 0.986563 .. 4.054479.
    let rr = stats::rate_ratio(20, 100, 10, 100).unwrap();
    assert!(close(rr.ratio, 2.0, 1e-12));
    assert!(close(rr.interval.lower, 0.986563, 1e-6) && close(rr.interval.upper, 4.054479, 1e-6), "{rr:?}");
    assert_eq!(stats::rate_ratio(5, 10, 0, 10), Err(RatioUndefined::ZeroReferenceRate));
    assert_eq!(stats::rate_ratio(0, 10, 5, 10), Err(RatioUndefined::ZeroRate));
    assert_eq!(stats::rate_ratio(1, 0, 5, 10), Err(RatioUndefined::EmptyGroup));
    assert_eq!(stats::rate_ratio(1, 10, 5, 0), Err(RatioUndefined::EmptyGroup));
    assert_eq!(stats::rate_ratio(11, 10, 5, 10), Err(RatioUndefined::NotAProportion));
    // Equal groups of all-yes: ratio 1 with a degenerate interval, never NaN.
    let same = stats::rate_ratio(10, 10, 10, 10).unwrap();
    assert_eq!((same.ratio, same.interval.lower, same.interval.upper), (1.0, 1.0, 1.0));
}

#[test]
fn median_of_odd_even_and_empty_samples() {
    assert_eq!(stats::median(&[]), None);
    assert_eq!(stats::median(&[7.0, 1.0, 3.0]), Some(3.0));
    assert_eq!(stats::median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
    assert_eq!(stats::median(&[f64::NAN, 2.0]), Some(2.0));
}

#[test]
fn p_chart_limits_per_subgroup() {
    // p̄ = (0 + 10 + 12 + 14 + 4) / (100 + 100 + 100 + 90 + 10) = 40/400 = 0.1.
    // n = 100: 0.1 ± 3 sqrt(0.09/100) = 0.1 ± 0.09 -> 0.01 .. 0.19; 0/100 is below.
    // n = 90: 0.1 ± 3 sqrt(0.09/90) = 0.1 ± 0.094868 -> 0.005132 .. 0.194868.
    // n = 10: 0.1 ± 3 sqrt(0.09/10) = 0.1 ± 0.284605 -> clamped 0 .. 0.384605; 4/10 is above.
    let chart = stats::p_chart(&[
        Subgroup { numerator: 0, denominator: 100 },
        Subgroup { numerator: 10, denominator: 100 },
        Subgroup { numerator: 12, denominator: 100 },
        Subgroup { numerator: 14, denominator: 90 },
        Subgroup { numerator: 4, denominator: 10 },
        Subgroup { numerator: 0, denominator: 0 },
    ]);
    assert!(close(chart.centre.unwrap(), 0.1, 1e-12));
    let limits = |i: usize| (chart.points[i].lower_limit.unwrap(), chart.points[i].upper_limit.unwrap());
    assert!(close(limits(0).0, 0.01, 1e-9) && close(limits(0).1, 0.19, 1e-9));
    assert!(close(limits(3).0, 0.005132, 1e-6) && close(limits(3).1, 0.194868, 1e-6));
    assert_eq!(limits(4).0, 0.0);
    assert!(close(limits(4).1, 0.384605, 1e-6));
    let outside: Vec<bool> = chart.points.iter().map(|p| p.outside_limits).collect();
    assert_eq!(outside, [true, false, false, false, true, false]);
    assert_eq!(chart.points[5].proportion, None);
    assert_eq!(chart.points[5].upper_limit, None);

    // Near 1 the upper limit is clamped: p̄ = 19/20, n = 10: 0.95 + 3 sqrt(0.0475/10) > 1.
    let high =
        stats::p_chart(&[Subgroup { numerator: 9, denominator: 10 }, Subgroup { numerator: 10, denominator: 10 }]);
    assert_eq!(high.points[0].upper_limit, Some(1.0));
    assert!(close(high.points[0].lower_limit.unwrap(), 0.95 - 3.0 * (0.0475f64 / 10.0).sqrt(), 1e-12));
    assert_eq!(stats::p_chart(&[]).centre, None);
}

#[test]
fn run_chart_shift_rule() {
    // Sorted: 10 10 10 11 11 11 20 20 21 21 22 22 -> median (11 + 20) / 2 = 15.5; six below then six above.
    // (No five points in one direction: 10 11 21 rise, then 21 20 falls.)
    let values = [10.0, 11.0, 10.0, 11.0, 10.0, 11.0, 21.0, 20.0, 22.0, 20.0, 21.0, 22.0].map(Some);
    let chart = stats::run_chart(&values);
    assert_eq!(chart.median, Some(15.5));
    assert_eq!((chart.useful_observations, chart.runs), (12, 2));
    assert_eq!(
        chart.signals,
        [RunSignal::Shift { above: false, first: 0, last: 5 }, RunSignal::Shift { above: true, first: 6, last: 11 }]
    );

    // Five on one side is not a shift; a point on the median neither breaks nor extends one; gaps are skipped.
    // Values 1 2 1 2 1 | 5 (median) | 9 9 9 9 9 with a gap: median of 11 present values is 5.
    let values = [
        Some(1.0),
        Some(2.0),
        Some(1.0),
        Some(2.0),
        Some(1.0),
        Some(5.0),
        Some(9.0),
        None,
        Some(9.0),
        Some(9.0),
        Some(9.0),
        Some(9.0),
    ];
    let chart = stats::run_chart(&values);
    assert_eq!(chart.median, Some(5.0));
    assert_eq!((chart.useful_observations, chart.runs), (10, 2));
    assert_eq!(chart.signals, []);
    let mut six_above = values.to_vec();
    six_above.push(Some(9.0));
    six_above.insert(0, Some(0.0));
    // One more point at each end: 0 1 2 1 2 1 | 5 | 9 9 9 9 9 9 with the gap: median 5, six on each side.
    let chart = stats::run_chart(&six_above);
    assert_eq!(chart.median, Some(5.0));
    assert_eq!(
        chart.signals,
        [RunSignal::Shift { above: false, first: 0, last: 5 }, RunSignal::Shift { above: true, first: 7, last: 13 }]
    );
}

#[test]
fn run_chart_trend_rule() {
    // 1 2 3 3 4 5: the repeated 3 is skipped, leaving five rising points (indexes 0, 1, 2, 4, 5).
    let chart = stats::run_chart(&[1.0, 2.0, 3.0, 3.0, 4.0, 5.0].map(Some));
    assert_eq!(chart.signals, [RunSignal::Trend { up: true, first: 0, last: 5 }]);
    // Four rising points are not a trend.
    assert_eq!(stats::run_chart(&[1.0, 2.0, 3.0, 4.0].map(Some)).signals, []);
    // Up 4 then down 5: the peak ends one run of directions and starts the next.
    let chart = stats::run_chart(&[1.0, 2.0, 3.0, 9.0, 8.0, 7.0, 6.0, 5.0].map(Some));
    assert_eq!(chart.signals, [RunSignal::Trend { up: false, first: 3, last: 7 }]);
    assert_eq!(stats::run_chart(&[None, None]).median, None);
}

// --- suppression -------------------------------------------------------------------------------------------------

fn c(numerator: u64, denominator: u64) -> Counts {
    Counts { numerator, denominator }
}

#[test]
fn primary_suppression_is_one_to_ten() {
    assert_eq!(suppression::primary(c(0, 0)), None);
    assert_eq!(suppression::primary(c(0, 11)), None);
    assert_eq!(suppression::primary(c(1, 500)), Some(Suppression::Primary));
    assert_eq!(suppression::primary(c(10, 500)), Some(Suppression::Primary));
    assert_eq!(suppression::primary(c(11, 500)), None);
    assert_eq!(suppression::primary(c(0, 10)), Some(Suppression::Primary));
}

#[test]
fn complementary_suppression_rules() {
    use Suppression::{Complementary, Primary};
    // One small stratum: the next smallest by denominator goes too.
    assert_eq!(
        suppression::suppress_strata(&[c(20, 100), c(5, 40), c(15, 30)]),
        [None, Some(Primary), Some(Complementary)]
    );
    // Two small strata hide each other.
    assert_eq!(suppression::suppress_strata(&[c(20, 100), c(5, 40), c(3, 30)]), [None, Some(Primary), Some(Primary)]);
    // An empty stratum is passed over for a non-empty one.
    assert_eq!(
        suppression::suppress_strata(&[c(0, 0), c(4, 40), c(20, 90)]),
        [None, Some(Primary), Some(Complementary)]
    );
    // Only empties left: one of them is taken (the overall is then small too).
    assert_eq!(suppression::suppress_strata(&[c(0, 0), c(4, 4)]), [Some(Complementary), Some(Primary)]);
    // Ties on size go to the first.
    assert_eq!(
        suppression::suppress_strata(&[c(2, 50), c(20, 60), c(20, 60)]),
        [Some(Primary), Some(Complementary), None]
    );
    // A lone stratum is the overall: nothing to add.
    assert_eq!(suppression::suppress_strata(&[c(4, 4)]), [Some(Primary)]);
    assert_eq!(suppression::suppress_strata(&[c(0, 50), c(30, 60)]), [None, None]);
}

// --- periods -----------------------------------------------------------------------------------------------------

#[test]
fn periods_bucket_dates_and_read_labels() {
    let q = Period::containing(PeriodKind::Quarter, date("2026-05-31"));
    assert_eq!(q.label(), "2026-Q2");
    assert_eq!((q.start(), q.end()), (date("2026-04-01"), date("2026-06-30")));
    let feb = Period::containing(PeriodKind::Month, date("2028-02-10"));
    assert_eq!((feb.label(), feb.end()), ("2028-02".to_owned(), date("2028-02-29")));
    assert!(feb.contains(date("2028-02-29")) && !feb.contains(date("2028-03-01")));
    assert_eq!(Period::parse("2026-03").unwrap(), Period::containing(PeriodKind::Month, date("2026-03-15")));
    assert_eq!(Period::parse("2026-Q4").unwrap().end(), date("2026-12-31"));
    assert_eq!(Period::parse("2026-Q4").unwrap().next().label(), "2027-Q1");
    for bad in ["2026-13", "2026-00", "2026-Q5", "2026-Q0", "26-01", "2026", "2026-1", "2026-q1", "x026-01"] {
        assert_eq!(Period::parse(bad), Err(PeriodError::NotAPeriod), "{bad}");
    }
    assert_eq!(serde_json::to_string(&q).unwrap(), r#""2026-Q2""#);
    assert_eq!(serde_json::from_str::<Period>(r#""2026-03""#).unwrap(), "2026-03".parse().unwrap());
    let error = serde_json::from_str::<Period>(r#""2026-Q9""#).unwrap_err().to_string();
    assert!(error.contains("not a period label"), "{error}");
    let quarters = Period::covering(PeriodKind::Quarter, date("2025-11-30"), date("2026-04-01"));
    assert_eq!(quarters.iter().map(Period::label).collect::<Vec<_>>(), ["2025-Q4", "2026-Q1", "2026-Q2"]);
    assert!(Period::covering(PeriodKind::Month, date("2026-02-01"), date("2026-01-01")).is_empty());
}

#[test]
fn iso_dates_with_times_partial_dates_and_garbage() {
    assert_eq!(parse_iso_date("2026-03-14T23:30:00-05:00").unwrap(), date("2026-03-14"));
    assert_eq!(parse_iso_date("2026-03"), Err(PeriodError::PartialDate));
    assert_eq!(parse_iso_date("2026"), Err(PeriodError::PartialDate));
    for bad in ["2026-02-30", "2026-3-14", "14/03/2026", "", "2026-03-14x", "２０２６-03-14"] {
        assert_eq!(parse_iso_date(bad), Err(PeriodError::NotADate), "{bad}");
    }
}

// --- definitions -------------------------------------------------------------------------------------------------

#[test]
fn builtin_measures_load() {
    let ids: Vec<&str> = MeasureSet::builtin().definitions().iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids.len(), 9);
    for id in ["hrsn-screening-rate", "hrsn-screen-positive-interpersonal-safety", "hrsn-days-to-closure"] {
        assert!(ids.contains(&id), "{id}");
    }
}

fn definition_error(measure: &str) -> String {
    let text = format!(r#"{{"measures": [{measure}]}}"#);
    MeasureSet::from_json_str(&text).expect_err("refused").to_string()
}

#[test]
fn bad_measure_definitions_give_clear_errors() {
    let base = |denominator: &str, numerator: &str, subject: &str, scoring: &str| {
        format!(
            r#"{{"id": "m", "title": "t", "description": "d", "subject": "{subject}", "scoring": "{scoring}",
                "denominator": [{denominator}], "numerator": [{numerator}]}}"#
        )
    };
    let encounter = r#"{"kind": "encounter-in-period"}"#;
    let screened = r#"{"kind": "screened-in-period", "domains": ["food"], "require": "all"}"#;

    let error = definition_error(&base(
        encounter,
        r#"{"kind": "screened-in-period", "domains": ["fod"], "require": "all"}"#,
        "patient",
        "proportion",
    ));
    assert!(error.contains("unknown variant `fod`") && error.contains("line"), "{error}");
    let error = definition_error(&base(encounter, screened, "patient", "proportion").replace("\"title\"", "\"titel\""));
    assert!(error.contains("unknown field `titel`"), "{error}");
    let error = definition_error(&base(encounter, r#"{"kind": "referral-completed"}"#, "patient", "proportion"));
    assert!(error.contains("measure m:") && error.contains("referral criteria"), "{error}");
    let error = definition_error(&base(r#"{"kind": "age-at-least", "years": 18}"#, screened, "patient", "proportion"));
    assert!(error.contains("tied to the period"), "{error}");
    let error = definition_error(&base(
        encounter,
        r#"{"kind": "screened-positive-in-period", "domains": []}"#,
        "patient",
        "proportion",
    ));
    assert!(error.contains("non-empty"), "{error}");
    let error = definition_error(&base(encounter, screened, "patient", "median-days-to-completion"));
    assert!(error.contains("median-days-to-completion needs"), "{error}");
    let error = definition_error(&base(encounter, screened, "patient", "proportion").replace("\"m\"", "\"M 1\""));
    assert!(error.contains("lower-case"), "{error}");
    let twice = format!(
        "{}, {}",
        base(encounter, screened, "patient", "proportion"),
        base(encounter, screened, "patient", "proportion")
    );
    assert!(definition_error(&twice).contains("defined twice"));
    assert!(MeasureSet::from_json_str("{").unwrap_err().to_string().contains("not valid JSON"));
    assert!(
        MeasureSet::from_json_str(&format!(
            r#"{{"measures": [{}]}}"#,
            base(encounter, screened, "patient", "proportion")
        ))
        .is_ok()
    );
}

#[test]
fn a_stratifier_nobody_has_a_value_for_has_no_reference() {
    // The population's counties blanked out: one `unknown` stratum equal to the overall, shown, with nothing to
    // compare against.
    let blank: Vec<PatientFacts> =
        population().into_iter().map(|p| PatientFacts { county: Some("  ".into()), ..p }).collect();
    let cells =
        evaluate(MeasureSet::builtin().definitions(), &blank, &[q1()], &[StratifierSpec::new(Stratifier::County)]);
    let unknown = shown(find(&cells, "hrsn-screening-rate", q1(), &stratum(Stratifier::County, "unknown")));
    assert_eq!((unknown.numerator, unknown.denominator), (60, 78));
    assert_eq!(unknown.comparison, Comparison::NoReference);
    let strata = cells.iter().filter(|c| c.measure == "hrsn-screening-rate" && c.group != Group::Overall).count();
    assert_eq!(strata, 1);
}

// --- properties over random populations --------------------------------------------------------------------------

mod random {
    use super::*;
    use proptest::prelude::*;

    fn day_of_q1(offset: u32) -> NaiveDate {
        date("2025-12-15") + chrono::Days::new(u64::from(offset))
    }

    fn domain() -> impl Strategy<Value = HrsnDomain> {
        proptest::sample::select(HrsnDomain::ALL.to_vec())
    }

    fn label(values: &'static [&'static str]) -> impl Strategy<Value = Option<String>> {
        proptest::option::of(proptest::sample::select(values.to_vec()).prop_map(String::from))
    }

    prop_compose! {
        fn patient()(
            born in 1930u32..2012,
            race in label(&["White", "Black", "Asian", "Other"]),
            language in label(&["English", "Spanish"]),
            county in label(&["Alpha", "Beta", "Gamma"]),
            sex in label(&["female", "male"]),
            encounters in proptest::collection::vec(0u32..120, 0..3),
            screenings in proptest::collection::vec((domain(), 0u32..120, any::<bool>()), 0..7),
            referrals in proptest::collection::vec((domain(), 0u32..120, proptest::option::of(0u32..90)), 0..3),
        ) -> PatientFacts {
            PatientFacts {
                birth_date: NaiveDate::from_ymd_opt(born as i32, 6, 15),
                sex,
                race,
                ethnicity: None,
                language,
                payer: Some("Medicaid".into()),
                county,
                encounters: encounters.into_iter().map(day_of_q1).collect(),
                screenings: screenings
                    .into_iter()
                    .map(|(domain, day, positive)| Screening { domain, date: day_of_q1(day), positive })
                    .collect(),
                referrals: referrals
                    .into_iter()
                    .map(|(domain, day, after)| Referral {
                        domain,
                        created: day_of_q1(day),
                        completed: after.map(|a| day_of_q1(day + a)),
                    })
                    .collect(),
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn shown_cells_never_carry_small_counts_and_never_stand_alone_suppressed(
            patients in proptest::collection::vec(patient(), 0..160)
        ) {
            let mut periods = Period::covering(PeriodKind::Month, date("2026-01-01"), date("2026-03-31"));
            periods.push(q1());
            let cells = evaluate(MeasureSet::builtin().definitions(), &patients, &periods, &all_stratifiers());
            for cell in &cells {
                if let CellValue::Shown(f) = &cell.value {
                    prop_assert!(!suppression::is_small(f.numerator) && !suppression::is_small(f.denominator), "{cell:?}");
                    prop_assert!(f.numerator <= f.denominator);
                    if let Some(p) = f.proportion {
                        prop_assert!(0.0 <= p.interval.lower && p.interval.lower <= p.rate);
                        prop_assert!(p.rate <= p.interval.upper && p.interval.upper <= 1.0);
                    }
                    if let Comparison::Ratio { ratio: Ok(r), .. } = &f.comparison {
                        prop_assert!(r.interval.lower <= r.ratio && r.ratio <= r.interval.upper, "{r:?}");
                    }
                }
            }
            for measure in MeasureSet::builtin().definitions() {
                for &period in &periods {
                    let overall = find(&cells, &measure.id, period, &Group::Overall);
                    for stratifier in Stratifier::ALL {
                        let row: Vec<&Cell> = cells
                            .iter()
                            .filter(|c| c.measure == measure.id && c.period == period)
                            .filter(|c| matches!(&c.group, Group::Stratum { stratifier: s, .. } if *s == stratifier))
                            .collect();
                        let suppressed = row.iter().filter(|c| matches!(c.value, CellValue::Suppressed(_))).count();
                        prop_assert!(suppressed != 1 || row.len() == 1, "{} {period} {stratifier:?}: {row:?}", measure.id);
                        if suppressed == 1 {
                            prop_assert!(matches!(overall.value, CellValue::Suppressed(_)));
                        }
                        if let (0, CellValue::Shown(total)) = (suppressed, &overall.value) {
                            let sum = row.iter().map(|c| counts(c)).fold((0, 0), |(n, d), (a, b)| (n + a, d + b));
                            prop_assert_eq!(sum, (total.numerator, total.denominator));
                        }
                    }
                }
            }
        }
    }
}
