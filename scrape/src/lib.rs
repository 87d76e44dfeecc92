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
//!
//! Targets come from static lists, files and etcd, pass through target
//! relabeling, and with a ring configured each collector scrapes only the
//! targets the ring gives it.
//!
//! In collector mode a scrape is not stored here: its samples, under the same
//! limits, go out as one remote-write request through [`ScrapeWriter`]'s
//! forward (the server's Kafka producer).

pub mod config;
pub mod etcd_sd;
pub mod file_sd;
pub mod relabel;
pub mod ring;
pub mod target;

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use futures::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::watch;
use tracing::{debug, info, warn};
use vigil_ingest::exposition::parse_exposition;
use vigil_ingest::WritePipeline;
use vigil_model::{FieldValue, Point};
use vigil_storage::retention::now_nanos;

pub use config::{load, parse, ScrapeConfigError, ScrapeJob, Target};

/// Sends a scrape's samples elsewhere as one remote-write request (collector
/// mode: to Kafka); an error is the scrape's failure to be stored.
pub type Forward = Arc<
    dyn Fn(vigil_ingest::WriteRequest) -> futures::future::BoxFuture<'static, Result<(), String>>
        + Send
        + Sync,
>;

/// Where scraped samples go: always checked under the write pipeline's limits,
/// then stored by this node, or forwarded when it is a collector.
pub struct ScrapeWriter {
    pipeline: Arc<WritePipeline>,
    forward: Option<Forward>,
}

impl ScrapeWriter {
    /// Scrapes are stored by this node through `pipeline`.
    pub fn storage(pipeline: Arc<WritePipeline>) -> Self {
        Self {
            pipeline,
            forward: None,
        }
    }

    /// Scrapes are checked by `pipeline`'s limits and handed to `forward`.
    pub fn forwarding(pipeline: Arc<WritePipeline>, forward: Forward) -> Self {
        Self {
            pipeline,
            forward: Some(forward),
        }
    }
}

/// A scrape ready to leave: batches for this node's storage, or a request to
/// forward.
enum Output {
    Tables(Vec<(String, RecordBatch)>),
    Request(vigil_ingest::WriteRequest),
}

impl Output {
    fn extend(&mut self, more: Output) {
        match (self, more) {
            (Output::Tables(a), Output::Tables(b)) => a.extend(b),
            (Output::Request(a), Output::Request(b)) => a.timeseries.extend(b.timeseries),
            // One writer makes one kind.
            _ => unreachable!("a scrape's outputs are all of one kind"),
        }
    }
}

