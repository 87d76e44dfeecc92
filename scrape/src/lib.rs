//! Pull collection: each target of each job in Prometheus's `scrape_configs`
//! is scraped on its own schedule (the job's interval, offset per target so
//! targets spread over it, as Prometheus does), its exposition (text or
//! OpenMetrics, negotiated as Prometheus negotiates) parsed by our own
//! parser, and its samples written through the one write pipeline: each
//! metric a table, its labels (plus `job`, `instance` and the target's
//! labels) as tags and the sample in `value`, as remote write stores them.
//! Each scrape also writes Prometheus's report series: `up`,
//! `scrape_duration_seconds`, `scrape_samples_scraped`,
//! `scrape_samples_post_metric_relabeling` and `scrape_series_added`. A
//! series that disappears is simply not written again (nothing is carried
//! forward).

pub mod config;
pub mod file_sd;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use vigil_ingest::exposition::parse_exposition;
use vigil_ingest::WritePipeline;
use vigil_model::{FieldValue, Point};
use vigil_storage::retention::now_nanos;

pub use config::{load, parse, ScrapeConfigError, ScrapeJob, Target};

/// What Prometheus asks for: OpenMetrics first, then the text format.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";

/// A body no `body_size_limit` limits is cut here (a gzip bomb, an endless
/// stream).
const DEFAULT_BODY_LIMIT: usize = 64 << 20;

#[derive(Clone, Default)]
pub struct ScrapeMetrics {
    pub scrapes: Counter,
    pub failures: Counter,
    pub samples: Counter,
}

impl ScrapeMetrics {
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register("vigil_scrapes", "Target scrapes", self.scrapes.clone());
        registry.register(
            "vigil_scrape_failures",
            "Target scrapes that failed (unreachable, bad status, over a limit)",
            self.failures.clone(),
        );
        registry.register(
            "vigil_scrape_samples",
            "Samples written from scrapes",
            self.samples.clone(),
        );
    }
}

/// The running scrapes; stopped at shutdown.
pub struct ScrapeTasks {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
}

