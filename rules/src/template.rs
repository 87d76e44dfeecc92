//! Annotation and label templates in the subset of Go's text/template that
//! Prometheus rule files use: `{{ $labels.host }}`, `{{ $value }}`,
//! `{{ .Labels.host }}`, `{{ .Value }}`, pipes into `humanize`,
//! `humanize1024`, `humanizePercentage`, `humanizeDuration`, `toUpper`,
//! `toLower`, `title`, and `printf "%.2f" $value`.
//!
//! Our own because the Go-template crate (gtmpl 0.7) loops forever on an
//! unterminated action (`{{ $labels.host`), and rule files are user input:
//! here every template is parsed when its file loads, and an error names the
//! column.

use std::collections::BTreeMap;
use std::fmt::Write;

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq)]
enum Part {
    Text(String),
    Action(Pipeline),
}

#[derive(Debug, Clone, PartialEq)]
struct Pipeline {
    /// The first command, then each `| f args` stage (the value before the pipe
    /// is its last argument).
    stages: Vec<Command>,
}

#[derive(Debug, Clone, PartialEq)]
enum Command {
    Operand(Operand),
    Call(Func, Vec<Operand>),
}

#[derive(Debug, Clone, PartialEq)]
enum Operand {
    Value,
    Label(String),
    Labels,
    Str(String),
    Num(f64),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Func {
    Humanize,
    Humanize1024,
    HumanizePercentage,
    HumanizeDuration,
    ToUpper,
    ToLower,
    Title,
    Printf,
}

impl Func {
    fn by_name(name: &str) -> Option<Func> {
        Some(match name {
            "humanize" => Func::Humanize,
            "humanize1024" => Func::Humanize1024,
            "humanizePercentage" => Func::HumanizePercentage,
            "humanizeDuration" => Func::HumanizeDuration,
            "toUpper" => Func::ToUpper,
            "toLower" => Func::ToLower,
            "title" => Func::Title,
            "printf" => Func::Printf,
            _ => return None,
        })
    }
}

/// A template that does not parse: what and at which character (from 1).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("template column {column}: {message}")]
pub struct TemplateError {
    pub column: usize,
    pub message: String,
}

/// What a template is rendered with: the alert's labels and value.
pub struct Data<'a> {
    pub labels: &'a BTreeMap<String, String>,
    pub value: f64,
}

impl Template {
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut parts = Vec::new();
        let mut rest = text;
        let mut offset = 0usize;
        while let Some(open) = rest.find("{{") {
            let mut literal = &rest[..open];
            let mut body_start = open + 2;
            if rest[body_start..].starts_with('-') {
                literal = literal.trim_end();
                body_start += 1;
            }
            let Some(close) = rest[body_start..].find("}}") else {
                return Err(TemplateError {
                    column: char_column(text, offset + open),
                    message: "unclosed action: no '}}' after '{{'".into(),
                });
            };
            let mut body = &rest[body_start..body_start + close];
            let mut after = body_start + close + 2;
            let trim_after =
                body.ends_with('-') && body.len() > 1 && body[..body.len() - 1].ends_with(' ');
            if trim_after {
                body = &body[..body.len() - 1];
            }
            if !literal.is_empty() {
                parts.push(Part::Text(literal.to_string()));
            }
            let column = char_column(text, offset + body_start);
            parts.push(Part::Action(parse_pipeline(body, column)?));
            if trim_after {
                let trimmed = rest[after..].trim_start();
                after = rest.len() - trimmed.len();
            }
            offset += after;
            rest = &rest[after..];
        }
        if rest.contains("}}") {
            return Err(TemplateError {
                column: char_column(text, offset + rest.find("}}").unwrap_or(0)),
                message: "'}}' without '{{'".into(),
            });
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        Ok(Template { parts })
    }

