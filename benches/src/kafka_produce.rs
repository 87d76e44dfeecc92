//! Fills a Kafka topic with a line protocol file for the Kafka ingest benchmark:
//! creates the topic with the given partitions, sends messages of N lines round-robin
//! over them (acks=all, idempotent, as vigil's collector does), with progress.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

#[derive(clap::Args)]
pub struct KafkaProduceArgs {
    /// Line protocol file (e.g. from `vigil-bench generate`).
    #[arg(long)]
    pub file: PathBuf,
    #[arg(long)]
    pub brokers: String,
    #[arg(long, default_value = "metrics")]
    pub topic: String,
    /// Partitions of the topic (created if missing).
    #[arg(long, default_value_t = 1)]
    pub partitions: i32,
    /// Lines per Kafka message.
    #[arg(long, default_value_t = 500)]
    pub lines_per_message: usize,
}

pub async fn run(a: KafkaProduceArgs) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .create()?;
    for r in admin
        .create_topics(
            &[NewTopic::new(
                &a.topic,
                a.partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await?
    {
        if let Err((topic, e)) = r {
            anyhow::bail!("creating topic {topic}: {e}");
        }
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &a.brokers)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .create()?;
    let data = std::fs::read(&a.file)?;
    let (messages, lines) = crate::chunk_lines(&data, a.lines_per_message);
    let bar = ProgressBar::new(messages.len() as u64).with_style(
        ProgressStyle::with_template("producing {bar:40} {pos}/{len} messages {per_sec}")
            .expect("valid template"),
    );
    let started = Instant::now();
    let mut inflight = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        let partition = (i % a.partitions as usize) as i32;
        let record = FutureRecord::<(), [u8]>::to(&a.topic)
            .partition(partition)
            .payload(m);
        inflight.push(producer.send(record, Duration::from_secs(60)));
        if inflight.len() >= 1000 {
            for f in inflight.drain(..) {
                f.await.map_err(|(e, _)| e)?;
                bar.inc(1);
            }
        }
    }
    for f in inflight {
        f.await.map_err(|(e, _)| e)?;
        bar.inc(1);
    }
    bar.finish_and_clear();
    println!(
        "{{\"lines\": {lines}, \"messages\": {}, \"partitions\": {}, \"produce_seconds\": {:.3}}}",
        messages.len(),
        a.partitions,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
