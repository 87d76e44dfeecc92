#![no_main]
//! Any byte string, as any precision: the parser must not panic, and every point or
//! error it returns must name a line that exists in the input.

use libfuzzer_sys::fuzz_target;
use vigil_ingest::{parse_line_protocol, Precision};

fuzz_target!(|data: &[u8]| {
    let Some((&p, rest)) = data.split_first() else { return };
    let precision = match p % 4 {
        0 => Precision::Nanosecond,
        1 => Precision::Microsecond,
        2 => Precision::Millisecond,
        _ => Precision::Second,
    };
    let Ok(text) = std::str::from_utf8(rest) else { return };
    let lines = text.split('\n').count();
    let parsed = parse_line_protocol(text, precision, 0);
    for (line, point) in &parsed.points {
        assert!(*line >= 1 && *line <= lines);
        assert!(!point.fields.is_empty());
    }
    for e in &parsed.errors {
        assert!(e.line >= 1 && e.line <= lines);
    }
});
