#![no_main]
//! Any bytes as a write body (line protocol at any precision, or remote write),
//! through the whole write pipeline into a real storage engine: it must not panic,
//! the report must add up (every line accepted or rejected, at most the reported
//! number of reasons), and every rejection must name a line that exists.

use std::sync::{Arc, OnceLock};

use libfuzzer_sys::fuzz_target;
use vigil_ingest::{Precision, WriteFormat, WriteLimits, WritePipeline};
use vigil_model::TableAccess;
use vigil_storage::{Storage, StorageConfig};

struct Harness {
    runtime: tokio::runtime::Runtime,
    pipeline: Arc<WritePipeline>,
    runs: std::sync::atomic::AtomicU64,
}

fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("vigil-fuzz-pipeline-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut config = StorageConfig::new(&dir);
        config.max_tables = 200;
        config.max_columns_per_table = 50;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let storage = runtime
            .block_on(Storage::open(config))
            .expect("open storage");
        let limits = WriteLimits {
            max_body_bytes: 1 << 20,
            max_days_per_write: 3,
            ..WriteLimits::default()
        };
        Harness {
            runtime,
            pipeline: Arc::new(WritePipeline::new(storage, limits)),
            runs: Default::default(),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else { return };
    let format = match mode % 5 {
        0 => WriteFormat::LineProtocol(Precision::Nanosecond),
        1 => WriteFormat::LineProtocol(Precision::Microsecond),
        2 => WriteFormat::LineProtocol(Precision::Millisecond),
        3 => WriteFormat::LineProtocol(Precision::Second),
        _ => WriteFormat::RemoteWrite,
    };
    let access = if mode & 0x80 != 0 {
        TableAccess::prefixes(vec!["a".into()])
    } else {
        TableAccess::all()
    };
    let h = harness();
    let lines = body.split(|b| *b == b'\n').count();
    let result = h.runtime.block_on(h.pipeline.write(
        bytes::Bytes::copy_from_slice(body),
        mode & 0x40 != 0,
        format,
        0,
        access,
    ));
    if let Ok(report) = result {
        assert!(report.errors.len() <= h.pipeline.limits().line.max_errors);
        assert!(report.errors.len() <= report.rejected);
        for e in &report.errors {
            if matches!(format, WriteFormat::LineProtocol(_)) && mode & 0x40 == 0 {
                // Line 0 is a whole-write failure reported as such (not a panic).
                assert!(e.line_number <= lines, "{e:?}");
            }
        }
        if matches!(format, WriteFormat::LineProtocol(_)) {
            assert!(report.rejected <= report.lines);
        }
    }
    // Keep memory flat over a long run: persist the buffer now and then.
    if h.runs.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 2000 == 1999 {
        let _ = h.runtime.block_on(h.pipeline.storage().flush());
    }
});
