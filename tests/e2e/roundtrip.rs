//! Written data comes back exactly, through the HTTP SQL API and the CLI.

use std::collections::BTreeMap;
use std::io::Write;

use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use crate::server::TestServer;

#[test]
fn all_field_types_escaping_precisions_and_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    // v3 endpoint, seconds.
    let r = s.write(
        "/api/v3/write_lp?db=d&precision=s",
        "weather,city=New\\ York,state=NY temp=21.5,humidity=40i,visits=7u,sunny=true,note=\"a \\\"quoted\\\" word, and comma\" 1700000000\n\
         weather,city=Paris temp=-3.25,sunny=false 1700000010\n",
    );
    assert_eq!(r.status(), 204);
    // v2 endpoint, milliseconds, gzip.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(b"weather,city=Oslo temp=0.125 1700000020000\n")
        .unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v2/write?bucket=d&precision=ms", s.url))
        .header("Content-Encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 204);
    // v1 endpoint, nanoseconds by default.
    let r = s.write(
        "/write?db=d",
        "weather,city=Rome temp=30 1700000030000000000",
    );
    assert_eq!(r.status(), 204);

    let rows = s.sql(
        "SELECT city, state, temp, humidity, visits, sunny, note, CAST(time AS BIGINT) AS t FROM weather ORDER BY t",
    );
    let expected = vec![
        json!({"city": "New York", "state": "NY", "temp": 21.5, "humidity": 40, "visits": 7, "sunny": true, "note": "a \"quoted\" word, and comma", "t": 1_700_000_000_000_000_000i64}),
        json!({"city": "Paris", "state": null, "temp": -3.25, "humidity": null, "visits": null, "sunny": false, "note": null, "t": 1_700_000_010_000_000_000i64}),
        json!({"city": "Oslo", "state": null, "temp": 0.125, "humidity": null, "visits": null, "sunny": null, "note": null, "t": 1_700_000_020_000_000_000i64}),
        json!({"city": "Rome", "state": null, "temp": 30.0, "humidity": null, "visits": null, "sunny": null, "note": null, "t": 1_700_000_030_000_000_000i64}),
    ];
    let got: Vec<Value> = rows.into_iter().map(Value::Object).collect();
    assert_eq!(got, expected);

    // Timestamps are UTC instants; string literals compare against them.
    let rows = s.sql("SELECT city FROM weather WHERE time >= '2023-11-14T22:13:30Z' AND time < '2023-11-14T22:13:50Z' ORDER BY city");
    let cities: Vec<&str> = rows.iter().map(|r| r["city"].as_str().unwrap()).collect();
    assert_eq!(cities, ["Oslo", "Paris"]);

    // information_schema and SHOW TABLES list the measurement and its columns.
    let rows = s.sql("SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'weather' ORDER BY column_name");
    let cols: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                r["column_name"].as_str().unwrap(),
                r["data_type"].as_str().unwrap()
            )
        })
        .collect();
    assert!(
        cols.contains(&"city:Dictionary(Int32, Utf8)".to_string()),
        "{cols:?}"
    );
    assert!(cols.contains(&"visits:UInt64".to_string()), "{cols:?}");
    assert!(
        cols.iter().any(|c| c.starts_with("time:Timestamp(ns")),
        "{cols:?}"
    );
    let rows = s.sql("SHOW TABLES");
    assert!(rows.iter().any(|r| r["table_name"] == "weather"));

    // The other output formats carry the same data.
    let csv = reqwest::blocking::get(format!(
        "{}/api/v1/sql?q=SELECT%20city,temp%20FROM%20weather%20ORDER%20BY%20city&format=csv",
        s.url
    ))
    .unwrap()
    .text()
    .unwrap();
    assert_eq!(
        csv,
        "city,temp\nNew York,21.5\nOslo,0.125\nParis,-3.25\nRome,30.0\n"
    );
    let jsonl = reqwest::blocking::get(format!("{}/api/v1/sql?q=SELECT%20city%20FROM%20weather%20ORDER%20BY%20city%20LIMIT%202&format=jsonl", s.url)).unwrap().text().unwrap();
    assert_eq!(jsonl, "{\"city\":\"New York\"}\n{\"city\":\"Oslo\"}\n");

    // The CLI prints a table, CSV or JSON.
    let out = s.cli(&[
        "query",
        "SELECT city, temp FROM weather WHERE city = 'Oslo'",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("| Oslo | 0.125 |"), "{table}");
    let out = s.cli(&[
        "query",
        "--format",
        "csv",
        "SELECT count(*) AS n FROM weather",
    ]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "n\n4\n");
    let out = s.cli(&["query", "SELECT nope FROM weather"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    // Schema evolution survives a restart (graceful: the buffer is flushed).
    let mut s = s;
    s.stop();
    let s = TestServer::start(dir.path(), &[]);
    s.write_lp("weather,city=Oslo,country=NO wind=5i 1700000040000000000");
    let rows = s.sql("SELECT country, wind, temp FROM weather WHERE city = 'Oslo' ORDER BY time");
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0]["temp"], json!(0.125));
    assert_eq!(rows[1]["country"], json!("NO"));
    assert_eq!(rows[1]["wind"], json!(5));
}