impl ScrapeTasks {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

/// Starts one supervisor per job; it runs a task per target and, with
/// `file_sd_configs`, starts and stops them as the files change.
pub fn start(
    jobs: Vec<ScrapeJob>,
    pipeline: Arc<WritePipeline>,
    metrics: ScrapeMetrics,
) -> ScrapeTasks {
    let (stop, stop_rx) = watch::channel(false);
    let client = reqwest::Client::builder()
        .build()
        .expect("an HTTP client builds");
    let targets: usize = jobs.iter().map(|j| j.targets.len()).sum();
    let file_sd = jobs.iter().filter(|j| !j.file_sd.is_empty()).count();
    info!(
        jobs = jobs.len(),
        static_targets = targets,
        file_sd_jobs = file_sd,
        "scraping"
    );
    let handles = jobs
        .into_iter()
        .map(|job| {
            tokio::spawn(supervise(
                Arc::new(job),
                Arc::clone(&pipeline),
                client.clone(),
                metrics.clone(),
                stop_rx.clone(),
            ))
        })
        .collect();
    ScrapeTasks { stop, handles }
}

/// Keeps one task per target of `job` running: its static targets and
/// what its files name now (looked at every second, read again when one
/// changes or every `refresh_interval`).
async fn supervise(
    job: Arc<ScrapeJob>,
    pipeline: Arc<WritePipeline>,
    client: reqwest::Client,
    metrics: ScrapeMetrics,
    mut stop: watch::Receiver<bool>,
) {
    type Running = (watch::Sender<bool>, tokio::task::JoinHandle<()>);
    let mut running: BTreeMap<Target, Running> = BTreeMap::new();
    let mut from_files: BTreeMap<std::path::PathBuf, Vec<Target>> = BTreeMap::new();
    let mut seen_files = None;
    let mut read_at: Option<Instant> = None;
    let refresh = job
        .file_sd
        .iter()
        .map(|f| f.refresh_interval)
        .min()
        .unwrap_or(Duration::MAX);
    loop {
        if !job.file_sd.is_empty() {
            let now = file_sd::stamp(&job.file_sd, &job.base_dir);
            let due = read_at.is_none_or(|t| t.elapsed() >= refresh);
            if due || seen_files.as_ref() != Some(&now) {
                let (targets, errors) = file_sd::targets(&job.file_sd, &job.base_dir, &from_files);
                for e in errors {
                    warn!(
                        job = job.job_name.as_str(),
                        error = e.as_str(),
                        "file_sd file not read; its last targets are kept"
                    );
                }
                from_files = targets;
                seen_files = Some(now);
                read_at = Some(Instant::now());
            }
        }
        let wanted: std::collections::BTreeSet<Target> = job
            .targets
            .iter()
            .chain(from_files.values().flatten())
            .cloned()
            .collect();
        let gone: Vec<Target> = running
            .keys()
            .filter(|t| !wanted.contains(*t))
            .cloned()
            .collect();
        for t in gone {
            if let Some((tx, handle)) = running.remove(&t) {
                info!(
                    job = job.job_name.as_str(),
                    target = t.address.as_str(),
                    "target removed"
                );
                let _ = tx.send(true);
                let _ = handle.await;
            }
        }
        for t in wanted {
            if running.contains_key(&t) {
                continue;
            }
            let (tx, rx) = watch::channel(false);
            let handle = tokio::spawn(run_target(
                Arc::clone(&job),
                t.clone(),
                Arc::clone(&pipeline),
                client.clone(),
                metrics.clone(),
                rx,
            ));
            running.insert(t, (tx, handle));
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.changed() => {
                for (tx, _) in running.values() {
                    let _ = tx.send(true);
                }
                for (_, (_, handle)) in running {
                    let _ = handle.await;
                }
                return;
            }
        }
    }
}

/// The target's place in its interval: the same on every start, different
/// per target.
fn offset(job: &ScrapeJob, target: &Target, step: i64) -> i64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (job.job_name.as_str(), target.address.as_str()).hash(&mut h);
    (h.finish() % step as u64) as i64
}

async fn run_target(
    job: Arc<ScrapeJob>,
    target: Target,
    pipeline: Arc<WritePipeline>,
    client: reqwest::Client,
    metrics: ScrapeMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let step = i64::try_from(job.interval.as_nanos())
        .unwrap_or(i64::MAX)
        .max(1);
    let offset = offset(&job, &target, step);
    let mut last_series: HashSet<u64> = HashSet::new();
    loop {
        let now = now_nanos();
        let mut tick = (now - offset).div_euclid(step) * step + offset;
        if tick <= now {
            tick += step;
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_nanos((tick - now) as u64)) => {}
            _ = stop.changed() => return,
        }
        let at = now_nanos();
        let started = Instant::now();
        metrics.scrapes.inc();
        let fetched = tokio::select! {
            f = fetch(&job, &target, &client) => f,
            _ = stop.changed() => return,
        };
        let outcome = match fetched {
            Ok((body, openmetrics)) => {
                let job = Arc::clone(&job);
                let target = target.clone();
                let pipeline2 = Arc::clone(&pipeline);
                let previous = last_series.clone();
                match tokio::task::spawn_blocking(move || {
                    store(&job, &target, &body, openmetrics, at, &pipeline2, previous)
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => Err(format!("scrape task failed: {e}")),
                }
            }
            Err(e) => Err(e),
        };
        let (tables, report) = match outcome {
            Ok(stored) => {
                last_series = stored.series;
                metrics.samples.inc_by(stored.samples as u64);
                (stored.tables, stored.report)
            }
            Err(e) => {
                metrics.failures.inc();
                debug!(
                    job = job.job_name.as_str(),
                    target = target.address.as_str(),
                    error = e.as_str(),
                    "scrape failed"
                );
                (Vec::new(), Report::default())
            }
        };
        let up = report.up;
        let mut all = tables;
        match report_series(&job, &target, at, started.elapsed(), &report, &pipeline) {
            Ok(t) => all.extend(t),
            Err(e) => warn!(error = e.as_str(), "scrape report series not written"),
        }
        if let Err(e) = pipeline.admit() {
            metrics.failures.inc();
            warn!(job = job.job_name.as_str(), target = target.address.as_str(), error = %e, "scrape not stored");
            continue;
        }
        if let Err(e) = pipeline.commit(all).await {
            metrics.failures.inc();
            warn!(job = job.job_name.as_str(), target = target.address.as_str(), error = %e, "scrape not stored");
        } else if !up {
            debug!(target = target.address.as_str(), "target down");
        }
    }
}

