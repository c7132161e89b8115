//! The statistics of equity measures: proportions with Wilson intervals, rate ratios, medians, p-charts and run
//! chart rules. Plain functions over counts; an estimate that does not exist is a variant, never a NaN.

/// The standard normal quantile for a two-sided 95% interval (Φ⁻¹(0.975)).
pub const Z_95: f64 = 1.959_963_984_540_054;

/// A two-sided 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Interval {
    pub lower: f64,
    pub upper: f64,
}

/// A proportion `numerator / denominator` with its 95% Wilson score interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Proportion {
    pub rate: f64,
    pub interval: Interval,
}

/// `numerator / denominator` with the 95% Wilson score interval (Wilson, E. B. (1927). Probable inference, the law
/// of succession, and statistical inference. JASA 22:209-212; recommended over the Wald interval for small counts
/// and rates near 0 or 1 by Brown, Cai & DasGupta (2001), Statistical Science 16:101-133).
///
/// `None` when the denominator is 0, or the numerator exceeds it (not a proportion).
pub fn proportion(numerator: u64, denominator: u64) -> Option<Proportion> {
    if denominator == 0 || numerator > denominator {
        return None;
    }
    let n = denominator as f64;
    let p = numerator as f64 / n;
    let z2 = Z_95 * Z_95;
    let scale = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / scale;
    let half_width = Z_95 / scale * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // The exact bounds at 0/n and n/n are 0 and 1; rounding could otherwise put them a hair outside.
    let lower = if numerator == 0 { 0.0 } else { (centre - half_width).max(0.0) };
    let upper = if numerator == denominator { 1.0 } else { (centre + half_width).min(1.0) };
    Some(Proportion { rate: p, interval: Interval { lower, upper } })
}

/// A rate ratio with its 95% confidence interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateRatio {
    pub ratio: f64,
    pub interval: Interval,
}

/// Why a rate ratio cannot be estimated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RatioUndefined {
    /// The compared group or the reference group has no one in its denominator.
    EmptyGroup,
    /// The reference group's rate is 0: the ratio is unbounded.
    ZeroReferenceRate,
    /// The compared group's rate is 0: the ratio is 0 but the log-method interval does not exist.
    ZeroRate,
    /// A numerator exceeds its denominator.
    NotAProportion,
}

/// The ratio of the proportions `a / n1` (compared group) and `b / n2` (reference group), with the 95% interval of
/// the log method: `exp(ln RR ± z · sqrt(1/a − 1/n1 + 1/b − 1/n2))` (Katz, D., Baptista, J., Azen, S. P. & Pike,
/// M. C. (1978). Obtaining confidence intervals for the risk ratio in cohort studies. Biometrics 34:469-474;
/// Rothman, Greenland & Lash, Modern Epidemiology, 3rd ed., ch. 14).
pub fn rate_ratio(a: u64, n1: u64, b: u64, n2: u64) -> Result<RateRatio, RatioUndefined> {
    if n1 == 0 || n2 == 0 {
        return Err(RatioUndefined::EmptyGroup);
    }
    if a > n1 || b > n2 {
        return Err(RatioUndefined::NotAProportion);
    }
    if b == 0 {
        return Err(RatioUndefined::ZeroReferenceRate);
    }
    if a == 0 {
        return Err(RatioUndefined::ZeroRate);
    }
    let (a, n1, b, n2) = (a as f64, n1 as f64, b as f64, n2 as f64);
    let ratio = (a / n1) / (b / n2);
    // Clamped at 0: with a = n1 and b = n2 rounding can make the variance a tiny negative number.
    let standard_error = (1.0 / a - 1.0 / n1 + 1.0 / b - 1.0 / n2).max(0.0).sqrt();
    let log_ratio = ratio.ln();
    Ok(RateRatio {
        ratio,
        interval: Interval {
            lower: (log_ratio - Z_95 * standard_error).exp(),
            upper: (log_ratio + Z_95 * standard_error).exp(),
        },
    })
}

/// The sample median: the middle value, or the mean of the two middle values of an even count. `None` when
/// empty. NaN values are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    if sorted.is_empty() {
        return None;
    }
    sorted.sort_by(f64::total_cmp);
    let middle = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[middle] } else { (sorted[middle - 1] + sorted[middle]) / 2.0 })
}

/// One subgroup of a p-chart (one period of one stratum): how many of how many.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subgroup {
    pub numerator: u64,
    pub denominator: u64,
}

/// One plotted point of a p-chart with its own control limits (they widen as the subgroup shrinks).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PChartPoint {
    /// `None` for an empty subgroup (nothing to plot, no limits).
    pub proportion: Option<f64>,
    pub lower_limit: Option<f64>,
    pub upper_limit: Option<f64>,
    /// The point lies outside its limits: special-cause variation.
    pub outside_limits: bool,
}

/// A p-chart: the centre line and each subgroup's limits.
#[derive(Debug, Clone, PartialEq)]
pub struct PChart {
    /// p̄, the pooled proportion over all subgroups; `None` when every subgroup is empty.
    pub centre: Option<f64>,
    pub points: Vec<PChartPoint>,
}

