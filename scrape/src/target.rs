//! From a discovered target to what is scraped: target relabeling as in
//! Prometheus (the label set starts with the discovered labels, `job`,
//! `__address__`, `__scheme__`, `__metrics_path__`, `__scrape_interval__`,
//! `__scrape_timeout__` and `__param_<name>`; rules may change any of them or
//! drop the target), then `instance` defaults to the address and the `__`
//! labels go. Also the HTTP client of a job (its TLS settings).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use crate::config::{check_target, ScrapeJob, Target};
use crate::relabel::Labels;

/// A target after relabeling.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ScrapeTarget {
    /// `host:port`.
    pub address: String,
    pub scheme: String,
    pub metrics_path: String,
    pub params: Vec<(String, String)>,
    pub interval: Duration,
    pub timeout: Duration,
    /// The labels every series of this target gets: `job`, `instance` and
    /// the rest that relabeling left.
    pub labels: BTreeMap<String, String>,
}

impl ScrapeTarget {
    pub fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.address, self.metrics_path)
    }

    /// What identifies the target on every collector: its URL and labels
    /// (the ring places it, the scrape offset is derived from it).
    pub fn identity(&self) -> String {
        let mut s = self.url();
        for (k, v) in &self.params {
            s.push_str(&format!("&{k}={v}"));
        }
        for (k, v) in &self.labels {
            s.push_str(&format!("\u{1f}{k}={v}"));
        }
        s
    }

    pub(crate) fn hash64(&self) -> u64 {
        crate::ring::hash64(self.identity().as_bytes())
    }
}

fn duration_label(d: Duration) -> String {
    humantime::format_duration(d).to_string().replace(' ', "")
}

/// Relabels a discovered target: `Ok(None)` when a rule drops it, `Err` when
/// what is left cannot be scraped or stored.
pub fn resolve(job: &ScrapeJob, t: &Target) -> Result<Option<ScrapeTarget>, String> {
    let mut labels: Labels = t.labels.clone();
    labels.insert("__address__".into(), t.address.clone());
    let defaults = [
        ("job", job.job_name.clone()),
        ("__scheme__", job.scheme.clone()),
        ("__metrics_path__", job.metrics_path.clone()),
        ("__scrape_interval__", duration_label(job.interval)),
        ("__scrape_timeout__", duration_label(job.timeout)),
    ];
    for (k, v) in defaults {
        labels.entry(k.to_string()).or_insert(v);
    }
    for (k, vs) in &job.params {
        if let Some(v) = vs.first() {
            labels.entry(format!("__param_{k}")).or_insert(v.clone());
        }
    }
    let Some(mut labels) = job.relabel.process(labels) else {
        return Ok(None);
    };
    let Some(mut address) = labels.get("__address__").cloned() else {
        return Err(format!(
            "target {:?}: no __address__ after relabeling",
            t.address
        ));
    };
    let scheme = labels
        .get("__scheme__")
        .cloned()
        .unwrap_or_else(|| job.scheme.clone());
    if scheme != "http" && scheme != "https" {
        return Err(format!(
            "target {address:?}: scheme {scheme:?} is not http or https"
        ));
    }
    // As Prometheus does: an address without a port gets the scheme's.
    if !address.contains(':') || address.ends_with(']') {
        address = format!("{address}:{}", if scheme == "https" { 443 } else { 80 });
    }
    check_target(&address)?;
    let metrics_path = labels
        .get("__metrics_path__")
        .cloned()
        .unwrap_or_else(|| job.metrics_path.clone());
    if !metrics_path.starts_with('/') {
        return Err(format!(
            "target {address:?}: metrics path {metrics_path:?} must start with /"
        ));
    }
    let parse_duration = |name: &str, default: Duration| -> Result<Duration, String> {
        match labels.get(name) {
            None => Ok(default),
            Some(v) => humantime::parse_duration(v)
                .map_err(|e| format!("target {address:?}: {name} {v:?}: {e}")),
        }
    };
    let interval = parse_duration("__scrape_interval__", job.interval)?;
    let timeout = parse_duration("__scrape_timeout__", job.timeout)?;
    if interval.is_zero()
        || timeout.is_zero()
        || timeout > interval
        || interval > Duration::from_secs(86_400)
    {
        return Err(format!(
            "target {address:?}: scrape timeout {timeout:?} and interval {interval:?} do not fit (0 < timeout <= interval <= 1 day)"
        ));
    }
    // Job params, a `__param_<name>` label replacing the first value (as in
    // Prometheus; the others stay).
    let mut params: BTreeMap<String, Vec<String>> = job.params.clone();
    for (k, v) in &labels {
        if let Some(name) = k.strip_prefix("__param_") {
            let values = params.entry(name.to_string()).or_default();
            match values.first_mut() {
                Some(first) => *first = v.clone(),
                None => values.push(v.clone()),
            }
        }
    }
    let params = params
        .into_iter()
        .flat_map(|(k, vs)| vs.into_iter().map(move |v| (k.clone(), v)))
        .collect();
    labels
        .entry("instance".into())
        .or_insert_with(|| address.clone());
    labels.retain(|k, v| !k.starts_with("__") && !v.is_empty());
    if let Some(bad) = labels.keys().find(|k| *k == "value" || *k == "time") {
        return Err(format!(
            "target {address:?}: target label {bad:?} cannot be stored (`value` and `time` are columns of every metric table)"
        ));
    }
    Ok(Some(ScrapeTarget {
        address,
        scheme,
        metrics_path,
        params,
        interval,
        timeout,
        labels,
    }))
}

