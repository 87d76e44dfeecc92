//! vigil's benchmark tools: a TSBS-style `cpu-only` data generator, an HTTP line
//! protocol ingest load generator and a Kafka topic filler. See BENCHMARKS.md for how
//! they are run.

mod generate;
mod ingest;
mod kafka_produce;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Generate(a) => generate::run(a),
        Command::Ingest(a) => tokio::runtime::Runtime::new()?.block_on(ingest::run(a)),
        Command::KafkaProduce(a) => tokio::runtime::Runtime::new()?.block_on(kafka_produce::run(a)),
    }
}