/// Gets the target's exposition; whether it is OpenMetrics.
async fn fetch(
    job: &ScrapeJob,
    target: &Target,
    client: &reqwest::Client,
) -> Result<(Vec<u8>, bool), String> {
    let url = format!("{}://{}{}", job.scheme, target.address, job.metrics_path);
    let query: Vec<(&str, &str)> = job
        .params
        .iter()
        .flat_map(|(k, vs)| vs.iter().map(move |v| (k.as_str(), v.as_str())))
        .collect();
    let response = client
        .get(&url)
        .query(&query)
        .header("Accept", ACCEPT)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", job.timeout.as_secs_f64()),
        )
        .timeout(job.timeout)
        .send()
        .await
        .map_err(|e| format!("{url}: {}", e.without_url()))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let openmetrics = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text"));
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {}", e.without_url()))?;
        body.extend_from_slice(&chunk);
        // No limit set: the largest body the write pipeline takes at all.
        let limit = if job.body_size_limit > 0 {
            job.body_size_limit
        } else {
            DEFAULT_BODY_LIMIT
        };
        if body.len() > limit {
            return Err(format!("{url}: body larger than {limit} bytes"));
        }
    }
    Ok((body, openmetrics))
}

#[derive(Default)]
struct Report {
    up: bool,
    scraped: usize,
    post_relabel: usize,
    added: usize,
}

struct Stored {
    tables: Vec<(String, RecordBatch)>,
    report: Report,
    samples: usize,
    series: HashSet<u64>,
}

/// Tags of a scraped series: its labels, then the target's (`job`,
/// `instance`, the config's). On a clash the target's win and the scraped
/// label is kept as `exported_<name>`, unless `honor_labels` keeps the
/// scraped one (as in Prometheus).
fn tags<'a>(
    job: &ScrapeJob,
    target: &'a Target,
    scraped: &[(&'a str, Cow<'a, str>)],
) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    let mut out: BTreeMap<Cow<'a, str>, Cow<'a, str>> = BTreeMap::new();
    // The target's labels: `job` and `instance`, which its own labels may
    // replace (as in Prometheus).
    let mut own: BTreeMap<Cow<'a, str>, Cow<'a, str>> = BTreeMap::from([
        (Cow::Borrowed("job"), Cow::Owned(job.job_name.clone())),
        (
            Cow::Borrowed("instance"),
            Cow::Borrowed(target.address.as_str()),
        ),
    ]);
    own.extend(
        target
            .labels
            .iter()
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))),
    );
    for (k, v) in scraped.iter().filter(|(_, v)| !v.is_empty()) {
        // `value` and `time` are columns of every metric table.
        let k: Cow<'a, str> = if *k == "value" || *k == "time" {
            Cow::Owned(format!("exported_{k}"))
        } else {
            Cow::Borrowed(k)
        };
        out.insert(k, v.clone());
    }
    for (k, v) in own {
        match out.get(&k) {
            Some(_) if job.honor_labels => {}
            Some(existing) => {
                let existing = existing.clone();
                out.insert(Cow::Owned(format!("exported_{k}")), existing);
                out.insert(k, v);
            }
            None => {
                out.insert(k, v);
            }
        }
    }
    out.into_iter().collect()
}

