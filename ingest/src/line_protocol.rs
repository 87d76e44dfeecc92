use std::borrow::Cow;
use std::str::FromStr;

use influxdb_line_protocol::{EscapedStr, FieldValue as LpValue};
use vigil_model::{FieldValue, LineError, Point};

/// Unit of the timestamps in a write request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    #[default]
    Nanosecond,
    Microsecond,
    Millisecond,
    Second,
    Minute,
    Hour,
}

#[derive(Debug, thiserror::Error)]
#[error("unknown precision '{0}': use ns, us, ms or s")]
pub struct PrecisionError(pub String);

impl FromStr for Precision {
    type Err = PrecisionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "ns" | "n" | "nanosecond" | "" => Precision::Nanosecond,
            "us" | "u" | "µs" | "microsecond" => Precision::Microsecond,
            "ms" | "millisecond" => Precision::Millisecond,
            "s" | "second" => Precision::Second,
            "m" | "minute" => Precision::Minute,
            "h" | "hour" => Precision::Hour,
            _ => return Err(PrecisionError(s.to_string())),
        })
    }
}

impl Precision {
    fn nanos(self) -> i64 {
        match self {
            Precision::Nanosecond => 1,
            Precision::Microsecond => 1_000,
            Precision::Millisecond => 1_000_000,
            Precision::Second => 1_000_000_000,
            Precision::Minute => 60_000_000_000,
            Precision::Hour => 3_600_000_000_000,
        }
    }
}

/// The points of a body (with their line numbers) and the lines that did not parse.
#[derive(Debug, Default)]
pub struct ParsedBody<'a> {
    pub points: Vec<(usize, Point<'a>)>,
    /// The first rejected lines (up to the limit's `max_errors`), in line order.
    pub errors: Vec<LineError>,
    /// How many lines were rejected in all.
    pub error_count: usize,
}

impl ParsedBody<'_> {
    pub(crate) fn reject(
        &mut self,
        max_errors: usize,
        line: usize,
        reason: impl FnOnce() -> String,
    ) {
        self.error_count += 1;
        if self.errors.len() < max_errors {
            self.errors.push(LineError {
                line,
                reason: reason(),
            });
        }
    }
}

/// Per-line limits of a write: a line over any of them is rejected on its own, with
/// the limit named in its error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineLimits {
    /// Longest line, in bytes.
    pub max_line_bytes: usize,
    /// Most tags in one line (labels of one remote-write series).
    pub max_tags_per_line: usize,
    /// Most fields in one line.
    pub max_fields_per_line: usize,
    /// Longest tag (label) value, in bytes.
    pub max_tag_value_bytes: usize,
    /// Reasons kept for this many rejected lines; the others are only counted.
    pub max_errors: usize,
}

impl LineLimits {
    /// No limits: for tools reading trusted files and for tests.
    pub fn unlimited() -> Self {
        Self {
            max_line_bytes: usize::MAX,
            max_tags_per_line: usize::MAX,
            max_fields_per_line: usize::MAX,
            max_tag_value_bytes: usize::MAX,
            max_errors: usize::MAX,
        }
    }

    /// The reason a point breaks a limit, if it does.
    pub fn check(&self, p: &Point<'_>) -> Option<String> {
        if p.tags.len() > self.max_tags_per_line {
            return Some(format!(
                "{} tags, over the limit of {} per line (write.max_tags_per_line)",
                p.tags.len(),
                self.max_tags_per_line
            ));
        }
        if p.fields.len() > self.max_fields_per_line {
            return Some(format!(
                "{} fields, over the limit of {} per line (write.max_fields_per_line)",
                p.fields.len(),
                self.max_fields_per_line
            ));
        }
        if let Some((k, v)) = p
            .tags
            .iter()
            .find(|(_, v)| v.len() > self.max_tag_value_bytes)
        {
            return Some(format!(
                "value of tag '{}' is {} bytes, over the limit of {} (write.max_tag_value_bytes)",
                truncate_chars(k, 64),
                v.len(),
                self.max_tag_value_bytes
            ));
        }
        None
    }
}

