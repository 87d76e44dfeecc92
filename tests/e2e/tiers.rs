//! Retention tiers against a real S3-compatible server (moto's, started by
//! `scripts/s3.sh` on a free loopback port) through `object_store`'s S3 client:
//! tiering, reading cold data as one table with hot data, retention, the cold
//! store down during a move, and a crash in the middle of one.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::server::{free_port, TestServer};

const BUCKET: &str = "vigil-cold";
const DAY: i64 = 86_400_000_000_000;

/// moto's S3 server; stopped when dropped.
struct S3Server {
    child: Option<Child>,
    port: u16,
}

impl S3Server {
    fn start(port: u16) -> Self {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let child = Command::new("bash")
            .arg(root.join("scripts/s3.sh"))
            .args(["serve", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start scripts/s3.sh");
        let s = Self {
            child: Some(child),
            port,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let put = reqwest::blocking::Client::new()
                .put(format!("{}/{BUCKET}", s.endpoint()))
                .send();
            if matches!(&put, Ok(r) if r.status().is_success()) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "the S3 server did not start: {put:?}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Keys under `prefix` in the bucket.
    fn keys(&self, prefix: &str) -> Vec<String> {
        let body = reqwest::blocking::get(format!(
            "{}/{BUCKET}?list-type=2&prefix={prefix}",
            self.endpoint()
        ))
        .unwrap()
        .text()
        .unwrap();
        let mut keys: Vec<String> = body
            .split("<Key>")
            .skip(1)
            .filter_map(|s| s.split_once("</Key>").map(|(k, _)| k.to_string()))
            .collect();
        keys.sort();
        keys
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i64
}

fn config(dir: &Path, s3_port: u16) -> std::path::PathBuf {
    let cfg = dir.join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[cold_tier]
url = "s3://{BUCKET}/node1"
endpoint = "http://127.0.0.1:{s3_port}"
region = "us-east-1"
access_key_id = "test"
secret_access_key = "test"
allow_http = true
hot_window = "1d"

[retention]
raw = "7d"

[maintenance]
interval = "1h"
"#
        ),
    )
    .unwrap();
    cfg
}

/// `vigil admin maintenance`: its exit status and what it printed.
fn maintenance(s: &TestServer) -> (bool, String) {
    let out = s.cli(&["admin", "maintenance"]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn int(rows: &[serde_json::Map<String, serde_json::Value>], i: usize, col: &str) -> i64 {
    rows[i][col]
        .as_i64()
        .unwrap_or_else(|| panic!("{col} in {rows:?}"))
}

/// `(tier, count)` of the table's files, sorted.
fn tiers(s: &TestServer) -> Vec<(String, i64)> {
    s.sql("SELECT tier, count(*) AS n FROM system.files WHERE table_name = 'cpu' GROUP BY tier ORDER BY tier")
        .iter()
        .map(|r| (r["tier"].as_str().unwrap().to_string(), r["n"].as_i64().unwrap()))
        .collect()
}

const TOTALS: &str = "SELECT count(*) AS n, sum(usage) AS total, min(time) AS first FROM cpu";

#[test]
fn cold_tier_on_s3_survives_an_outage_and_retention_hides_then_deletes() {
    let dir = tempfile::tempdir().unwrap();
    let s3_port = free_port();
    let cfg = config(dir.path(), s3_port);
    // The S3 server is not running yet: vigil starts anyway (it asks nothing of
    // the cold tier until it moves a file).
    // No result cache: the repeated query must read the cold files again.
    let mut s = TestServer::start(
        &dir.path().join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--retention-raw",
            "7d",
            "--query-result-cache-bytes",
            "0",
        ],
    );
    let t = now();
    let mut lines = String::new();
    for h in 0..4 {
        // 10 days old (past retention), 3 and 2 days old (cold), now (hot).
        for (age, usage) in [(10 * DAY, 1000.0), (3 * DAY, 1.0), (2 * DAY, 2.0), (0, 4.0)] {
            lines.push_str(&format!("cpu,host=h{h} usage={usage} {}\n", t - age - h));
        }
    }
    s.write_lp(&lines);
    // Rows past retention are not returned, even before maintenance runs.
    let before = s.sql(TOTALS);
    assert_eq!(int(&before, 0, "n"), 12);
    assert_eq!(before[0]["total"].as_f64().unwrap(), 28.0);
    s.stop();
    s.restart();
    assert_eq!(tiers(&s), vec![("hot".to_string(), 4)]);

    // The store is down: the moves fail, nothing is lost, the files stay hot.
    let started = Instant::now();
    let (ok, text) = maintenance(&s);
    assert!(!ok, "{text}");
    assert!(text.contains("tiering"), "{text}");
    assert!(text.contains("1 files expired"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(90),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(s.sql(TOTALS), before);
    assert_eq!(tiers(&s), vec![("hot".to_string(), 3)]);
    let failed = s.sql("SELECT move_failures, errors FROM system.maintenance ORDER BY id");
    assert_eq!(int(&failed, 0, "move_failures"), 2);
    assert!(failed[0]["errors"].as_str().unwrap().contains("stay hot"));

    // The store is back: the next run moves them.
    let s3 = S3Server::start(s3_port);
    let (ok, text) = maintenance(&s);
    assert!(ok, "{text}");
    assert!(text.contains("2 files moved to the cold tier"), "{text}");
    assert_eq!(
        tiers(&s),
        vec![("cold".to_string(), 2), ("hot".to_string(), 1)]
    );
    let cold_paths: Vec<String> = s
        .sql("SELECT path FROM system.files WHERE tier = 'cold' ORDER BY path")
        .iter()
        .map(|r| r["path"].as_str().unwrap().to_string())
        .collect();
    let keys = s3.keys("node1/parquet/");
    assert_eq!(
        keys.iter()
            .map(|k| format!("vigil://cold/{}", k.trim_start_matches("node1/")))
            .collect::<Vec<_>>(),
        cold_paths
    );
    // One query over hot and cold, equal to before; a query over the last hour
    // reads no cold object.
    assert_eq!(s.sql(TOTALS), before);
    let gets = cold_requests(&s, "get");
    assert!(gets > 0.0);
    let recent = s.sql("SELECT count(*) AS n FROM cpu WHERE time > now() - interval '1 hour'");
    assert_eq!(int(&recent, 0, "n"), 4);
    assert_eq!(cold_requests(&s, "get"), gets);
    // The same cold query again is served from the read cache.
    let hits = s.metric("vigil_cold_cache_hits_total");
    assert_eq!(s.sql(TOTALS), before);
    assert!(s.metric("vigil_cold_cache_hits_total") > hits);
    assert_eq!(cold_requests(&s, "get"), gets);
    assert!(metrics_text(&s).contains("vigil_tier_files{tier=\"cold\"} 2"));

    // After a restart the catalog still reads the cold objects.
    s.restart();
    assert_eq!(s.sql(TOTALS), before);
    assert_eq!(s.sql(TOTALS)[0]["first"], before[0]["first"]);
}

/// A crash after the copy to S3 and before the catalog names it: after the
/// restart the move is done again, and no object is left that the catalog does
/// not name.
#[test]
fn a_crash_in_the_middle_of_a_move_orphans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(free_port());
    let cfg = config(dir.path(), s3.port);
    let data = dir.path().join("data");
    let args = ["--config", cfg.to_str().unwrap(), "--retention-raw", "7d"];
    let mut s = TestServer::start_with_env(
        &data,
        &args,
        &[("VIGIL_FAILPOINTS", "tier-before-commit=sleep(60000)")],
    );
    let t = now();
    s.write_lp(&format!(
        "cpu,host=a usage=1 {}\ncpu,host=b usage=2 {}\n",
        t - 3 * DAY,
        t - 3 * DAY
    ));
    s.stop();
    s.restart();
    let before = s.sql(TOTALS);
    // The run copies the file, then stops before committing; it is killed there.
    let url = s.url.clone();
    std::thread::spawn(move || {
        let _ = reqwest::blocking::Client::new()
            .post(format!("{url}/api/v1/admin/maintenance"))
            .timeout(Duration::from_secs(120))
            .send();
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    while s3.keys("node1/parquet/").is_empty() {
        assert!(Instant::now() < deadline, "the copy never reached S3");
        std::thread::sleep(Duration::from_millis(100));
    }
    s.kill();
    drop(s);
    let mut s = TestServer::start(&data, &args);
    assert_eq!(tiers(&s), vec![("hot".to_string(), 1)]);
    assert_eq!(s.sql(TOTALS), before);
    let (ok, text) = maintenance(&s);
    assert!(ok, "{text}");
    assert!(
        text.contains("cold sweep: 1 unnamed objects removed"),
        "{text}"
    );
    assert_eq!(tiers(&s), vec![("cold".to_string(), 1)]);
    let named: Vec<String> = s
        .sql("SELECT path FROM system.files")
        .iter()
        .map(|r| {
            r["path"]
                .as_str()
                .unwrap()
                .replace("vigil://cold/", "node1/")
        })
        .collect();
    assert_eq!(s3.keys("node1/"), named);
    s.restart();
    assert_eq!(s.sql(TOTALS), before);
}

fn metrics_text(s: &TestServer) -> String {
    s.request(reqwest::Method::GET, "/metrics")
        .send()
        .unwrap()
        .text()
        .unwrap()
}

/// `vigil_cold_requests_total{kind=...}`.
fn cold_requests(s: &TestServer, kind: &str) -> f64 {
    let name = format!("vigil_cold_requests_total{{kind=\"{kind}\"}}");
    metrics_text(s)
        .lines()
        .find_map(|l| l.strip_prefix(&name).map(|v| v.trim().parse().unwrap()))
        .unwrap_or(0.0)
}

/// Rollups against DuckDB over the same raw data, with counter resets on bucket
/// and hour edges, a gap, NULLs and a late write into a rolled-up bucket
/// (tests/clients/check_rollups.py).
#[test]
fn rollups_match_duckdb_before_and_after_a_late_write() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(
        dir.path(),
        &["--retention-raw", "7d", "--flush-interval", "1s"],
    );
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/clients/check_rollups.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(&s.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.starts_with("ok: "), "{text}");
    // Clients cannot write into a rollup table.
    let r = s.write(
        "/api/v3/write_lp?db=x",
        "rollup_10m.cpu,host=a usage_count=1i 1\n",
    );
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("reserved for rollups"));
}

fn plan_text(s: &TestServer, q: &str) -> String {
    s.sql(&format!("EXPLAIN {q}"))
        .iter()
        .map(|r| r["plan"].as_str().unwrap_or("").to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

fn date(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(ns as u64);
    humantime::format_rfc3339(t).to_string()[..10].to_string()
}

/// `vigil restore` with `args`: exit status and everything it printed.
fn restore(s: &TestServer, args: &[&str]) -> (bool, String) {
    let mut all = vec!["restore"];
    all.extend_from_slice(args);
    let out = s.cli(&all);
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Raw data past retention is archived by maintenance instead of deleted,
/// `vigil restore` brings a range of it back into queries (and `--drop` hides it
/// again); hourly aggregates read the rollups, and answer as raw rows do.
#[test]
fn archive_restore_and_rollup_reads() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(
        dir.path(),
        &[
            "--retention-raw",
            "7d",
            "--archive",
            "true",
            "--flush-interval",
            "1s",
        ],
    );
    let now = now();
    let old = now - 10 * DAY;
    let recent = (now - 2 * DAY) / 3_600_000_000_000 * 3_600_000_000_000;
    let mut lp = String::new();
    for i in 0..3 {
        lp.push_str(&format!("cpu,host=a usage={} {}\n", 100 + i, old + i));
    }
    for i in 0..36i64 {
        let host = if i % 2 == 0 { "a" } else { "b" };
        lp.push_str(&format!(
            "cpu,host={host} usage={}.25 {}\n",
            i,
            recent + i * 600_000_000_000 + 7_000_000_000
        ));
    }
    s.write_lp(&lp);
    let deadline = Instant::now() + Duration::from_secs(60);
    while s.sql("SELECT coalesce(sum(rows), 0) AS n FROM system.files")[0]["n"].as_i64() != Some(39)
    {
        assert!(Instant::now() < deadline, "not flushed");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(int(&s.sql("SELECT count(*) AS n FROM cpu"), 0, "n"), 36);

    let (ok, text) = maintenance(&s);
    assert!(ok, "{text}");
    assert!(
        text.contains("1 files expired (3 rows") && text.contains("1 archived"),
        "{text}"
    );
    assert!(
        !tiers(&s).iter().any(|(t, _)| t == "restored"),
        "{:?}",
        tiers(&s)
    );

    // Careless and hostile requests get a clear refusal.
    let (ok, text) = restore(
        &s,
        &[
            "--table",
            "nope",
            "--from",
            "2020-01-01",
            "--to",
            "2030-01-01",
        ],
    );
    assert!(
        !ok && text.contains("nothing of table 'nope' is archived"),
        "{text}"
    );
    let (ok, text) = restore(
        &s,
        &[
            "--table",
            "cpu",
            "--from",
            "last week",
            "--to",
            "2030-01-01",
        ],
    );
    assert!(!ok && text.contains("'from' is not a time"), "{text}");
    let (ok, text) = restore(
        &s,
        &[
            "--table",
            "cpu",
            "--from",
            "2030-01-01",
            "--to",
            "2020-01-01",
        ],
    );
    assert!(!ok && text.contains("range to restore is empty"), "{text}");
    let (ok, text) = restore(&s, &["--drop", "99"]);
    assert!(!ok && text.contains("no restore 99"), "{text}");
    let r = s
        .request(reqwest::Method::POST, "/api/v1/admin/restore")
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);

    let (from, to) = (date(old - DAY), date(old + DAY));
    let (ok, text) = restore(&s, &["--table", "cpu", "--from", &from, "--to", &to]);
    assert!(ok && text.contains("restore 1 complete: 1 files"), "{text}");
    assert_eq!(int(&s.sql("SELECT count(*) AS n FROM cpu"), 0, "n"), 39);
    assert_eq!(
        int(
            &s.sql("SELECT CAST(sum(usage) AS BIGINT) AS n FROM cpu WHERE usage >= 100"),
            0,
            "n"
        ),
        303
    );
    assert!(
        tiers(&s).contains(&("restored".to_string(), 1)),
        "{:?}",
        tiers(&s)
    );
    let (ok, text) = restore(&s, &["--list"]);
    assert!(
        ok && text.contains("complete") && text.contains("cpu"),
        "{text}"
    );
    // Maintenance leaves restored data alone, and a restart keeps it.
    assert!(maintenance(&s).0);
    s.restart();
    assert_eq!(int(&s.sql("SELECT count(*) AS n FROM cpu"), 0, "n"), 39);

    let (ok, text) = restore(&s, &["--drop", "1"]);
    assert!(ok && text.contains("1 files removed"), "{text}");
    assert_eq!(int(&s.sql("SELECT count(*) AS n FROM cpu"), 0, "n"), 36);

    // Hourly buckets over the last three days read the 1-hour rollup where it
    // is built, and give what the raw rows give.
    let q = "SELECT time_bucket('1 hour', time) AS b, host, avg(usage) AS a, max(usage) AS m, count(usage) AS n \
             FROM cpu WHERE time >= now() - interval '3 days' GROUP BY 1, 2 ORDER BY 1, 2";
    let plan = plan_text(&s, q);
    assert!(plan.contains("tier rollup_1h"), "{plan}");
    let with = s.sql(q);
    assert_eq!(
        with.iter().map(|r| r["n"].as_i64().unwrap()).sum::<i64>(),
        36
    );
    s.env.push(("VIGIL_ROLLUP_READS".into(), "false".into()));
    s.restart();
    assert!(!plan_text(&s, q).contains("tier "));
    let without = s.sql(q);
    assert_eq!(with.len(), without.len());
    for (a, b) in with.iter().zip(&without) {
        assert_eq!(
            (&a["b"], &a["host"], &a["n"], &a["m"]),
            (&b["b"], &b["host"], &b["n"], &b["m"])
        );
        let (x, y) = (a["a"].as_f64().unwrap(), b["a"].as_f64().unwrap());
        assert!((x - y).abs() <= 1e-9 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}
