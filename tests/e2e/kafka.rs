//! Kafka ingest against a real Apache Kafka broker (scripts/kafka.sh): vigil consumes
//! line protocol as a consumer group member and is SIGKILLed mid-way twice (the
//! second time losing its WAL as well); exactly the produced points, with exactly
//! the produced values, end up stored.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::server::TestServer;

struct Broker {
    dir: tempfile::TempDir,
    addr: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

impl Broker {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("bash scripts/kafka.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "Kafka did not start: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = text
            .lines()
            .find_map(|l| l.strip_prefix("BROKER="))
            .expect("BROKER= line")
            .to_string();
        Self { dir, addr }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// Point i of table `m{i % 3}`: series `s{i % 10}`, value i * 0.25, time T0 + i s.
fn batch(from: usize, to: usize) -> Vec<(String, String)> {
    const T0: u64 = 1_767_225_600;
    let mut messages: Vec<(String, String)> = Vec::new();
    for table in 0..3 {
        let mut body = String::new();
        for i in (from..to).filter(|i| i % 3 == table) {
            body.push_str(&format!(
                "m{table},s=s{} v={} {}\n",
                i % 10,
                i as f64 * 0.25,
                (T0 + i as u64) * 1_000_000_000
            ));
            if body.len() > 4000 {
                messages.push((format!("m{table}"), std::mem::take(&mut body)));
            }
        }
        if !body.is_empty() {
            messages.push((format!("m{table}"), body));
        }
    }
    messages
}

fn produce(
    rt: &tokio::runtime::Runtime,
    producer: &FutureProducer,
    messages: Vec<(String, String)>,
) {
    rt.block_on(async {
        for (key, body) in messages {
            producer
                .send(
                    FutureRecord::to("metrics").key(&key).payload(&body),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
}

fn stored(server: &TestServer) -> (i64, f64) {
    let mut n = 0;
    let mut sum = 0.0;
    for table in ["m0", "m1", "m2"] {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/sql", server.url))
            .json(&serde_json::json!({"sql": format!("SELECT count(*) AS n, sum(v) AS s FROM {table}"), "format": "json"}))
            .send()
            .unwrap();
        if !r.status().is_success() {
            continue; // table not created yet
        }
        let rows: Vec<serde_json::Value> = r.json().unwrap();
        n += rows[0]["n"].as_i64().unwrap_or(0);
        sum += rows[0]["s"].as_f64().unwrap_or(0.0);
    }
    (n, sum)
}

fn wait_for(server: &TestServer, at_least: i64) -> (i64, f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = stored(server);
        if s.0 >= at_least {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {at_least} points arrived",
            s.0
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_vigil(data: &Path, broker: &Broker) -> TestServer {
    TestServer::start(
        data,
        &[
            "--kafka-brokers",
            &broker.addr,
            "--kafka-topic",
            "metrics",
            "--kafka-group",
            "vigil-test",
            // Flushes happen when 15,000 rows are buffered: during the second third
            // of the data, not during the last (which must then come from Kafka).
            "--flush-interval",
            "1h",
            "--flush-max-rows",
            "15000",
        ],
    )
}

#[test]
fn kafka_ingest_survives_sigkill_without_loss_or_duplicates() {
    let broker = Broker::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .create()
        .unwrap();
    rt.block_on(admin.create_topics(
        &[NewTopic::new("metrics", 3, TopicReplication::Fixed(1))],
        &AdminOptions::new(),
    ))
    .unwrap()
    .into_iter()
    .for_each(|r| {
        r.unwrap();
    });
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .create()
        .unwrap();

    const N: usize = 30_000;
    let data = tempfile::tempdir().unwrap();
    produce(&rt, &producer, batch(0, N / 3));
    let mut vigil = start_vigil(data.path(), &broker);
    wait_for(&vigil, (N / 3) as i64);

    // Kill while the next third is being consumed (before or after a flush: the
    // offsets of anything not yet in Parquet are not committed).
    produce(&rt, &producer, batch(N / 3, 2 * N / 3));
    wait_for(&vigil, (N / 3 + 1) as i64);
    vigil.kill();
    vigil = start_vigil(data.path(), &broker);
    produce(&rt, &producer, batch(2 * N / 3, N));
    wait_for(&vigil, (2 * N / 3 + 1) as i64);
    vigil.kill();
    // Lose the WAL too: whatever was not in Parquet must come back from Kafka, which
    // it does only if its offsets were not committed before it was persisted.
    for entry in std::fs::read_dir(data.path().join("wal")).unwrap() {
        std::fs::remove_file(entry.unwrap().path()).unwrap();
    }
    vigil = start_vigil(data.path(), &broker);

    let (n, sum) = wait_for(&vigil, N as i64);
    let expected: f64 = (0..N).map(|i| i as f64 * 0.25).sum();
    // Let replays that may still arrive land, then check again: no duplicates.
    std::thread::sleep(Duration::from_secs(2));
    let (n2, sum2) = stored(&vigil);
    assert_eq!((n, n2), (N as i64, N as i64), "points stored");
    assert!(
        (sum - expected).abs() < 1e-6 && (sum2 - expected).abs() < 1e-6,
        "{sum} {sum2} {expected}"
    );
    let metrics = reqwest::blocking::get(format!("{}/metrics", vigil.url))
        .unwrap()
        .text()
        .unwrap();
    assert!(metrics.contains("vigil_kafka_messages_total"), "{metrics}");
    vigil.stop();
}