/// Checked points as the writer takes them: validated into batches, or as a
/// remote-write request (one series per point; time in milliseconds).
fn output(
    writer: &ScrapeWriter,
    points: Vec<(usize, Point<'_>)>,
) -> (Output, usize, Option<String>) {
    if writer.forward.is_none() {
        let validated = writer.pipeline.validate(points);
        let first = validated.rejected.first().map(|e| e.reason.clone());
        let accepted = validated.accepted;
        return (Output::Tables(validated.tables), accepted, first);
    }
    // What storage would refuse is refused here, before it leaves: a label
    // that would name another table (`__name__`) or a hidden column, a
    // table's own columns, a repeated key, and a series too large for one
    // Kafka message.
    let mut first = None;
    let points: Vec<&Point<'_>> = points
        .iter()
        .map(|(_, p)| p)
        .filter(|p| match forward_refusal(p) {
            Some(reason) => {
                first.get_or_insert(reason);
                false
            }
            None => true,
        })
        .collect();
    let timeseries: Vec<vigil_ingest::TimeSeries> = points
        .iter()
        .map(|p| vigil_ingest::TimeSeries {
            labels: std::iter::once(vigil_ingest::Label {
                name: "__name__".into(),
                value: p.table.to_string(),
            })
            .chain(p.tags.iter().map(|(k, v)| vigil_ingest::Label {
                name: k.to_string(),
                value: v.to_string(),
            }))
            .collect(),
            samples: p
                .fields
                .iter()
                .filter_map(|(_, v)| match v {
                    FieldValue::F64(value) => Some(vigil_ingest::Sample {
                        value: *value,
                        timestamp: p.time.div_euclid(1_000_000),
                    }),
                    _ => None,
                })
                .collect(),
        })
        .collect();
    let accepted = timeseries.len();
    (
        Output::Request(vigil_ingest::WriteRequest { timeseries }),
        accepted,
        first,
    )
}

/// Largest series forwarded: its labels must fit a Kafka message (900 KiB)
/// with room to spare.
const MAX_FORWARDED_SERIES_BYTES: usize = 256 << 10;

/// Why a scraped point cannot be forwarded as a remote-write series.
fn forward_refusal(p: &Point<'_>) -> Option<String> {
    let mut size = p.table.len();
    for (i, (k, v)) in p.tags.iter().enumerate() {
        if k.starts_with("__") || k == "value" || k == "time" {
            return Some(format!("{}: label '{k}' cannot be stored", p.table));
        }
        if p.tags[..i].iter().any(|(other, _)| other == k) {
            return Some(format!("{}: label '{k}' repeated", p.table));
        }
        size += k.len() + v.len();
    }
    (size > MAX_FORWARDED_SERIES_BYTES).then(|| {
        format!(
            "{}: {size} bytes of labels, over the {MAX_FORWARDED_SERIES_BYTES} a forwarded series may have",
            p.table
        )
    })
}
pub use ring::{Membership, RingConfig};
pub use target::ScrapeTarget;

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
    /// Targets this collector scrapes now.
    pub targets: Gauge,
    /// Members of the scrape ring as this collector sees them.
    pub ring_members: Gauge,
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
        registry.register(
            "vigil_scrape_targets",
            "Targets this collector scrapes (after relabeling and the ring's share)",
            self.targets.clone(),
        );
        registry.register(
            "vigil_scrape_ring_members",
            "Collectors in the scrape ring as this one sees them",
            self.ring_members.clone(),
        );
    }
}

/// The running scrapes; stopped at shutdown, which also leaves the ring.
pub struct ScrapeTasks {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    ring: Option<tokio::task::JoinHandle<()>>,
}

impl ScrapeTasks {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
        if let Some(h) = self.ring {
            let _ = h.await;
        }
    }
}

/// Starts one supervisor per job; it runs a task per target it scrapes and
/// starts and stops them as discovery and the ring change.
pub fn start(
    jobs: Vec<ScrapeJob>,
    writer: Arc<ScrapeWriter>,
    metrics: ScrapeMetrics,
    ring: Option<RingConfig>,
) -> ScrapeTasks {
    let (stop, stop_rx) = watch::channel(false);
    let targets: usize = jobs.iter().map(|j| j.targets.len()).sum();
    info!(
        jobs = jobs.len(),
        static_targets = targets,
        file_sd_jobs = jobs.iter().filter(|j| !j.file_sd.is_empty()).count(),
        etcd_sd_jobs = jobs.iter().filter(|j| !j.etcd_sd.is_empty()).count(),
        ring = ring.as_ref().map(|r| r.name.as_str()),
        "scraping"
    );
    let (ring_view, ring_task) = match ring {
        Some(r) => {
            let name = r.name.clone();
            let lf = r.load_factor;
            let (view, task) = ring::start(r, metrics.ring_members.clone(), stop_rx.clone());
            (
                Some(Share {
                    view,
                    name,
                    load_factor: lf,
                }),
                Some(task),
            )
        }
        None => (None, None),
    };
    let handles = jobs
        .into_iter()
        .map(|job| {
            tokio::spawn(supervise(
                Arc::new(job),
                Arc::clone(&writer),
                metrics.clone(),
                stop_rx.clone(),
                ring_view.clone(),
            ))
        })
        .collect();
    ScrapeTasks {
        stop,
        handles,
        ring: ring_task,
    }
}

