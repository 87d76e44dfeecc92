//! `?` placeholders, as JDBC's `PreparedStatement`, ADBC's qmark style and most
//! drivers write them, numbered `$1`, `$2`, ... before DataFusion sees the SQL:
//! DataFusion only knows numbered placeholders and fails on `?` with "Failed to
//! parse placeholder id". Found by the SQL tokenizer, so a `?` inside a string, a
//! quoted identifier or a comment stays what it is.

use std::borrow::Cow;

use datafusion::common::DataFusionError;
use datafusion::sql::sqlparser::dialect::Dialect;
use datafusion::sql::sqlparser::tokenizer::{Location, Token, Tokenizer};

use crate::error::{Error, Result};

/// `sql` with each `?` replaced by `$1`, `$2`, ... in order (and `?N` by `$N`).
/// A statement that mixes `?` with `$n` is refused: which value goes where would be
/// a guess. SQL the tokenizer cannot read is returned unchanged, for the parser to
/// report in its own words.
pub fn number_placeholders<'a>(sql: &'a str, dialect: &dyn Dialect) -> Result<Cow<'a, str>> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    let Ok(tokens) = Tokenizer::new(dialect, sql).tokenize_with_location() else {
        return Ok(Cow::Borrowed(sql));
    };
    // (byte offset, length in bytes, replacement)
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    let mut numbered = false;
    let mut numbered_question = false;
    let mut plain = false;
    let mut next = 0usize;
    let mut offsets = LineOffsets::new(sql);
    for (i, t) in tokens.iter().enumerate() {
        let (len, replacement) = match &t.token {
            // Postgres-like dialects read `?` as an operator token, and `?1` as
            // that operator and a number.
            Token::Question => match tokens.get(i + 1).map(|n| (&n.token, n.span.start)) {
                Some((Token::Number(n, _), at))
                    if at
                        == (Location {
                            line: t.span.start.line,
                            column: t.span.start.column + 1,
                        })
                        && !n.is_empty()
                        && n.bytes().all(|b| b.is_ascii_digit()) =>
                {
                    (1 + n.len(), Some(format!("${n}")))
                }
                _ => (1, None),
            },
            Token::Placeholder(p) if p == "?" => (1, None),
            Token::Placeholder(p)
                if p.starts_with('?')
                    && p.len() > 1
                    && p[1..].bytes().all(|b| b.is_ascii_digit()) =>
            {
                (p.len(), Some(format!("${}", &p[1..])))
            }
            Token::Placeholder(p) if p.starts_with('$') => {
                numbered = true;
                continue;
            }
            _ => continue,
        };
        let Some(at) = offsets.byte_offset(t.span.start) else {
            return Ok(Cow::Borrowed(sql));
        };
        match &replacement {
            Some(_) => numbered_question = true,
            None => plain = true,
        }
        let replacement = replacement.unwrap_or_else(|| {
            next += 1;
            format!("${next}")
        });
        edits.push((at, len, replacement));
    }
    if edits.is_empty() {
        return Ok(Cow::Borrowed(sql));
    }
    if numbered || (plain && numbered_question) {
        return Err(Error::DataFusion(DataFusionError::Plan(
            "the statement mixes `?` with `$n` or `?n` placeholders: use one style (`?` are numbered in order)".into(),
        )));
    }
    let mut out = String::with_capacity(sql.len() + edits.len() * 2);
    let mut from = 0;
    for (at, len, replacement) in edits {
        if at < from || !sql.is_char_boundary(at) || !sql.is_char_boundary(at + len) {
            return Ok(Cow::Borrowed(sql));
        }
        out.push_str(&sql[from..at]);
        out.push_str(&replacement);
        from = at + len;
    }
    out.push_str(&sql[from..]);
    Ok(Cow::Owned(out))
}

