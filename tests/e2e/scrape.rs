//! Scraping: exposition targets served on loopback (text format and
//! OpenMetrics), one that is down and one over its sample limit; the samples
//! land as tables with job/instance tags, and `up` says which answered.

use std::time::{Duration, Instant};

use axum::http::header;
use axum::routing::get;
use axum::Router;

use crate::server::TestServer;

const TEXT: &str = "# HELP requests_total Requests.\n# TYPE requests_total counter\nrequests_total{code=\"200\",job=\"inner\"} 42\nrequests_total{code=\"500\",job=\"inner\"} 3\n# TYPE latency_seconds histogram\nlatency_seconds_bucket{le=\"0.1\"} 5\nlatency_seconds_bucket{le=\"+Inf\"} 9\nlatency_seconds_sum 1.25\nlatency_seconds_count 9\ntemperature NaN\n";

const OPEN_METRICS: &str = "# TYPE jobs_done counter\njobs_done_total{job=\"batch\"} 7 1767225600.250 # {trace_id=\"x\"} 1\n# EOF\n";

#[test]
fn targets_are_scraped_into_tables_with_up_for_each() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let target = listener.local_addr().unwrap().to_string();
    let app = Router::new()
        .route("/metrics", get(|| async { TEXT }))
        .route(
            "/om",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    OPEN_METRICS,
                )
            }),
        );
    runtime.spawn(async move { axum::serve(listener, app).await });
    let dead = format!("127.0.0.1:{}", crate::server::free_port());
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scrape.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}', '{dead}']\n        labels: {{ env: test }}\n  - job_name: om\n    metrics_path: /om\n    honor_labels: true\n    static_configs: [{{ targets: ['{target}'] }}]\n  - job_name: limited\n    sample_limit: 2\n    static_configs: [{{ targets: ['{target}'] }}]\n"
        ),
    )
    .unwrap();
    let s = TestServer::start(
        &dir.path().join("data"),
        &["--scrape-config", config.to_str().unwrap()],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let up = |job: &str, instance: &str| -> Option<f64> {
        let q = format!(
            "SELECT value FROM up WHERE job = '{job}' AND instance = '{instance}' ORDER BY time DESC LIMIT 1"
        );
        let r = s
            .request(reqwest::Method::POST, "/api/v1/sql")
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": q }).to_string())
            .send()
            .ok()?;
        let rows: Vec<serde_json::Value> = r.json().ok()?;
        rows.first()?["value"].as_f64()
    };
    while up("app", &target).is_none()
        || up("app", &dead).is_none()
        || up("om", &target).is_none()
        || up("limited", &target).is_none()
    {
        assert!(Instant::now() < deadline, "no up series for every target");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(up("app", &target), Some(1.0));
    assert_eq!(up("app", &dead), Some(0.0));
    assert_eq!(up("om", &target), Some(1.0));
    // Over its sample limit: the scrape fails, nothing of it is stored.
    assert_eq!(up("limited", &target), Some(0.0));

    // The scraped `job` label clashes with the target's: kept as
    // exported_job (honor_labels is off for this job).
    let rows = s.sql(&format!(
        "SELECT code, job, exported_job, env, max(value) AS value FROM requests_total WHERE instance = '{target}' GROUP BY code, job, exported_job, env ORDER BY code"
    ));
    assert_eq!(rows[0]["code"], "200", "{rows:?}");
    assert_eq!(rows[0]["job"], "app");
    assert_eq!(rows[0]["exported_job"], "inner");
    assert_eq!(rows[0]["env"], "test");
    assert_eq!(rows[0]["value"], 42.0);
    assert_eq!(rows[1]["value"], 3.0);
    let buckets = s.sql("SELECT le, max(value) AS v FROM latency_seconds_bucket WHERE job = 'app' GROUP BY le ORDER BY le");
    assert_eq!(buckets.len(), 2, "{buckets:?}");
    assert_eq!(buckets[0]["le"], "+Inf");
    assert_eq!(buckets[0]["v"], 9.0);
    assert_eq!(
        s.sql("SELECT count(*) AS n FROM latency_seconds_count WHERE job = 'limited'")[0]["n"],
        0
    );
    // OpenMetrics: honor_labels keeps the scraped job; its timestamp (in
    // seconds) is the sample's time; the exemplar is ignored.
    let om = s.sql("SELECT job, value, CAST(time AS BIGINT) AS t FROM jobs_done_total LIMIT 1");
    assert_eq!(om[0]["job"], "batch", "{om:?}");
    assert_eq!(om[0]["value"], 7.0);
    assert_eq!(om[0]["t"], 1_767_225_600_250_000_000i64);
    let scraped = s.sql(&format!(
        "SELECT max(value) AS n FROM scrape_samples_scraped WHERE job = 'app' AND instance = '{target}'"
    ));
    assert_eq!(scraped[0]["n"], 7.0);
    assert!(s.metric("vigil_scrape_failures_total") >= 2.0);
}

/// A scrape config using what vigil does not do yet stops the start, naming
/// the key and line.
#[test]
fn unsupported_scrape_settings_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("scrape.yml");
    std::fs::write(
        &config,
        "scrape_configs:\n  - job_name: node\n    relabel_configs: []\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::server::BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .arg("--scrape-config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("scrape.yml:2:") && err.contains("relabel_configs"),
        "{err}"
    );
}