impl Default for LineLimits {
    fn default() -> Self {
        Self {
            max_line_bytes: 1 << 20,
            max_tags_per_line: 250,
            max_fields_per_line: 500,
            max_tag_value_bytes: 16 << 10,
            max_errors: 100,
        }
    }
}

pub(crate) fn truncate_chars(s: &str, n: usize) -> String {
    match s.char_indices().nth(n) {
        Some((i, _)) => format!("{}...", &s[..i]),
        None => s.to_string(),
    }
}

fn cow(s: EscapedStr<'_>) -> Cow<'_, str> {
    match s {
        EscapedStr::SingleSlice(s) => Cow::Borrowed(s),
        EscapedStr::CopiedValue(s) => Cow::Owned(s),
    }
}

/// Trailing blanks (and the `\r` of CRLF bodies) are not part of a line, unless the
/// first of them is escaped.
fn trim_end(line: &str) -> &str {
    let t = line.trim_end_matches([' ', '\t', '\r']);
    if t.ends_with('\\') && t.len() < line.len() {
        &line[..t.len() + 1]
    } else {
        t
    }
}

/// Parses an InfluxDB line protocol body. Lines without a timestamp get
/// `default_time` (ns). Each bad line is reported with its 1-based line number and
/// does not affect the others.
pub fn parse_line_protocol(body: &str, precision: Precision, default_time: i64) -> ParsedBody<'_> {
    parse_line_protocol_limited(body, precision, default_time, &LineLimits::unlimited())
}

/// [`parse_line_protocol`] with per-line limits. A key given twice in one line (two
/// tags, two fields, or a tag and a field of one name) rejects the line: which value
/// was meant cannot be known, and keeping either would store something not written.
pub fn parse_line_protocol_limited<'a>(
    body: &'a str,
    precision: Precision,
    default_time: i64,
    limits: &LineLimits,
) -> ParsedBody<'a> {
    let mut out = ParsedBody::default();
    let max_errors = limits.max_errors;
    let base = body.as_ptr() as usize;
    let mut line_no = 1usize;
    let mut counted_to = 0usize;
    for raw in influxdb_line_protocol::split_lines(body) {
        let start = raw.as_ptr() as usize - base;
        line_no += body.as_bytes()[counted_to..start]
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        counted_to = start;
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if raw.len() > limits.max_line_bytes {
            out.reject(max_errors, line_no, || {
                format!(
                    "line is {} bytes, over the limit of {} (write.max_line_bytes)",
                    raw.len(),
                    limits.max_line_bytes
                )
            });
            continue;
        }
        let parsed = match influxdb_line_protocol::parse_lines(trim_end(raw)).next() {
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                out.reject(max_errors, line_no, || e.to_string());
                continue;
            }
            None => continue,
        };
        let time = match parsed.timestamp {
            None => default_time,
            Some(t) => match t.checked_mul(precision.nanos()) {
                Some(t) => t,
                None => {
                    out.reject(max_errors, line_no, || {
                        format!("timestamp {t} is out of range for precision {precision:?}")
                    });
                    continue;
                }
            },
        };
        let tags = parsed
            .series
            .tag_set
            .map(|ts| ts.into_iter().map(|(k, v)| (cow(k), cow(v))).collect())
            .unwrap_or_default();
        let fields: Vec<(Cow<'_, str>, FieldValue<'_>)> = parsed
            .field_set
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    LpValue::F64(x) => FieldValue::F64(x),
                    LpValue::I64(x) => FieldValue::I64(x),
                    LpValue::U64(x) => FieldValue::U64(x),
                    LpValue::Boolean(x) => FieldValue::Bool(x),
                    LpValue::String(s) => FieldValue::Str(cow(s)),
                };
                (cow(k), v)
            })
            .collect();
        let point = Point {
            table: cow(parsed.series.measurement),
            tags,
            fields,
            time,
        };
        if let Some(reason) = limits.check(&point).or_else(|| repeated_key(&point)) {
            out.reject(max_errors, line_no, || reason);
            continue;
        }
        out.points.push((line_no, point));
    }
    out
}

