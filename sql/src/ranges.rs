//! Time arithmetic shared by the rollup builder and rollup selection: bucket
//! edges and half-open `[start, end)` nanosecond ranges.

/// The 10-minute rollup resolution, in nanoseconds.
pub const TEN_MINUTES: i64 = 600_000_000_000;
/// The 1-hour rollup resolution.
pub const HOUR: i64 = 6 * TEN_MINUTES;

/// The start of the `step`-wide bucket (from the epoch) holding `t`.
pub fn floor_to(t: i64, step: i64) -> i64 {
    t.div_euclid(step).saturating_mul(step)
}

/// The first bucket edge at or after `t`.
pub fn ceil_to(t: i64, step: i64) -> i64 {
    if t.rem_euclid(step) == 0 {
        t
    } else {
        floor_to(t, step).saturating_add(step)
    }
}

/// Half-open ranges, sorted and joined.
pub fn coalesce(mut ranges: Vec<(i64, i64)>) -> Vec<(i64, i64)> {
    ranges.retain(|(a, b)| a < b);
    ranges.sort();
    let mut out: Vec<(i64, i64)> = Vec::new();
    for (a, b) in ranges {
        match out.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_rounding() {
        assert_eq!(floor_to(-1, 10), -10);
        assert_eq!(ceil_to(11, 10), 20);
        assert_eq!(ceil_to(20, 10), 20);
        assert_eq!(
            coalesce(vec![(5, 9), (0, 3), (3, 4), (8, 12), (20, 20)]),
            vec![(0, 4), (5, 12)]
        );
    }
}