fn store(
    job: &ScrapeJob,
    target: &Target,
    body: &[u8],
    openmetrics: bool,
    at: i64,
    pipeline: &WritePipeline,
    previous: HashSet<u64>,
) -> Result<Stored, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let parsed = parse_exposition(text, openmetrics);
    if openmetrics && !parsed.eof {
        return Err("OpenMetrics body without # EOF: cut short".into());
    }
    if job.sample_limit > 0 && parsed.samples.len() > job.sample_limit {
        return Err(format!(
            "{} samples, over sample_limit {}",
            parsed.samples.len(),
            job.sample_limit
        ));
    }
    if job.label_limit > 0 {
        if let Some(s) = parsed
            .samples
            .iter()
            .find(|s| s.labels.len() > job.label_limit)
        {
            return Err(format!(
                "{} has {} labels, over label_limit {}",
                s.name,
                s.labels.len(),
                job.label_limit
            ));
        }
    }
    let mut series = HashSet::with_capacity(parsed.samples.len());
    let mut points = Vec::with_capacity(parsed.samples.len());
    for (i, s) in parsed.samples.iter().enumerate() {
        let tags = tags(job, target, &s.labels);
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (s.name, &tags).hash(&mut h);
        series.insert(h.finish());
        let time = match s.timestamp_ms {
            Some(ms) if job.honor_timestamps => ms.saturating_mul(1_000_000),
            _ => at,
        };
        points.push((
            i + 1,
            Point {
                table: Cow::Borrowed(s.name),
                tags,
                fields: vec![(Cow::Borrowed("value"), FieldValue::F64(s.value))],
                time,
            },
        ));
    }
    let added = series.difference(&previous).count();
    // The write limits every input has (days per write, here).
    let mut body = vigil_ingest::ParsedBody {
        points,
        errors: Vec::new(),
        error_count: 0,
    };
    pipeline.limit_days(&mut body);
    let validated = pipeline.validate(body.points);
    if parsed.error_count > 0 || validated.rejected_count > 0 {
        debug!(
            target = target.address.as_str(),
            parse_errors = parsed.error_count,
            rejected = validated.rejected_count,
            first = ?parsed.errors.first().or(validated.rejected.first()).or(body.errors.first()),
            "scraped lines not stored"
        );
    }
    Ok(Stored {
        tables: validated.tables,
        samples: validated.accepted,
        report: Report {
            up: true,
            scraped: parsed.samples.len(),
            post_relabel: parsed.samples.len(),
            added,
        },
        series,
    })
}

/// Prometheus's report series of one scrape, as tables.
fn report_series(
    job: &ScrapeJob,
    target: &Target,
    at: i64,
    took: Duration,
    r: &Report,
    pipeline: &WritePipeline,
) -> Result<Vec<(String, RecordBatch)>, String> {
    let tags = tags(job, target, &[]);
    let points: Vec<(usize, Point<'_>)> = [
        ("up", if r.up { 1.0 } else { 0.0 }),
        ("scrape_duration_seconds", took.as_secs_f64()),
        ("scrape_samples_scraped", r.scraped as f64),
        (
            "scrape_samples_post_metric_relabeling",
            r.post_relabel as f64,
        ),
        ("scrape_series_added", r.added as f64),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (name, v))| {
        (
            i + 1,
            Point {
                table: Cow::Borrowed(name),
                tags: tags.clone(),
                fields: vec![(Cow::Borrowed("value"), FieldValue::F64(v))],
                time: at,
            },
        )
    })
    .collect();
    let validated = pipeline.validate(points);
    if let Some(e) = validated.rejected.first() {
        return Err(e.reason.clone());
    }
    Ok(validated.tables)
}