/// Byte offsets of the tokenizer's (line, column) locations: both count from 1,
/// columns in characters. Locations are asked for in order, so a cursor walks the
/// text once (not once per placeholder).
struct LineOffsets<'a> {
    sql: &'a str,
    starts: Vec<usize>,
    /// (line, column, byte offset) of the last answer.
    cursor: (u64, u64, usize),
}

impl<'a> LineOffsets<'a> {
    fn new(sql: &'a str) -> Self {
        let mut starts = vec![0];
        starts.extend(sql.match_indices('\n').map(|(i, _)| i + 1));
        Self {
            sql,
            starts,
            cursor: (1, 1, 0),
        }
    }

    fn byte_offset(&mut self, at: Location) -> Option<usize> {
        let (line, column) = (at.line, at.column);
        if line == 0 || column == 0 {
            return None;
        }
        let (mut col, mut byte) = if line == self.cursor.0 && column >= self.cursor.1 {
            (self.cursor.1, self.cursor.2)
        } else {
            (1, *self.starts.get((line - 1) as usize)?)
        };
        let mut chars = self.sql.get(byte..)?.chars();
        while col < column {
            let c = chars.next()?;
            if c == '\n' {
                return None;
            }
            byte += c.len_utf8();
            col += 1;
        }
        self.cursor = (line, column, byte);
        Some(byte)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::{GenericDialect, PostgreSqlDialect};

    fn numbered(sql: &str) -> String {
        let generic = number_placeholders(sql, &GenericDialect {}).unwrap();
        let postgres = number_placeholders(sql, &PostgreSqlDialect {}).unwrap();
        assert_eq!(generic, postgres, "dialects differ on {sql}");
        generic.into_owned()
    }

    #[test]
    fn question_marks_are_numbered_in_order() {
        assert_eq!(
            numbered("SELECT count(*) FROM cpu WHERE hostname = ? AND usage > ?"),
            "SELECT count(*) FROM cpu WHERE hostname = $1 AND usage > $2"
        );
        assert_eq!(numbered("SELECT ?1 + ?2"), "SELECT $1 + $2");
        assert_eq!(numbered("SELECT (?)"), "SELECT ($1)");
    }

    #[test]
    fn question_marks_in_strings_identifiers_and_comments_stay() {
        let sql = "SELECT 'why?', \"a?b\" FROM t -- what?\nWHERE x = ? /* ? */ AND y = 'é?'";
        assert_eq!(
            numbered(sql),
            "SELECT 'why?', \"a?b\" FROM t -- what?\nWHERE x = $1 /* ? */ AND y = 'é?'"
        );
        // Multi-byte characters before the placeholder on the same line.
        assert_eq!(
            numbered("SELECT 'ééé' AS \"ü\", ? AS p"),
            "SELECT 'ééé' AS \"ü\", $1 AS p"
        );
        assert_eq!(numbered("SELECT 1"), "SELECT 1");
        // Many placeholders after a long literal (offsets found by one walk).
        let long = format!(
            "SELECT '{}', {}",
            "x".repeat(1 << 20),
            vec!["?"; 2000].join(", ")
        );
        let out = number_placeholders(&long, &GenericDialect {}).unwrap();
        assert!(out.ends_with("$1999, $2000"));
        assert_eq!(numbered("SELECT $1, $2"), "SELECT $1, $2");
    }

    #[test]
    fn mixed_styles_are_refused_and_bad_sql_is_left_to_the_parser() {
        let e = number_placeholders("SELECT ? , $1", &GenericDialect {}).unwrap_err();
        assert!(e.to_string().contains("mixes"), "{e}");
        let e = number_placeholders("SELECT ? AS a, ?1 AS b", &GenericDialect {}).unwrap_err();
        assert!(e.to_string().contains("mixes"), "{e}");
        let unterminated = "SELECT 'abc ? FROM t";
        assert_eq!(
            number_placeholders(unterminated, &GenericDialect {}).unwrap(),
            unterminated
        );
    }
}
