//! `file_sd_configs`: targets from JSON or YAML files of target groups
//! (`[{"targets": ["host:port"], "labels": {...}}]`), as Prometheus reads
//! them. The files (a `*` may stand for any run of characters in the file
//! name) are read again every `refresh_interval` and whenever one changes
//! (polled each second), so adds and removals apply within seconds. A file
//! that cannot be read or parsed keeps the targets it had last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use crate::config::{check_target, check_target_labels, Target};

/// One `file_sd_configs` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct FileSd {
    pub files: Vec<String>,
    pub refresh_interval: Duration,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupDoc {
    #[serde(default)]
    targets: Vec<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// `*` in `pattern` stands for any run of characters.
fn matches(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((head, tail)) => match name.strip_prefix(head) {
            None => false,
            Some(rest) => (0..=rest.len())
                .filter(|i| rest.is_char_boundary(*i))
                .any(|i| matches(tail, &rest[i..])),
        },
    }
}

/// The files a pattern names now.
fn expand(pattern: &str, base: &Path) -> Vec<PathBuf> {
    let path = base.join(pattern);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if !name.contains('*') {
        return vec![path];
    }
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| matches(&name, &n.to_string_lossy()))
        })
        .collect();
    out.sort();
    out
}

/// The files and their modification times, to notice a change.
pub(crate) fn stamp(sd: &[FileSd], base: &Path) -> Vec<(PathBuf, Option<SystemTime>, u64)> {
    sd.iter()
        .flat_map(|s| s.files.iter())
        .flat_map(|f| expand(f, base))
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let t = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (p, t, len)
        })
        .collect()
}

/// Target groups in JSON or YAML (JSON is YAML 1.2: one parser reads both).
pub(crate) fn parse_groups(text: &str) -> Result<Vec<Target>, String> {
    let groups: Vec<GroupDoc> = serde_norway::from_str(text).map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for g in groups {
        check_target_labels(&g.labels)?;
        for t in g.targets {
            check_target(&t)?;
            out.push(Target {
                address: t,
                labels: g.labels.clone(),
            });
        }
    }
    Ok(out)
}

/// Reads one file's target groups; each target gets `__meta_filepath`.
pub(crate) fn read(path: &Path) -> Result<Vec<Target>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut out = parse_groups(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for t in &mut out {
        t.labels
            .insert("__meta_filepath".into(), path.display().to_string());
    }
    Ok(out)
}

/// Every target the job's files name now; a file that fails keeps `last`'s
/// targets from it. Errors come back to be logged.
pub(crate) fn targets(
    sd: &[FileSd],
    base: &Path,
    last: &BTreeMap<PathBuf, Vec<Target>>,
) -> (BTreeMap<PathBuf, Vec<Target>>, Vec<String>) {
    let mut out = BTreeMap::new();
    let mut errors = Vec::new();
    for p in sd
        .iter()
        .flat_map(|s| s.files.iter())
        .flat_map(|f| expand(f, base))
    {
        match read(&p) {
            Ok(t) => {
                out.insert(p, t);
            }
            Err(e) => {
                errors.push(e);
                if let Some(t) = last.get(&p) {
                    out.insert(p, t.clone());
                }
            }
        }
    }
    (out, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_file_names() {
        assert!(matches("*.json", "a.json"));
        assert!(matches("nodes-*.yml", "nodes-eu.yml"));
        assert!(!matches("nodes-*.yml", "nodes-eu.yaml"));
        assert!(matches("*", ""));
        assert!(matches("a*b*c", "a-x-b-y-c"));
        assert!(!matches("a*b", "ba"));
        assert!(matches("é*", "é-ü"));
    }

    #[test]
    fn reads_json_and_yaml_groups_and_refuses_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("a.json");
        std::fs::write(
            &json,
            r#"[{"targets": ["127.0.0.1:9100", "db:9100"], "labels": {"env": "prod"}}]"#,
        )
        .unwrap();
        let t = read(&json).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[1].labels["env"], "prod");
        assert_eq!(t[1].labels["__meta_filepath"], json.display().to_string());
        let yaml = dir.path().join("b.yml");
        std::fs::write(&yaml, "- targets: ['h:1']\n").unwrap();
        assert_eq!(read(&yaml).unwrap()[0].address, "h:1");
        std::fs::write(&yaml, "- targets: ['http://h:1']\n").unwrap();
        assert!(read(&yaml).unwrap_err().contains("host:port"));
        std::fs::write(&yaml, "- targets: ['h:1']\n  labels: { 'a-b': y }\n").unwrap();
        assert!(read(&yaml).unwrap_err().contains("not a label name"));
        // A broken file keeps the targets it had.
        let sd = vec![FileSd {
            files: vec!["*.yml".into()],
            refresh_interval: Duration::from_secs(60),
        }];
        let last = BTreeMap::from([(
            yaml.clone(),
            vec![Target {
                address: "old:1".into(),
                labels: BTreeMap::new(),
            }],
        )]);
        let (now, errors) = targets(&sd, dir.path(), &last);
        assert_eq!(errors.len(), 1);
        assert_eq!(now[&yaml][0].address, "old:1");
    }
}
