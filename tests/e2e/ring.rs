//! Service discovery from etcd and a ring of collectors, against a real etcd
//! (Debian's etcd-server): three `vigil` collectors share 150 exposition
//! targets listed in etcd. Every target is scraped once per interval, by one
//! collector only, before and after one collector is killed, another is
//! stopped, and both come back; keys put or deleted in etcd add and remove
//! targets within seconds.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use base64::Engine;

use crate::server::{free_port, wait_for, Helper, TestServer};

/// A single-node etcd on loopback ports; its v3 JSON gateway is used to put
/// and delete keys.
struct Etcd {
    process: Option<Helper>,
    client_url: String,
    args: Vec<String>,
}

impl Etcd {
    fn start(dir: &Path) -> Self {
        let client = free_port();
        let peer = free_port();
        let args = vec![
            "--name".to_string(),
            "test".to_string(),
            format!("--data-dir={}", dir.display()),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=test=http://127.0.0.1:{peer}"),
        ];
        let mut e = Self {
            process: None,
            client_url: format!("http://127.0.0.1:{client}"),
            args,
        };
        e.spawn();
        e
    }

    /// Starts etcd (again, on the same ports and data) and waits for it.
    fn spawn(&mut self) {
        let bin = ["/usr/bin/etcd", "/usr/local/bin/etcd"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("etcd is installed (bash scripts/install-clients.sh: Debian etcd-server)");
        let child = std::process::Command::new(bin)
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.process = Some(Helper(child));
        let url = self.client_url.clone();
        wait_for("etcd to start", Duration::from_secs(20), || {
            reqwest::blocking::get(format!("{url}/health"))
                .ok()
                .and_then(|r| r.text().ok())
                .is_some_and(|t| t.contains("true"))
        });
    }

    /// SIGKILL, then started again on the same data: leases survive.
    fn restart(&mut self) {
        self.process = None;
        self.spawn();
    }

    fn endpoint(&self) -> &str {
        self.client_url.trim_start_matches("http://")
    }

    fn call(&self, path: &str, body: serde_json::Value) {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", self.client_url))
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "etcd {path}: {}", r.status());
    }

    fn put(&self, key: &str, value: &str) {
        let b = base64::engine::general_purpose::STANDARD;
        self.call(
            "/v3/kv/put",
            serde_json::json!({ "key": b.encode(key), "value": b.encode(value) }),
        );
    }

    fn delete(&self, key: &str) {
        let b = base64::engine::general_purpose::STANDARD;
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({ "key": b.encode(key) }),
        );
    }
}

const TARGETS: usize = 150;

/// Exposition targets counting their scrapes.
struct Targets {
    addresses: Vec<String>,
    hits: Vec<Arc<AtomicU64>>,
    _runtime: tokio::runtime::Runtime,
}

impl Targets {
    fn start(n: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let mut addresses = Vec::new();
        let mut hits = Vec::new();
        for i in 0..n {
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            addresses.push(listener.local_addr().unwrap().to_string());
            let count = Arc::new(AtomicU64::new(0));
            hits.push(Arc::clone(&count));
            let app = Router::new()
                .route(
                    "/metrics",
                    get(
                        |State((i, count)): State<(usize, Arc<AtomicU64>)>| async move {
                            count.fetch_add(1, Ordering::SeqCst);
                            format!("# TYPE queue_depth gauge\nqueue_depth{{shard=\"{i}\"}} {i}\n")
                        },
                    ),
                )
                .with_state((i, count));
            runtime.spawn(async move { axum::serve(listener, app).await });
        }
        Self {
            addresses,
            hits,
            _runtime: runtime,
        }
    }

    fn snapshot(&self) -> Vec<u64> {
        self.hits.iter().map(|h| h.load(Ordering::SeqCst)).collect()
    }

    /// Scrapes per target over `window`: with a 1 s interval, a target
    /// scraped by exactly one collector gets about one per second.
    fn scrapes_over(&self, window: Duration) -> Vec<u64> {
        let before = self.snapshot();
        std::thread::sleep(window);
        self.snapshot()
            .iter()
            .zip(before)
            .map(|(a, b)| a - b)
            .collect()
    }
}

fn assert_each_scraped_once(targets: &Targets, when: &str) {
    let counts = targets.scrapes_over(Duration::from_secs(5));
    let missed: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] < 4).collect();
    let twice: Vec<usize> = (0..counts.len()).filter(|i| counts[*i] > 6).collect();
    assert!(
        missed.is_empty() && twice.is_empty(),
        "{when}: in 5 s at a 1 s interval, targets {missed:?} were scraped too rarely and {twice:?} too often: {counts:?}"
    );
}

fn collector(dir: &Path, name: &str, etcd: &Etcd, scrape: &Path) -> TestServer {
    let config = dir.join(format!("{name}.toml"));
    std::fs::write(
        &config,
        "[scrape]\nring_lease_ttl = \"3s\"\nring_etcd_prefix = \"/ring/\"\n",
    )
    .unwrap();
    TestServer::start(
        &dir.join(name),
        &[
            "--config",
            config.to_str().unwrap(),
            "--scrape-config",
            scrape.to_str().unwrap(),
            "--collector-name",
            name,
            "--scrape-ring-etcd",
            etcd.endpoint(),
        ],
    )
}

