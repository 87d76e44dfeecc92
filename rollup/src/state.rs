//! The mergeable state a rollup bucket keeps per series and field.
//!
//! Everything a query over a coarser resolution needs can be merged exactly from
//! consecutive buckets: count and sum (so `avg` is sum/count, never an average of
//! averages), min and max, the first and last value with their times, and the
//! counter increase between the bucket's own samples. The increase across a
//! bucket edge is not in either bucket: merging adds it from the earlier bucket's
//! last value and the later one's first, reset-aware, which is what keeps
//! `increase` right across resets at bucket edges (the Thanos downsampling bug
//! took a reset right after an edge for a decrease).

/// The increase a counter went through from `before` to `after`: a decrease is a
/// reset (the counter restarted from zero), as in Prometheus.
pub fn counter_step(before: f64, after: f64) -> f64 {
    if after >= before {
        after - before
    } else {
        after
    }
}

/// One field of one series in one bucket.
///
/// `count` and `sum` are what SQL's aggregates give over the raw values, NaN
/// included (counted; it makes the sum NaN), so `count`, `sum` and `avg` from
/// rollups equal the raw answer. `min`, `max`, `first`, `last` and `increase`
/// skip NaN (a Prometheus staleness marker is no value; DataFusion's own
/// grouped min/max over raw NaN depend on row order); `min`/`max` are NaN only
/// when every value was, `first` is NaN while no number was seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BucketState {
    pub count: i64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
    pub first: f64,
    pub first_time: i64,
    pub last: f64,
    pub last_time: i64,
    /// Reset-aware increase between this bucket's own samples.
    pub increase: f64,
}

impl Default for BucketState {
    fn default() -> Self {
        BucketState {
            count: 0,
            sum: 0.0,
            min: f64::NAN,
            max: f64::NAN,
            first: f64::NAN,
            first_time: 0,
            last: f64::NAN,
            last_time: 0,
            increase: 0.0,
        }
    }
}

impl BucketState {
    /// Adds a sample; samples come in time order.
    pub fn push(&mut self, value: f64, time: i64) {
        if self.count == 0 {
            (self.sum, self.min, self.max) = (value, value, value);
        } else {
            self.sum += value;
            self.min = self.min.min(value);
            self.max = self.max.max(value);
        }
        self.count += 1;
        if value.is_nan() {
            return;
        }
        if self.first.is_nan() {
            (self.first, self.first_time) = (value, time);
            (self.last, self.last_time) = (value, time);
            self.increase = 0.0;
            return;
        }
        self.increase += counter_step(self.last, value);
        (self.last, self.last_time) = (value, time);
    }

    /// Merges the state of the next bucket (later in time) into this one.
    pub fn merge(&mut self, next: &BucketState) {
        if next.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *next;
            return;
        }
        self.count += next.count;
        self.sum += next.sum;
        self.min = self.min.min(next.min);
        self.max = self.max.max(next.max);
        if next.first.is_nan() {
            return;
        }
        if self.first.is_nan() {
            (self.first, self.first_time) = (next.first, next.first_time);
            (self.last, self.last_time) = (next.last, next.last_time);
            self.increase = next.increase;
            return;
        }
        self.increase += counter_step(self.last, next.first) + next.increase;
        (self.last, self.last_time) = (next.last, next.last_time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(samples: &[(i64, f64)]) -> BucketState {
        let mut s = BucketState::default();
        for &(t, v) in samples {
            s.push(v, t);
        }
        s
    }

    /// Merging buckets gives what one bucket over all their samples gives, for
    /// every split, with counter resets inside buckets and on their edges.
    #[test]
    fn merged_buckets_equal_one_bucket() {
        let samples: Vec<(i64, f64)> = [5.0, 7.0, 2.0, 4.0, 4.0, 1.0, 9.0, 0.5, 3.0, 8.0]
            .iter()
            .enumerate()
            .map(|(i, v)| (i as i64 * 10, *v))
            .collect();
        let whole = of(&samples);
        assert_eq!(whole.count, 10);
        // 2 + (2) + 2 + 0 + (1) + 8 + (0.5) + 2.5 + 5 = 23
        assert_eq!(whole.increase, 23.0);
        for a in 0..samples.len() {
            for b in a..samples.len() {
                let mut m = of(&samples[..a]);
                m.merge(&of(&samples[a..b]));
                m.merge(&of(&samples[b..]));
                assert_eq!(m.count, whole.count);
                assert_eq!(m.sum, whole.sum);
                assert_eq!((m.min, m.max), (whole.min, whole.max));
                assert_eq!((m.first, m.first_time), (whole.first, whole.first_time));
                assert_eq!((m.last, m.last_time), (whole.last, whole.last_time));
                assert_eq!(m.increase, whole.increase, "split at {a}, {b}");
            }
        }
    }

    /// NaN counts and poisons the sum as in SQL over the raw rows,
    /// but is no counter value: first, last and increase skip it.
    #[test]
    fn nan_is_counted_like_sql_and_skipped_by_counters() {
        let samples = [(1, f64::NAN), (2, 3.0), (3, f64::NAN), (4, 5.0)];
        let s = of(&samples);
        assert_eq!(s.count, 4);
        assert!(s.sum.is_nan());
        assert_eq!((s.min, s.max), (3.0, 5.0));
        assert_eq!(
            (s.first, s.first_time, s.last_time, s.increase),
            (3.0, 2, 4, 2.0)
        );
        let only_nan = of(&[(1, f64::NAN)]);
        assert_eq!(only_nan.count, 1);
        assert!(only_nan.first.is_nan() && only_nan.min.is_nan());
        // Every split merges to the same state, a NaN-only bucket included.
        for a in 0..=samples.len() {
            let mut m = of(&samples[..a]);
            m.merge(&of(&samples[a..]));
            assert_eq!(m.count, 4);
            assert!(m.sum.is_nan());
            assert_eq!(
                (m.min, m.max, m.first_time, m.last, m.increase),
                (3.0, 5.0, 2, 5.0, 2.0),
                "split at {a}"
            );
        }
    }
}
