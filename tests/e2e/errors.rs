//! Bad input gets a clear error and never takes good data down with it.

use serde_json::Value;

use crate::server::TestServer;

#[test]
fn bad_lines_are_rejected_one_by_one() {
    let dir = tempfile::tempdir().unwrap();
    let s = TestServer::start(dir.path(), &["--max-body-bytes", "100000"]);
    let body = "m,host=a v=1 1\n\
                m,host=a v=\"text\" 2\n\
                this is not line protocol\n\
                m,host=b v=2 3\n\
                m,host=c v=3i 4\n\
                m v=4,v2=true 5";
    let r = s.write("/api/v3/write_lp?db=x", body);
    assert_eq!(r.status(), 400);
    let v: Value = r.json().unwrap();
    assert_eq!(v["lines_written"], 3, "{v}");
    assert_eq!(v["lines_rejected"], 3, "{v}");
    let data = v["data"].as_array().unwrap();
    let lines: Vec<u64> = data
        .iter()
        .map(|d| d["line_number"].as_u64().unwrap())
        .collect();
    assert_eq!(lines, [2, 3, 5]);
    assert!(
        data[0]["error_message"]
            .as_str()
            .unwrap()
            .contains("field 'v' of table 'm' is float, got string"),
        "{v}"
    );
    assert_eq!(data[1]["original_line"], "this is not line protocol");
    assert!(
        data[2]["error_message"]
            .as_str()
            .unwrap()
            .contains("got integer"),
        "{v}"
    );
    let rows = s.sql("SELECT count(*) AS n, sum(v) AS s FROM m");
    assert_eq!(rows[0]["n"], 3);
    assert_eq!(rows[0]["s"], 7.0);

    // Oversized bodies get 413, compressed or not, and nothing is written.
    let big = format!("m v=1 {}\n", 10).repeat(20_000);
    let r = s.write("/api/v3/write_lp?db=x", big.clone());
    assert_eq!(r.status(), 413);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, big.as_bytes()).unwrap();
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v3/write_lp", s.url))
        .header("Content-Encoding", "gzip")
        .body(gz.finish().unwrap())
        .send()
        .unwrap();
    assert_eq!(r.status(), 413);
    assert!(r
        .text()
        .unwrap()
        .contains("larger than the limit of 100000 bytes"));
    let rows = s.sql("SELECT count(*) AS n FROM m");
    assert_eq!(rows[0]["n"], 3);

    // Other malformed requests.
    let r = s.write("/api/v3/write_lp?precision=weeks", "m v=1");
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("unknown precision 'weeks'"));
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/api/v3/write_lp", s.url))
        .header("Content-Encoding", "gzip")
        .body("not gzip at all")
        .send()
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = s.write(
        "/api/v3/write_lp",
        vec![b'm', b' ', b'v', b'=', b'1', b'\n', 0xff, 0xfe],
    );
    assert_eq!(r.status(), 400);
    assert!(r
        .text()
        .unwrap()
        .contains("not valid UTF-8 at byte 6 (line 2)"));

    // SQL errors name the problem.
    let r = reqwest::blocking::get(format!("{}/api/v1/sql?q=SELECT%20*%20FROM%20nosuch", s.url))
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("nosuch"));
    let r =
        reqwest::blocking::get(format!("{}/api/v1/sql?q=SELECT%201&format=xml", s.url)).unwrap();
    assert_eq!(r.status(), 400);

    // The server is still fine.
    assert_eq!(
        reqwest::blocking::get(format!("{}/health", s.url))
            .unwrap()
            .status(),
        200
    );
}

#[test]
fn bad_config_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("vigil.toml");
    std::fs::write(&cfg, "[http]\naddr = \"not an address\"\n").unwrap();
    let out = std::process::Command::new(crate::server::BIN)
        .args(["serve", "--config", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("addr"),
        "{err}"
    );
}
