//! Latency histograms and how their figures are printed.
//!
//! Every round trip is recorded in nanoseconds into an HDR histogram with three significant
//! digits, so p99.9 of 10^5 samples costs no sorting and no allocation in the measured loop.

use std::time::Instant;

use hdrhistogram::Histogram;

use crate::error::{Context, Result};

/// The largest round trip recorded exactly: 60 s. Longer ones are recorded as 60 s.
const MAX_NS: u64 = 60_000_000_000;

/// An empty histogram of nanoseconds.
pub fn histogram() -> Result<Histogram<u64>> {
    Histogram::new_with_bounds(1, MAX_NS, 3).context("creating a histogram")
}

/// Runs `warm` unrecorded round trips, then `n` recorded ones into `hist`. Iteration `i` of
/// the whole block (warm-up included) is passed to `round_trip`, which must return once the
/// reply for `i` has arrived. Only the round trip is inside the two clock reads; the
/// histogram update is outside them.
#[inline(always)]
pub fn timed_round_trips(
    warm: u64,
    n: u64,
    hist: &mut Histogram<u64>,
    mut round_trip: impl FnMut(u64) -> Result<()>,
) -> Result<()> {
    for i in 0..warm {
        round_trip(i)?;
    }
    for i in warm..warm + n {
        let start = Instant::now();
        round_trip(i)?;
        let ns = start.elapsed().as_nanos();
        hist.saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
    }
    Ok(())
}

/// The quantiles of a percentile curve ([`Latency::curve`]), for the bench's plot: p50, p75,
/// p90, p99, p99.9 and p99.99 (the max is [`Latency::max`]).
pub const CURVE_QUANTILES: [f64; 6] = [0.5, 0.75, 0.9, 0.99, 0.999, 0.9999];

/// The figures of one histogram, in nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Latency {
    pub count: u64,
    pub min: u64,
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub mean: f64,
    /// The value at each of [`CURVE_QUANTILES`]: the plot's points, which neither the table
    /// nor the JSON lines print.
    pub curve: [u64; CURVE_QUANTILES.len()],
}

impl Latency {
    /// Reads the figures off `hist`.
    pub fn of(hist: &Histogram<u64>) -> Latency {
        Latency {
            count: hist.len(),
            min: hist.min(),
            p50: hist.value_at_quantile(0.50),
            p99: hist.value_at_quantile(0.99),
            p999: hist.value_at_quantile(0.999),
            max: hist.max(),
            mean: hist.mean(),
            curve: CURVE_QUANTILES.map(|q| hist.value_at_quantile(q)),
        }
    }
}

/// A duration in nanoseconds for people: `850 ns`, `1.24 µs`, `12.3 ms`.
pub fn fmt_ns(ns: u64) -> String {
    let ns_f = ns as f64;
    if ns < 1_000 {
        format!("{ns} ns")
    } else if ns < 1_000_000 {
        format!("{} µs", three_digits(ns_f / 1e3))
    } else if ns < 1_000_000_000 {
        format!("{} ms", three_digits(ns_f / 1e6))
    } else {
        format!("{} s", three_digits(ns_f / 1e9))
    }
}

/// A rate for people, to be followed by a unit: `12.3 M`, `950 k`, `12`.
pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e9 {
        format!("{} G", three_digits(per_s / 1e9))
    } else if per_s >= 1e6 {
        format!("{} M", three_digits(per_s / 1e6))
    } else if per_s >= 1e3 {
        format!("{} k", three_digits(per_s / 1e3))
    } else {
        format!("{per_s:.0}")
    }
}

/// About three significant digits: 1.23, 12.3, 123.
fn three_digits(x: f64) -> String {
    if x < 10.0 {
        format!("{x:.2}")
    } else if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(fmt_ns(850), "850 ns");
        assert_eq!(fmt_ns(1_240), "1.24 µs");
        assert_eq!(fmt_ns(12_300_000), "12.3 ms");
        assert_eq!(fmt_rate(12_345_678.0), "12.3 M");
    }

    #[test]
    fn records_round_trips() -> Result<()> {
        let mut hist = histogram()?;
        let mut seen = Vec::new();
        timed_round_trips(2, 3, &mut hist, |i| {
            seen.push(i);
            Ok(())
        })?;
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(hist.len(), 3);
        Ok(())
    }

    #[test]
    fn curve_reads_the_quantiles() -> Result<()> {
        let mut hist = histogram()?;
        for ns in 1..=100_000 {
            hist.record(ns).unwrap();
        }
        let fig = Latency::of(&hist);
        // Three significant digits: within 0.1% of the exact quantile.
        for (&q, &ns) in CURVE_QUANTILES.iter().zip(&fig.curve) {
            let exact = q * 100_000.0;
            assert!((ns as f64 - exact).abs() <= exact / 1000.0, "{q}: {ns}");
        }
        assert_eq!((fig.curve[0], fig.curve[3]), (fig.p50, fig.p99));
        Ok(())
    }
}
