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

/// The Parquet files on disk and in the catalog, and how many catalog files are
/// compacted (level 1).
fn files_on_disk_and_in_catalog(dir: &std::path::Path) -> (usize, usize, usize) {
    let (disk, catalog, level1) = file_names_on_disk_and_in_catalog(dir);
    (disk.len(), catalog.len(), level1)
}

/// The names of the Parquet files on disk and of those the catalog lists.
fn file_names_on_disk_and_in_catalog(
    dir: &std::path::Path,
) -> (
    std::collections::BTreeSet<String>,
    std::collections::BTreeSet<String>,
    usize,
) {
    let on_disk = std::fs::read_dir(dir.join("parquet"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    let catalog: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("catalog.json")).unwrap_or_default())
            .unwrap_or_default();
    let files = catalog["files"].as_array().cloned().unwrap_or_default();
    let level1 = files.iter().filter(|f| f["level"] == 1).count();
    let in_catalog = files
        .iter()
        .filter_map(|f| f["path"].as_str())
        .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
        .collect();
    (on_disk, in_catalog, level1)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every (host, time) stored exactly once with the value of its last write.
fn assert_stored(
    s: &TestServer,
    expected: &std::collections::BTreeMap<(String, i64), i64>,
    when: &str,
) {
    let dupes = s.sql(
        "SELECT host, time, count(*) AS c FROM crashc GROUP BY host, time HAVING count(*) > 1",
    );
    assert!(dupes.is_empty(), "{when}: duplicated points: {dupes:?}");
    let rows = s.sql("SELECT host, CAST(time AS BIGINT) AS t, v FROM crashc");
    let stored: std::collections::BTreeMap<(String, i64), i64> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["host"].as_str().unwrap().to_string(),
                    r["t"].as_i64().unwrap(),
                ),
                r["v"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(stored.len(), expected.len(), "{when}: rows stored");
    assert!(
        stored == *expected,
        "{when}: values differ from the last writes"
    );
}

/// SIGKILL in the middle of a flush (Parquet written, catalog not yet) and of a
/// compaction (merged files written but not committed; committed but the inputs
/// not yet deleted): after the restart nothing acknowledged is lost, nothing is
/// duplicated, and no file the catalog does not reference is left on disk.
#[test]
fn sigkill_during_flush_and_compaction_loses_and_duplicates_nothing() {
    for point in [
        "flush-before-commit",
        "compaction-before-commit",
        "compaction-after-commit",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let failpoint = format!("{point}=sleep(600000)");
        let mut s = TestServer::start_with_env(
            dir.path(),
            &[
                "--flush-max-rows",
                "1000",
                "--compaction-interval",
                "1s",
                "--compaction-min-files",
                "3",
            ],
            &[("VIGIL_FAILPOINTS", &failpoint)],
        );
        // Three flushes of 1,000 points: the second rewrites the first's (host,
        // time) with new values, the third adds later times. The files overlap.
        let mut expected = std::collections::BTreeMap::new();
        for round in 0..3i64 {
            let mut body = String::new();
            for h in 0..10 {
                for k in 0..100i64 {
                    let t = 1_700_000_000_000_000_000
                        + (k + if round == 2 { 100 } else { 0 }) * 10_000_000_000;
                    let v = round * 1_000_000 + h * 1000 + k;
                    body.push_str(&format!("crashc,host=h{h} v={v}i {t}\n"));
                    expected.insert((format!("h{h}"), t), v);
                }
            }
            s.write_lp(&body);
            if point == "flush-before-commit" && round == 0 {
                // The first flush takes the buffer and gets stuck: the next writes
                // go to a fresh buffer, within its limit.
                wait_for("the flush's file", || {
                    let (disk, cat, _) = files_on_disk_and_in_catalog(dir.path());
                    disk > cat
                });
            }
            if point != "flush-before-commit" {
                let want = (round + 1) as f64;
                wait_for("a flush", || s.metric("vigil_flushes_total") >= want);
            }
        }
        match point {
            // The first flush is stuck between writing its file and the catalog.
            "flush-before-commit" => wait_for("the flush's file", || {
                let (disk, cat, _) = files_on_disk_and_in_catalog(dir.path());
                disk > cat
            }),
            "compaction-before-commit" => wait_for("the compaction's files", || {
                let (disk, cat, _) = files_on_disk_and_in_catalog(dir.path());
                cat == 3 && disk > cat
            }),
            _ => wait_for("the compaction's commit", || {
                let (_, _, level1) = files_on_disk_and_in_catalog(dir.path());
                level1 > 0
            }),
        }
        s.kill();
        s.env.clear();
        s.restart();
        // The files the crash left behind must be gone. The restarted server may
        // already be flushing the replayed WAL (its file is renamed into place
        // just before the catalog names it), so only a file that stays unknown
        // fails the check.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (disk, cat, _) = file_names_on_disk_and_in_catalog(dir.path());
            let unknown = disk.difference(&cat).collect::<Vec<_>>();
            if unknown.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{point}: files left that the catalog does not know: {unknown:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_stored(&s, &expected, point);
        // And the table still converges: the flush and the compaction (re)run to
        // the end (after the flush crash, the replayed buffer is one file).
        wait_for("flush and compaction after the restart", || {
            let (_, cat, level1) = files_on_disk_and_in_catalog(dir.path());
            let compacted = point == "flush-before-commit" || level1 > 0;
            cat > 0 && compacted && s.metric("vigil_compaction_debt_bytes") == 0.0
        });
        assert_stored(&s, &expected, &format!("{point}, compacted"));
        s.stop();
    }
}

/// A flush that panics (after writing its files, before the catalog) is reported
/// on /health and retried, the server goes on answering, the files of the failed
/// attempts do not pile up, and after a restart without the fault every point is
/// stored once.
#[test]
fn a_panicking_flush_is_reported_and_leaves_no_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start_with_env(
        dir.path(),
        &["--flush-max-rows", "100"],
        &[("VIGIL_FAILPOINTS", "flush-before-commit=panic")],
    );
    let mut body = String::new();
    for k in 0..300i64 {
        body.push_str(&format!(
            "panicky,host=h{} v={k}i {}\n",
            k % 3,
            1_700_000_000_000_000_000 + k * 1_000_000_000
        ));
    }
    s.write_lp(&body);
    let health = |s: &TestServer| {
        let r = s.request(reqwest::Method::GET, "/health").send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    wait_for("the flush failure on /health", || {
        let (status, text) = health(&s);
        status != 200 && text.contains("flush") && text.contains("panicked")
    });
    // Retried every half second: several attempts, each removing its file.
    std::thread::sleep(Duration::from_secs(2));
    let (disk, catalog, _) = files_on_disk_and_in_catalog(dir.path());
    assert_eq!(
        (disk, catalog),
        (0, 0),
        "files of failed flushes left on disk"
    );
    assert_eq!(s.sql("SELECT count(*) AS c FROM panicky")[0]["c"], 300);

    s.kill();
    s.env.clear();
    s.restart();
    wait_for("a flush", || s.metric("vigil_flushes_total") >= 1.0);
    assert_eq!(s.sql("SELECT count(*) AS c FROM panicky")[0]["c"], 300);
    assert_eq!(
        s.sql("SELECT count(DISTINCT v) AS c FROM panicky")[0]["c"],
        300
    );
    let (status, _) = health(&s);
    assert_eq!(status, 200);
    let (disk, catalog, _) = files_on_disk_and_in_catalog(dir.path());
    assert_eq!(disk, catalog);
}
