//! Alertmanager's time intervals (`time_intervals`, the older
//! `mute_time_intervals`): named sets of times of day, weekdays, days of the
//! month, months and years, in a time zone. A route mutes its notifications
//! during its `mute_time_intervals` and sends only during its
//! `active_time_intervals`.

use chrono::{DateTime, Datelike, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use serde::Deserialize;

/// A named interval: in force when any of its ranges holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TimeInterval {
    pub name: String,
    ranges: Vec<TimeRange>,
}

/// One entry of `time_intervals`: every part given must hold.
#[derive(Debug, Clone, PartialEq)]
struct TimeRange {
    /// Minutes of the day, `[start, end)`.
    times: Vec<(u32, u32)>,
    /// 0 = Sunday.
    weekdays: Vec<(u32, u32)>,
    /// 1..=31, or negative from the month's end (-1 = last day).
    days_of_month: Vec<(i32, i32)>,
    months: Vec<(u32, u32)>,
    years: Vec<(i32, i32)>,
    location: Tz,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeIntervalDoc {
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) time_intervals: Vec<TimeRangeDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeRangeDoc {
    #[serde(default)]
    times: Vec<TimesDoc>,
    #[serde(default)]
    weekdays: Vec<String>,
    #[serde(default)]
    days_of_month: Vec<String>,
    #[serde(default)]
    months: Vec<String>,
    #[serde(default)]
    years: Vec<String>,
    location: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimesDoc {
    start_time: String,
    end_time: String,
}

const WEEKDAYS: [&str; 7] = [
    "sunday",
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
];
const MONTHS: [&str; 12] = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
];

/// `HH:MM` (00:00 to 24:00) as minutes of the day.
fn minutes(s: &str) -> Result<u32, String> {
    let bad = || format!("time {s:?} is not HH:MM between 00:00 and 24:00");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let (h, m): (u32, u32) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `a` or `a:b` where each end is parsed by `one`.
fn range<T: Copy + PartialOrd>(
    s: &str,
    what: &str,
    one: impl Fn(&str) -> Option<T>,
) -> Result<(T, T), String> {
    let s = s.trim().to_ascii_lowercase();
    // A negative day of the month starts with '-', so split on ':' only.
    let (a, b) = s.split_once(':').unwrap_or((&s, &s));
    let bad = || format!("{what} {s:?} is not valid");
    let (a, b) = (
        one(a.trim()).ok_or_else(bad)?,
        one(b.trim()).ok_or_else(bad)?,
    );
    // A range that ends before it starts would never hold (Alertmanager
    // refuses it too); days of the month from the end are checked there.
    if a > b && what != "day of month" {
        return Err(format!("{what} range {s:?} ends before it starts"));
    }
    Ok((a, b))
}

impl TimeRangeDoc {
    fn build(self) -> Result<TimeRange, String> {
        let mut times = Vec::new();
        for t in &self.times {
            let (a, b) = (minutes(&t.start_time)?, minutes(&t.end_time)?);
            if a >= b {
                return Err(format!(
                    "start_time {:?} must be before end_time {:?}",
                    t.start_time, t.end_time
                ));
            }
            times.push((a, b));
        }
        let named = |names: &'static [&'static str], base: u32| {
            move |s: &str| {
                names
                    .iter()
                    .position(|n| *n == s)
                    .map(|i| i as u32 + base)
                    .or_else(|| {
                        s.parse::<u32>()
                            .ok()
                            .filter(|n| *n >= base && *n < names.len() as u32 + base)
                    })
            }
        };
        let weekdays = self
            .weekdays
            .iter()
            .map(|w| {
                range(w, "weekday", |s| {
                    WEEKDAYS.iter().position(|n| *n == s).map(|i| i as u32)
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let months = self
            .months
            .iter()
            .map(|m| range(m, "month", named(&MONTHS, 1)))
            .collect::<Result<Vec<_>, _>>()?;
        let days_of_month = self
            .days_of_month
            .iter()
            .map(|d| {
                let (a, b) = range(d, "day of month", |s| {
                    s.parse::<i32>()
                        .ok()
                        .filter(|n| *n != 0 && (-31..=31).contains(n))
                })?;
                if (a.signum() == b.signum() && a > b) || (a < 0 && b > 0) {
                    return Err(format!("day of month range {d:?} ends before it starts"));
                }
                Ok((a, b))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let years = self
            .years
            .iter()
            .map(|y| range(y, "year", |s| s.parse::<i32>().ok().filter(|y| *y > 0)))
            .collect::<Result<Vec<_>, _>>()?;
        for (a, b) in &years {
            if a > b {
                return Err(format!("year range {a}:{b} ends before it starts"));
            }
        }
        let location =
            match self.location.as_deref() {
                None | Some("UTC") | Some("") => Tz::UTC,
                Some("Local") => return Err(
                    "location `Local` is not supported: name the time zone (e.g. Europe/Berlin)"
                        .into(),
                ),
                Some(name) => name
                    .parse::<Tz>()
                    .map_err(|_| format!("location {name:?} is not a known time zone"))?,
            };
        Ok(TimeRange {
            times,
            weekdays,
            days_of_month,
            months,
            years,
            location,
        })
    }
}

impl TimeIntervalDoc {
    pub(crate) fn build(self) -> Result<TimeInterval, String> {
        let name = self.name;
        let ranges = self
            .time_intervals
            .into_iter()
            .map(|r| {
                r.build()
                    .map_err(|e| format!("time interval {name:?}: {e}"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TimeInterval { name, ranges })
    }
}

fn within<T: PartialOrd>(v: T, ranges: &[(T, T)]) -> bool {
    ranges.is_empty() || ranges.iter().any(|(a, b)| *a <= v && v <= *b)
}

impl TimeRange {
    fn contains(&self, t: DateTime<Utc>) -> bool {
        let t = self.location.from_utc_datetime(&t.naive_utc());
        let minute = t.hour() * 60 + t.minute();
        if !self.times.is_empty() && !self.times.iter().any(|(a, b)| *a <= minute && minute < *b) {
            return false;
        }
        if !within(t.weekday().num_days_from_sunday(), &self.weekdays)
            || !within(t.month(), &self.months)
            || !within(t.year(), &self.years)
        {
            return false;
        }
        if self.days_of_month.is_empty() {
            return true;
        }
        // Negative days count from the end of this month (-1 = its last day).
        let days_in_month = {
            let (y, m) = if t.month() == 12 {
                (t.year() + 1, 1)
            } else {
                (t.year(), t.month() + 1)
            };
            chrono::NaiveDate::from_ymd_opt(y, m, 1)
                .and_then(|d| d.pred_opt())
                .map_or(31, |d| d.day() as i32)
        };
        let abs = |d: i32| if d < 0 { days_in_month + 1 + d } else { d };
        let day = t.day() as i32;
        self.days_of_month
            .iter()
            .any(|(a, b)| abs(*a) <= day && day <= abs(*b))
    }
}

impl TimeInterval {
    /// Whether `nanos` (since the epoch) falls in this interval.
    pub fn contains(&self, nanos: i64) -> bool {
        let t = DateTime::from_timestamp_nanos(nanos);
        self.ranges.iter().any(|r| r.contains(t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interval(yaml: &str) -> Result<TimeInterval, String> {
        let doc: TimeIntervalDoc = serde_norway::from_str(yaml).map_err(|e| e.to_string())?;
        doc.build()
    }

    fn at(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    #[test]
    fn weekday_evenings_in_a_time_zone() {
        let i = interval(
            "name: evenings\ntime_intervals:\n  - times: [{start_time: '17:00', end_time: '24:00'}]\n    weekdays: ['monday:friday']\n    location: Europe/Berlin\n",
        )
        .unwrap();
        // 2026-11-27 is a Friday; Berlin is UTC+1 in November.
        assert!(i.contains(at("2026-11-27T16:00:00Z")));
        assert!(i.contains(at("2026-11-27T22:59:00Z")));
        assert!(!i.contains(at("2026-11-27T15:59:00Z")));
        // Saturday 17:30 in Berlin.
        assert!(!i.contains(at("2026-11-28T16:30:00Z")));
    }

    #[test]
    fn days_of_month_count_from_the_end_and_months_by_name() {
        assert!(interval("name: all\ntime_intervals: [{days_of_month: ['1:-1']}]").is_ok());
        let i = interval(
            "name: month-end\ntime_intervals:\n  - days_of_month: ['-2:-1']\n    months: ['february', '11:december']\n",
        )
        .unwrap();
        assert!(i.contains(at("2026-02-27T12:00:00Z")));
        assert!(i.contains(at("2026-02-28T12:00:00Z")));
        assert!(!i.contains(at("2026-02-26T12:00:00Z")));
        assert!(i.contains(at("2026-11-30T00:00:00Z")));
        assert!(!i.contains(at("2026-03-31T00:00:00Z")));
    }

    #[test]
    fn bad_intervals_are_refused_by_what_is_wrong() {
        for (yaml, wrong) in [
            (
                "name: a\ntime_intervals: [{times: [{start_time: '25:00', end_time: '26:00'}]}]",
                "25:00",
            ),
            (
                "name: a\ntime_intervals: [{times: [{start_time: '10:00', end_time: '09:00'}]}]",
                "before end_time",
            ),
            ("name: a\ntime_intervals: [{weekdays: [funday]}]", "funday"),
            ("name: a\ntime_intervals: [{months: ['13']}]", "month"),
            (
                "name: a\ntime_intervals: [{days_of_month: ['0']}]",
                "day of month",
            ),
            (
                "name: a\ntime_intervals: [{location: Mars/Olympus}]",
                "Mars/Olympus",
            ),
            (
                "name: a\ntime_intervals: [{years: ['2030:2020']}]",
                "ends before",
            ),
            (
                "name: a\ntime_intervals: [{weekdays: ['friday:monday']}]",
                "ends before",
            ),
            (
                "name: a\ntime_intervals: [{months: ['december:january']}]",
                "ends before",
            ),
            (
                "name: a\ntime_intervals: [{days_of_month: ['-1:5']}]",
                "ends before",
            ),
        ] {
            let e = interval(yaml).unwrap_err();
            assert!(e.contains(wrong), "{yaml}: {e}");
        }
    }
}
