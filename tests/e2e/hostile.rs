//! The attacks and careless clients of the safe-core review, each against the real
//! binary: every one gets a clear error, the server stays up with bounded memory,
//! and every acknowledged point is still there afterwards, exactly.

use std::io::Write;
use std::process::{Command, Stdio};

use reqwest::Method;

use crate::server::{free_port, TestServer, BIN};

/// Resident memory of the server process, in bytes.
fn rss(server: &TestServer) -> u64 {
    let pid = server.child.as_ref().expect("running").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

fn sql_status(server: &TestServer, q: &str) -> (u16, String) {
    let r = server
        .request(Method::POST, "/api/v1/sql")
        .json(&serde_json::json!({"sql": q}))
        .send()
        .unwrap();
    (r.status().as_u16(), r.text().unwrap())
}

fn count(server: &TestServer, table: &str) -> i64 {
    let rows = server.sql(&format!("SELECT count(*) AS n FROM \"{table}\""));
    rows[0]["n"].as_i64().unwrap()
}

fn psql(server: &TestServer, user: &str, password: &str, sql: &str) -> std::process::Output {
    let (host, port) = server.pg_addr.split_once(':').unwrap();
    Command::new("psql")
        .args([
            "-h", host, "-p", port, "-U", user, "-d", "vigil", "-X", "-A", "-t",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .expect("psql")
}

fn flight(server: &TestServer, kwargs: &str, sql: &str) -> String {
    let script = format!(
        r#"
import sys, adbc_driver_flightsql.dbapi as f, adbc_driver_flightsql as fs, adbc_driver_manager
try:
    with f.connect(sys.argv[1], db_kwargs={kwargs}) as c, c.cursor() as cur:
        cur.execute(sys.argv[2])
        print(cur.fetchall())
except adbc_driver_manager.Error as e:
    print("ERR " + str(e).replace("\n", " "))
"#
    );
    let out = Command::new("python3")
        .args([
            "-c",
            &script,
            &format!("grpc://{}", server.flight_addr),
            sql,
        ])
        .output()
        .expect("python3");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// DDL, DML, COPY, file access and shared SETs are refused on HTTP, pgwire and
/// Flight SQL alike, and change nothing.
#[test]
fn sql_is_read_only_on_every_front_end() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    s.write_lp("cpu,host=a usage=1 1\ncpu,host=b usage=2 2");
    let target = dir.path().join("stolen.csv");
    let attacks = [
        "CREATE EXTERNAL TABLE passwd (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'"
            .to_string(),
        format!("COPY (SELECT 1) TO '{}'", target.display()),
        "DROP SCHEMA public CASCADE".to_string(),
        "CREATE TABLE public.cpu AS SELECT 'forged' AS host, 99.0 AS usage".to_string(),
        "INSERT INTO cpu (host, usage) VALUES ('x', 1.0)".to_string(),
        "CREATE VIEW v AS SELECT 1".to_string(),
        "SET datafusion.execution.batch_size = 1".to_string(),
    ];
    for a in &attacks {
        let (status, body) = sql_status(&s, a);
        assert_eq!(status, 403, "HTTP {a}: {body}");
        assert!(body.contains("read-only"), "HTTP {a}: {body}");
        let out = psql(&s, "postgres", "", a);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "pgwire accepted {a}");
        // Statements the Postgres dialect cannot even parse (CREATE EXTERNAL
        // TABLE) fail as syntax errors; the rest name the rule.
        assert!(
            err.contains("read-only") || err.contains("not allowed") || err.contains("parser"),
            "pgwire {a}: {err}"
        );
        let out = flight(&s, "{}", a);
        assert!(out.starts_with("ERR"), "Flight accepted {a}: {out}");
        assert!(out.contains("read-only"), "Flight {a}: {out}");
    }
    assert!(!target.exists(), "COPY wrote a file");
    // Nothing changed: the table is still there, with its two acknowledged points,
    // and per-connection settings still work on pgwire.
    assert_eq!(count(&s, "cpu"), 2);
    let out = psql(
        &s,
        "postgres",
        "",
        "SET statement_timeout = 5000; SELECT count(*) FROM cpu",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().last(), Some("2"), "{stdout}");
    let batch = s.sql("SELECT value FROM information_schema.df_settings WHERE name = 'datafusion.execution.batch_size'");
    assert_ne!(batch[0]["value"], "1", "a SET reached the shared settings");
}

/// Duplicate keys, odd identifiers, column explosions, error floods, snappy and
/// gzip bombs, writes over many days: each is answered clearly and the good data
/// of the same requests is stored, exactly.
#[test]
fn hostile_writes_are_bounded_and_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    let mut acknowledged = 0i64;

    // A repeated tag or field rejects its line only.
    let r = s.write(
        "/api/v3/write_lp?precision=s",
        "m,a=1,a=2 f=1 1\nm,a=1 f=1 2\nm,a=1 f=1,f=2 3\nm,a=2 f=3 4",
    );
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["lines_written"], 2, "{v}");
    assert_eq!(v["data"][0]["line_number"], 1, "{v}");
    assert!(v["data"][0]["error_message"]
        .as_str()
        .unwrap()
        .contains("tag 'a' is given more than once"));
    assert_eq!(v["data"][1]["line_number"], 3, "{v}");
    acknowledged += 2;
    assert_eq!(count(&s, "m"), acknowledged);

    // Names are used as written: case and dots do not break the table.
    s.write_lp("odd,host=a Usage=1,host.name=\"x\",usage=2 5");
    let rows = s.sql("SELECT \"Usage\", \"host.name\", usage FROM odd");
    assert_eq!(rows[0]["Usage"], 1.0);
    assert_eq!(rows[0]["host.name"], "x");
    assert_eq!(rows[0]["usage"], 2.0);
    assert_eq!(count(&s, "odd"), 1);
    // Internal column names are reserved.
    let r = s.write("/api/v3/write_lp", "odd __row_number=1 6");
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("reserved"));

    // A column explosion: 30,000 lines with distinct field names (~400 KB). The
    // table stops at its column limit, each further line is rejected naming it,
    // and memory stays small.
    let body: String = (0..30_000).map(|i| format!("wide f{i}=1 {i}\n")).collect();
    let r = s.write("/api/v3/write_lp", body);
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["lines_written"], 1000, "{}", v["error"]);
    assert_eq!(v["lines_rejected"], 29_000);
    assert!(v["data"][0]["error_message"]
        .as_str()
        .unwrap()
        .contains("storage.max_columns_per_table"));
    assert_eq!(
        v["data"].as_array().unwrap().len(),
        100,
        "error list capped"
    );
    assert_eq!(count(&s, "wide"), 1000);
    assert!(rss(&s) < 2 << 30, "RSS {}", rss(&s));

    // An error flood: 2 M bad lines in a small gzip body get a small reply.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for _ in 0..2_000_000 {
        gz.write_all(b"x\n").unwrap();
    }
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 64 << 10, "gzip body {} bytes", gz.len());
    let r = s
        .request(Method::POST, "/api/v3/write_lp")
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let text = r.text().unwrap();
    assert!(text.len() < 64 << 10, "reply of {} bytes", text.len());
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["lines_rejected"], 2_000_000);

    // Gzip with two members: both are read.
    let member = |lp: &str| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(lp.as_bytes()).unwrap();
        e.finish().unwrap()
    };
    let mut two = member("m,a=3 f=1 10\n");
    two.extend(member("m,a=4 f=1 11\n"));
    let r = s
        .request(Method::POST, "/api/v3/write_lp")
        .header("content-encoding", "gzip")
        .body(two)
        .send()
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    acknowledged += 2;
    assert_eq!(count(&s, "m"), acknowledged);

    // A snappy header announcing 4 GiB in a 6-byte remote-write body.
    let r = s.write("/api/v1/write", vec![0xffu8, 0xff, 0xff, 0xff, 0x0f, 0x00]);
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("http.max_body_bytes"));

    // One remote-write series with 200 labels and 60,000 samples (~1 MB on the
    // wire) would expand to 12 M label values in memory: refused, naming the limit.
    let series = vigil_ingest::TimeSeries {
        labels: std::iter::once(("__name__".to_string(), "rw".to_string()))
            .chain((0..199).map(|i| (format!("l{i}"), "v".to_string())))
            .map(|(name, value)| vigil_ingest::Label { name, value })
            .collect(),
        samples: (0..60_000)
            .map(|t| vigil_ingest::Sample {
                value: 1.0,
                timestamp: t,
            })
            .collect(),
    };
    let body = vigil_ingest::encode_remote_write(&vigil_ingest::WriteRequest {
        timeseries: vec![series],
    });
    let r = s.write("/api/v1/write", body);
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .unwrap()
        .contains("write.max_label_values_per_request"));

    // Remote write read in place: a label that is not UTF-8 refuses the whole
    // request, naming the byte; nothing of it is stored.
    let rw =
        |name: &str, labels: &[(&str, &str)], samples: &[(f64, i64)]| vigil_ingest::TimeSeries {
            labels: std::iter::once(("__name__", name))
                .chain(labels.iter().copied())
                .map(|(n, v)| vigil_ingest::Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(value, timestamp)| vigil_ingest::Sample { value, timestamp })
                .collect(),
        };
    let t0 = 1_767_225_600_000i64;
    let whole = vigil_ingest::encode_remote_write(&vigil_ingest::WriteRequest {
        timeseries: vec![
            rw("rw_whole", &[("host", "a")], &[(1.0, t0)]),
            rw("rw_whole", &[("host", "bX")], &[(2.0, t0)]),
        ],
    });
    let mut raw = snap::raw::Decoder::new().decompress_vec(&whole).unwrap();
    let at = raw.iter().position(|b| *b == b'X').unwrap();
    raw[at] = 0xff;
    let r = s.write(
        "/api/v1/write",
        snap::raw::Encoder::new().compress_vec(&raw).unwrap(),
    );
    assert_eq!(r.status(), 400);
    let text = r.text().unwrap();
    assert!(
        text.contains("not UTF-8") && text.contains("at byte"),
        "{text}"
    );
    let tables =
        s.sql("SELECT count(*) AS n FROM information_schema.tables WHERE table_name = 'rw_whole'");
    assert_eq!(tables[0]["n"], 0);

    // A large request and then a small one (the decompression buffer is kept
    // between requests): each stores exactly its own series; a nameless series
    // is rejected by number and a stale marker is not a value.
    let big = vigil_ingest::WriteRequest {
        timeseries: (0..3000)
            .map(|i| rw("rw_big", &[("i", &i.to_string())], &[(i as f64, t0)]))
            .collect(),
    };
    let r = s.write("/api/v1/write", vigil_ingest::encode_remote_write(&big));
    assert_eq!(r.status(), 204, "{}", r.text().unwrap());
    let stale = f64::from_bits(0x7ff0_0000_0000_0002);
    let small = vigil_ingest::WriteRequest {
        timeseries: vec![
            rw(
                "rw_small",
                &[("host", "a")],
                &[(f64::INFINITY, t0), (stale, t0 + 1)],
            ),
            vigil_ingest::TimeSeries {
                labels: vec![vigil_ingest::Label {
                    name: "job".into(),
                    value: "x".into(),
                }],
                samples: vec![vigil_ingest::Sample {
                    value: 1.0,
                    timestamp: t0,
                }],
            },
        ],
    };
    let r = s.write("/api/v1/write", vigil_ingest::encode_remote_write(&small));
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["lines_written"], 1, "{v}");
    assert_eq!(v["data"][0]["line_number"], 2, "{v}");
    assert_eq!(count(&s, "rw_big"), 3000);
    assert_eq!(count(&s, "rw_small"), 1);
    let sum = s.sql("SELECT sum(value) AS s FROM rw_big");
    assert_eq!(sum[0]["s"].as_f64().unwrap(), (0..3000).sum::<i64>() as f64);

    // One write scattered over 500 days: the points past the day limit are
    // rejected, naming it.
    let day = 86_400i64;
    let body: String = (0..500)
        .map(|d| format!("days f=1 {}\n", d * day))
        .collect();
    let r = s.write("/api/v3/write_lp?precision=s", body);
    assert_eq!(r.status(), 400);
    let v: serde_json::Value = r.json().unwrap();
    assert_eq!(v["lines_written"], 400);
    assert!(v["data"][0]["error_message"]
        .as_str()
        .unwrap()
        .contains("write.max_days_per_write"));
    assert_eq!(count(&s, "days"), 400);

    // After all that, the server is healthy, and a restart (WAL replay) finds
    // exactly what was acknowledged.
    let h = s.request(Method::GET, "/health").send().unwrap();
    assert_eq!(h.status(), 200);
    let mut s = s;
    s.restart();
    assert_eq!(count(&s, "m"), acknowledged);
    assert_eq!(count(&s, "wide"), 1000);
    assert_eq!(count(&s, "days"), 400);
    assert_eq!(count(&s, "odd"), 1);
}