#[derive(Default, Clone, Copy)]
struct Expected {
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
    isum: i64,
}

fn expected_by_host(points: &BTreeMap<(usize, i64), (f64, i64)>) -> BTreeMap<String, Expected> {
    let mut out: BTreeMap<String, Expected> = BTreeMap::new();
    for ((h, _), (v, i)) in points {
        let e = out.entry(format!("host_{h:02}")).or_insert(Expected {
            min: f64::MAX,
            max: f64::MIN,
            ..Default::default()
        });
        e.count += 1;
        e.sum += v;
        e.min = e.min.min(*v);
        e.max = e.max.max(*v);
        e.isum += i;
    }
    out
}

fn check(s: &TestServer, points: &BTreeMap<(usize, i64), (f64, i64)>) {
    let expected = expected_by_host(points);
    let rows = s.sql("SELECT host, count(*) AS n, sum(usage) AS s, min(usage) AS lo, max(usage) AS hi, sum(reqs) AS r FROM cpu GROUP BY host ORDER BY host");
    assert_eq!(rows.len(), expected.len());
    for (row, (host, e)) in rows.iter().zip(&expected) {
        assert_eq!(row["host"].as_str().unwrap(), host);
        assert_eq!(row["n"].as_u64().unwrap(), e.count, "count of {host}");
        let sum = row["s"].as_f64().unwrap();
        assert!(
            (sum - e.sum).abs() <= 1e-9 * e.sum.abs().max(1.0),
            "sum of {host}: {sum} vs {}",
            e.sum
        );
        assert_eq!(row["lo"].as_f64().unwrap(), e.min, "min of {host}");
        assert_eq!(row["hi"].as_f64().unwrap(), e.max, "max of {host}");
        assert_eq!(row["r"].as_i64().unwrap(), e.isum, "int sum of {host}");
    }
    let total = s.sql("SELECT count(*) AS n FROM cpu");
    assert_eq!(total[0]["n"].as_u64().unwrap(), points.len() as u64);
}

