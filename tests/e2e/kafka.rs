//! Kafka ingest against a real Apache Kafka broker (scripts/kafka.sh):
//! - vigil consumes line protocol as a consumer group member and is SIGKILLed
//!   mid-way twice (the second time losing its WAL as well); exactly the produced
//!   points, with exactly the produced values, end up stored;
//! - a collector (`--mode collector`) produces HTTP line protocol and Prometheus
//!   remote write (sent by a Go program on Prometheus's own prompb) to Kafka; two
//!   storage nodes split the partitions, one stops, the other takes its partitions
//!   over; together they hold exactly what was sent; a malformed message lands in
//!   the dead-letter topic; consumer lag is on /metrics;
//! - the broker stops and comes back during ingest (vigil keeps answering queries
//!   and loses nothing), while a tiny buffer makes vigil pause consumption and a
//!   small WAL record limit splits batches and rejects a message too large alone.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::server::TestServer;

pub(crate) struct Broker {
    dir: tempfile::TempDir,
    pub(crate) addr: String,
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka.sh")
}

impl Broker {
    pub(crate) fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let addr = Self::run(dir.path());
        Self { dir, addr }
    }

    /// `kafka.sh start DIR`: a new broker, or the same one again after `stop`.
    fn run(dir: &Path) -> String {
        let out = Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir)
            .output()
            .expect("bash scripts/kafka.sh");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "Kafka did not start: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .find_map(|l| l.strip_prefix("BROKER="))
            .expect("BROKER= line")
            .to_string()
    }

    fn stop(&self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }

    fn restart(&self) {
        let addr = Self::run(self.dir.path());
        assert_eq!(addr, self.addr, "the broker comes back on its port");
    }

    pub(crate) fn create_topics(&self, rt: &tokio::runtime::Runtime, topics: &[(&str, i32)]) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .create()
            .unwrap();
        let topics: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|(name, partitions)| NewTopic::new(name, *partitions, TopicReplication::Fixed(1)))
            .collect();
        for r in rt
            .block_on(admin.create_topics(&topics, &AdminOptions::new()))
            .unwrap()
        {
            r.unwrap();
        }
    }

    fn producer(&self) -> FutureProducer {
        ClientConfig::new()
            .set("bootstrap.servers", &self.addr)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
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

/// (rows, sum of v) over the tables of [`batch`].
fn stored(server: &TestServer) -> (i64, f64) {
    let tables: Vec<String> = (0..3).map(|t| format!("m{t}")).collect();
    totals(server, &tables, "v")
}

fn wait_for(server: &TestServer, at_least: i64) -> (i64, f64) {
    // Generous: after a broker restart the consumer's reconnect backoff and the
    // group's rejoin take tens of seconds on a loaded 2-core machine.
    let deadline = Instant::now() + Duration::from_secs(150);
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
    broker.create_topics(&rt, &[("metrics", 3)]);
    let producer = broker.producer();

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

/// Sum of a metric's samples over all its label sets (0 when absent).
fn metric(server: &TestServer, name: &str) -> f64 {
    let text = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Lines of a metric, e.g. the per-partition lag gauges.
fn metric_lines(server: &TestServer, name: &str) -> Vec<String> {
    let text = reqwest::blocking::get(format!("{}/metrics", server.url))
        .unwrap()
        .text()
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .map(str::to_string)
        .collect()
}

/// (rows, sum of `field`) of each table on a server (absent tables count 0).
fn totals(server: &TestServer, tables: &[String], field: &str) -> (i64, f64) {
    let mut n = 0;
    let mut sum = 0.0;
    for table in tables {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/api/v1/sql", server.url))
            .json(&serde_json::json!({"sql": format!("SELECT count(*) AS n, sum({field}) AS s FROM \"{table}\""), "format": "json"}))
            .send()
            .unwrap();
        if !r.status().is_success() {
            continue;
        }
        let rows: Vec<serde_json::Value> = r.json().unwrap();
        n += rows[0]["n"].as_i64().unwrap_or(0);
        sum += rows[0]["s"].as_f64().unwrap_or(0.0);
    }
    (n, sum)
}

/// Waits until `state` says done; on timeout fails with the last state it described.
fn eventually(what: &str, secs: u64, mut state: impl FnMut() -> (bool, String)) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let (done, seen) = state();
        if done {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {seen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

const TABLES: usize = 16;
const T0_SECS: i64 = 1_767_225_600;

/// Line protocol for points `from..to` of tables t0..t15: point i is in table
/// t{i % 16}, series s{i % 7}, value i * 0.5, at T0 + i s.
fn lp_points(from: usize, to: usize) -> String {
    let mut body = String::new();
    for i in from..to {
        body.push_str(&format!(
            "t{},s=s{} v={} {}\n",
            i % TABLES,
            i % 7,
            i as f64 * 0.5,
            (T0_SECS + i as i64) * 1_000_000_000
        ));
    }
    body
}

fn lp_tables() -> Vec<String> {
    (0..TABLES).map(|t| format!("t{t}")).collect()
}

#[test]
fn collector_feeds_two_storage_nodes_that_split_and_take_over_partitions() {
    let broker = Broker::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    broker.create_topics(&rt, &[("metrics", 4), ("dead", 1)]);
    let node_args = [
        "--kafka-brokers",
        &broker.addr,
        "--kafka-topic",
        "metrics",
        "--kafka-group",
        "nodes",
        "--kafka-dead-letter-topic",
        "dead",
        "--flush-interval",
        "1s",
    ];
    let (dir_a, dir_b, dir_c) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let mut a = TestServer::start(dir_a.path(), &node_args);
    let mut b = TestServer::start(dir_b.path(), &node_args);
    let collector_args = [
        "--mode",
        "collector",
        "--kafka-brokers",
        &broker.addr,
        "--kafka-topic",
        "metrics",
    ];
    let mut collector = TestServer::start(dir_c.path(), &collector_args);
    // Both nodes own partitions before anything is produced.
    eventually("the group to split the 4 partitions", 60, || {
        let (pa, pb) = (
            metric(&a, "vigil_kafka_assigned_partitions"),
            metric(&b, "vigil_kafka_assigned_partitions"),
        );
        (
            pa >= 1.0 && pb >= 1.0 && pa + pb == 4.0,
            format!("A has {pa}, B has {pb}"),
        )
    });

    // Line protocol through the collector's HTTP API (acknowledged once in Kafka).
    const HALF: usize = 8000;
    for chunk in (0..HALF).step_by(2000) {
        collector.write_lp(&lp_points(chunk, chunk + 2000));
    }
    // A bad line is rejected by the collector itself, naming the line.
    let r = collector.write("/api/v3/write_lp", "partial v=1 1\nnot line protocol\n");
    assert_eq!(r.status(), 400);
    let body = r.text().unwrap();
    assert!(body.contains("\"line_number\":2"), "{body}");
    // Prometheus remote write through the collector, from Prometheus's own encoder.
    let rw = Command::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/clients/remotewrite-client"),
    )
    .args([
        &format!("{}/api/v1/write", collector.url),
        "3",
        "4",
        "200",
        &(T0_SECS * 1000).to_string(),
    ])
    .output()
    .expect("remotewrite-client (scripts/install-clients.sh builds it)");
    assert!(
        rw.status.success(),
        "{}",
        String::from_utf8_lossy(&rw.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&rw.stdout).trim(), "2400");
    // A second collector scrapes node A's /metrics: scraped samples go to
    // Kafka as remote write, like pushed ones, and reach the storage nodes.
    // It is stopped after, so that the topic's end can be reached below.
    let dir_s = tempfile::tempdir().unwrap();
    let scrape_config = dir_s.path().join("scrape.yml");
    std::fs::write(
        &scrape_config,
        format!(
            "scrape_configs:\n  - job_name: nodes\n    scrape_interval: 1s\n    static_configs:\n      - targets: ['{}']\n",
            a.addr
        ),
    )
    .unwrap();
    let mut scraper = TestServer::start(
        &dir_s.path().join("data"),
        &[
            &collector_args[..],
            &["--scrape-config", scrape_config.to_str().unwrap()],
        ]
        .concat(),
    );
    let up = ["up".to_string()];
    let scraped = ["scrape_samples_scraped".to_string()];
    eventually("the collector's scrapes to be stored", 60, || {
        let ((na, sa), (nb, sb)) = (totals(&a, &up, "value"), totals(&b, &up, "value"));
        let samples = totals(&a, &scraped, "value").1 + totals(&b, &scraped, "value").1;
        // One of node A's own metrics, scraped: not only the report series.
        let own = ["vigil_kafka_assigned_partitions".to_string()];
        let gauge = totals(&a, &own, "value").0 + totals(&b, &own, "value").0;
        (
            na + nb >= 2 && sa + sb == (na + nb) as f64 && samples >= 10.0 && gauge >= 1,
            format!(
                "{} rows of up summing to {}, {samples} samples scraped, {gauge} rows of A's gauge",
                na + nb,
                sa + sb
            ),
        )
    });
    scraper.stop();
    // A malformed message straight into the topic: its good line is stored, the
    // message is copied to the dead-letter topic. Its repeated tag key once
    // panicked every consumer of the group in turn.
    let producer = broker.producer();
    rt.block_on(
        producer.send(
            FutureRecord::to("metrics")
                .key("dl")
                .payload("dl v=7 1767225600000000000\nthis is not line protocol\ndl,a=1,a=2 v=8 1767225600000000001\n"),
            Duration::from_secs(10),
        ),
    )
    .map_err(|(e, _)| e)
    .unwrap();

    let lp = lp_tables();
    let rw_tables: Vec<String> = (0..3).map(|m| format!("rw_{m}")).collect();
    eventually("the first half on the two nodes", 60, || {
        let (na, nb) = (totals(&a, &lp, "v").0, totals(&b, &lp, "v").0);
        (na + nb == HALF as i64, format!("A has {na}, B has {nb}"))
    });
    eventually("the remote-write samples", 60, || {
        let (na, nb) = (
            totals(&a, &rw_tables, "value").0,
            totals(&b, &rw_tables, "value").0,
        );
        (na + nb == 2400, format!("A has {na}, B has {nb}"))
    });
    assert!(
        metric(&collector, "vigil_kafka_produced_total") >= 4.0,
        "collector counts acknowledged messages"
    );

    // B stops (gracefully: it flushes and commits); A takes over its partitions.
    b.stop();
    eventually("A to own all 4 partitions", 60, || {
        let pa = metric(&a, "vigil_kafka_assigned_partitions");
        (pa == 4.0, format!("A has {pa}"))
    });
    for chunk in (HALF..2 * HALF).step_by(2000) {
        collector.write_lp(&lp_points(chunk, chunk + 2000));
    }
    // B's data, read back without Kafka.
    let b_alone = TestServer::start(dir_b.path(), &[]);
    let (nb, sb) = totals(&b_alone, &lp, "v");
    assert!(nb > 0, "B stored its partitions' share before stopping");
    eventually("all points on A and B together", 60, || {
        let na = totals(&a, &lp, "v").0;
        (
            na + nb == 2 * HALF as i64,
            format!("A has {na}, B had {nb}"),
        )
    });
    std::thread::sleep(Duration::from_secs(2));
    let (na, sa) = totals(&a, &lp, "v");
    assert_eq!(na + nb, 2 * HALF as i64, "no duplicates across the nodes");
    let expected: f64 = (0..2 * HALF).map(|i| i as f64 * 0.5).sum();
    assert!(
        (sa + sb - expected).abs() < 1e-6,
        "{sa} + {sb} != {expected}"
    );

    // Remote write: the values and the labels as Prometheus sent them.
    let (ra, rsa) = totals(&a, &rw_tables, "value");
    let (rb, rsb) = totals(&b_alone, &rw_tables, "value");
    assert_eq!(ra + rb, 2400);
    let expected_rw: f64 = (0..3)
        .flat_map(|m| {
            (0..4).flat_map(move |s| (0..200).map(move |k| (m * 1000 + s) as f64 + k as f64 / 4.0))
        })
        .sum();
    assert!(
        (rsa + rsb - expected_rw).abs() < 1e-6,
        "{rsa} + {rsb} != {expected_rw}"
    );
    let holder = if ra > 0 { &a } else { &b_alone };
    let table = rw_tables
        .iter()
        .find(|t| totals(holder, &[t.to_string()], "value").0 > 0)
        .unwrap();
    let rows = holder.sql(&format!(
        "SELECT job, min(time) AS t, count(DISTINCT instance) AS i FROM {table} GROUP BY job"
    ));
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["job"], "remote write \"test\"");
    assert_eq!(rows[0]["i"], 4);
    assert!(
        rows[0]["t"]
            .as_str()
            .unwrap()
            .starts_with("2026-01-01T00:00:00"),
        "{rows:?}"
    );

    // The malformed message: its good line stored, a copy in the dead-letter topic.
    // The good line of the collector's partial write went through.
    let partial = ["partial".to_string()];
    assert_eq!(
        totals(&a, &partial, "v").0 + totals(&b_alone, &partial, "v").0,
        1
    );
    let (n_dl, _) = totals(&a, &["dl".to_string()], "v");
    let (n_dl_b, _) = totals(&b_alone, &["dl".to_string()], "v");
    assert_eq!(n_dl + n_dl_b, 1);
    let _runtime = rt.enter(); // the stream consumer's timers need a runtime
    let dead: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.addr)
        .set("group.id", "dead-letter-reader")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    dead.subscribe(&["dead"]).unwrap();
    let m = rt
        .block_on(async { tokio::time::timeout(Duration::from_secs(30), dead.recv()).await })
        .expect("a dead letter")
        .unwrap();
    assert_eq!(
        m.payload().unwrap(),
        b"dl v=7 1767225600000000000\nthis is not line protocol\ndl,a=1,a=2 v=8 1767225600000000001\n"
    );
    let headers: Vec<(String, String)> = m
        .headers()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h.key.to_string(),
                String::from_utf8_lossy(h.value.unwrap()).to_string(),
            )
        })
        .collect();
    assert!(
        headers.contains(&("vigil-rejected-lines".into(), "2,3".into())),
        "{headers:?}"
    );
    assert!(
        headers.contains(&("vigil-source-topic".into(), "metrics".into())),
        "{headers:?}"
    );
    assert!(
        headers.iter().any(|(k, _)| k == "vigil-error"),
        "{headers:?}"
    );

    // Consumer lag per partition on /metrics, down to 0 once all is consumed.
    eventually("lag of 0 on A's 4 partitions", 30, || {
        let lines = metric_lines(&a, "vigil_kafka_consumer_lag");
        (
            lines.len() == 4 && lines.iter().all(|l| l.ends_with(" 0")),
            lines.join("; "),
        )
    });
    drop(b_alone);
    collector.stop();
    a.stop();
}