/// `file_sd_configs`: targets come from a JSON file; when the file changes,
/// the new target is scraped within seconds and the removed one no longer.
#[test]
fn file_sd_targets_come_and_go_with_the_file() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let mut targets = Vec::new();
    for _ in 0..2 {
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        targets.push(listener.local_addr().unwrap().to_string());
        let app = Router::new().route("/metrics", get(|| async { "queue_depth 5\n" }));
        runtime.spawn(async move { axum::serve(listener, app).await });
    }
    let dir = tempfile::tempdir().unwrap();
    let sd = dir.path().join("targets-a.json");
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["{}"], "labels": {{"team": "one"}}}}]"#,
            targets[0]
        ),
    )
    .unwrap();
    let config = dir.path().join("scrape.yml");
    std::fs::write(
        &config,
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sd\n    file_sd_configs: [{ files: ['targets-*.json'] }]\n",
    )
    .unwrap();
    let s = TestServer::start(
        &dir.path().join("data"),
        &["--scrape-config", config.to_str().unwrap()],
    );
    let scrapes = |instance: &str| -> i64 {
        let q = format!("SELECT count(*) AS n FROM up WHERE job = 'sd' AND instance = '{instance}' AND value = 1");
        let r = s
            .request(reqwest::Method::POST, "/api/v1/sql")
            .header("content-type", "application/json")
            .body(serde_json::json!({ "sql": q }).to_string())
            .send();
        r.ok()
            .and_then(|r| r.json::<Vec<serde_json::Value>>().ok())
            .and_then(|rows| rows.first()?["n"].as_i64())
            .unwrap_or(0)
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !f() {
            assert!(Instant::now() < deadline, "timed out: {what}");
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait("the first target", &|| scrapes(&targets[0]) > 0);
    let team = s.sql("SELECT team FROM queue_depth LIMIT 1");
    assert_eq!(team[0]["team"], "one");
    // The file now names the other target only.
    std::fs::write(
        &sd,
        format!(
            r#"[{{"targets": ["{}"], "labels": {{"team": "two"}}}}]"#,
            targets[1]
        ),
    )
    .unwrap();
    wait("the second target", &|| scrapes(&targets[1]) > 0);
    std::thread::sleep(Duration::from_millis(1500));
    let first = scrapes(&targets[0]);
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        scrapes(&targets[0]),
        first,
        "a removed target is still scraped"
    );
    assert!(scrapes(&targets[1]) >= 2);
}