/// A write larger than the WAL record limit is refused before it is acknowledged;
/// smaller writes go on.
#[test]
fn oversized_wal_record_is_refused_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[storage]\nmax_wal_record_bytes = 100000\n").unwrap();
    let data = dir.path().join("data");
    let s = TestServer::start(&data, &["--config", cfg.to_str().unwrap()]);
    let body: String = (0..20_000)
        .map(|i| format!("big,host=h{i} v=1 {i}\n"))
        .collect();
    let r = s.write("/api/v3/write_lp", body);
    assert_eq!(r.status(), 413);
    assert!(r.text().unwrap().contains("storage.max_wal_record_bytes"));
    s.write_lp("big,host=a v=1 1");
    let mut s = s;
    s.restart();
    assert_eq!(count(&s, "big"), 1, "only the acknowledged point");
}

/// Two clients each stream a two-billion-row result at once: results stream (the
/// server does not collect them), memory stays bounded, and both end at the query
/// timeout while the server stays healthy.
#[test]
fn giant_concurrent_queries_stream_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &["--query-timeout", "4s"]);
    s.write_lp("cpu,host=a usage=1 1");
    let url = format!("{}/api/v1/sql", s.url);
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let mut r = reqwest::blocking::Client::new()
                    .post(url)
                    .json(&serde_json::json!({"sql": "SELECT * FROM generate_series(1, 2000000000)", "format": "csv"}))
                    .send()
                    .unwrap();
                assert_eq!(r.status(), 200);
                // Read until the server ends the body (the timeout cuts it short,
                // so the read ends in an error after many bytes).
                let mut buf = vec![0u8; 1 << 16];
                let mut total = 0u64;
                loop {
                    match std::io::Read::read(&mut r, &mut buf) {
                        Ok(0) | Err(_) => break total,
                        Ok(n) => total += n as u64,
                    }
                }
            })
        })
        .collect();
    let mut peak = 0u64;
    while clients.iter().any(|c| !c.is_finished()) {
        peak = peak.max(rss(&s));
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let read: Vec<u64> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    assert!(
        read.iter().all(|n| *n > 1 << 20),
        "results streamed: {read:?}"
    );
    assert!(peak < 2 << 30, "peak RSS {peak}");
    let h = s.request(Method::GET, "/health").send().unwrap();
    assert_eq!(h.status(), 200);
    assert_eq!(count(&s, "cpu"), 1);
}