#[test]
fn ingest_resumes_after_the_broker_restarts_and_pauses_while_flushing_is_behind() {
    let broker = Broker::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    broker.create_topics(&rt, &[("metrics", 3)]);
    let producer = broker.producer();
    const N: usize = 20_000;
    let data = tempfile::tempdir().unwrap();
    // WAL records of at most 16 KB: a batch of more than a few of these 4 KB
    // messages is stored in several records, and one message of 40 KB of rows
    // cannot be stored at all (rejected, not retried for ever).
    let cfg = data.path().join("vigil.toml");
    std::fs::write(&cfg, "[storage]\nmax_wal_record_bytes = 16384\n").unwrap();
    let mut vigil = TestServer::start(
        &data.path().join("data"),
        &[
            "--config",
            cfg.to_str().unwrap(),
            "--kafka-brokers",
            &broker.addr,
            "--kafka-topic",
            "metrics",
            "--kafka-group",
            "restart-test",
            // A buffer of 2 x 500 rows at most: every batch of messages takes it
            // over, so consumption pauses until the flush has caught up.
            "--flush-interval",
            "1h",
            "--flush-max-rows",
            "500",
        ],
    );
    let huge: String = (0..2_000)
        .map(|i| format!("huge,s=s{i} v={i} {}\n", 1_767_225_600_000_000_000u64 + i))
        .collect();
    let mut first = batch(0, N / 4);
    first.push(("huge".into(), huge));
    first.extend(batch(N / 4, N / 2));
    produce(&rt, &producer, first);
    wait_for(&vigil, (N / 2) as i64);
    eventually("the oversized message rejected", 30, || {
        let rejected = metric(&vigil, "vigil_kafka_lines_rejected_total");
        (rejected >= 2_000.0, format!("{rejected} lines rejected"))
    });
    assert_eq!(totals(&vigil, &["huge".to_string()], "v").0, 0);
    assert!(
        metric(&vigil, "vigil_kafka_pauses_total") >= 1.0,
        "consumption paused while the buffer was over its limits"
    );

    broker.stop();
    // Kafka is gone: vigil keeps serving queries and retries in the background.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(stored(&vigil).0, (N / 2) as i64);
    let health = reqwest::blocking::get(format!("{}/health", vigil.url)).unwrap();
    assert!(health.status().is_success());

    broker.restart();
    produce(&rt, &producer, batch(N / 2, N));
    let (n, sum) = wait_for(&vigil, N as i64);
    std::thread::sleep(Duration::from_secs(2));
    let (n2, _) = stored(&vigil);
    assert_eq!((n, n2), (N as i64, N as i64));
    let expected: f64 = (0..N).map(|i| i as f64 * 0.25).sum();
    assert!((sum - expected).abs() < 1e-6, "{sum} != {expected}");
    assert_eq!(metric(&vigil, "vigil_kafka_paused"), 0.0, "resumed");
    vigil.stop();
}
