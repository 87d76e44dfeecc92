//! Prometheus's `scrape_configs` file, as is: `global` defaults and jobs with
//! static, file and etcd discovery, relabeling, auth and TLS settings. What
//! vigil does not do (other service discovery, proxies, OAuth2) is refused by
//! name with its line, never silently ignored.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::relabel::Relabeling;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {message}")]
pub struct ScrapeConfigError {
    pub file: String,
    pub line: usize,
    pub message: String,
}

/// One job, resolved against the global defaults.
#[derive(Debug, Clone)]
pub struct ScrapeJob {
    pub job_name: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub metrics_path: String,
    pub scheme: String,
    pub params: BTreeMap<String, Vec<String>>,
    pub honor_labels: bool,
    pub honor_timestamps: bool,
    /// 0: no limit.
    pub sample_limit: usize,
    pub label_limit: usize,
    pub body_size_limit: usize,
    pub targets: Vec<Target>,
    pub file_sd: Vec<crate::file_sd::FileSd>,
    pub etcd_sd: Vec<crate::etcd_sd::EtcdSd>,
    /// Relative `file_sd_configs`, credential and certificate files are read
    /// from here (the directory of the scrape config file).
    pub base_dir: std::path::PathBuf,
    pub relabel: Relabeling,
    pub metric_relabel: Relabeling,
    pub auth: HttpAuth,
    pub tls: TlsSettings,
    pub follow_redirects: bool,
}

/// How a job's scrapes authenticate. Secrets given as files are read at
/// each scrape, so a rotated token applies without a restart.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum HttpAuth {
    #[default]
    None,
    Basic {
        username: Secret,
        password: Secret,
    },
    /// `authorization` (and the older `bearer_token`): `<type> <credentials>`.
    Header {
        kind: String,
        credentials: Secret,
    },
}

/// A secret, inline or in a file (relative to the scrape config).
#[derive(Clone, PartialEq)]
pub enum Secret {
    Inline(String),
    File(std::path::PathBuf),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("<secret>"),
            Self::File(p) => write!(f, "file {}", p.display()),
        }
    }
}

impl Secret {
    pub(crate) fn read(&self, base: &Path) -> Result<String, String> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File(p) => std::fs::read_to_string(base.join(p))
                .map(|s| s.trim_end_matches(['\n', '\r']).to_string())
                .map_err(|e| format!("cannot read {}: {e}", base.join(p).display())),
        }
    }
}

/// `tls_config`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    pub ca_file: Option<std::path::PathBuf>,
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// The name the target's certificate must have (and the SNI sent), when
    /// targets are addressed by IP.
    pub server_name: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// `TLS12` or `TLS13`.
    pub min_version: Option<String>,
}

/// A target address is `host:port` (`[v6]:port`), nothing more: user
/// info would be sent as credentials and stored in `instance`.
pub(crate) fn check_target(t: &str) -> Result<(), String> {
    let ok = t.rsplit_once(':').is_some_and(|(h, p)| {
        let bracketed = h.starts_with('[') && h.ends_with(']') && h.len() > 2;
        !h.is_empty() && p.parse::<u16>().is_ok() && (bracketed || !h.contains(':'))
    });
    if !ok || t.contains(['/', '@', '#', '?', '\\']) || t.contains(char::is_whitespace) {
        return Err(format!("target {t:?} is not host:port"));
    }
    Ok(())
}

