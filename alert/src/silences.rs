//! Silences, in Alertmanager's v2 API shape: label matchers and a time range
//! during which matching alerts are left out of their groups' notifications
//! (they keep their state; an alert silenced before it was ever sent is sent
//! when the silence ends if it still fires). Kept in the alert store, so they
//! survive restarts.

use std::collections::BTreeMap;

use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use vigil_rules::Matcher;

use crate::notify::rfc3339;
use crate::store::AlertStore;
use crate::AlertError;

/// Silences kept at most (expired ones included).
const MAX_SILENCES: usize = 10_000;

/// Expired silences are kept this long (Alertmanager's default retention, 120 h).
const EXPIRED_RETENTION: i64 = 120 * 3600 * 1_000_000_000;

/// A matcher as the API carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SilenceMatcher {
    pub name: String,
    pub value: String,
    pub is_regex: bool,
    #[serde(default = "yes")]
    pub is_equal: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Silence {
    pub id: String,
    pub matchers: Vec<SilenceMatcher>,
    /// Nanoseconds since the epoch.
    pub starts_at: i64,
    pub ends_at: i64,
    pub updated_at: i64,
    pub created_by: String,
    pub comment: String,
}

impl Silence {
    pub fn state(&self, now: i64) -> &'static str {
        if now < self.starts_at {
            "pending"
        } else if now < self.ends_at {
            "active"
        } else {
            "expired"
        }
    }

    /// The API's JSON (`gettableSilence`).
    pub fn to_json(&self, now: i64) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "status": { "state": self.state(now) },
            "updatedAt": rfc3339(self.updated_at),
            "matchers": self.matchers,
            "startsAt": rfc3339(self.starts_at),
            "endsAt": rfc3339(self.ends_at),
            "createdBy": self.created_by,
            "comment": self.comment,
        })
    }
}

/// A silence as posted (`postableSilence`): times in RFC 3339.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PostableSilence {
    #[serde(default)]
    pub id: Option<String>,
    pub matchers: Vec<SilenceMatcher>,
    pub starts_at: String,
    pub ends_at: String,
    #[serde(default)]
    pub created_by: String,
    #[serde(default)]
    pub comment: String,
}

/// Why a silence was refused (HTTP 400 or 404).
#[derive(Debug, thiserror::Error)]
pub enum SilenceError {
    #[error("{0}")]
    Invalid(String),
    #[error("no silence {0}")]
    NotFound(String),
    #[error(transparent)]
    Store(#[from] AlertError),
}

fn parse_time(field: &str, text: &str) -> Result<i64, SilenceError> {
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| SilenceError::Invalid(format!("{field}: {text:?} is not an RFC 3339 time")))
}

/// The silences, in memory and in the store.
pub struct Silences {
    all: RwLock<Vec<(Silence, Vec<Matcher>)>>,
}

fn compile(s: &Silence) -> Result<Vec<Matcher>, SilenceError> {
    s.matchers
        .iter()
        .map(|m| {
            Matcher::from_parts(&m.name, &m.value, m.is_regex, m.is_equal)
                .map_err(|e| SilenceError::Invalid(format!("matcher {}: {e}", m.name)))
        })
        .collect()
}

impl Silences {
    pub fn load(store: &AlertStore) -> Result<Silences, AlertError> {
        let all = store
            .silences()?
            .into_iter()
            .filter_map(|s| match compile(&s) {
                Ok(m) => Some((s, m)),
                Err(e) => {
                    // Only a stored silence from a version with other matcher
                    // rules can fail here; it is said, not dropped silently.
                    tracing::warn!(silence = s.id.as_str(), error = %e, "stored silence ignored: its matchers do not compile");
                    None
                }
            })
            .collect();
        Ok(Silences {
            all: RwLock::new(all),
        })
    }

    /// No silences (a rule test).
    pub fn empty() -> Silences {
        Silences {
            all: RwLock::new(Vec::new()),
        }
    }

    /// The id of an active silence that matches these labels.
    pub fn silenced_by(&self, labels: &BTreeMap<String, String>, now: i64) -> Option<String> {
        self.all
            .read()
            .iter()
            .find(|(s, m)| s.state(now) == "active" && m.iter().all(|m| m.matches(labels)))
            .map(|(s, _)| s.id.clone())
    }

    pub fn list(&self) -> Vec<Silence> {
        self.all.read().iter().map(|(s, _)| s.clone()).collect()
    }

    pub fn get(&self, id: &str) -> Option<Silence> {
        self.all
            .read()
            .iter()
            .find(|(s, _)| s.id == id)
            .map(|(s, _)| s.clone())
    }

