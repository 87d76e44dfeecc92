//! Ingest load: split a line protocol file into requests and send them with N
//! concurrent clients; report samples/s (fields written per second, acknowledged).

use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;

#[derive(clap::Args)]
pub struct IngestArgs {
    /// Line protocol file (e.g. from `vigil-bench generate`).
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// Concurrent HTTP clients.
    #[arg(long, default_value_t = 4)]
    pub clients: usize,
    /// Lines per request.
    #[arg(long, default_value_t = 5000)]
    pub batch_lines: usize,
    /// Fields per line, to turn lines into samples.
    #[arg(long, default_value_t = 10)]
    pub fields_per_line: usize,
}

pub async fn run(a: IngestArgs) -> anyhow::Result<()> {
    let data = std::fs::read(&a.file)?;
    let (chunks, lines) = crate::chunk_lines(&data, a.batch_lines);
    let batches: Vec<Bytes> = chunks.into_iter().map(Bytes::copy_from_slice).collect();
    let batches = Arc::new(batches);
    let next = Arc::new(AtomicUsize::new(0));
    let retries = Arc::new(AtomicUsize::new(0));
    let client = reqwest::Client::new();
    let url = format!("{}/api/v3/write_lp?db=bench", a.url.trim_end_matches('/'));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..a.clients {
        let retries = Arc::clone(&retries);
        let (batches, next, client, url) = (
            Arc::clone(&batches),
            Arc::clone(&next),
            client.clone(),
            url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(b) = batches.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                // Like a well-behaved agent (Telegraf, Prometheus), a refused write
                // is retried after the server's Retry-After; the time spent waiting
                // counts against the measured rate.
                loop {
                    let r = client.post(&url).body(b.clone()).send().await?;
                    if r.status() == 503 {
                        let wait = r
                            .headers()
                            .get("retry-after")
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.parse::<f64>().ok())
                            .unwrap_or(1.0)
                            .clamp(0.05, 5.0);
                        retries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
                        continue;
                    }
                    if r.status() != 204 {
                        anyhow::bail!("write failed: {} {}", r.status(), r.text().await?);
                    }
                    break;
                }
            }
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let samples = lines * a.fields_per_line;
    println!(
        "{{\"lines\": {lines}, \"samples\": {samples}, \"bytes\": {}, \"seconds\": {secs:.3}, \"samples_per_sec\": {:.0}, \"lines_per_sec\": {:.0}, \"clients\": {}, \"batch_lines\": {}, \"retries_after_503\": {}}}",
        data.len(),
        samples as f64 / secs,
        lines as f64 / secs,
        a.clients,
        a.batch_lines,
        retries.load(Ordering::Relaxed)
    );
    Ok(())
}
