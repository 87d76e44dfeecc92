//! Crash safety: every acknowledged point survives SIGKILL, exactly once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::server::TestServer;

/// Writers send batches of unique points while the server is killed with SIGKILL
/// (twice, with flushes happening in between); after each restart every point whose
/// write was acknowledged must be stored exactly once, with its value.
#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(
        dir.path(),
        &["--flush-max-rows", "3000", "--compaction-interval", "2s"],
    );
    let acked: Arc<Mutex<Vec<(u32, u64)>>> = Arc::new(Mutex::new(Vec::new()));
    for round in 0..2u32 {
        let stop = Arc::new(AtomicBool::new(false));
        let mut writers = Vec::new();
        for w in 0..4u32 {
            let url = s.url.clone();
            let stop = Arc::clone(&stop);
            let acked = Arc::clone(&acked);
            let writer = round * 10 + w;
            writers.push(std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(5))
                    .build()
                    .unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let mut body = String::new();
                    let batch: Vec<u64> = (n..n + 50).collect();
                    for i in &batch {
                        body.push_str(&format!(
                            "crash,writer=w{writer} n={i}i,v={} {}\n",
                            i * 3,
                            1_000_000 + i
                        ));
                    }
                    n += 50;
                    match client
                        .post(format!("{url}/api/v3/write_lp"))
                        .body(body)
                        .send()
                    {
                        Ok(r) if r.status() == 204 => {
                            acked
                                .lock()
                                .unwrap()
                                .extend(batch.iter().map(|i| (writer, *i)));
                        }
                        // Refused or cut off by the kill: not acknowledged, may or may not be stored.
                        _ => {}
                    }
                }
            }));
        }
        // Let writes (and some flushes) happen, then pull the plug.
        let target = (round as usize + 1) * 8_000;
        while acked.lock().unwrap().len() < target {
            std::thread::sleep(Duration::from_millis(20));
        }
        s.kill();
        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.join().unwrap();
        }
        s.restart();

        let acked = acked.lock().unwrap().clone();
        let dupes = s.sql(
            "SELECT writer, n, count(*) AS c FROM crash GROUP BY writer, n HAVING count(*) > 1",
        );
        assert!(dupes.is_empty(), "duplicated points: {dupes:?}");
        let bad = s.sql("SELECT count(*) AS c FROM crash WHERE v <> n * 3");
        assert_eq!(bad[0]["c"], 0);
        let stored: std::collections::HashSet<(u32, u64)> = s
            .sql("SELECT writer, n FROM crash")
            .iter()
            .map(|r| {
                let w = r["writer"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('w')
                    .parse()
                    .unwrap();
                (w, r["n"].as_u64().unwrap())
            })
            .collect();
        let missing: Vec<_> = acked
            .iter()
            .filter(|p| !stored.contains(p))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged points lost, e.g. {missing:?}",
            acked.iter().filter(|p| !stored.contains(p)).count()
        );
        assert!(stored.len() >= acked.len());
    }
}