    /// Creates a silence, or updates one (`id` given); its id.
    pub fn post(
        &self,
        store: &AlertStore,
        p: PostableSilence,
        now: i64,
    ) -> Result<String, SilenceError> {
        if p.matchers.is_empty() {
            return Err(SilenceError::Invalid(
                "a silence needs at least one matcher".into(),
            ));
        }
        let starts_at = parse_time("startsAt", &p.starts_at)?;
        let ends_at = parse_time("endsAt", &p.ends_at)?;
        if ends_at <= starts_at {
            return Err(SilenceError::Invalid(
                "endsAt must be after startsAt".into(),
            ));
        }
        if ends_at <= now {
            return Err(SilenceError::Invalid("endsAt is in the past".into()));
        }
        if p.comment.len() > 4096 || p.created_by.len() > 256 || p.matchers.len() > 64 {
            return Err(SilenceError::Invalid(
                "comment, createdBy or matchers too long".into(),
            ));
        }
        let id = match p.id.filter(|i| !i.is_empty()) {
            Some(id) => {
                if self.get(&id).is_none() {
                    return Err(SilenceError::NotFound(id));
                }
                id
            }
            None => new_id(),
        };
        let silence = Silence {
            id: id.clone(),
            matchers: p.matchers,
            starts_at,
            ends_at,
            updated_at: now,
            created_by: p.created_by,
            comment: p.comment,
        };
        let matchers = compile(&silence)?;
        // As Alertmanager: a silence must not match every alert.
        if matchers.iter().all(|m| m.matches(&BTreeMap::new())) {
            return Err(SilenceError::Invalid(
                "the matchers match every alert (at least one must not match an empty label set)"
                    .into(),
            ));
        }
        if self.all.read().len() >= MAX_SILENCES {
            return Err(SilenceError::Invalid(format!(
                "more than {MAX_SILENCES} silences"
            )));
        }
        self.save(store, silence, matchers, now)?;
        Ok(id)
    }

    /// Ends a silence now.
    pub fn expire(&self, store: &AlertStore, id: &str, now: i64) -> Result<(), SilenceError> {
        let Some(mut s) = self.get(id) else {
            return Err(SilenceError::NotFound(id.to_string()));
        };
        if s.state(now) == "expired" {
            return Ok(());
        }
        s.ends_at = now;
        s.starts_at = s.starts_at.min(now);
        s.updated_at = now;
        let m = compile(&s)?;
        self.save(store, s, m, now)
    }

    fn save(
        &self,
        store: &AlertStore,
        s: Silence,
        m: Vec<Matcher>,
        now: i64,
    ) -> Result<(), SilenceError> {
        let mut all = self.all.write();
        // Silences expired long ago leave.
        let old: Vec<String> = all
            .iter()
            .filter(|(x, _)| now - x.ends_at > EXPIRED_RETENTION)
            .map(|(x, _)| x.id.clone())
            .collect();
        store.save_silence(&s, &old)?;
        all.retain(|(x, _)| x.id != s.id && !old.contains(&x.id));
        all.push((s, m));
        Ok(())
    }
}

/// A random id in UUID form, as Alertmanager's.
fn new_id() -> String {
    let n: u128 = rand::random();
    let h = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silences_match_survive_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.redb");
        let now = 1_800_000_000_000_000_000;
        let id = {
            let store = AlertStore::open(&path).unwrap();
            let s = Silences::load(&store).unwrap();
            let post = |m: Vec<SilenceMatcher>, end: &str| PostableSilence {
                id: None,
                matchers: m,
                starts_at: "2020-01-01T00:00:00Z".into(),
                ends_at: end.into(),
                created_by: "me".into(),
                comment: "maintenance".into(),
            };
            let m = |n: &str, v: &str, re: bool| SilenceMatcher {
                name: n.into(),
                value: v.into(),
                is_regex: re,
                is_equal: true,
            };
            assert!(s
                .post(&store, post(vec![], "2030-01-01T00:00:00Z"), now)
                .is_err());
            assert!(s
                .post(
                    &store,
                    post(vec![m("host", "a", false)], "2020-02-01T00:00:00Z"),
                    now
                )
                .is_err());
            assert!(s
                .post(
                    &store,
                    post(vec![m("host", "((", true)], "2030-01-01T00:00:00Z"),
                    now
                )
                .is_err());
            assert!(s
                .post(&store, post(vec![m("host", "a", false)], "tomorrow"), now)
                .is_err());
            assert!(s
                .post(
                    &store,
                    post(vec![m("host", ".*", true)], "2030-01-01T00:00:00Z"),
                    now
                )
                .is_err());
            s.post(
                &store,
                post(vec![m("host", "web-.*", true)], "2030-01-01T00:00:00Z"),
                now,
            )
            .unwrap()
        };
        let store = AlertStore::open(&path).unwrap();
        let s = Silences::load(&store).unwrap();
        let labels = |h: &str| BTreeMap::from([("host".to_string(), h.to_string())]);
        assert_eq!(s.silenced_by(&labels("web-1"), now), Some(id.clone()));
        assert_eq!(s.silenced_by(&labels("db-1"), now), None);
        s.expire(&store, &id, now).unwrap();
        assert_eq!(s.silenced_by(&labels("web-1"), now + 1), None);
        assert_eq!(s.get(&id).unwrap().state(now + 1), "expired");
        assert!(matches!(
            s.expire(&store, "nope", now),
            Err(SilenceError::NotFound(_))
        ));
    }
}
