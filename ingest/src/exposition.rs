//! The Prometheus text exposition format (0.0.4) and OpenMetrics 1.0 text,
//! as scrape targets serve them: a streaming parser over the body that
//! borrows names and label values from it (copying only a value with
//! escapes) and reports each bad line by number and reason instead of
//! failing the whole body, as Prometheus does for the lines it can read.
//!
//! Handled: `# HELP`, `# TYPE` (and OpenMetrics' `# UNIT`, `# EOF`),
//! escapes in label values (`\\`, `\"`, `\n`), trailing commas, `NaN`,
//! `+Inf`/`-Inf`, integer millisecond timestamps (text) and float second
//! timestamps (OpenMetrics), exemplars (` # {...} v [t]`, ignored), and
//! duplicate series (the first is kept, the rest are errors).

use std::borrow::Cow;
use std::collections::HashSet;

use vigil_model::LineError;

/// What a `# TYPE` line says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
    GaugeHistogram,
    Summary,
    Info,
    StateSet,
    Unknown,
}

impl MetricType {
    fn parse(s: &str) -> Option<MetricType> {
        Some(match s {
            "counter" => MetricType::Counter,
            "gauge" => MetricType::Gauge,
            "histogram" => MetricType::Histogram,
            "gaugehistogram" => MetricType::GaugeHistogram,
            "summary" => MetricType::Summary,
            "info" => MetricType::Info,
            "stateset" => MetricType::StateSet,
            "untyped" | "unknown" => MetricType::Unknown,
            _ => return None,
        })
    }
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpositionSample<'a> {
    pub name: &'a str,
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// Milliseconds since the epoch, when the line has one.
    pub timestamp_ms: Option<i64>,
}

/// What a body holds: its samples in order, the declared types, and the
/// lines that could not be read.
#[derive(Debug, Default)]
pub struct Exposition<'a> {
    pub samples: Vec<ExpositionSample<'a>>,
    pub types: Vec<(&'a str, MetricType)>,
    pub errors: Vec<LineError>,
    pub error_count: usize,
    /// An OpenMetrics body ended with `# EOF` (one without was cut short).
    pub eof: bool,
}

/// The first this many errors are kept with their reasons.
const MAX_ERRORS: usize = 100;

/// Parses a whole body. `openmetrics` selects OpenMetrics' rules (seconds
/// in timestamps, `# EOF` required at the end).
pub fn parse_exposition(text: &str, openmetrics: bool) -> Exposition<'_> {
    let mut out = Exposition::default();
    let mut seen: HashSet<(&str, Labels<'_>)> = HashSet::new();
    let mut eof = false;
    for (i, line) in text.split('\n').enumerate() {
        let number = i + 1;
        let line = line.strip_suffix('\r').unwrap_or(line);
        if eof {
            if !line.trim().is_empty() {
                reject(&mut out, number, "content after # EOF".into());
            }
            continue;
        }
        let trimmed = line.trim_start();
        if trimmed.is_empty() {
            continue;
        }
        if let Some(comment) = trimmed.strip_prefix('#') {
            match comment_line(comment) {
                Ok(Comment::Type(name, t)) => out.types.push((name, t)),
                Ok(Comment::Eof) if openmetrics => eof = true,
                Ok(Comment::Eof) => {}
                Ok(Comment::Other) => {}
                Err(e) => reject(&mut out, number, e),
            }
            continue;
        }
        match sample_line(trimmed, openmetrics) {
            Ok(mut s) => {
                // Label order does not make a different series.
                let mut key = s.labels.clone();
                key.sort();
                if !seen.insert((s.name, key)) {
                    reject(
                        &mut out,
                        number,
                        format!("duplicate series {} (the first is kept)", s.name),
                    );
                    continue;
                }
                s.labels.shrink_to_fit();
                out.samples.push(s);
            }
            Err(e) => reject(&mut out, number, e),
        }
    }
    out.eof = eof;
    if openmetrics && !eof {
        let lines = text.split('\n').count();
        reject(
            &mut out,
            lines,
            "OpenMetrics body without # EOF (truncated?)".into(),
        );
    }
    out
}

fn reject(out: &mut Exposition<'_>, line: usize, reason: String) {
    out.error_count += 1;
    if out.errors.len() < MAX_ERRORS {
        out.errors.push(LineError { line, reason });
    }
}

enum Comment<'a> {
    Type(&'a str, MetricType),
    Eof,
    Other,
}