/// The scrape offset within the interval: the same on every collector and
/// every start, different per target.
pub(crate) fn offset(target: &ScrapeTarget, step: i64) -> i64 {
    (target.hash64() % step.max(1) as u64) as i64
}

fn read_file(base: &std::path::Path, p: &std::path::Path, what: &str) -> Result<Vec<u8>, String> {
    let path = base.join(p);
    std::fs::read(&path).map_err(|e| format!("tls_config.{what} {}: {e}", path.display()))
}

/// The HTTP client of a job: its CA, client certificate, verification and
/// redirect settings. `resolve` pins `server_name` to the target's address.
pub(crate) fn http_client(
    job: &ScrapeJob,
    resolve: Option<(&str, SocketAddr)>,
) -> Result<reqwest::Client, String> {
    let tls = &job.tls;
    let mut b = reqwest::Client::builder()
        .user_agent(concat!("vigil/", env!("CARGO_PKG_VERSION")))
        .redirect(if job.follow_redirects {
            reqwest::redirect::Policy::limited(10)
        } else {
            reqwest::redirect::Policy::none()
        });
    if let Some(ca) = &tls.ca_file {
        // As in Prometheus: ca_file is the only trust, not an addition to
        // the system's roots.
        b = b.tls_built_in_root_certs(false);
        let pem = read_file(&job.base_dir, ca, "ca_file")?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("tls_config.ca_file {}: {e}", ca.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "tls_config.ca_file {}: no certificate in it",
                ca.display()
            ));
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = read_file(&job.base_dir, cert, "cert_file")?;
        pem.push(b'\n');
        pem.extend(read_file(&job.base_dir, key, "key_file")?);
        let id = reqwest::Identity::from_pem(&pem)
            .map_err(|e| format!("tls_config cert_file/key_file: {e}"))?;
        b = b.identity(id);
    }
    if tls.insecure_skip_verify {
        b = b.danger_accept_invalid_certs(true);
    }
    match tls.min_version.as_deref() {
        Some("TLS13") => b = b.min_tls_version(reqwest::tls::Version::TLS_1_3),
        _ => b = b.min_tls_version(reqwest::tls::Version::TLS_1_2),
    }
    if let Some((name, addr)) = resolve {
        b = b.resolve(name, addr);
    }
    b.build().map_err(|e| format!("HTTP client: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(yaml: &str) -> ScrapeJob {
        crate::config::parse(yaml).unwrap().remove(0)
    }

    #[test]
    fn relabeling_sets_address_path_params_and_labels() {
        let j = job(
            "scrape_configs:\n  - job_name: blackbox\n    metrics_path: /probe\n    params: { module: [http_2xx] }\n    relabel_configs:\n      - source_labels: [__address__]\n        target_label: __param_target\n      - source_labels: [__param_target]\n        target_label: instance\n      - target_label: __address__\n        replacement: 127.0.0.1:9115\n      - source_labels: [__meta_dc]\n        target_label: dc\n",
        );
        let t = Target {
            address: "example.org:443".into(),
            labels: BTreeMap::from([("__meta_dc".into(), "eu".into())]),
        };
        let r = resolve(&j, &t).unwrap().unwrap();
        assert_eq!(r.address, "127.0.0.1:9115");
        assert_eq!(r.url(), "http://127.0.0.1:9115/probe");
        assert_eq!(
            r.params,
            vec![
                ("module".to_string(), "http_2xx".to_string()),
                ("target".to_string(), "example.org:443".to_string())
            ]
        );
        assert_eq!(r.labels["instance"], "example.org:443");
        assert_eq!(r.labels["job"], "blackbox");
        assert_eq!(r.labels["dc"], "eu");
        assert!(!r.labels.keys().any(|k| k.starts_with("__")), "{r:?}");
    }

    #[test]
    fn dropped_targets_and_unstorable_ones() {
        let j = job(
            "scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - source_labels: [__address__]\n        regex: 'skip.*'\n        action: drop\n      - source_labels: [__address__]\n        regex: '(.*):bad'\n        target_label: __address__\n",
        );
        let t = |a: &str| Target {
            address: a.into(),
            labels: BTreeMap::new(),
        };
        assert!(resolve(&j, &t("skip-me:1")).unwrap().is_none());
        assert!(resolve(&j, &t("ok:1")).unwrap().is_some());
        // No port: the scheme's is added, as Prometheus does.
        let j2 = job("scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - target_label: __address__\n        replacement: host\n");
        assert_eq!(resolve(&j2, &t("x:1")).unwrap().unwrap().address, "host:80");
        let j3 = job("scrape_configs:\n  - job_name: a\n    relabel_configs:\n      - target_label: value\n        replacement: x\n");
        assert!(resolve(&j3, &t("x:1"))
            .unwrap_err()
            .contains("cannot be stored"));
    }

    #[test]
    fn offsets_are_stable_and_spread() {
        let j = job("scrape_configs:\n  - job_name: a\n");
        let step = 10_000_000_000;
        let offsets: std::collections::HashSet<i64> = (0..100)
            .map(|i| {
                let t = resolve(
                    &j,
                    &Target {
                        address: format!("h{i}:1"),
                        labels: BTreeMap::new(),
                    },
                )
                .unwrap()
                .unwrap();
                let o = offset(&t, step);
                assert_eq!(o, offset(&t, step));
                assert!((0..step).contains(&o));
                o
            })
            .collect();
        assert!(offsets.len() > 90);
    }
}
