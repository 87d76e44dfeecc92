//! UDP push: signed line protocol datagrams through the write pipeline;
//! unsigned or tampered ones rejected, bad lines counted, all on /metrics.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use crate::server::TestServer;

const KEY: &str = "a-shared-key-of-the-agents";

fn sign(payload: &str) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, KEY.as_bytes());
    let tag = ring::hmac::sign(&key, payload.as_bytes());
    let mut out: Vec<u8> = tag
        .as_ref()
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect();
    out.push(b'\n');
    out.extend_from_slice(payload.as_bytes());
    out
}

#[test]
fn signed_datagrams_are_stored_and_the_rest_counted() {
    let dir = tempfile::tempdir().unwrap();
    let port = UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let s = TestServer::start(dir.path(), &["--udp-addr", &addr, "--udp-hmac-key", KEY]);
    let agent = UdpSocket::bind("127.0.0.1:0").unwrap();
    // 50 datagrams of two lines each, from one agent.
    for i in 0..50 {
        let body = format!(
            "udp_cpu,host=h{} usage={i} {}\nudp_cpu,host=h{} usage={i} {}",
            i % 5,
            1_767_225_600_000_000_000i64 + i * 1_000_000_000,
            i % 5 + 5,
            1_767_225_600_000_000_000i64 + i * 1_000_000_000,
        );
        agent.send_to(&sign(&body), &addr).unwrap();
    }
    // Unsigned, signed with another key, tampered after signing.
    agent.send_to(b"udp_cpu,host=x usage=1 1", &addr).unwrap();
    let mut other = sign("udp_cpu,host=x usage=2 2");
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    agent.send_to(&other, &addr).unwrap();
    let mut tampered = sign("udp_cpu,host=x usage=3 3");
    tampered.pop();
    tampered.push(b'4');
    agent.send_to(&tampered, &addr).unwrap();
    // One bad line beside a good one: the good one is stored.
    agent
        .send_to(
            &sign("udp_cpu,host=y usage=7 1767225600000000000\nnot line protocol"),
            &addr,
        )
        .unwrap();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = s.sql("SELECT count(*) AS n, sum(usage) AS total FROM udp_cpu");
        if rows.first().is_some_and(|r| r["n"] == 101) {
            // Two lines of each i in 0..50, and the 7 beside the bad line.
            assert_eq!(rows[0]["total"], 2.0 * (0..50).sum::<i64>() as f64 + 7.0);
            break;
        }
        assert!(Instant::now() < deadline, "stored: {rows:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        s.sql("SELECT count(*) AS n FROM udp_cpu WHERE host = 'x'")[0]["n"],
        0
    );
    // The counters move after the rows are visible: wait for them.
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.metric("vigil_udp_lines_rejected_total") < 1.0 {
        assert!(Instant::now() < deadline, "lines_rejected not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(s.metric("vigil_udp_datagrams_received_total"), 54.0);
    assert_eq!(s.metric("vigil_udp_datagrams_rejected_total"), 3.0);
    assert_eq!(s.metric("vigil_udp_lines_rejected_total"), 1.0);
    assert_eq!(s.metric("vigil_udp_datagrams_dropped_total"), 0.0);
}

/// A wrong configuration stops the start with the reason.
#[test]
fn a_short_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::server::BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path())
        .args(["--udp-addr", "127.0.0.1:0", "--udp-hmac-key", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("udp.hmac_key must be at least 16"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
