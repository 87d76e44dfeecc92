//! vigil's data model shared by the ingest front ends and the storage engine: the
//! point a parser produces and the per-line error it reports. Kept tiny so parsers
//! (and their fuzz targets) build without Arrow.

use std::borrow::Cow;

/// A Prometheus label name, `[a-zA-Z_][a-zA-Z0-9_]*`: what exposition,
/// relabeling, scrape targets and alert rules all accept.
pub fn is_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// A field value as it arrived, before it is checked against the table schema.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue<'a> {
    F64(f64),
    I64(i64),
    U64(u64),
    Bool(bool),
    Str(Cow<'a, str>),
}

/// One point: measurement (table), tag set, field set and a nanosecond UTC timestamp.
/// Borrowed from the request body where possible so parsing does not copy.
#[derive(Debug, Clone, PartialEq)]
pub struct Point<'a> {
    pub table: Cow<'a, str>,
    pub tags: Vec<(Cow<'a, str>, Cow<'a, str>)>,
    pub fields: Vec<(Cow<'a, str>, FieldValue<'a>)>,
    pub time: i64,
}

/// A line that was rejected, by its 1-based line number in the request body.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LineError {
    pub line: usize,
    pub reason: String,
}

/// Which tables a client may read or write: all, or those whose names start with
/// one of the given prefixes (a token limited to `team_a_` sees only its tables).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableAccess {
    prefixes: Option<Vec<String>>,
}

impl TableAccess {
    /// Every table.
    pub fn all() -> Self {
        Self { prefixes: None }
    }

    /// Tables whose names start with one of `prefixes`.
    pub fn prefixes(prefixes: Vec<String>) -> Self {
        Self {
            prefixes: Some(prefixes),
        }
    }

    pub fn is_all(&self) -> bool {
        self.prefixes.is_none()
    }

    pub fn allows(&self, table: &str) -> bool {
        match &self.prefixes {
            None => true,
            Some(p) => p.iter().any(|p| table.starts_with(p.as_str())),
        }
    }
}