/// Why a point names one key twice, if it does; keys are few per line (bounded by the
/// limits), so comparing each with those before it is cheap.
pub(crate) fn repeated_key(p: &Point<'_>) -> Option<String> {
    for (i, (k, _)) in p.tags.iter().enumerate() {
        if p.tags[..i].iter().any(|(e, _)| e == k) {
            return Some(format!(
                "tag '{}' is given more than once",
                truncate_chars(k, 64)
            ));
        }
    }
    for (i, (k, _)) in p.fields.iter().enumerate() {
        if p.fields[..i].iter().any(|(e, _)| e == k) {
            return Some(format!(
                "field '{}' is given more than once",
                truncate_chars(k, 64)
            ));
        }
        if p.tags.iter().any(|(t, _)| t == k) {
            return Some(format!(
                "'{}' is given as both a tag and a field",
                truncate_chars(k, 64)
            ));
        }
    }
    None
}

/// Writes points as line protocol with nanosecond timestamps, the canonical form
/// vigil forwards (collector mode): every point keeps its resolved time, so a line
/// that arrived without a timestamp keeps its arrival time downstream.
pub fn encode_line_protocol<'a>(points: impl IntoIterator<Item = &'a Point<'a>>) -> Vec<u8> {
    use influxdb_line_protocol::builder::LineProtocolBuilder;
    let mut b = LineProtocolBuilder::new();
    for p in points {
        let mut m = b.measurement(&p.table);
        for (k, v) in &p.tags {
            m = m.tag(k, v);
        }
        let mut fields = p.fields.iter();
        let Some((k, v)) = fields.next() else {
            // A parsed point always has a field; keep the builder usable regardless.
            b = m.field("", false).timestamp(p.time).close_line();
            continue;
        };
        let mut f = match v {
            FieldValue::F64(x) => m.field(k, *x),
            FieldValue::I64(x) => m.field(k, *x),
            FieldValue::U64(x) => m.field(k, *x),
            FieldValue::Bool(x) => m.field(k, *x),
            FieldValue::Str(x) => m.field(k, x.as_ref()),
        };
        for (k, v) in fields {
            f = match v {
                FieldValue::F64(x) => f.field(k, *x),
                FieldValue::I64(x) => f.field(k, *x),
                FieldValue::U64(x) => f.field(k, *x),
                FieldValue::Bool(x) => f.field(k, *x),
                FieldValue::Str(x) => f.field(k, x.as_ref()),
            };
        }
        b = f.timestamp(p.time).close_line();
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_syntax() {
        let body = "cpu,host=a\\ b,region=us\\,west usage=1.5,count=3i,big=18446744073709551615u,ok=true,msg=\"hi \\\"there\\\"\" 1700000000\n\
                    \n# a comment\n\
                    my\\ measure,t=x f=1 \n\
                    bad line here\n\
                    mem free=2i 5";
        let p = parse_line_protocol(body, Precision::Second, 99);
        assert_eq!(p.points.len(), 3, "{:?}", p.errors);
        let (line, cpu) = &p.points[0];
        assert_eq!(*line, 1);
        assert_eq!(cpu.table, "cpu");
        assert_eq!(cpu.tags[0], ("host".into(), "a b".into()));
        assert_eq!(cpu.tags[1], ("region".into(), "us,west".into()));
        assert_eq!(cpu.time, 1_700_000_000_000_000_000);
        assert_eq!(cpu.fields[0], ("usage".into(), FieldValue::F64(1.5)));
        assert_eq!(cpu.fields[1], ("count".into(), FieldValue::I64(3)));
        assert_eq!(cpu.fields[2], ("big".into(), FieldValue::U64(u64::MAX)));
        assert_eq!(cpu.fields[3], ("ok".into(), FieldValue::Bool(true)));
        assert_eq!(
            cpu.fields[4],
            ("msg".into(), FieldValue::Str("hi \"there\"".into()))
        );
        assert_eq!(p.points[1].0, 4);
        assert_eq!(p.points[1].1.table, "my measure");
        assert_eq!(p.points[1].1.time, 99, "no timestamp: default time");
        assert_eq!(p.points[2].0, 6);
        assert_eq!(p.points[2].1.time, 5_000_000_000);
        assert_eq!(p.errors.len(), 1);
        assert_eq!(p.errors[0].line, 5);
    }

    #[test]
    fn repeated_keys_reject_the_line_and_overflow() {
        let p = parse_line_protocol(
            "m f=1,f=2 1\nm f=1 9223372036854775807\nm,a=1,a=2 f=1 1\nm,a=1 a=2 1\nm,a=1 f=1 1",
            Precision::Millisecond,
            0,
        );
        let lines: Vec<usize> = p.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4], "{:?}", p.errors);
        assert!(p.errors[0]
            .reason
            .contains("field 'f' is given more than once"));
        assert!(p.errors[1].reason.contains("out of range"));
        assert!(p.errors[2]
            .reason
            .contains("tag 'a' is given more than once"));
        assert!(p.errors[3].reason.contains("both a tag and a field"));
        assert_eq!(p.points.len(), 1);
        assert_eq!(p.points[0].0, 5);
    }

    #[test]
    fn limits_reject_lines_and_cap_the_error_list() {
        let limits = LineLimits {
            max_line_bytes: 40,
            max_tags_per_line: 2,
            max_fields_per_line: 2,
            max_tag_value_bytes: 3,
            max_errors: 3,
        };
        let long = format!("m f=\"{}\" 1", "x".repeat(50));
        let body = format!(
            "{long}\nm,a=1,b=2,c=3 f=1 1\nm f=1,g=2,h=3 1\nm,a=abcd f=1 1\nm,a=abc f=1 1\nbad"
        );
        let p = parse_line_protocol_limited(&body, Precision::Nanosecond, 0, &limits);
        assert_eq!(p.error_count, 5);
        assert_eq!(p.errors.len(), 3, "only the first reasons are kept");
        assert!(
            p.errors[0].reason.contains("write.max_line_bytes"),
            "{:?}",
            p.errors
        );
        assert!(p.errors[1].reason.contains("write.max_tags_per_line"));
        assert!(p.errors[2].reason.contains("write.max_fields_per_line"));
        assert_eq!(p.points.len(), 1);
        assert_eq!(p.points[0].0, 5);
    }

    #[test]
    fn encoded_points_parse_back_identically() {
        let body = "cpu,host=a\\ b,region=us\\,west usage=1.5,count=3i,big=18446744073709551615u,ok=true,msg=\"hi \\\"there\\\" \\\\\" 1700000000\n\
                    my\\ measure,t=x\\=y f=0.1,g=-1e-300,h=1e300\n";
        let p = parse_line_protocol(body, Precision::Second, 99);
        assert!(p.errors.is_empty(), "{:?}", p.errors);
        let encoded = encode_line_protocol(p.points.iter().map(|(_, p)| p));
        let text = String::from_utf8(encoded).unwrap();
        let again = parse_line_protocol(&text, Precision::Nanosecond, 0);
        assert!(again.errors.is_empty(), "{text}: {:?}", again.errors);
        let a: Vec<_> = p.points.iter().map(|(_, p)| p.clone()).collect();
        let b: Vec<_> = again.points.iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(a, b, "{text}");
        assert_eq!(b[1].time, 99, "default time kept");
    }

    #[test]
    fn precision_names() {
        assert_eq!("ms".parse::<Precision>().unwrap(), Precision::Millisecond);
        assert_eq!("u".parse::<Precision>().unwrap(), Precision::Microsecond);
        assert!("weeks".parse::<Precision>().is_err());
    }
}
