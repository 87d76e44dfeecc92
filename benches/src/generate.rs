//! TSBS `cpu-only` data: per host 10 tags and 10 `usage_*` fields, one row every
//! interval. Values are bounded random walks at 0.001 resolution.

use std::io::{BufWriter, Write};
use std::path::PathBuf;

use rand::{Rng, SeedableRng};

pub const FIELDS: [&str; 10] = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
];
const REGIONS: [&str; 9] = [
    "us-east-1",
    "us-west-1",
    "us-west-2",
    "eu-west-1",
    "eu-central-1",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-northeast-1",
    "sa-east-1",
];
const OSES: [&str; 3] = ["Ubuntu16.10", "Ubuntu16.04LTS", "Ubuntu15.10"];
const ARCHES: [&str; 2] = ["x64", "x86"];
const TEAMS: [&str; 4] = ["SF", "NYC", "LON", "CHI"];
const SERVICES: [&str; 20] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16", "17",
    "18", "19", "20",
];
const ENVS: [&str; 3] = ["production", "staging", "test"];

#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Number of hosts (series per field).
    #[arg(long, default_value_t = 100)]
    pub hosts: usize,
    /// Length of the data set in seconds.
    #[arg(long, default_value_t = 7200)]
    pub seconds: i64,
    /// Seconds between two rows of a host.
    #[arg(long, default_value_t = 10)]
    pub interval: i64,
    /// Start time, Unix seconds.
    #[arg(long, default_value_t = 1_700_000_000)]
    pub start: i64,
    /// `lp` (line protocol, ns timestamps) or `openmetrics` (for promtool).
    #[arg(long, default_value = "lp")]
    pub format: String,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Output file.
    #[arg(long)]
    pub out: PathBuf,
}

struct Host {
    tags: Vec<(&'static str, String)>,
    values: [f64; 10],
}

fn hosts(n: usize, rng: &mut impl Rng) -> Vec<Host> {
    (0..n)
        .map(|i| {
            let region = REGIONS[rng.gen_range(0..REGIONS.len())];
            let tags = vec![
                ("hostname", format!("host_{i}")),
                ("region", region.to_string()),
                (
                    "datacenter",
                    format!("{region}{}", ['a', 'b', 'c'][rng.gen_range(0..3)]),
                ),
                ("rack", rng.gen_range(0..100).to_string()),
                ("os", OSES[rng.gen_range(0..OSES.len())].to_string()),
                ("arch", ARCHES[rng.gen_range(0..ARCHES.len())].to_string()),
                ("team", TEAMS[rng.gen_range(0..TEAMS.len())].to_string()),
                (
                    "service",
                    SERVICES[rng.gen_range(0..SERVICES.len())].to_string(),
                ),
                ("service_version", rng.gen_range(0..2).to_string()),
                (
                    "service_environment",
                    ENVS[rng.gen_range(0..ENVS.len())].to_string(),
                ),
            ];
            let mut values = [0.0; 10];
            for v in &mut values {
                *v = (rng.gen_range(0.0..100.0f64) * 1000.0).round() / 1000.0;
            }
            Host { tags, values }
        })
        .collect()
}

fn step(v: &mut f64, rng: &mut impl Rng) {
    let next = (*v + rng.gen_range(-1.0..1.0f64)).clamp(0.0, 100.0);
    *v = (next * 1000.0).round() / 1000.0;
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed);
    let mut hosts = hosts(a.hosts, &mut rng);
    let steps = a.seconds / a.interval;
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&a.out)?);
    match a.format.as_str() {
        "lp" => {
            for s in 0..steps {
                let t = (a.start + s * a.interval) * 1_000_000_000;
                for h in &mut hosts {
                    write!(out, "cpu")?;
                    for (k, v) in &h.tags {
                        write!(out, ",{k}={v}")?;
                    }
                    for (i, f) in FIELDS.iter().enumerate() {
                        step(&mut h.values[i], &mut rng);
                        write!(out, "{}{f}={}", if i == 0 { ' ' } else { ',' }, h.values[i])?;
                    }
                    writeln!(out, " {t}")?;
                }
            }
        }
        "openmetrics" => {
            // Same random sequence as `lp`: compute all values first, then write one
            // metric family at a time as OpenMetrics requires.
            let mut series: Vec<Vec<[f64; 10]>> =
                vec![Vec::with_capacity(steps as usize); hosts.len()];
            for _ in 0..steps {
                for (hi, h) in hosts.iter_mut().enumerate() {
                    for i in 0..10 {
                        step(&mut h.values[i], &mut rng);
                    }
                    series[hi].push(h.values);
                }
            }
            for (i, f) in FIELDS.iter().enumerate() {
                writeln!(out, "# TYPE cpu_{f} gauge")?;
                for (hi, h) in hosts.iter().enumerate() {
                    let labels: Vec<String> =
                        h.tags.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
                    let labels = labels.join(",");
                    for (s, vals) in series[hi].iter().enumerate() {
                        let t = a.start + s as i64 * a.interval;
                        writeln!(out, "cpu_{f}{{{labels}}} {} {t}", vals[i])?;
                    }
                }
            }
            writeln!(out, "# EOF")?;
        }
        other => anyhow::bail!("unknown format '{other}': use lp or openmetrics"),
    }
    out.flush()?;
    eprintln!(
        "generated {} rows, {} samples into {}",
        steps as usize * a.hosts,
        steps as usize * a.hosts * 10,
        a.out.display()
    );
    Ok(())
}
