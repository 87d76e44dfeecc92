//! The Prometheus text exposition format and OpenMetrics, as scrape targets
//! serve them: any body is samples and line errors, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vigil_ingest::exposition::parse_exposition;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for openmetrics in [false, true] {
        let e = parse_exposition(text, openmetrics);
        // Every line is a sample, an error, a comment or blank: never more
        // samples plus errors than lines.
        assert!(e.samples.len() + e.error_count <= text.split('\n').count() + 1);
    }
});