/// This collector's share of the ring.
#[derive(Clone)]
struct Share {
    view: ring::MemberView,
    name: String,
    load_factor: f64,
}

impl Share {
    /// The targets of `all` this collector scrapes.
    fn mine(&self, all: Vec<ScrapeTarget>) -> Vec<ScrapeTarget> {
        let Some(members) = self.view.borrow().clone() else {
            return Vec::new();
        };
        let hashes: Vec<u64> = all.iter().map(ScrapeTarget::hash64).collect();
        let owners = ring::place(&members, &hashes, self.load_factor);
        all.into_iter()
            .zip(owners)
            .filter(|(_, o)| members[*o] == self.name)
            .map(|(t, _)| t)
            .collect()
    }
}

/// Keeps one task per target of `job` this collector scrapes: its static
/// targets, what its files and etcd prefixes name now, relabeled, and with a
/// ring only its share. Files are looked at every second (read again when
/// one changes or every `refresh_interval`); etcd and the ring push changes.
async fn supervise(
    job: Arc<ScrapeJob>,
    writer: Arc<ScrapeWriter>,
    metrics: ScrapeMetrics,
    mut stop: watch::Receiver<bool>,
    mut share: Option<Share>,
) {
    type Running = (watch::Sender<bool>, tokio::task::JoinHandle<()>);
    let client = match target::http_client(&job, None) {
        Ok(c) => c,
        Err(e) => {
            warn!(
                job = job.job_name.as_str(),
                error = e.as_str(),
                "job not scraped"
            );
            return;
        }
    };
    let mut running: BTreeMap<ScrapeTarget, Running> = BTreeMap::new();
    let mut from_files: BTreeMap<std::path::PathBuf, Vec<Target>> = BTreeMap::new();
    let mut seen_files = None;
    let mut read_at: Option<Instant> = None;
    let mut file_checked: Option<Instant> = None;
    let refresh = job
        .file_sd
        .iter()
        .map(|f| f.refresh_interval)
        .min()
        .unwrap_or(Duration::MAX);
    let (mut etcd_views, etcd_tasks): (Vec<_>, Vec<_>) = job
        .etcd_sd
        .iter()
        .map(|sd| etcd_sd::start(sd.clone(), job.job_name.clone(), stop.clone()))
        .unzip();
    let mut changed = true;
    let mut refused: HashSet<String> = HashSet::new();
    loop {
        if !job.file_sd.is_empty()
            && file_checked.is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            file_checked = Some(Instant::now());
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
                changed |= targets != from_files;
                from_files = targets;
                seen_files = Some(now);
                read_at = Some(Instant::now());
            }
        }
        for v in &mut etcd_views {
            if v.has_changed().unwrap_or(false) {
                v.borrow_and_update();
                changed = true;
            }
        }
        if let Some(s) = &mut share {
            if s.view.has_changed().unwrap_or(false) {
                s.view.borrow_and_update();
                changed = true;
            }
        }
        if changed {
            changed = false;
            let from_etcd: Vec<Arc<Vec<Target>>> =
                etcd_views.iter().map(|v| Arc::clone(&v.borrow())).collect();
            let mut resolved: std::collections::BTreeSet<ScrapeTarget> = Default::default();
            for t in job
                .targets
                .iter()
                .chain(from_files.values().flatten())
                .chain(from_etcd.iter().flat_map(|v| v.iter()))
            {
                match target::resolve(&job, t) {
                    Ok(Some(r)) => {
                        resolved.insert(r);
                    }
                    Ok(None) => {}
                    Err(e) => {
                        // Each reason logged once, in a bounded set.
                        if refused.len() > 10_000 {
                            refused.clear();
                        }
                        if refused.insert(e.clone()) {
                            warn!(
                                job = job.job_name.as_str(),
                                error = e.as_str(),
                                "target not scraped"
                            );
                        }
                    }
                }
            }
            let all: Vec<ScrapeTarget> = resolved.into_iter().collect();
            let wanted: std::collections::BTreeSet<ScrapeTarget> = match &share {
                Some(s) => s.mine(all).into_iter().collect(),
                None => all.into_iter().collect(),
            };
            let gone: Vec<ScrapeTarget> = running
                .keys()
                .filter(|t| !wanted.contains(*t))
                .cloned()
                .collect();
            for t in gone {
                if let Some((tx, handle)) = running.remove(&t) {
                    debug!(
                        job = job.job_name.as_str(),
                        target = t.address.as_str(),
                        "target no longer scraped here"
                    );
                    let _ = tx.send(true);
                    let _ = handle.await;
                    metrics.targets.dec();
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
                    Arc::clone(&writer),
                    client.clone(),
                    metrics.clone(),
                    rx,
                ));
                running.insert(t, (tx, handle));
                metrics.targets.inc();
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = stop.changed() => {
                for (tx, _) in running.values() {
                    let _ = tx.send(true);
                }
                for (_, (_, handle)) in running {
                    let _ = handle.await;
                    metrics.targets.dec();
                }
                for h in etcd_tasks {
                    let _ = h.await;
                }
                return;
            }
        }
    }
}

