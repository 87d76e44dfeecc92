#![no_main]
//! Any byte string as a remote-write body: decoding must not panic, the
//! zero-copy reader must agree with prost's generated decoder, and every point or
//! error must name a series of the request.

use libfuzzer_sys::fuzz_target;
use prost::Message;
use vigil_ingest::{decompress_remote_write, remote_write_points, RemoteWriteBody, WriteRequest};

fuzz_target!(|data: &[u8]| {
    // Fuzz the protobuf itself, and once in a while a snappy body too.
    let snappy;
    let raw: &[u8] = if data.first() == Some(&0xff) {
        match decompress_remote_write(&data[1..], 1 << 20) {
            Ok(r) => {
                snappy = r;
                &snappy
            }
            Err(_) => return,
        }
    } else {
        data
    };
    let reference = WriteRequest::decode(raw);
    let view = match RemoteWriteBody::decode(raw) {
        Ok(view) => view,
        Err(e) => {
            // Groups are refused by name; prost skips them as unknown fields.
            assert!(
                reference.is_err() || e.to_string().contains("group"),
                "prost read what the reader refused ({e})"
            );
            return;
        }
    };
    let reference = reference.expect("the reader read what prost refuses");
    assert_eq!(
        view.to_request(&Default::default()).encode_to_vec(),
        reference.encode_to_vec(),
        "reader and prost disagree"
    );
    let series = view.len();
    let parsed = remote_write_points(&view);
    for (n, point) in &parsed.points {
        assert!(*n >= 1 && *n <= series);
        assert!(!point.table.is_empty());
    }
    for e in &parsed.errors {
        assert!(e.line >= 1 && e.line <= series);
    }
});