/// The p-chart of the subgroups: centre line p̄ = Σ numerators / Σ denominators, and for subgroup i the 3-sigma
/// limits p̄ ± 3 · sqrt(p̄ (1 − p̄) / nᵢ), clamped to [0, 1] (Shewhart; Montgomery, D. C., Introduction to
/// Statistical Quality Control, ch. 7; Provost, L. P. & Murray, S. K. (2011), The Health Care Data Guide, ch. 5).
/// A subgroup whose numerator exceeds its denominator is treated as empty.
pub fn p_chart(subgroups: &[Subgroup]) -> PChart {
    let valid = |s: &&Subgroup| s.denominator > 0 && s.numerator <= s.denominator;
    let total_numerator: u64 = subgroups.iter().filter(valid).map(|s| s.numerator).sum();
    let total_denominator: u64 = subgroups.iter().filter(valid).map(|s| s.denominator).sum();
    let centre = (total_denominator > 0).then(|| total_numerator as f64 / total_denominator as f64);
    let points = subgroups
        .iter()
        .map(|subgroup| match centre {
            Some(p_bar) if valid(&subgroup) => {
                let proportion = subgroup.numerator as f64 / subgroup.denominator as f64;
                let sigma = (p_bar * (1.0 - p_bar) / subgroup.denominator as f64).sqrt();
                let lower = (p_bar - 3.0 * sigma).max(0.0);
                let upper = (p_bar + 3.0 * sigma).min(1.0);
                PChartPoint {
                    proportion: Some(proportion),
                    lower_limit: Some(lower),
                    upper_limit: Some(upper),
                    outside_limits: proportion < lower || proportion > upper,
                }
            }
            _ => PChartPoint { proportion: None, lower_limit: None, upper_limit: None, outside_limits: false },
        })
        .collect();
    PChart { centre, points }
}

/// A non-random pattern found on a run chart; `first..=last` are indexes into the analysed series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunSignal {
    /// Six or more consecutive points on one side of the median.
    Shift { above: bool, first: usize, last: usize },
    /// Five or more consecutive points all going up or all going down.
    Trend { up: bool, first: usize, last: usize },
}

/// A run chart's centre line and what its rules found.
#[derive(Debug, Clone, PartialEq)]
pub struct RunChart {
    /// The median of the points present; `None` without points.
    pub median: Option<f64>,
    /// Points not on the median (the "useful observations" the runs rule counts).
    pub useful_observations: usize,
    /// Runs: maximal sequences of useful observations on one side of the median.
    pub runs: usize,
    pub signals: Vec<RunSignal>,
}

/// Points on one side of the median that make a shift.
pub const SHIFT_MIN_POINTS: usize = 6;
/// Consecutive points in one direction that make a trend.
pub const TREND_MIN_POINTS: usize = 5;

/// The run chart rules of Provost & Murray, The Health Care Data Guide (2011), ch. 3, and Perla, R. J., Provost,
/// L. P. & Murray, S. K. (2011), The run chart: a simple analytical tool for learning from variation in healthcare
/// processes, BMJ Quality & Safety 20:46-51:
/// - shift: six or more consecutive points all above or all below the median; points on the median neither
///   break nor extend a shift;
/// - trend: five or more consecutive points all going up or all going down; a point equal to its predecessor
///   neither breaks nor extends a trend.
///
/// `None` entries (suppressed or empty periods) are gaps: skipped, like points on the median. The runs count is
/// reported for the too-few/too-many-runs rule, whose table is left to the reader of the chart.
pub fn run_chart(points: &[Option<f64>]) -> RunChart {
    let present: Vec<(usize, f64)> =
        points.iter().enumerate().filter_map(|(i, v)| v.filter(|v| !v.is_nan()).map(|v| (i, v))).collect();
    let values: Vec<f64> = present.iter().map(|&(_, v)| v).collect();
    let Some(centre) = median(&values) else {
        return RunChart { median: None, useful_observations: 0, runs: 0, signals: Vec::new() };
    };

    let sides: Vec<(usize, bool)> =
        present.iter().filter(|&&(_, v)| v != centre).map(|&(i, v)| (i, v > centre)).collect();
    let mut signals = Vec::new();
    let mut runs = 0;
    let mut start = 0;
    while start < sides.len() {
        let above = sides[start].1;
        let mut end = start;
        while end + 1 < sides.len() && sides[end + 1].1 == above {
            end += 1;
        }
        runs += 1;
        if end - start + 1 >= SHIFT_MIN_POINTS {
            signals.push(RunSignal::Shift { above, first: sides[start].0, last: sides[end].0 });
        }
        start = end + 1;
    }

    // Ties are dropped first, so a trend is counted over points that each differ from the previous one.
    let mut distinct: Vec<(usize, f64)> = Vec::new();
    for &(i, v) in &present {
        if distinct.last().is_none_or(|&(_, previous)| previous != v) {
            distinct.push((i, v));
        }
    }
    let mut start = 0;
    while start + 1 < distinct.len() {
        let up = distinct[start + 1].1 > distinct[start].1;
        let mut end = start + 1;
        while end + 1 < distinct.len() && (distinct[end + 1].1 > distinct[end].1) == up {
            end += 1;
        }
        if end - start + 1 >= TREND_MIN_POINTS {
            signals.push(RunSignal::Trend { up, first: distinct[start].0, last: distinct[end].0 });
        }
        // The turning point ends one trend and starts the next.
        start = end;
    }
    signals.sort_by_key(|s| match *s {
        RunSignal::Shift { first, .. } | RunSignal::Trend { first, .. } => first,
    });
    RunChart { median: Some(centre), useful_observations: sides.len(), runs, signals }
}