    pub fn render(&self, data: &Data<'_>) -> String {
        let mut out = String::new();
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Action(p) => out.push_str(&p.eval(data).text()),
            }
        }
        out
    }

    /// Whether the template is plain text (nothing to render).
    pub fn is_literal(&self) -> bool {
        self.parts.iter().all(|p| matches!(p, Part::Text(_)))
    }
}

fn char_column(text: &str, byte: usize) -> usize {
    text[..byte.min(text.len())].chars().count() + 1
}

/// Splits an action into words: strings in double quotes or backquotes stay
/// whole, `|` is a word of its own.
fn words(body: &str, column: usize) -> Result<Vec<(String, bool)>, TemplateError> {
    let mut out = Vec::new();
    let mut chars = body.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '|' {
            chars.next();
            out.push(("|".to_string(), false));
        } else if c == '"' || c == '`' {
            chars.next();
            let mut s = String::new();
            let mut closed = false;
            while let Some((_, d)) = chars.next() {
                if d == c {
                    closed = true;
                    break;
                }
                if d == '\\' && c == '"' {
                    match chars.next() {
                        Some((_, 'n')) => s.push('\n'),
                        Some((_, 't')) => s.push('\t'),
                        Some((_, e)) => s.push(e),
                        None => break,
                    }
                } else {
                    s.push(d);
                }
            }
            if !closed {
                return Err(TemplateError {
                    column: column + body[..i].chars().count(),
                    message: "unterminated string".into(),
                });
            }
            out.push((s, true));
        } else {
            let mut s = String::new();
            while let Some(&(_, d)) = chars.peek() {
                if d.is_whitespace() || d == '|' {
                    break;
                }
                s.push(d);
                chars.next();
            }
            out.push((s, false));
        }
    }
    Ok(out)
}

fn parse_pipeline(body: &str, column: usize) -> Result<Pipeline, TemplateError> {
    let err = |message: String| TemplateError { column, message };
    let words = words(body, column)?;
    if words.is_empty() {
        return Err(err("empty action".into()));
    }
    let mut stages = Vec::new();
    for (n, stage) in words.split(|(w, quoted)| w == "|" && !quoted).enumerate() {
        let Some(((head, quoted), args)) = stage.split_first() else {
            return Err(err("empty command in pipeline".into()));
        };
        let func = (!quoted).then(|| Func::by_name(head)).flatten();
        let command = match func {
            Some(f) => {
                let args = args
                    .iter()
                    .map(|(a, q)| operand(a, *q).map_err(&err))
                    .collect::<Result<Vec<_>, _>>()?;
                let given = args.len() + usize::from(n > 0);
                let ok = match f {
                    Func::Printf => given >= 1 && matches!(args.first(), Some(Operand::Str(_))),
                    _ => given == 1,
                };
                if !ok {
                    return Err(err(format!("wrong arguments for {head}")));
                }
                Command::Call(f, args)
            }
            None => {
                if n > 0 {
                    return Err(err(format!("function \"{head}\" not defined")));
                }
                if !args.is_empty() {
                    return Err(err(format!(
                        "\"{head}\" is not a function (known: humanize, humanize1024, \
                         humanizePercentage, humanizeDuration, toUpper, toLower, title, printf)"
                    )));
                }
                Command::Operand(operand(head, *quoted).map_err(err)?)
            }
        };
        stages.push(command);
    }
    Ok(Pipeline { stages })
}

fn operand(word: &str, quoted: bool) -> Result<Operand, String> {
    if quoted {
        return Ok(Operand::Str(word.to_string()));
    }
    match word {
        "$value" | ".Value" => return Ok(Operand::Value),
        "$labels" | ".Labels" => return Ok(Operand::Labels),
        _ => {}
    }
    for prefix in ["$labels.", ".Labels."] {
        if let Some(name) = word.strip_prefix(prefix) {
            if name.is_empty() || name.contains('.') {
                return Err(format!("bad label reference {word}"));
            }
            return Ok(Operand::Label(name.to_string()));
        }
    }
    if let Ok(n) = word.parse::<f64>() {
        return Ok(Operand::Num(n));
    }
    Err(format!(
        "unknown {word} (use $labels.NAME, $value, .Labels.NAME or .Value)"
    ))
}