#[test]
fn aggregates_over_many_points_with_overwrites_flushes_and_compaction() {
    const HOSTS: usize = 20;
    const STEPS: i64 = 6_000;
    let base: i64 = 1_750_000_000_000_000_000;
    let dir = tempfile::tempdir().unwrap();
    // Small flush threshold and a fast compactor so data crosses every tier of storage.
    let mut s = TestServer::start(
        dir.path(),
        &[
            "--flush-max-rows",
            "25000",
            "--compaction-interval",
            "1s",
            "--compaction-min-files",
            "2",
        ],
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut points: BTreeMap<(usize, i64), (f64, i64)> = BTreeMap::new();
    let mut body = String::new();
    let send = |body: &mut String| {
        if !body.is_empty() {
            s.write_lp(body);
            body.clear();
        }
    };
    for step in 0..STEPS {
        for h in 0..HOSTS {
            let v = (rng.gen_range(0..100_000) as f64) / 1000.0;
            let i = rng.gen_range(-1000..1000i64);
            let t = base + step * 10_000_000_000;
            points.insert((h, t), (v, i));
            body.push_str(&format!(
                "cpu,host=host_{h:02},region=r{} usage={v},reqs={i}i {t}\n",
                h % 3
            ));
        }
        if body.len() > 400_000 {
            send(&mut body);
        }
    }
    send(&mut body);
    assert_eq!(points.len(), HOSTS * STEPS as usize);
    check(&s, &points);

    // Overwrite random earlier points (now in Parquet): last write wins everywhere.
    for _ in 0..2_000 {
        let h = rng.gen_range(0..HOSTS);
        let t = base + rng.gen_range(0..STEPS) * 10_000_000_000;
        let v = (rng.gen_range(0..100_000) as f64) / 1000.0;
        let i = rng.gen_range(-1000..1000i64);
        points.insert((h, t), (v, i));
        body.push_str(&format!(
            "cpu,host=host_{h:02},region=r{} usage={v},reqs={i}i {t}\n",
            h % 3
        ));
    }
    send(&mut body);
    check(&s, &points);

    // Wait for at least one compaction, then check again.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let m = reqwest::blocking::get(format!("{}/metrics", s.url))
            .unwrap()
            .text()
            .unwrap();
        let compactions = m
            .lines()
            .find(|l| l.starts_with("vigil_compactions_total"))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0);
        if compactions >= 1.0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no compaction happened:\n{m}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    check(&s, &points);

    // A restart (graceful) keeps everything.
    s.stop();
    let s = TestServer::start(dir.path(), &[]);
    check(&s, &points);
    // Time-range and tag filters prune but do not change results.
    let lo = base + 1000 * 10_000_000_000;
    let hi = base + 2000 * 10_000_000_000;
    let expected: f64 = points
        .iter()
        .filter(|((h, t), _)| *h == 3 && *t >= lo && *t < hi)
        .map(|(_, (v, _))| v)
        .sum();
    let n = points
        .iter()
        .filter(|((h, t), _)| *h == 3 && *t >= lo && *t < hi)
        .count();
    let rows = s.sql(&format!(
        "SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = 'host_03' AND time >= to_timestamp_nanos({lo}) AND time < to_timestamp_nanos({hi})"
    ));
    assert_eq!(rows[0]["n"].as_u64().unwrap(), n as u64);
    assert!((rows[0]["s"].as_f64().unwrap() - expected).abs() < 1e-6);
    // Everything is flushed: the same query again comes from the result cache (run
    // it a few times: a compaction finishing in between rightly causes a miss).
    for _ in 0..3 {
        let again = s.sql(&format!(
            "SELECT count(*) AS n, sum(usage) AS s FROM cpu WHERE host = 'host_03' AND time >= to_timestamp_nanos({lo}) AND time < to_timestamp_nanos({hi})"
        ));
        assert_eq!(again, rows);
    }

    let m = reqwest::blocking::get(format!("{}/metrics", s.url))
        .unwrap()
        .text()
        .unwrap();
    let hits = m
        .lines()
        .find(|l| l.starts_with("vigil_query_result_cache_hits_total"))
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|v| v.parse::<f64>().ok());
    assert!(hits.is_some_and(|h| h >= 1.0), "{m}");
    assert!(m.contains("vigil_queries_total"), "{m}");
    assert!(m.contains("vigil_parquet_files "), "{m}");
}

#[test]
fn cli_write_sends_a_file_and_reports_bad_lines_by_file_line() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &[]);
    let file = dir.path().join("data.lp");
    let mut text = String::new();
    for i in 0..5000 {
        text.push_str(&format!(
            "disk,dev=sda{} used={}i {}\n",
            i % 4,
            i,
            1_000 + i
        ));
    }
    text.push_str("disk,dev=sda0 used=oops 99999\n");
    std::fs::write(&file, &text).unwrap();
    // Small batches so the bad line's number must be translated across requests.
    let out = s.cli(&["write", "--batch-bytes", "10000", file.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("line 5001:"), "{stderr}");
    assert!(stderr.contains("wrote 5000 lines, 1 rejected"), "{stderr}");
    let rows = s.sql("SELECT count(*) AS n, sum(used) AS s FROM disk");
    assert_eq!(rows[0]["n"], json!(5000));
    assert_eq!(rows[0]["s"], json!((0..5000i64).sum::<i64>()));
}