/// Discovered labels must be label names; `__` ones (`__meta_...`) are for
/// relabeling and are not stored.
pub(crate) fn check_target_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    match labels.keys().find(|n| !vigil_model::is_label_name(n)) {
        Some(name) => Err(format!("target label {name:?} is not a label name")),
        None => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSdDoc {
    files: Vec<String>,
    refresh_interval: Option<String>,
}

/// A discovered target: `host:port` and its labels from the config or the
/// discovery (before relabeling).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Target {
    pub address: String,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct GlobalDoc {
    scrape_interval: Option<String>,
    scrape_timeout: Option<String>,
    evaluation_interval: Option<String>,
    #[serde(default)]
    external_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
struct FileDoc {
    #[serde(default)]
    global: GlobalDoc,
    #[serde(default)]
    scrape_configs: Vec<JobDoc>,
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
struct JobDoc {
    job_name: String,
    scrape_interval: Option<String>,
    scrape_timeout: Option<String>,
    #[serde(default = "default_path")]
    metrics_path: String,
    #[serde(default = "default_scheme")]
    scheme: String,
    #[serde(default)]
    params: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    honor_labels: bool,
    #[serde(default = "yes")]
    honor_timestamps: bool,
    #[serde(default)]
    sample_limit: usize,
    #[serde(default)]
    label_limit: usize,
    body_size_limit: Option<String>,
    #[serde(default)]
    static_configs: Vec<StaticDoc>,
    #[serde(default)]
    file_sd_configs: Vec<FileSdDoc>,
    #[serde(default)]
    etcd_sd_configs: Vec<crate::etcd_sd::EtcdSdDoc>,
    #[serde(default)]
    relabel_configs: Vec<crate::relabel::RuleDoc>,
    #[serde(default)]
    metric_relabel_configs: Vec<crate::relabel::RuleDoc>,
    basic_auth: Option<BasicAuthDoc>,
    authorization: Option<AuthorizationDoc>,
    bearer_token: Option<String>,
    bearer_token_file: Option<std::path::PathBuf>,
    tls_config: Option<TlsSettings>,
    #[serde(default = "yes")]
    follow_redirects: bool,
    /// HTTP/1.1 is used either way (exporters all speak it).
    #[serde(default = "yes")]
    enable_http2: bool,
    #[serde(flatten)]
    other: BTreeMap<String, serde_norway::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicAuthDoc {
    username: Option<String>,
    username_file: Option<std::path::PathBuf>,
    password: Option<String>,
    password_file: Option<std::path::PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationDoc {
    #[serde(rename = "type")]
    kind: Option<String>,
    credentials: Option<String>,
    credentials_file: Option<std::path::PathBuf>,
}

fn auth_of(j: &JobDoc) -> Result<HttpAuth, String> {
    let given = [
        j.basic_auth.is_some(),
        j.authorization.is_some(),
        j.bearer_token.is_some() || j.bearer_token_file.is_some(),
    ]
    .iter()
    .filter(|x| **x)
    .count();
    if given > 1 {
        return Err("at most one of basic_auth, authorization and bearer_token may be set".into());
    }
    let secret = |inline: &Option<String>, file: &Option<std::path::PathBuf>, what: &str| match (
        inline, file,
    ) {
        (Some(_), Some(_)) => Err(format!("{what} and {what}_file are both set")),
        (Some(s), None) => Ok(Some(Secret::Inline(s.clone()))),
        (None, Some(f)) => Ok(Some(Secret::File(f.clone()))),
        (None, None) => Ok(None),
    };
    if let Some(b) = &j.basic_auth {
        let username = secret(&b.username, &b.username_file, "username")?
            .ok_or("basic_auth needs one of username and username_file")?;
        let password = secret(&b.password, &b.password_file, "password")?
            .unwrap_or(Secret::Inline(String::new()));
        return Ok(HttpAuth::Basic { username, password });
    }
    if let Some(a) = &j.authorization {
        let kind = a.kind.clone().unwrap_or_else(|| "Bearer".into());
        if kind.eq_ignore_ascii_case("basic") {
            return Err("authorization type Basic: use basic_auth".into());
        }
        let credentials = secret(&a.credentials, &a.credentials_file, "credentials")?
            .ok_or("authorization needs credentials or credentials_file")?;
        return Ok(HttpAuth::Header { kind, credentials });
    }
    if let Some(c) = secret(&j.bearer_token, &j.bearer_token_file, "bearer_token")? {
        return Ok(HttpAuth::Header {
            kind: "Bearer".into(),
            credentials: c,
        });
    }
    Ok(HttpAuth::None)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticDoc {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

fn default_path() -> String {
    "/metrics".into()
}

fn default_scheme() -> String {
    "http".into()
}

fn yes() -> bool {
    true
}

/// Prometheus's durations: `15s`, `1m`, `1h30m`, `1d`.
fn duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| format!("{text:?} is not a duration: {e}"))
}

/// `512MB`, `10KiB`, `1024`: bytes.
fn bytes(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().map_err(|_| format!("{text:?} is not a size"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KB" | "KiB" => 1 << 10,
        "MB" | "MiB" => 1 << 20,
        "GB" | "GiB" => 1 << 30,
        _ => return Err(format!("{text:?} is not a size (B, KB, MB, GB)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Parses the text of a scrape config file.
pub fn parse(text: &str) -> Result<Vec<ScrapeJob>, (usize, String)> {
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .map_or(1, |i| i + 1)
    };
    let doc: FileDoc = serde_norway::from_str(text).map_err(|e| {
        let line = e.location().map_or(1, |l| l.line());
        let m = e.to_string();
        (line, m.split(" at line ").next().unwrap_or(&m).to_string())
    })?;
    if let Some(key) = doc.other.keys().next() {
        let message = match key.as_str() {
            "rule_files" | "alerting" | "remote_write" | "remote_read" | "storage" | "tracing" => {
                format!(
                    "`{key}` is Prometheus's, not a scrape setting: vigil's own config has these"
                )
            }
            _ => format!("unknown key `{key}`"),
        };
        return Err((line_of(&format!("{key}:")), message));
    }
    // evaluation_interval is for Prometheus's rules (vigil's are in
    // [alerting]); external labels would be silently lost, so they are refused.
    let _ = &doc.global.evaluation_interval;
    if !doc.global.external_labels.is_empty() {
        return Err((
            line_of("external_labels"),
            "global.external_labels are not supported by vigil yet (add them as target labels)"
                .into(),
        ));
    }
    let g_interval = match &doc.global.scrape_interval {
        Some(d) => duration(d).map_err(|e| (line_of("scrape_interval"), e))?,
        None => Duration::from_secs(60),
    };
    let g_timeout = match &doc.global.scrape_timeout {
        Some(d) => duration(d).map_err(|e| (line_of("scrape_timeout"), e))?,
        None => Duration::from_secs(10),
    };
    let lines: Vec<&str> = text.lines().collect();
    // The line of `job_name: <name>` itself (not of a longer name that
    // starts the same), then of a key within that job.
    let is_job_line = |l: &str| l.trim().trim_start_matches("- ").starts_with("job_name:");
    // The line of the nth `job_name: <name>` itself (not of a longer name
    // that starts the same; a trailing comment allowed).
    let job_line = |name: &str, nth: usize| {
        lines
            .iter()
            .enumerate()
            .filter(|(_, l)| {
                let l = l.trim().trim_start_matches("- ").trim();
                l.strip_prefix("job_name:").is_some_and(|v| {
                    let v = v.split(" #").next().unwrap_or(v);
                    v.trim().trim_matches(|c| c == '\'' || c == '"') == name
                })
            })
            .nth(nth)
            .map_or(1, |(i, _)| i + 1)
    };
    // The line of `key:` within the job starting at line `from`.
    let key_line = |from: usize, key: &str| {
        let needle = format!("{key}:");
        lines
            .iter()
            .enumerate()
            .skip(from.saturating_sub(1))
            .take_while(|(i, l)| *i + 1 == from || !is_job_line(l))
            .find(|(_, l)| l.trim().trim_start_matches("- ").starts_with(&needle))
            .map_or(from, |(i, _)| i + 1)
    };
    let mut jobs: Vec<ScrapeJob> = Vec::new();
    for mut j in doc.scrape_configs {
        let nth = jobs.iter().filter(|x| x.job_name == j.job_name).count();
        let at = job_line(&j.job_name, nth);
        let err = |m: String| (at, format!("job {:?}: {m}", j.job_name));
        let err_at = |key: &str, m: String| {
            (
                key_line(at, key),
                format!("job {:?}: {key}: {m}", j.job_name),
            )
        };
        if let Some(key) = j.other.keys().next() {
            let at = key_line(at, key);
            return Err((at, format!(
                "job {:?}: `{key}` is not supported by vigil (static_configs, file_sd_configs, etcd_sd_configs, relabel_configs, metric_relabel_configs, metrics_path, scheme, params, basic_auth, authorization, tls_config, honor_labels, honor_timestamps, sample_limit, label_limit, body_size_limit are)", j.job_name
            )));
        }
        let _ = j.enable_http2;
        if jobs.iter().any(|x| x.job_name == j.job_name) {
            return Err(err("defined twice".into()));
        }
        if j.scheme != "http" && j.scheme != "https" {
            return Err(err(format!("scheme {:?} is not http or https", j.scheme)));
        }
        if !j.metrics_path.starts_with('/') {
            return Err(err(format!(
                "metrics_path {:?} must start with /",
                j.metrics_path
            )));
        }
        let interval = match &j.scrape_interval {
            Some(d) => duration(d).map_err(&err)?,
            None => g_interval,
        };
        let timeout = match &j.scrape_timeout {
            Some(d) => duration(d).map_err(&err)?,
            None => g_timeout.min(interval),
        };
        if interval.is_zero() || timeout.is_zero() {
            return Err(err(
                "scrape_interval and scrape_timeout must be more than 0".into(),
            ));
        }
        if interval > Duration::from_secs(86_400) {
            return Err(err(format!(
                "scrape_interval {interval:?} is longer than a day"
            )));
        }
        if timeout > interval {
            return Err(err(format!(
                "scrape_timeout {timeout:?} is longer than scrape_interval {interval:?}"
            )));
        }
        let body_size_limit = match &j.body_size_limit {
            Some(b) => bytes(b).map_err(&err)?,
            None => 0,
        };
        let relabel = crate::relabel::Relabeling::parse(std::mem::take(&mut j.relabel_configs))
            .map_err(|e| err_at("relabel_configs", e))?;
        let metric_relabel =
            crate::relabel::Relabeling::parse(std::mem::take(&mut j.metric_relabel_configs))
                .map_err(|e| err_at("metric_relabel_configs", e))?;
        let auth_key = if j.basic_auth.is_some() {
            "basic_auth"
        } else if j.authorization.is_some() {
            "authorization"
        } else if j.bearer_token.is_none() && j.bearer_token_file.is_some() {
            "bearer_token_file"
        } else {
            "bearer_token"
        };
        let auth = auth_of(&j).map_err(|e| err_at(auth_key, e))?;
        let tls = j.tls_config.clone().unwrap_or_default();
        if tls.cert_file.is_some() != tls.key_file.is_some() {
            return Err(err_at(
                "tls_config",
                "needs both cert_file and key_file".into(),
            ));
        }
        if let Some(v) = &tls.min_version {
            if v != "TLS12" && v != "TLS13" {
                return Err(err_at(
                    "tls_config",
                    format!("min_version {v:?} is not TLS12 or TLS13"),
                ));
            }
        }
        let mut etcd_sd = Vec::new();
        for e in std::mem::take(&mut j.etcd_sd_configs) {
            etcd_sd.push(
                crate::etcd_sd::EtcdSd::from_doc(e).map_err(|e| err_at("etcd_sd_configs", e))?,
            );
        }
        let mut targets = Vec::new();
        for s in &j.static_configs {
            check_target_labels(&s.labels).map_err(&err)?;
            for t in &s.targets {
                check_target(t).map_err(&err)?;
                targets.push(Target {
                    address: t.clone(),
                    labels: s.labels.clone(),
                });
            }
        }
        let mut file_sd = Vec::new();
        for f in &j.file_sd_configs {
            if f.files.is_empty() {
                return Err(err("file_sd_configs needs files".into()));
            }
            if let Some(bad) = f.files.iter().find(|p| {
                std::path::Path::new(p)
                    .parent()
                    .is_some_and(|d| d.to_string_lossy().contains('*'))
            }) {
                return Err(err(format!("{bad:?}: `*` may only be in the file name")));
            }
            file_sd.push(crate::file_sd::FileSd {
                files: f.files.clone(),
                refresh_interval: match &f.refresh_interval {
                    Some(d) => duration(d).map_err(&err)?,
                    None => Duration::from_secs(300),
                },
            });
        }
        jobs.push(ScrapeJob {
            job_name: j.job_name,
            interval,
            timeout,
            metrics_path: j.metrics_path,
            scheme: j.scheme,
            params: j.params,
            honor_labels: j.honor_labels,
            honor_timestamps: j.honor_timestamps,
            sample_limit: j.sample_limit,
            label_limit: j.label_limit,
            body_size_limit,
            targets,
            file_sd,
            etcd_sd,
            base_dir: std::path::PathBuf::from("."),
            relabel,
            metric_relabel,
            auth,
            tls,
            follow_redirects: j.follow_redirects,
        });
        // Static targets are relabeled now, so a rule that makes one
        // unstorable stops the start instead of failing every scrape.
        let job = jobs.last().expect("just pushed");
        for t in &job.targets {
            crate::target::resolve(job, t)
                .map_err(|e| (at, format!("job {:?}: {e}", job.job_name)))?;
        }
    }
    Ok(jobs)
}

/// Reads and parses a scrape config file; errors name file and line.
pub fn load(path: &Path) -> Result<Vec<ScrapeJob>, ScrapeConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ScrapeConfigError {
        file: file.clone(),
        line: 0,
        message: format!("cannot read: {e}"),
    })?;
    let mut jobs = parse(&text).map_err(|(line, message)| ScrapeConfigError {
        file,
        line,
        message,
    })?;
    let base = path
        .parent()
        .map(std::path::Path::to_path_buf)
        .unwrap_or_default();
    for j in &mut jobs {
        j.base_dir = base.clone();
        // Unreadable certificates stop the start, as in Prometheus.
        crate::target::http_client(j, None).map_err(|message| ScrapeConfigError {
            file: path.display().to_string(),
            line: 0,
            message: format!("job {:?}: {message}", j.job_name),
        })?;
    }
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus_scrape_configs() {
        let jobs = parse(
            "global:\n  scrape_interval: 15s\nscrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['127.0.0.1:9100', 'db:9100']\n        labels: { env: prod }\n  - job_name: app\n    scrape_interval: 5s\n    metrics_path: /m\n    params: { format: [prometheus] }\n    honor_labels: true\n    sample_limit: 100\n    body_size_limit: 10MB\n    static_configs: [{ targets: ['app:8080'] }]\n",
        )
        .unwrap();
        assert_eq!(jobs[0].interval, Duration::from_secs(15));
        assert_eq!(jobs[0].timeout, Duration::from_secs(10));
        assert_eq!(jobs[0].targets[1].address, "db:9100");
        assert_eq!(jobs[0].targets[0].labels["env"], "prod");
        assert_eq!(jobs[1].timeout, Duration::from_secs(5));
        assert_eq!(jobs[1].body_size_limit, 10 << 20);
        assert!(jobs[1].honor_labels && jobs[1].honor_timestamps);
    }

    #[test]
    fn what_is_not_done_is_refused_by_name_and_line() {
        for (text, what, line) in [
            ("scrape_configs:\n  - job_name: a\n    relabel_configs: [{ action: nope }]\n", "unknown relabel action", 3),
            ("scrape_configs:\n  - job_name: node-exporter\n  - job_name: node\n    scrape_interval: 1s\n    relabel_configs:\n      - action: keep\n", "needs source_labels", 5),
            ("scrape_configs:\n  - job_name: a\n    static_configs: [{ targets: ['user:pw@h:1'] }]\n", "host:port", 2),
            ("scrape_configs:\n  - job_name: a\n    proxy_url: http://p:1\n", "proxy_url", 3),
            ("scrape_configs:\n  - job_name: a\n    basic_auth: { username: u }\n    bearer_token: t\n", "at most one", 3),
            ("scrape_configs:\n  - job_name: a\n    tls_config: { cert_file: c }\n", "key_file", 3),
            ("scrape_configs:\n  - job_name: a\n    consul_sd_configs: []\n", "consul_sd_configs", 3),
            ("rule_files: []\n", "rule_files", 1),
            ("scrape_configs:\n  - job_name: a\n    scrape_interval: soon\n", "not a duration", 2),
            ("scrape_configs:\n  - job_name: a\n    static_configs: [{ targets: ['http://x:1'] }]\n", "host:port", 2),
            ("scrape_configs:\n  - job_name: a\n    scrape_interval: 5s\n    scrape_timeout: 10s\n", "longer", 2),
            ("scrape_configs:\n  - job_name: a\n  - job_name: a\n", "twice", 3),
            ("scrape_configs:\n  - job_name: a # the first\n    scrape_interval: 1s\n  - job_name: b\n    relabel_configs: [{ action: nope }]\n", "unknown relabel action", 5),
            ("scrape_configs:\n  - job_name: a\n    bearer_token_file: t\n    bearer_token: u\n", "both set", 4),
            ("scrape_configs:\n  - job_name: a\n    body_size_limit: lots\n", "size", 2),
            ("scrape_configs:\n  - job_name: a\n    static_configs: [{ targets: ['h:1'], labels: { value: x } }]\n", "cannot be stored", 2),
            ("global:\n  external_labels: { dc: eu }\n", "external_labels", 2),
        ] {
            let (l, m) = parse(text).expect_err(text);
            assert!(m.contains(what), "{text}: {m}");
            assert_eq!(l, line, "{text}: {m}");
        }
    }
}