async fn run_target(
    job: Arc<ScrapeJob>,
    target: ScrapeTarget,
    writer: Arc<ScrapeWriter>,
    client: reqwest::Client,
    metrics: ScrapeMetrics,
    mut stop: watch::Receiver<bool>,
) {
    let step = i64::try_from(target.interval.as_nanos())
        .unwrap_or(i64::MAX)
        .max(1);
    let offset = target::offset(&target, step);
    // `server_name`: the target is reached at its address, but TLS checks
    // (and SNI sends) the configured name.
    let mut pinned: Option<reqwest::Client> = None;
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
            f = fetch(&job, &target, &client, &mut pinned) => f,
            _ = stop.changed() => return,
        };
        if fetched.is_err() {
            // Looked up again next time: the target may have moved.
            pinned = None;
        }
        let outcome = match fetched {
            Ok((body, openmetrics)) => {
                let job = Arc::clone(&job);
                let target = target.clone();
                let writer2 = Arc::clone(&writer);
                let previous = last_series.clone();
                match tokio::task::spawn_blocking(move || {
                    store(&job, &target, &body, openmetrics, at, &writer2, previous)
                })
                .await
                {
                    Ok(r) => r,
                    Err(e) => Err(format!("scrape task failed: {e}")),
                }
            }
            Err(e) => Err(e),
        };
        let empty = || match writer.forward {
            Some(_) => Output::Request(Default::default()),
            None => Output::Tables(Vec::new()),
        };
        let (output, report) = match outcome {
            Ok(stored) => {
                last_series = stored.series;
                metrics.samples.inc_by(stored.samples as u64);
                (stored.output, stored.report)
            }
            Err(e) => {
                metrics.failures.inc();
                debug!(
                    job = job.job_name.as_str(),
                    target = target.address.as_str(),
                    error = e.as_str(),
                    "scrape failed"
                );
                (empty(), Report::default())
            }
        };
        let up = report.up;
        let mut all = output;
        match report_series(&target, at, started.elapsed(), &report, &writer) {
            Ok(t) => all.extend(t),
            Err(e) => warn!(error = e.as_str(), "scrape report series not written"),
        }
        let written = match (all, &writer.forward) {
            // Bounded: a Kafka that does not answer costs this target its
            // scrapes until it does, not its stop.
            (Output::Request(request), Some(forward)) => tokio::select! {
                r = tokio::time::timeout(target.interval.max(Duration::from_secs(10)), forward(request)) => {
                    r.unwrap_or_else(|_| Err("Kafka did not acknowledge in time".into()))
                }
                _ = stop.changed() => return,
            },
            (Output::Tables(tables), _) => match writer.pipeline.admit() {
                Ok(()) => writer
                    .pipeline
                    .commit(tables)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            (Output::Request(_), None) => unreachable!("requests are made for a forward"),
        };
        if let Err(e) = written {
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
    target: &ScrapeTarget,
    client: &reqwest::Client,
    pinned: &mut Option<reqwest::Client>,
) -> Result<(Vec<u8>, bool), String> {
    let mut url = target.url();
    let client = match &job.tls.server_name {
        None => client,
        Some(name) => {
            let port = target.address.rsplit_once(':').map_or("443", |(_, p)| p);
            url = format!("{}://{name}:{port}{}", target.scheme, target.metrics_path);
            if pinned.is_none() {
                let addr = tokio::time::timeout(
                    target.timeout,
                    tokio::net::lookup_host(target.address.as_str()),
                )
                .await
                .map_err(|_| format!("{}: name lookup timed out", target.address))?
                .map_err(|e| format!("{}: {e}", target.address))?
                .next()
                .ok_or_else(|| format!("{}: no address", target.address))?;
                *pinned = Some(target::http_client(job, Some((name, addr)))?);
            }
            pinned.as_ref().expect("just set")
        }
    };
    let mut request = client.get(&url);
    if job.tls.server_name.is_some() {
        // Only TLS sees server_name; the Host header names the target, as
        // in Prometheus.
        request = request.header(reqwest::header::HOST, target.address.as_str());
    }
    let mut request = request
        .query(&target.params)
        .header("Accept", ACCEPT)
        .header(
            "X-Prometheus-Scrape-Timeout-Seconds",
            format!("{}", target.timeout.as_secs_f64()),
        )
        .timeout(target.timeout);
    match &job.auth {
        config::HttpAuth::None => {}
        config::HttpAuth::Basic { username, password } => {
            request = request.basic_auth(
                username.read(&job.base_dir)?,
                Some(password.read(&job.base_dir)?),
            );
        }
        config::HttpAuth::Header { kind, credentials } => {
            let c = credentials.read(&job.base_dir)?;
            request = request.header(reqwest::header::AUTHORIZATION, format!("{kind} {c}"));
        }
    }
    let response = request
        .send()
        .await
        .map_err(|e| format!("{url}: {}", error_chain(&e.without_url())))?;
    if !response.status().is_success() {
        return Err(format!("{url} answered {}", response.status()));
    }
    let openmetrics = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/openmetrics-text"));
    // No limit set: the largest body the write pipeline takes at all.
    let limit = if job.body_size_limit > 0 {
        job.body_size_limit
    } else {
        DEFAULT_BODY_LIMIT
    };
    let mut body = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{url}: {}", error_chain(&e.without_url())))?;
        body.extend_from_slice(&chunk);
        if body.len() > limit {
            return Err(format!("{url}: body larger than {limit} bytes"));
        }
    }
    Ok((body, openmetrics))
}