/// A value inside a pipeline.
#[derive(Debug, Clone)]
enum Val {
    Num(f64),
    Str(String),
}

impl Val {
    fn text(&self) -> String {
        match self {
            Val::Num(n) => format_float(*n),
            Val::Str(s) => s.clone(),
        }
    }

    fn number(&self) -> f64 {
        match self {
            Val::Num(n) => *n,
            Val::Str(s) => s.trim().parse().unwrap_or(f64::NAN),
        }
    }
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, as Prometheus's API writes
/// values: `9.5e+01`, `NaN`, `+Inf`.
pub fn go_exponent(v: f64) -> String {
    if !v.is_finite() {
        return format_float(v);
    }
    let s = format!("{v:e}");
    let (mantissa, exp) = s.split_once('e').unwrap_or((&s, "0"));
    let (sign, digits) = match exp.strip_prefix('-') {
        Some(d) => ('-', d),
        None => ('+', exp),
    };
    format!("{mantissa}e{sign}{digits:0>2}")
}

/// Go's `%v` of a float64 (`strconv.FormatFloat(v, 'g', -1, 64)`-like).
fn format_float(v: f64) -> String {
    if v.is_nan() {
        return "NaN".into();
    }
    if v.is_infinite() {
        return if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        };
    }
    let a = v.abs();
    if a != 0.0 && !(1e-4..1e21).contains(&a) {
        // Go writes e+06 where Rust writes e6.
        go_exponent(v)
    } else {
        format!("{v}")
    }
}

impl Pipeline {
    fn eval(&self, data: &Data<'_>) -> Val {
        let mut piped: Option<Val> = None;
        for stage in &self.stages {
            let v = match stage {
                Command::Operand(o) => o.eval(data),
                Command::Call(f, args) => {
                    let mut vals: Vec<Val> = args.iter().map(|a| a.eval(data)).collect();
                    vals.extend(piped.take());
                    call(*f, &vals)
                }
            };
            piped = Some(v);
        }
        piped.unwrap_or(Val::Str(String::new()))
    }
}

impl Operand {
    fn eval(&self, data: &Data<'_>) -> Val {
        match self {
            Operand::Value => Val::Num(data.value),
            // A missing label renders empty, as Prometheus's missingkey=zero.
            Operand::Label(name) => Val::Str(data.labels.get(name).cloned().unwrap_or_default()),
            Operand::Labels => Val::Str(
                data.labels
                    .iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect::<Vec<_>>()
                    .join(" "),
            )
            .map_labels(),
            Operand::Str(s) => Val::Str(s.clone()),
            Operand::Num(n) => Val::Num(*n),
        }
    }
}

impl Val {
    /// Go prints a map as `map[k:v k2:v2]`.
    fn map_labels(self) -> Val {
        match self {
            Val::Str(s) => Val::Str(format!("map[{s}]")),
            v => v,
        }
    }
}

fn call(f: Func, args: &[Val]) -> Val {
    let first = || args.first().cloned().unwrap_or(Val::Num(f64::NAN));
    match f {
        Func::Humanize => Val::Str(humanize(first().number(), 1000.0)),
        Func::Humanize1024 => Val::Str(humanize(first().number(), 1024.0)),
        Func::HumanizePercentage => Val::Str(format!("{}%", sig4(first().number() * 100.0))),
        Func::HumanizeDuration => Val::Str(humanize_duration(first().number())),
        Func::ToUpper => Val::Str(first().text().to_uppercase()),
        Func::ToLower => Val::Str(first().text().to_lowercase()),
        Func::Title => Val::Str(title(&first().text())),
        Func::Printf => Val::Str(printf(args)),
    }
}

