//! Small-cell suppression: counts from 1 to 10 are never shown, nor any count from which one could be worked out.
//!
//! Rules (CDC/CMS small-cell practice, e.g. the CMS Cell Size Suppression Policy and CDC WONDER: counts of 1-10 are
//! suppressed, 0 is shown):
//! - **Primary**: a cell whose numerator or denominator is 1..=10 is suppressed. Zero is shown: "nobody" discloses
//!   no one's data, and hiding zeros would hide exactly the gaps an equity report exists to show.
//! - **Complementary**: the strata of one stratifier partition the population (a patient without a value is in the
//!   `unknown` stratum), so within one table (one measure, one period, one stratifier) the strata sum to the
//!   overall. If exactly one stratum is suppressed, it could be recovered as the overall minus the others, so the
//!   next smallest non-empty stratum (by denominator, then numerator, then position) is suppressed too. Empty
//!   strata are passed over while another exists, since a zero is often known anyway (under-18s in an adults-only
//!   measure) and hiding it would hide nothing. Two or more suppressed strata already hide each other.
//! - The overall cell is only ever suppressed by the primary rule: if its counts are small, every non-zero stratum
//!   is small too and suppressed.
//!
//! What these rules do not cover, and publishers of the figures must respect: a table per month next to a table per
//! quarter of the same referral counts (a quarter is the sum of its months), and totals computed from the
//! published cells of several tables.

use serde::Serialize;

/// The largest count that is suppressed (CMS: "cell sizes of 10 or less").
pub const SMALL_CELL_MAX: u64 = 10;

/// Why a cell is not shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Suppression {
    /// Its own numerator or denominator is 1..=10.
    Primary,
    /// Its counts are not small, but showing them would reveal a primary-suppressed cell of the same table.
    Complementary,
}

/// The two counts of a cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub numerator: u64,
    pub denominator: u64,
}

/// The count is 1..=10.
pub fn is_small(count: u64) -> bool {
    (1..=SMALL_CELL_MAX).contains(&count)
}

/// The primary rule alone, for a cell that is no part of a partition (an overall cell).
pub fn primary(counts: Counts) -> Option<Suppression> {
    (is_small(counts.numerator) || is_small(counts.denominator)).then_some(Suppression::Primary)
}

/// Suppression of the strata of one stratifier in one table. `strata` must be the whole partition of the overall
/// (including the `unknown` stratum and strata with zero counts), in a stable order; the answer is in the same
/// order.
pub fn suppress_strata(strata: &[Counts]) -> Vec<Option<Suppression>> {
    let mut decisions: Vec<Option<Suppression>> = strata.iter().map(|&counts| primary(counts)).collect();
    if decisions.iter().filter(|d| d.is_some()).count() == 1 {
        let next_smallest = strata
            .iter()
            .enumerate()
            .filter(|&(i, _)| decisions[i].is_none())
            .min_by_key(|&(i, counts)| (counts.denominator == 0, counts.denominator, counts.numerator, i))
            .map(|(i, _)| i);
        if let Some(i) = next_smallest {
            decisions[i] = Some(Suppression::Complementary);
        }
    }
    decisions
}