fn comment_line(rest: &str) -> Result<Comment<'_>, String> {
    let rest = rest.trim_start();
    if rest == "EOF" {
        return Ok(Comment::Eof);
    }
    let Some(decl) = rest.strip_prefix("TYPE") else {
        // HELP, UNIT and free comments carry nothing a table needs.
        return Ok(Comment::Other);
    };
    if !decl.starts_with([' ', '\t']) {
        return Ok(Comment::Other);
    }
    let mut parts = decl.split_whitespace();
    let (Some(name), Some(t), None) = (parts.next(), parts.next(), parts.next()) else {
        return Err("# TYPE needs a metric name and a type".into());
    };
    if !valid_name(name) {
        return Err(format!("# TYPE: {name:?} is not a metric name"));
    }
    let t = MetricType::parse(t).ok_or_else(|| format!("# TYPE {name}: unknown type {t:?}"))?;
    Ok(Comment::Type(name, t))
}

fn valid_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// `name{labels} value [timestamp] [# exemplar]`.
fn sample_line(line: &str, openmetrics: bool) -> Result<ExpositionSample<'_>, String> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_ascii_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if !valid_name(name) {
        return Err(format!(
            "{:?} is not a metric name",
            name.chars().take(200).collect::<String>()
        ));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let (l, after) = label_set(after).map_err(|e| format!("{name}: {e}"))?;
        labels = l;
        rest = after;
    }
    // An exemplar (OpenMetrics) follows " # ": not stored.
    let rest = match rest.find(" #") {
        Some(i) => &rest[..i],
        None => rest,
    };
    let mut parts = rest.split_ascii_whitespace();
    let value = parts.next().ok_or_else(|| format!("{name}: no value"))?;
    let value =
        parse_value(value).ok_or_else(|| format!("{name}: value {value:?} is not a number"))?;
    let timestamp_ms = match parts.next() {
        None => None,
        Some(t) if openmetrics => {
            let secs: f64 = t
                .parse()
                .ok()
                .filter(|v: &f64| v.is_finite())
                .ok_or_else(|| format!("{name}: timestamp {t:?} is not a number of seconds"))?;
            Some((secs * 1000.0).round() as i64)
        }
        Some(t) => Some(
            t.parse::<i64>()
                .map_err(|_| format!("{name}: timestamp {t:?} is not milliseconds"))?,
        ),
    };
    if let Some(extra) = parts.next() {
        return Err(format!("{name}: unexpected {extra:?} after the timestamp"));
    }
    Ok(ExpositionSample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ => {
            // Rust takes "infinity" and "nan" spelled other ways; Prometheus
            // does not: only digits, signs, dots and exponents here.
            if !s
                .bytes()
                .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E' | b'_'))
                || s.contains('_')
            {
                return None;
            }
            s.parse().ok()
        }
    }
}

type Labels<'a> = Vec<(&'a str, Cow<'a, str>)>;

/// The labels after `{` up to `}`; and what follows the `}`.
fn label_set(mut s: &str) -> Result<(Labels<'_>, &str), String> {
    let mut labels: Labels<'_> = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((labels, after));
        }
        let eq = s.find('=').ok_or("a label without `=`")?;
        let name = s[..eq].trim();
        if !vigil_model::is_label_name(name) {
            return Err(format!(
                "{:?} is not a label name",
                name.chars().take(200).collect::<String>()
            ));
        }
        if labels.iter().any(|(n, _)| *n == name) {
            return Err(format!("label {name} appears twice"));
        }
        let after = s[eq + 1..].trim_start();
        let body = after
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: the value is not quoted"))?;
        let (value, used) =
            quoted(body).ok_or_else(|| format!("label {name}: unterminated value"))?;
        // An empty value is no label (as in Prometheus): `a{x=""}` is `a`.
        if !value.is_empty() {
            labels.push((name, value));
        }
        s = body[used..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label {name}: expected `,` or `}}` after the value"
            ));
        }
    }
}