/// Four significant digits, as Prometheus's `%.4g`.
fn sig4(v: f64) -> String {
    if !v.is_finite() {
        return format_float(v);
    }
    if v == 0.0 {
        return "0".into();
    }
    let exp = v.abs().log10().floor() as i32;
    if !(-4..4).contains(&exp) {
        let s = format!("{:.3e}", v);
        let (m, e) = s.split_once('e').unwrap_or((&s, "0"));
        let m = trim_zeros(m);
        let e: i32 = e.parse().unwrap_or(0);
        return format!("{m}e{}{:02}", if e < 0 { '-' } else { '+' }, e.abs());
    }
    let decimals = (3 - exp).max(0) as usize;
    trim_zeros(&format!("{v:.decimals$}")).to_string()
}

fn trim_zeros(s: &str) -> &str {
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.')
    } else {
        s
    }
}

/// Prometheus's `humanize` (SI prefixes) and `humanize1024` (binary ones).
fn humanize(v: f64, base: f64) -> String {
    if !v.is_finite() || v == 0.0 {
        return sig4(v);
    }
    let (big, small): (&[&str], &[&str]) = if base == 1000.0 {
        (
            &["", "k", "M", "G", "T", "P", "E", "Z", "Y"],
            &["", "m", "u", "n", "p", "f", "a", "z", "y"],
        )
    } else {
        (&["", "ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"], &[""])
    };
    let mut x = v;
    if x.abs() >= 1.0 || small.len() == 1 {
        let mut i = 0;
        while x.abs() >= base && i + 1 < big.len() {
            x /= base;
            i += 1;
        }
        format!("{}{}", sig4(x), big[i])
    } else {
        let mut i = 0;
        while x.abs() < 1.0 && i + 1 < small.len() {
            x *= base;
            i += 1;
        }
        format!("{}{}", sig4(x), small[i])
    }
}

/// Prometheus's `humanizeDuration`: seconds as `1d 2h 3m 4s`.
fn humanize_duration(v: f64) -> String {
    if !v.is_finite() {
        return format_float(v);
    }
    if v.abs() < 1.0 {
        if v == 0.0 {
            return "0s".into();
        }
        return humanize(v, 1000.0) + "s";
    }
    let sign = if v < 0.0 { "-" } else { "" };
    let total = v.abs();
    let secs = total % 60.0;
    let whole = total as u64;
    let (m, h, d) = ((whole / 60) % 60, (whole / 3600) % 24, whole / 86400);
    let mut out = String::from(sign);
    if d > 0 {
        let _ = write!(out, "{d}d ");
    }
    if d > 0 || h > 0 {
        let _ = write!(out, "{h}h ");
    }
    if d > 0 || h > 0 || m > 0 {
        let _ = write!(out, "{m}m ");
    }
    let _ = write!(out, "{}s", sig4(secs));
    out
}

fn title(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut start = true;
    for c in s.chars() {
        if start && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        start = !c.is_alphanumeric();
    }
    out
}