/// An error with its causes (reqwest's own message hides the TLS reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[derive(Default)]
struct Report {
    up: bool,
    scraped: usize,
    post_relabel: usize,
    added: usize,
}

struct Stored {
    output: Output,
    report: Report,
    samples: usize,
    series: HashSet<u64>,
}

/// Tags of a scraped series: its labels, then the target's (`job`,
/// `instance`, the rest relabeling left). On a clash the target's win and
/// the scraped label is kept as `exported_<name>` (prefixed again while that
/// is taken too), unless `honor_labels` keeps the scraped one (as in
/// Prometheus). A sorted vector: a handful of labels per sample, so no map.
fn tags<'a>(
    honor_labels: bool,
    target: &'a ScrapeTarget,
    scraped: &[(&'a str, Cow<'a, str>)],
) -> Vec<(Cow<'a, str>, Cow<'a, str>)> {
    let mut out: Vec<(Cow<'a, str>, Cow<'a, str>)> =
        Vec::with_capacity(scraped.len() + target.labels.len() + 1);
    for (k, v) in scraped.iter().filter(|(_, v)| !v.is_empty()) {
        // `value` and `time` are columns of every metric table.
        let k: Cow<'a, str> = if *k == "value" || *k == "time" {
            Cow::Owned(format!("exported_{k}"))
        } else {
            Cow::Borrowed(k)
        };
        out.push((k, v.clone()));
    }
    for (k, v) in &target.labels {
        match out.iter().position(|(x, _)| x == k) {
            Some(_) if honor_labels => {}
            Some(i) => {
                let scraped = std::mem::replace(&mut out[i].1, Cow::Borrowed(v.as_str()));
                let mut name = format!("exported_{k}");
                while out.iter().any(|(x, _)| *x == name) {
                    name = format!("exported_{name}");
                }
                out.push((Cow::Owned(name), scraped));
            }
            None => out.push((Cow::Borrowed(k.as_str()), Cow::Borrowed(v.as_str()))),
        }
    }
    out.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    out
}

