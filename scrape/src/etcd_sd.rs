//! `etcd_sd_configs` (vigil's own): targets kept in etcd, one key per target
//! group under a prefix, its value a file_sd target group
//! (`{"targets": ["host:port"], "labels": {...}}`, or a list of them). The
//! prefix is read once and then watched, so a put or a delete applies at
//! once, without polling. Each target gets `__meta_etcd_key` for relabeling.
//! A value that is not a target group is logged and skipped; while etcd is
//! unreachable the last targets are kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{EventType, GetOptions, WatchOptions};
use serde::Deserialize;
use tokio::sync::watch;
use tracing::warn;

use crate::config::Target;
use crate::ring::call_within;

/// A prefix may hold many target groups: more time than the ring's calls.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct EtcdSdDoc {
    endpoints: Vec<String>,
    prefix: String,
}

/// One `etcd_sd_configs` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct EtcdSd {
    /// `host:port` or `http://host:port`.
    pub endpoints: Vec<String>,
    pub prefix: String,
}

impl EtcdSd {
    pub(crate) fn from_doc(d: EtcdSdDoc) -> Result<Self, String> {
        if d.endpoints.is_empty() {
            return Err("etcd_sd_configs needs endpoints".into());
        }
        if d.prefix.is_empty() {
            return Err("etcd_sd_configs needs a prefix (every key would be a target)".into());
        }
        if let Some(bad) = d.endpoints.iter().find(|e| e.starts_with("https://")) {
            return Err(format!(
                "etcd endpoint {bad:?}: TLS to etcd is not supported yet"
            ));
        }
        Ok(Self {
            endpoints: d.endpoints,
            prefix: d.prefix,
        })
    }
}

/// The targets of one key's value.
fn targets_of(key: &str, value: &[u8]) -> Result<Vec<Target>, String> {
    let text = std::str::from_utf8(value).map_err(|_| format!("{key}: value is not UTF-8"))?;
    let trimmed = text.trim_start();
    let wrapped;
    let text = if trimmed.starts_with('{') {
        wrapped = format!("[{text}]");
        wrapped.as_str()
    } else {
        text
    };
    let mut targets = crate::file_sd::parse_groups(text).map_err(|e| format!("{key}: {e}"))?;
    for t in &mut targets {
        t.labels.insert("__meta_etcd_key".into(), key.to_string());
    }
    Ok(targets)
}

pub(crate) type TargetView = watch::Receiver<Arc<Vec<Target>>>;

/// Starts following one `etcd_sd_configs` entry.
pub(crate) fn start(
    sd: EtcdSd,
    job: String,
    mut stop: watch::Receiver<bool>,
) -> (TargetView, tokio::task::JoinHandle<()>) {
    let (tx, rx) = watch::channel(Arc::new(Vec::new()));
    let handle = tokio::spawn(async move {
        let mut by_key: BTreeMap<String, Vec<Target>> = BTreeMap::new();
        loop {
            tokio::select! {
                r = follow(&sd, &mut by_key, &tx) => {
                    if let Err(e) = r {
                        warn!(job = job.as_str(), prefix = sd.prefix.as_str(), error = e.as_str(), "etcd discovery interrupted; its last targets are kept");
                    }
                }
                _ = stop.changed() => return,
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.changed() => return,
            }
        }
    });
    (rx, handle)
}

fn publish(by_key: &BTreeMap<String, Vec<Target>>, tx: &watch::Sender<Arc<Vec<Target>>>) {
    let _ = tx.send(Arc::new(by_key.values().flatten().cloned().collect()));
}

/// Reads the prefix, then applies its changes until the watch breaks.
async fn follow(
    sd: &EtcdSd,
    by_key: &mut BTreeMap<String, Vec<Target>>,
    tx: &watch::Sender<Arc<Vec<Target>>>,
) -> Result<(), String> {
    let mut client = crate::ring::connect(&sd.endpoints).await?;
    let listed = call_within(
        ANSWER_WITHIN,
        "get",
        client.get(sd.prefix.as_str(), Some(GetOptions::new().with_prefix())),
    )
    .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    by_key.clear();
    for kv in listed.kvs() {
        let key = String::from_utf8_lossy(kv.key()).to_string();
        match targets_of(&key, kv.value()) {
            Ok(t) => {
                by_key.insert(key, t);
            }
            Err(e) => warn!(error = e.as_str(), "etcd target group skipped"),
        }
    }
    publish(by_key, tx);
    let mut watch = call_within(
        ANSWER_WITHIN,
        "watch",
        client.watch(
            sd.prefix.as_str(),
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        ),
    )
    .await?;
    loop {
        let w = watch
            .message()
            .await
            .map_err(|e| format!("etcd watch: {e}"))?
            .ok_or("etcd watch ended")?;
        if w.canceled() {
            return Err("etcd watch canceled (history compacted)".into());
        }
        for ev in w.events() {
            let Some(kv) = ev.kv() else { continue };
            let key = String::from_utf8_lossy(kv.key()).to_string();
            match ev.event_type() {
                EventType::Delete => {
                    by_key.remove(&key);
                }
                EventType::Put => match targets_of(&key, kv.value()) {
                    Ok(t) => {
                        by_key.insert(key, t);
                    }
                    Err(e) => {
                        warn!(error = e.as_str(), "etcd target group skipped");
                        by_key.remove(&key);
                    }
                },
            }
        }
        publish(by_key, tx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_target_groups() {
        let t = targets_of(
            "/t/a",
            br#"{"targets": ["h:1", "h:2"], "labels": {"env": "prod"}}"#,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].labels["__meta_etcd_key"], "/t/a");
        assert_eq!(t[1].labels["env"], "prod");
        let list = targets_of("/t/b", br#"[{"targets": ["h:3"]}, {"targets": ["h:4"]}]"#).unwrap();
        assert_eq!(list.len(), 2);
        assert!(targets_of("/t/c", b"not json {").is_err());
        assert!(targets_of("/t/c", br#"{"targets": ["http://x"]}"#)
            .unwrap_err()
            .contains("host:port"));
        assert!(targets_of("/t/d", &[0xff, 0xfe]).is_err());
    }

    #[test]
    fn config_needs_endpoints_and_a_prefix() {
        let doc = |y: &str| -> Result<EtcdSd, String> {
            EtcdSd::from_doc(serde_norway::from_str(y).map_err(|e| e.to_string())?)
        };
        assert!(doc("endpoints: ['127.0.0.1:2379']\nprefix: /t/\n").is_ok());
        assert!(doc("endpoints: []\nprefix: /t/\n")
            .unwrap_err()
            .contains("endpoints"));
        assert!(doc("endpoints: ['h:1']\nprefix: ''\n")
            .unwrap_err()
            .contains("prefix"));
        assert!(doc("endpoints: ['h:1']\nprefix: /t/\nfoo: 1\n").is_err());
    }
}