/// `printf` with Go's common verbs: `%s %v %d %f %.Nf %g %e %x %%`.
fn printf(args: &[Val]) -> String {
    let Some(Val::Str(format)) = args.first() else {
        return String::new();
    };
    let mut rest = args[1..].iter();
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut precision: Option<usize> = None;
        if chars.peek() == Some(&'.') {
            chars.next();
            let mut digits = String::new();
            while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
                digits.push(*d);
                chars.next();
            }
            // Go accepts any precision; Rust's formatter panics past 65535.
            precision = digits.parse::<usize>().ok().map(|p| p.min(64));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = rest.next() else {
            let _ = write!(out, "%!{verb}(MISSING)");
            continue;
        };
        match verb {
            's' | 'v' => out.push_str(&arg.text()),
            'd' => {
                let n = arg.number();
                if n.is_finite() {
                    let _ = write!(out, "{}", n.trunc() as i64);
                } else {
                    out.push_str(&format_float(n));
                }
            }
            'f' | 'F' => {
                let p = precision.unwrap_or(6);
                let _ = write!(out, "{:.p$}", arg.number());
            }
            'e' => {
                let p = precision.unwrap_or(6);
                let _ = write!(out, "{:.p$e}", arg.number());
            }
            'g' => out.push_str(&match precision {
                Some(4) => sig4(arg.number()),
                _ => format_float(arg.number()),
            }),
            'x' => {
                let n = arg.number();
                let _ = write!(out, "{:x}", n as i64);
            }
            'q' => {
                let _ = write!(out, "{:?}", arg.text());
            }
            other => {
                let _ = write!(out, "%!{other}({})", arg.text());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, value: f64) -> String {
        let labels = BTreeMap::from([
            ("host".to_string(), "web-1".to_string()),
            ("job".to_string(), "node".to_string()),
        ]);
        Template::parse(t)
            .unwrap_or_else(|e| panic!("{t}: {e}"))
            .render(&Data {
                labels: &labels,
                value,
            })
    }

    #[test]
    fn renders_what_prometheus_rules_use() {
        assert_eq!(
            render("CPU {{ $value }} on {{ $labels.host }}", 93.5),
            "CPU 93.5 on web-1"
        );
        assert_eq!(render("{{ .Labels.job }}/{{ .Value }}", 2.0), "node/2");
        assert_eq!(render("{{ $value | humanize }}", 1_234_567.0), "1.235M");
        assert_eq!(render("{{ $value | humanize }}", 0.0012), "1.2m");
        assert_eq!(render("{{ humanize1024 $value }}", 1_073_741_824.0), "1Gi");
        assert_eq!(
            render("{{ $value | humanizePercentage }}", 0.1234),
            "12.34%"
        );
        assert_eq!(
            render("{{ $value | humanizeDuration }}", 93784.0),
            "1d 2h 3m 4s"
        );
        assert_eq!(render("{{ printf \"%.2f\" $value }}", 1.23456), "1.23");
        assert_eq!(render("{{ $labels.host | toUpper }}", 0.0), "WEB-1");
        assert_eq!(render("{{ \"hello world\" | title }}", 0.0), "Hello World");
        assert_eq!(render("{{ $labels.missing }}!", 0.0), "!");
        assert_eq!(render("a {{- $value -}} b", 1.0), "a1b");
        assert_eq!(render("{{ $value }}", 1e21), "1e+21");
        assert_eq!(render("{{ $value }}", f64::NAN), "NaN");
        assert_eq!(render("{{ printf \"%.70000f\" $value }}", 1.0).len(), 66);
    }

    #[test]
    fn bad_templates_are_errors_with_a_column() {
        for (t, col, what) in [
            ("{{ $labels.host ", 1, "unclosed"),
            ("x {{ nosuch $value }}", 5, "not a function"),
            ("{{ $value | nosuch }}", 3, "not defined"),
            ("{{ }}", 3, "empty"),
            ("{{ $lables.host }}", 3, "unknown"),
            ("{{ printf $value }}", 3, "wrong arguments"),
            ("{{ \"abc }}", 4, "unterminated"),
            ("a }} b", 3, "without"),
        ] {
            let e = Template::parse(t).expect_err(t);
            assert!(e.message.contains(what), "{t}: {e}");
            assert_eq!(e.column, col, "{t}: {e}");
        }
    }

    #[test]
    fn hostile_templates_do_not_hang_or_panic() {
        for t in [
            "{{",
            "}}",
            "{{-",
            "{{- -}}",
            "{{{{}}}}",
            "{{ \"\\",
            "ü{{ é",
            "{{ | }}",
            "{{ $value | }}",
        ] {
            let _ = Template::parse(t);
        }
        let long = "{{ $value }}".repeat(10_000);
        assert_eq!(render(&long, 1.0).len(), 10_000);
    }
}