/// Targets each collector scrapes now (its `vigil_scrape_targets`).
fn shares(collectors: &[&TestServer]) -> Vec<f64> {
    collectors
        .iter()
        .map(|c| c.metric("vigil_scrape_targets"))
        .collect()
}

#[test]
fn three_collectors_share_etcd_targets_once_each_through_a_kill_and_a_stop() {
    let dir = tempfile::tempdir().unwrap();
    let mut etcd = Etcd::start(&dir.path().join("etcd"));
    let targets = Targets::start(TARGETS);
    for (i, a) in targets.addresses.iter().enumerate() {
        etcd.put(
            &format!("/targets/t{i:03}"),
            &format!(r#"{{"targets": ["{a}"], "labels": {{"idx": "{i}"}}}}"#),
        );
    }
    let scrape = dir.path().join("scrape.yml");
    std::fs::write(
        &scrape,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: fleet\n    etcd_sd_configs:\n      - endpoints: ['{}']\n        prefix: /targets/\n    relabel_configs:\n      - source_labels: [__meta_etcd_key]\n        target_label: key\n",
            etcd.endpoint()
        ),
    )
    .unwrap();
    let mut a = collector(dir.path(), "a", &etcd, &scrape);
    let mut b = collector(dir.path(), "b", &etcd, &scrape);
    let c = collector(dir.path(), "c", &etcd, &scrape);
    let total = TARGETS as f64;
    wait_for(
        "the three collectors to share the targets",
        Duration::from_secs(30),
        || {
            let s = shares(&[&a, &b, &c]);
            s.iter().sum::<f64>() == total && s.iter().all(|x| *x > 0.0)
        },
    );
    let s = shares(&[&a, &b, &c]);
    // Bounded loads: nobody takes more than 1.25 × its fair share.
    assert!(s.iter().all(|x| *x <= (total * 1.25 / 3.0).ceil()), "{s:?}");
    assert_eq!(a.metric("vigil_scrape_ring_members"), 3.0);
    assert_each_scraped_once(&targets, "three collectors");
    // The samples carry the etcd key through relabeling.
    let rows = a.sql("SELECT key, shard FROM queue_depth LIMIT 1");
    let shard: usize = rows[0]["shard"].as_str().unwrap().parse().unwrap();
    assert_eq!(rows[0]["key"], format!("/targets/t{shard:03}"));

    // Killed: its lease expires (3 s) and the others take its targets.
    let killed_at = Instant::now();
    a.kill();
    wait_for(
        "b and c to take a's targets",
        Duration::from_secs(15),
        || shares(&[&b, &c]).iter().sum::<f64>() == total,
    );
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(8), "takeover took {took:?}");
    assert_each_scraped_once(&targets, "after a collector was killed");

    // Started again under the same name: it waits for its old key to expire
    // (already gone) and takes back a share.
    a.restart();
    wait_for("a to rejoin", Duration::from_secs(20), || {
        let s = shares(&[&a, &b, &c]);
        s.iter().sum::<f64>() == total && s.iter().all(|x| *x > 0.0)
    });
    assert_each_scraped_once(&targets, "after the killed collector came back");

    // Stopped cleanly: its lease is revoked, its targets move at once.
    b.stop();
    let stopped_at = Instant::now();
    wait_for(
        "a and c to take b's targets",
        Duration::from_secs(10),
        || shares(&[&a, &c]).iter().sum::<f64>() == total,
    );
    // Well inside the 3 s lease: the stop revoked it.
    assert!(
        stopped_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        stopped_at.elapsed()
    );
    assert_each_scraped_once(&targets, "after a collector stopped");

    // Discovery follows etcd: deleted keys stop their targets, put keys
    // start them.
    for i in 0..10 {
        etcd.delete(&format!("/targets/t{i:03}"));
    }
    wait_for("deleted targets to go", Duration::from_secs(10), || {
        shares(&[&a, &c]).iter().sum::<f64>() == total - 10.0
    });
    let counts = targets.scrapes_over(Duration::from_secs(3));
    assert!(counts[..10].iter().all(|n| *n == 0), "{counts:?}");
    let mut seen: HashMap<usize, u64> = HashMap::new();
    for (i, n) in counts.iter().enumerate().skip(10) {
        seen.insert(i, *n);
    }
    assert!(seen.values().all(|n| *n >= 2), "{seen:?}");
    etcd.put(
        "/targets/t000",
        &format!(r#"{{"targets": ["{}"]}}"#, targets.addresses[0]),
    );
    wait_for(
        "a put key to start its target",
        Duration::from_secs(10),
        || shares(&[&a, &c]).iter().sum::<f64>() == total - 9.0,
    );

    // etcd itself restarts: the collectors reconnect with the leases they
    // hold, and every target is again scraped once.
    etcd.restart();
    wait_for(
        "the ring to settle after etcd restarted",
        Duration::from_secs(15),
        || {
            shares(&[&a, &c]).iter().sum::<f64>() == total - 9.0
                && a.metric("vigil_scrape_ring_members") == 2.0
                && c.metric("vigil_scrape_ring_members") == 2.0
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    let counts = targets.scrapes_over(Duration::from_secs(5));
    let live: Vec<u64> = counts.iter().skip(10).copied().chain([counts[0]]).collect();
    assert!(
        live.iter().all(|n| (4..=6).contains(n)),
        "after etcd restarted: {counts:?}"
    );
}
