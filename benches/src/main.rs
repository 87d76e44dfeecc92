//! vigil's benchmark tools: a TSBS-style `cpu-only` data generator, an HTTP line
//! protocol ingest load generator and a Kafka topic filler. See BENCHMARKS.md for how
//! they are run.

mod generate;
mod ingest;
mod kafka_produce;
mod remote_write;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "vigil-bench", about = "Benchmarks for vigil")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate TSBS cpu-only data as line protocol or OpenMetrics text.
    Generate(generate::GenerateArgs),
    /// Send a line protocol file to a server with concurrent clients and report samples/s.
    Ingest(ingest::IngestArgs),
    /// Fill a Kafka topic with a line protocol file (for the Kafka ingest benchmark).
    KafkaProduce(kafka_produce::KafkaProduceArgs),
    /// Send a pre-encoded Prometheus remote-write stream and report samples/s.
    RemoteWrite(remote_write::RemoteWriteArgs),
}

/// Splits a line protocol file into chunks of `lines` lines (the last may be
/// shorter); returns them with the total number of lines.
fn chunk_lines(data: &[u8], lines: usize) -> (Vec<&[u8]>, usize) {
    let mut chunks = Vec::new();
    let mut start = 0;
    let mut count = 0;
    for (i, b) in data.iter().enumerate() {
        if *b == b'\n' {
            count += 1;
            if count % lines == 0 {
                chunks.push(&data[start..=i]);
                start = i + 1;
            }
        }
    }
    if start < data.len() {
        chunks.push(&data[start..]);
    }
    (chunks, count)
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Ingest(a) => tokio::runtime::Runtime::new()?.block_on(ingest::run(a)),
        Command::KafkaProduce(a) => tokio::runtime::Runtime::new()?.block_on(kafka_produce::run(a)),
        Command::RemoteWrite(a) => tokio::runtime::Runtime::new()?.block_on(remote_write::run(a)),
    }
}
