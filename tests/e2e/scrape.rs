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
            "/hostile",
            // A label value past write.max_tag_value_bytes (16 KiB) and a
            // series with more tags than write.max_tags_per_line (250).
            get(|| async {
                let many: Vec<String> = (0..300).map(|i| format!("l{i}=\"v\"")).collect();
                format!(
                    "ok_metric 1\nhuge_label{{x=\"{}\"}} 1\nmany_labels{{{}}} 1\n",
                    "a".repeat(20_000),
                    many.join(",")
                )
            }),
        )
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
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: app\n    static_configs:\n      - targets: ['{target}', '{dead}']\n        labels: {{ env: test }}\n  - job_name: om\n    metrics_path: /om\n    honor_labels: true\n    static_configs: [{{ targets: ['{target}'] }}]\n  - job_name: limited\n    sample_limit: 2\n    static_configs: [{{ targets: ['{target}'] }}]\n  - job_name: hostile\n    metrics_path: /hostile\n    static_configs: [{{ targets: ['{target}'] }}]\n"
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
        || up("hostile", &target).is_none()
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
    // Series over the write limits are skipped like bad lines; the rest of
    // the scrape is kept.
    assert_eq!(up("hostile", &target), Some(1.0));
    assert_eq!(
        s.sql("SELECT max(value) AS v FROM ok_metric WHERE job = 'hostile'")[0]["v"],
        1.0
    );
    let stored = s.sql(
        "SELECT count(*) AS n FROM information_schema.tables WHERE table_name IN ('huge_label', 'many_labels')",
    );
    assert_eq!(stored[0]["n"], 0, "series over the limits are not stored");
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
        "scrape_configs:\n  - job_name: node\n    scrape_interval: 5s\n    proxy_url: http://proxy:3128\n",
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
        err.contains("scrape.yml:4:") && err.contains("proxy_url"),
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

