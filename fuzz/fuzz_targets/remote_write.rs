#![no_main]
//! Any byte string as a remote-write body: decoding must not panic, and every point
//! or error must name a series of the request; a decoded request must survive
//! encoding and decoding again.

use libfuzzer_sys::fuzz_target;
use vigil_ingest::{decode_remote_write, encode_remote_write, remote_write_points};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = decode_remote_write(data) else { return };
    let series = request.timeseries.len();
    let parsed = remote_write_points(&request);
    for (n, point) in &parsed.points {
        assert!(*n >= 1 && *n <= series);
        assert!(!point.table.is_empty());
    }
    for e in &parsed.errors {
        assert!(e.line >= 1 && e.line <= series);
    }
    let again = decode_remote_write(&encode_remote_write(&request)).expect("round trip");
    assert_eq!(again.timeseries.len(), series);
});