/// A data directory whose catalog was lost does not start (which would delete the
/// Parquet files as orphans); the files stay.
#[test]
fn missing_catalog_stops_start_up_and_keeps_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = TestServer::start(dir.path(), &[]);
    s.write_lp("cpu,host=a usage=1 1");
    s.stop(); // the shutdown flush writes a Parquet file
    let parquet: Vec<_> = std::fs::read_dir(dir.path().join("parquet"))
        .unwrap()
        .collect();
    assert!(!parquet.is_empty());
    std::fs::remove_file(dir.path().join("catalog.json")).unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--http-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--flight-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--pg-addr", &format!("127.0.0.1:{}", free_port())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no catalog.json"), "{err}");
    let after: Vec<_> = std::fs::read_dir(dir.path().join("parquet"))
        .unwrap()
        .collect();
    assert_eq!(after.len(), parquet.len(), "files kept");
}

/// With tokens configured, every listener wants them: HTTP (401 without, 403 for
/// the wrong permission or table), pgwire (SCRAM), Flight SQL.
#[test]
fn tokens_guard_all_three_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let writer = vigil_hash("w-secret");
    let reader = vigil_hash("r-secret");
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "[[auth.tokens]]\nname = \"writer\"\nsecret_hash = \"{writer}\"\npermissions = [\"write\"]\ntables = [\"team_\"]\n\n\
             [[auth.tokens]]\nname = \"reader\"\nsecret_hash = \"{reader}\"\npermissions = [\"query\"]\n"
        ),
    )
    .unwrap();
    let mut s = TestServer::start(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let post = |s: &TestServer, path: &str, auth: Option<&str>, body: &str| {
        let mut r = s
            .client()
            .post(format!("{}{}", s.url, path))
            .body(body.to_string());
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        let r = r.send().unwrap();
        (r.status().as_u16(), r.text().unwrap())
    };
    let lp = "team_cpu,host=a v=1 1\nother v=1 1";
    assert_eq!(post(&s, "/api/v3/write_lp", None, lp).0, 401);
    assert_eq!(post(&s, "/api/v3/write_lp", Some("Bearer nope"), lp).0, 401);
    assert_eq!(
        post(&s, "/api/v3/write_lp", Some("Bearer r-secret"), lp).0,
        403
    );
    // InfluxDB's Token scheme and v1's p parameter work; the token writes only its
    // tables.
    let (status, body) = post(&s, "/api/v3/write_lp", Some("Token w-secret"), lp);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("permission denied: table 'other'"), "{body}");
    let (status, body) = post(
        &s,
        "/write?db=x&u=any&p=w-secret",
        None,
        "team_cpu,host=b v=2 2",
    );
    assert_eq!(status, 204, "{body}");
    let basic = format!("Basic {}", base64_encode(b"prometheus:w-secret"));
    assert_eq!(
        post(&s, "/write", Some(&basic), "team_cpu,host=c v=3 3").0,
        204
    );
    // Queries need the query permission.
    assert_eq!(
        post(&s, "/api/v1/sql", Some("Bearer w-secret"), "SELECT 1").0,
        403
    );
    s.token = Some("r-secret".into());
    assert_eq!(count(&s, "team_cpu"), 3);
    let m = s.client().get(format!("{}/metrics", s.url)).send().unwrap();
    assert_eq!(m.status(), 401, "metrics need a token");
    let h = s.client().get(format!("{}/health", s.url)).send().unwrap();
    assert_eq!(h.status(), 200, "health is open");

    // pgwire: SCRAM with the token's name and secret.
    let ok = psql(&s, "reader", "r-secret", "SELECT count(*) FROM team_cpu");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "3");
    for (user, pw) in [
        ("reader", "wrong"),
        ("nobody", "r-secret"),
        ("writer", "w-secret"),
    ] {
        let out = psql(&s, user, pw, "SELECT 1");
        assert!(!out.status.success(), "psql as {user}/{pw} got in");
    }
    // Flight SQL: bearer and basic; wrong or missing credentials refused.
    assert!(flight(
        &s,
        "{fs.DatabaseOptions.AUTHORIZATION_HEADER.value: 'Bearer r-secret'}",
        "SELECT count(*) FROM team_cpu"
    )
    .contains("(3,)"));
    assert!(flight(
        &s,
        "{'username': 'reader', 'password': 'r-secret'}",
        "SELECT 1"
    )
    .contains("(1,)"));
    let e = flight(&s, "{}", "SELECT 1");
    assert!(e.starts_with("ERR") && e.contains("UNAUTHENTICATED"), "{e}");
    let e = flight(
        &s,
        "{fs.DatabaseOptions.AUTHORIZATION_HEADER.value: 'Bearer w-secret'}",
        "SELECT 1",
    );
    assert!(e.starts_with("ERR"), "{e}");
    s.kill();
}

/// Without tokens: loopback only, and the Host header must name loopback (DNS
/// rebinding); a public address is refused at start-up unless --insecure.
#[test]
fn without_tokens_only_loopback_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    let r = s
        .client()
        .get(format!("{}/api/v1/sql?q=SELECT%201", s.url))
        .header("host", "attacker.example:8181")
        .send()
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.text().unwrap().contains("not a loopback name"));
    let r = s
        .client()
        .get(format!("{}/api/v1/sql?q=SELECT%201", s.url))
        .header("host", "localhost:8181")
        .send()
        .unwrap();
    assert_eq!(r.status(), 200);

    let out = Command::new(BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--http-addr", &format!("0.0.0.0:{}", free_port())])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--insecure"), "{err}");
}

fn vigil_hash(secret: &str) -> String {
    let mut child = Command::new(BIN)
        .args(["auth", "hash"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{secret}\n").as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

fn base64_encode(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}