/// A quoted value's text (without the quotes, escapes resolved) and how
/// many bytes of `s` it used (through the closing quote).
fn quoted(s: &str) -> Option<(Cow<'_, str>, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    let mut owned: Option<String> = None;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let v = match owned {
                    Some(o) => Cow::Owned(o),
                    None => Cow::Borrowed(&s[..i]),
                };
                return Some((v, i + 1));
            }
            b'\\' => {
                let o = owned.get_or_insert_with(|| s[..i].to_string());
                let next = *bytes.get(i + 1)?;
                match next {
                    b'n' => o.push('\n'),
                    b'\\' => o.push('\\'),
                    b'"' => o.push('"'),
                    // Unknown escapes are kept as written (Prometheus does).
                    _ => {
                        o.push('\\');
                        let c = s[i + 1..].chars().next()?;
                        o.push(c);
                        i += 1 + c.len_utf8();
                        continue;
                    }
                }
                i += 2;
            }
            _ => {
                let c = s[i..].chars().next()?;
                if let Some(o) = owned.as_mut() {
                    o.push(c);
                }
                i += c.len_utf8();
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODE: &str = r#"# HELP node_cpu_seconds_total Seconds the CPUs spent in each mode.
# TYPE node_cpu_seconds_total counter
node_cpu_seconds_total{cpu="0",mode="idle"} 2.87048e+06
node_cpu_seconds_total{cpu="0",mode="user",} 1234.5 1700000000000
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{le="0.1"} 3
http_request_duration_seconds_bucket{le="+Inf"} 7
http_request_duration_seconds_sum 1.5
http_request_duration_seconds_count 7
weird{path="C:\\dir\\n",msg="say \"hi\"\nnext"} NaN
neg -Inf
untyped_without_type 42
"#;

    #[test]
    fn reads_what_exporters_serve() {
        let e = parse_exposition(NODE, false);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        assert_eq!(e.samples.len(), 9);
        let s = &e.samples[1];
        assert_eq!(s.name, "node_cpu_seconds_total");
        assert_eq!(s.labels, [("cpu", "0".into()), ("mode", "user".into())]);
        assert_eq!(s.value, 1234.5);
        assert_eq!(s.timestamp_ms, Some(1_700_000_000_000));
        assert_eq!(e.samples[0].value, 2_870_480.0);
        assert_eq!(e.samples[3].value, 7.0);
        assert_eq!(e.samples[3].labels[0].1, "+Inf");
        let w = &e.samples[6];
        assert_eq!(w.labels[0].1, "C:\\dir\\n");
        assert_eq!(w.labels[1].1, "say \"hi\"\nnext");
        assert!(w.value.is_nan());
        assert_eq!(e.samples[7].value, f64::NEG_INFINITY);
        assert_eq!(
            e.types,
            [
                ("node_cpu_seconds_total", MetricType::Counter),
                ("http_request_duration_seconds", MetricType::Histogram)
            ]
        );
        // Borrowed from the body unless escapes had to be resolved.
        assert!(matches!(e.samples[0].labels[0].1, Cow::Borrowed(_)));
        assert!(matches!(w.labels[0].1, Cow::Owned(_)));
    }

    #[test]
    fn openmetrics_seconds_exemplars_and_eof() {
        let text = "# TYPE requests counter\n# UNIT requests requests\nrequests_total{code=\"200\"} 10 1700000000.5 # {trace_id=\"abc\"} 1 1700000000.1\nrequests_created{code=\"200\"} 1.7e9\n# EOF\n";
        let e = parse_exposition(text, true);
        assert!(e.errors.is_empty(), "{:?}", e.errors);
        assert_eq!(e.samples[0].timestamp_ms, Some(1_700_000_000_500));
        assert_eq!(e.samples[0].value, 10.0);
        let cut = parse_exposition("# TYPE a gauge\na 1\n", true);
        assert!(cut.errors[0].reason.contains("# EOF"));
        let after = parse_exposition("a 1\n# EOF\nb 2\n", true);
        assert_eq!(after.samples.len(), 1);
        assert!(after.errors[0].reason.contains("after # EOF"));
    }

    #[test]
    fn bad_lines_are_reported_by_number_and_the_rest_kept() {
        let text = "ok 1\n1bad 2\nnoval\nq{a=\"x} 1\nq{a=x} 1\nq{a=\"1\",a=\"2\"} 1\nv 1 2 3\nv2 abc\nok 2\nt 1 12.5\n# TYPE x nonsense\ninf infinity\n";
        let e = parse_exposition(text, false);
        let lines: Vec<usize> = e.errors.iter().map(|x| x.line).collect();
        assert_eq!(
            lines,
            [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            "{:?}",
            e.errors
        );
        assert_eq!(e.samples.len(), 1);
        assert!(
            e.errors[7].reason.contains("duplicate"),
            "{:?}",
            e.errors[7]
        );
        assert!(e.errors[5].reason.contains("after the timestamp"));
    }

    #[test]
    fn hostile_bodies_do_not_panic() {
        for text in [
            "",
            "{",
            "a{",
            "a{\"",
            "a{b=\"\\",
            "a{b=\"\\\u{e9}\"} 1",
            "#",
            "# TYPE",
            "a{b=\"é\",} 1",
            "a 1 99999999999999999999999",
            "a{,} 1",
            "\u{0}\u{0}",
            "a 1e999",
        ] {
            let _ = parse_exposition(text, false);
            let _ = parse_exposition(text, true);
        }
        let e = parse_exposition("a{b=\"\\\u{e9}\"} 1", false);
        assert_eq!(e.samples[0].labels[0].1, "\\\u{e9}");
    }
}