type Tags<'a> = Vec<(Cow<'a, str>, Cow<'a, str>)>;

/// A sample's table and tags after `metric_relabel_configs`; `None` when a
/// rule drops it (or leaves it without a name).
fn metric_relabel<'a>(
    job: &ScrapeJob,
    name: &'a str,
    tags: Tags<'a>,
) -> Option<(Cow<'a, str>, Tags<'a>)> {
    if job.metric_relabel.is_empty() {
        return Some((Cow::Borrowed(name), tags));
    }
    let mut labels: relabel::Labels = tags
        .into_iter()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    labels.insert("__name__".into(), name.to_string());
    let mut labels = job.metric_relabel.process(labels)?;
    let name = labels.remove("__name__").filter(|n| !n.is_empty())?;
    labels.retain(|k, v| !k.starts_with("__") && !v.is_empty());
    Some((
        Cow::Owned(name),
        labels
            .into_iter()
            .map(|(k, v)| (Cow::Owned(k), Cow::Owned(v)))
            .collect(),
    ))
}

fn store(
    job: &ScrapeJob,
    target: &ScrapeTarget,
    body: &[u8],
    openmetrics: bool,
    at: i64,
    writer: &ScrapeWriter,
    previous: HashSet<u64>,
) -> Result<Stored, String> {
    let pipeline = &writer.pipeline;
    let text = std::str::from_utf8(body).map_err(|e| format!("body is not UTF-8: {e}"))?;
    let parsed = parse_exposition(text, openmetrics);
    if openmetrics && !parsed.eof {
        return Err("OpenMetrics body without # EOF: cut short".into());
    }
    let mut series = HashSet::with_capacity(parsed.samples.len());
    let mut points = Vec::with_capacity(parsed.samples.len());
    let line_limits = &pipeline.limits().line;
    let mut over_limits = 0usize;
    let mut first_over: Option<String> = None;
    for s in &parsed.samples {
        let tags = tags(job.honor_labels, target, &s.labels);
        let Some((name, tags)) = metric_relabel(job, s.name, tags) else {
            continue;
        };
        // As in Prometheus: limits count what is left after relabeling, and
        // the name is a label.
        if job.label_limit > 0 && tags.len() + 1 > job.label_limit {
            return Err(format!(
                "{name} has {} labels, over label_limit {}",
                tags.len() + 1,
                job.label_limit
            ));
        }
        if job.sample_limit > 0 && points.len() >= job.sample_limit {
            return Err(format!(
                "more than sample_limit {} samples after relabeling",
                job.sample_limit
            ));
        }
        let time = match s.timestamp_ms {
            Some(ms) if job.honor_timestamps => ms.saturating_mul(1_000_000),
            _ => at,
        };
        let point = Point {
            table: name,
            tags,
            fields: vec![(Cow::Borrowed("value"), FieldValue::F64(s.value))],
            time,
        };
        // The limits every write has (tags per line, bytes per tag value):
        // a hostile target's series is skipped like a bad line.
        if let Some(reason) = line_limits.check(&point) {
            over_limits += 1;
            first_over.get_or_insert(reason);
            continue;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (&point.table, &point.tags).hash(&mut h);
        series.insert(h.finish());
        points.push((points.len() + 1, point));
    }
    let added = series.difference(&previous).count();
    let post_relabel = points.len();
    // The write limits every input has (days per write, here).
    let mut body = vigil_ingest::ParsedBody {
        points,
        errors: Vec::new(),
        error_count: 0,
    };
    pipeline.limit_days(&mut body);
    let offered = body.points.len();
    let (output, accepted, first_rejected) = output(writer, body.points);
    let rejected = offered - accepted;
    if parsed.error_count > 0 || rejected > 0 || over_limits > 0 || body.error_count > 0 {
        debug!(
            target = target.address.as_str(),
            parse_errors = parsed.error_count,
            rejected,
            over_limits,
            first_over_limits = first_over.as_deref(),
            first_parse_error = ?parsed.errors.first().or(body.errors.first()),
            first_rejected = first_rejected.as_deref(),
            "scraped lines not stored"
        );
    }
    Ok(Stored {
        output,
        samples: accepted,
        report: Report {
            up: true,
            scraped: parsed.samples.len(),
            post_relabel,
            added,
        },
        series,
    })
}

/// Prometheus's report series of one scrape, as tables.
fn report_series(
    target: &ScrapeTarget,
    at: i64,
    took: Duration,
    r: &Report,
    writer: &ScrapeWriter,
) -> Result<Output, String> {
    let tags = tags(false, target, &[]);
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
    let (output, _, rejected) = output(writer, points);
    match rejected {
        Some(reason) => Err(reason),
        None => Ok(output),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What storage would refuse never leaves a collector: a label that would
    /// rename the table or name a hidden column, a table's own columns, a
    /// repeated key, a series too large for a Kafka message.
    #[test]
    fn forwarded_series_are_refused_as_storage_would() {
        let point = |tags: Vec<(&'static str, String)>| Point {
            table: Cow::Borrowed("m"),
            tags: tags
                .into_iter()
                .map(|(k, v)| (Cow::Borrowed(k), Cow::Owned(v)))
                .collect(),
            fields: vec![(Cow::Borrowed("value"), FieldValue::F64(1.0))],
            time: 1,
        };
        assert_eq!(forward_refusal(&point(vec![("job", "a".into())])), None);
        for (tags, want) in [
            (vec![("__name__", "up".to_string())], "'__name__'"),
            (vec![("__meta_x", "1".to_string())], "'__meta_x'"),
            (vec![("value", "1".to_string())], "'value'"),
            (vec![("time", "1".to_string())], "'time'"),
            (
                vec![("a", "1".to_string()), ("a", "2".to_string())],
                "repeated",
            ),
            (vec![("a", "x".repeat(300 << 10))], "bytes of labels"),
        ] {
            let reason = forward_refusal(&point(tags)).expect("refused");
            assert!(reason.contains(want), "{reason}");
        }
    }

    #[test]
    fn clashing_labels_are_kept_as_exported_in_name_order() {
        let target = ScrapeTarget {
            address: "h:1".into(),
            scheme: "http".into(),
            metrics_path: "/metrics".into(),
            params: Vec::new(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            labels: BTreeMap::from([
                ("job".to_string(), "a".to_string()),
                ("instance".to_string(), "h:1".to_string()),
            ]),
        };
        let scraped = vec![
            ("job", Cow::Borrowed("inner")),
            ("exported_job", Cow::Borrowed("x")),
            ("value", Cow::Borrowed("v")),
            ("empty", Cow::Borrowed("")),
        ];
        let flat = |t: Vec<(Cow<'_, str>, Cow<'_, str>)>| -> Vec<(String, String)> {
            t.into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect()
        };
        let pair = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            flat(tags(false, &target, &scraped)),
            vec![
                pair("exported_exported_job", "inner"),
                pair("exported_job", "x"),
                pair("exported_value", "v"),
                pair("instance", "h:1"),
                pair("job", "a"),
            ]
        );
        let honored = flat(tags(true, &target, &scraped));
        assert!(honored.contains(&pair("job", "inner")), "{honored:?}");
        assert!(!honored.iter().any(|(k, _)| k == "exported_exported_job"));
    }
}