/// A target behind HTTPS with a client certificate and basic auth, reached
/// by IP with `tls_config.server_name`; target relabeling adds labels from
/// `__meta_` and the address, metric relabeling drops, rewrites and renames;
/// wrong credentials and a certificate for another name make `up` 0, and a
/// job whose rules drop every target scrapes nothing.
#[test]
fn tls_auth_and_relabeling_apply_as_in_prometheus() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    let port = crate::server::free_port();
    let mut child = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/clients/exposition_server.py"
        ))
        .args([
            &port.to_string(),
            certs.to_str().unwrap(),
            "scraper",
            "s3cret",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect(
            "python3 runs the exposition server (cryptography: bash scripts/install-clients.sh)",
        );
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _server = crate::server::Helper(child);
    assert_eq!(line.trim(), "ready", "the exposition server did not start");
    std::fs::write(dir.path().join("password"), "s3cret\n").unwrap();
    let target = format!("127.0.0.1:{port}");
    let tls = format!(
        "{{ ca_file: '{c}/ca.pem', cert_file: '{c}/client.pem', key_file: '{c}/client-key.pem', server_name: exporter.test }}",
        c = certs.display()
    );
    let config = dir.path().join("scrape.yml");
    std::fs::write(
        &config,
        format!(
            r#"global:
  scrape_interval: 1s
scrape_configs:
  - job_name: secure
    scheme: https
    basic_auth: {{ username: scraper, password_file: password }}
    tls_config: {tls}
    static_configs:
      - targets: ['{target}']
        labels: {{ __meta_rack: r7, team: infra }}
    relabel_configs:
      - source_labels: [__meta_rack]
        target_label: rack
      - source_labels: [__address__]
        regex: '127\.0\.0\.1:(\d+)'
        target_label: port
        replacement: 'p$1'
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: 'go_.*'
        action: drop
      - source_labels: [__name__, code]
        separator: '_'
        regex: 'http_requests_total_5..'
        target_label: severity
        replacement: error
      - regex: 'build_(.*)'
        action: labelmap
      - regex: 'build_.*'
        action: labeldrop
  - job_name: wrong_password
    scheme: https
    basic_auth: {{ username: scraper, password: guess }}
    tls_config: {tls}
    static_configs: [{{ targets: ['{target}'] }}]
  - job_name: wrong_name
    scheme: https
    basic_auth: {{ username: scraper, password: s3cret }}
    tls_config: {{ ca_file: '{c}/ca.pem', cert_file: '{c}/client.pem', key_file: '{c}/client-key.pem' }}
    static_configs: [{{ targets: ['{target}'] }}]
  - job_name: all_dropped
    static_configs: [{{ targets: ['{target}'] }}]
    relabel_configs:
      - source_labels: [job]
        regex: all_dropped
        action: drop
"#,
            c = certs.display()
        ),
    )
    .unwrap();
    let s = TestServer::start(
        &dir.path().join("data"),
        &["--scrape-config", config.to_str().unwrap()],
    );
    let up = |job: &str| -> Option<f64> {
        let q = format!("SELECT value FROM up WHERE job = '{job}' ORDER BY time DESC LIMIT 1");
        let r = s
            .request(reqwest::Method::POST, "/api/v1/sql")
            .json(&serde_json::json!({ "sql": q }))
            .send()
            .ok()?;
        let rows: Vec<serde_json::Value> = r.json().ok()?;
        rows.first()?["value"].as_f64()
    };
    crate::server::wait_for("up for every job", Duration::from_secs(30), || {
        ["secure", "wrong_password", "wrong_name"]
            .iter()
            .all(|j| up(j).is_some())
    });
    assert_eq!(up("secure"), Some(1.0));
    assert_eq!(up("wrong_password"), Some(0.0), "401 is a failed scrape");
    assert_eq!(
        up("wrong_name"),
        Some(0.0),
        "the certificate names exporter.test only"
    );
    assert_eq!(
        s.metric("vigil_scrape_targets"),
        3.0,
        "all_dropped has no target"
    );

    let labels = s.sql("SELECT rack, port, team, instance FROM up WHERE job = 'secure' LIMIT 1");
    assert_eq!(labels[0]["rack"], "r7", "{labels:?}");
    assert_eq!(labels[0]["port"], format!("p{port}"));
    assert_eq!(labels[0]["team"], "infra");
    assert_eq!(labels[0]["instance"], target);
    let columns =
        s.sql("SELECT column_name FROM information_schema.columns WHERE table_name = 'up'");
    assert!(
        !columns
            .iter()
            .any(|c| c["column_name"].as_str().unwrap().starts_with("__")),
        "{columns:?}"
    );
    let requests = s.sql(
        "SELECT code, severity, max(value) AS v FROM http_requests_total WHERE job = 'secure' GROUP BY code, severity ORDER BY code",
    );
    assert_eq!(requests.len(), 2, "{requests:?}");
    assert_eq!(requests[0]["code"], "200");
    assert!(requests[0]["severity"].is_null(), "{requests:?}");
    assert_eq!(requests[1]["severity"], "error");
    assert_eq!(requests[1]["v"], 2.0);
    let info = s.sql("SELECT version FROM app_info LIMIT 1");
    assert_eq!(info[0]["version"], "1.2", "{info:?}");
    let dropped = s.sql(
        "SELECT count(*) AS n FROM information_schema.columns WHERE (table_name = 'app_info' AND column_name = 'build_version') OR table_name = 'go_goroutines'",
    );
    assert_eq!(
        dropped[0]["n"], 0,
        "go_goroutines and build_version are dropped"
    );
    let counts = s.sql(
        "SELECT (SELECT max(value) FROM scrape_samples_scraped WHERE job = 'secure') AS scraped, (SELECT max(value) FROM scrape_samples_post_metric_relabeling WHERE job = 'secure') AS kept",
    );
    assert_eq!(counts[0]["scraped"], 4.0, "{counts:?}");
    assert_eq!(counts[0]["kept"], 3.0);
}

/// Prometheus's HTTP API answer to an instant query: each series' labels
/// and value.
fn prometheus_query(url: &str, q: &str) -> Vec<(serde_json::Value, f64)> {
    let r: serde_json::Value = reqwest::blocking::Client::new()
        .get(format!("{url}/api/v1/query"))
        .query(&[("query", q)])
        .send()
        .and_then(|r| r.json())
        .unwrap_or_default();
    r["data"]["result"]
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| {
                    let v = row["value"][1].as_str().unwrap_or("NaN").parse().unwrap();
                    (row["metric"].clone(), v)
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A real node_exporter scraped by vigil and by a real Prometheus from the
/// same scrape config file: the series and the values of what does not
/// change between scrapes agree.
#[test]
fn node_exporter_scraped_by_vigil_matches_prometheus() {
    use crate::server::{free_port, wait_for, Helper};
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let exporter_port = free_port();
    let exporter = Helper(
        Command::new("/usr/bin/prometheus-node-exporter")
            .arg(format!("--web.listen-address=127.0.0.1:{exporter_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("node_exporter is installed (bash scripts/install-clients.sh)"),
    );
    let target = format!("127.0.0.1:{exporter_port}");
    wait_for("node_exporter to start", Duration::from_secs(20), || {
        reqwest::blocking::get(format!("http://{target}/metrics"))
            .is_ok_and(|r| r.status().is_success())
    });
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let prometheus_port = free_port();
    let prometheus = Helper(
        Command::new("/usr/bin/prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prometheus").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prometheus_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Prometheus is installed (bash scripts/install-clients.sh)"),
    );
    let prom = format!("http://127.0.0.1:{prometheus_port}");
    let s = TestServer::start(
        &dir.path().join("data"),
        &["--scrape-config", config.to_str().unwrap()],
    );
    wait_for(
        "both to scrape node_exporter",
        Duration::from_secs(40),
        || {
            prometheus_query(&prom, "up{job=\"node\"}")
            .first()
            .is_some_and(|(_, v)| *v == 1.0)
            && s
                .request(reqwest::Method::POST, "/api/v1/sql")
                .json(&serde_json::json!({ "sql": "SELECT max(value) AS v FROM up WHERE job = 'node'" }))
                .send()
                .ok()
                .and_then(|r| r.json::<Vec<serde_json::Value>>().ok())
                .is_some_and(|rows| rows.first().is_some_and(|r| r["v"] == 1.0))
        },
    );

    // Memory size: one series, the same value (a name with capitals is
    // quoted in SQL, as in PostgreSQL).
    let p = prometheus_query(&prom, "node_memory_MemTotal_bytes");
    let v = s.sql("SELECT value FROM \"node_memory_MemTotal_bytes\" ORDER BY time DESC LIMIT 1");
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(v[0]["value"].as_f64(), Some(p[0].1), "{v:?} vs {p:?}");
    assert_eq!(p[0].0["instance"], target);

    // CPU time: the same (cpu, mode) series.
    let mut p_cpu: Vec<(String, String)> = prometheus_query(&prom, "node_cpu_seconds_total")
        .iter()
        .map(|(m, _)| {
            (
                m["cpu"].as_str().unwrap().to_string(),
                m["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    p_cpu.sort();
    let mut v_cpu: Vec<(String, String)> = s
        .sql("SELECT DISTINCT cpu, mode FROM node_cpu_seconds_total")
        .iter()
        .map(|r| {
            (
                r["cpu"].as_str().unwrap().to_string(),
                r["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    v_cpu.sort();
    assert!(!p_cpu.is_empty());
    assert_eq!(v_cpu, p_cpu);

    // Filesystem sizes per mount point: the same values.
    let mut p_fs: Vec<(String, f64)> = prometheus_query(&prom, "node_filesystem_size_bytes")
        .iter()
        .map(|(m, v)| (m["mountpoint"].as_str().unwrap().to_string(), *v))
        .collect();
    p_fs.sort_by(|a, b| a.0.cmp(&b.0));
    let mut v_fs: Vec<(String, f64)> = s
        .sql("SELECT mountpoint, last_value(value ORDER BY time) AS v FROM node_filesystem_size_bytes GROUP BY mountpoint")
        .iter()
        .map(|r| (r["mountpoint"].as_str().unwrap().to_string(), r["v"].as_f64().unwrap()))
        .collect();
    v_fs.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(v_fs, p_fs);

    // The build info's labels, and about as many samples per scrape (the
    // exporter's own process metrics may differ by a few between scrapes).
    let p_build = prometheus_query(&prom, "node_exporter_build_info");
    let v_build = s.sql("SELECT version, goversion FROM node_exporter_build_info LIMIT 1");
    assert_eq!(v_build[0]["version"], p_build[0].0["version"]);
    assert_eq!(v_build[0]["goversion"], p_build[0].0["goversion"]);
    let p_n = prometheus_query(&prom, "scrape_samples_scraped{job=\"node\"}")[0].1;
    let v_n = s.sql(
        "SELECT value FROM scrape_samples_scraped WHERE job = 'node' ORDER BY time DESC LIMIT 1",
    )[0]["value"]
        .as_f64()
        .unwrap();
    assert!(
        (p_n - v_n).abs() <= p_n * 0.02,
        "Prometheus scraped {p_n} samples, vigil {v_n}"
    );
    drop(prometheus);
    drop(exporter);
}
