//! Prometheus remote-write load: a pre-encoded stream of node_exporter-like series,
//! sent the way Prometheus's queue manager sends it (each series always on the
//! same shard, so its samples arrive in time order), with samples/s reported.
//!
//! The stream is generated before the clock starts and is the same for every
//! receiver given the same arguments, so vigil and Prometheus's own receiver
//! (`--web.enable-remote-write-receiver`) are measured on identical bytes.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use vigil_ingest::{encode_remote_write, Label, Sample, TimeSeries, WriteRequest};

#[derive(clap::Args)]
pub struct RemoteWriteArgs {
    /// Receiver base URL; the path is `--path`.
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// `/api/v1/write` for vigil and Prometheus alike.
    #[arg(long, default_value = "/api/v1/write")]
    pub path: String,
    /// Distinct series (node_exporter-like: 80 metric names, 5 labels each).
    #[arg(long, default_value_t = 16_000)]
    pub series: usize,
    /// Samples per request (Prometheus's `max_samples_per_send` default is 2,000).
    #[arg(long, default_value_t = 2_000)]
    pub samples_per_request: usize,
    /// Scrape rounds: every series gets one sample per round.
    #[arg(long, default_value_t = 250)]
    pub rounds: usize,
    /// Concurrent senders (Prometheus's shards).
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Seconds between rounds; the last round is stamped now.
    #[arg(long, default_value_t = 10)]
    pub interval_secs: i64,
}

const METRICS: [&str; 8] = [
    "node_cpu_seconds_total",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_disk_read_bytes_total",
    "node_disk_written_bytes_total",
    "node_filesystem_avail_bytes",
    "node_memory_Active_bytes",
    "node_netstat_Tcp_CurrEstab",
];
const MODES: [&str; 8] = [
    "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
];

/// The labels of series `i`: `__name__` plus job, instance, cpu/device, mode and
/// region (five labels, values as node_exporter has them).
fn labels(i: usize) -> Vec<Label> {
    let metric = METRICS[i % METRICS.len()];
    let host = i / 80;
    let l = |name: &str, value: String| Label {
        name: name.to_string(),
        value,
    };
    vec![
        l("__name__", format!("{metric}_{}", (i / METRICS.len()) % 10)),
        l("cpu", ((i / 8) % 10).to_string()),
        l("instance", format!("host-{host}.example.internal:9100")),
        l("job", "node".into()),
        l("mode", MODES[(i / 3) % MODES.len()].to_string()),
        l("region", format!("eu-west-{}", host % 3)),
    ]
}

/// The encoded requests of one shard, in time order.
fn shard_requests(a: &RemoteWriteArgs, shard: usize, shards: usize) -> Vec<Bytes> {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as i64;
    let start = now_ms - a.rounds as i64 * a.interval_secs * 1000;
    let series: Vec<Vec<Label>> = (0..a.series).map(labels).collect();
    let per_round = a.series.div_ceil(a.samples_per_request);
    let mut out = Vec::new();
    for round in 0..a.rounds {
        let t = start + round as i64 * a.interval_secs * 1000;
        for chunk in (0..per_round).filter(|c| c % shards == shard) {
            let lo = chunk * a.samples_per_request;
            let hi = (lo + a.samples_per_request).min(a.series);
            let timeseries = (lo..hi)
                .map(|i| TimeSeries {
                    labels: series[i].clone(),
                    samples: vec![Sample {
                        value: (i as f64) * 1.5 + round as f64,
                        timestamp: t,
                    }],
                })
                .collect();
            out.push(Bytes::from(encode_remote_write(&WriteRequest {
                timeseries,
            })));
        }
    }
    out
}

pub async fn run(a: RemoteWriteArgs) -> anyhow::Result<()> {
    let shards = a.clients.max(1);
    let per_round = a.series.div_ceil(a.samples_per_request);
    anyhow::ensure!(
        shards <= per_round,
        "--clients {shards} is more than the {per_round} requests of a round: a series would be sent by two clients"
    );
    let bodies: Vec<Vec<Bytes>> = (0..shards).map(|s| shard_requests(&a, s, shards)).collect();
    let requests: usize = bodies.iter().map(Vec::len).sum();
    let bytes: usize = bodies.iter().flatten().map(Bytes::len).sum();
    let samples = a.series * a.rounds;
    let client = reqwest::Client::new();
    let url = Arc::new(format!("{}{}", a.url.trim_end_matches('/'), a.path));
    let bar = indicatif::ProgressBar::new(requests as u64);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for shard in bodies {
        let (client, url, bar) = (client.clone(), Arc::clone(&url), bar.clone());
        tasks.push(tokio::spawn(async move {
            for body in shard {
                loop {
                    let r = client
                        .post(url.as_str())
                        .header("Content-Encoding", "snappy")
                        .header("Content-Type", "application/x-protobuf")
                        .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                        .body(body.clone())
                        .send()
                        .await?;
                    let status = r.status();
                    // As Prometheus does: a 5xx (vigil's 503 when its buffer is
                    // full) is retried; the wait counts against the rate.
                    if status.is_server_error() {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                    if !status.is_success() {
                        anyhow::bail!("write refused: {status} {}", r.text().await?);
                    }
                    break;
                }
                bar.inc(1);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    bar.finish_and_clear();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"samples\": {samples}, \"requests\": {requests}, \"bytes\": {bytes}, \"seconds\": {secs:.3}, \"samples_per_sec\": {:.0}, \"clients\": {shards}, \"series\": {}, \"samples_per_request\": {}}}",
        samples as f64 / secs,
        a.series,
        a.samples_per_request
    );
    Ok(())
}
