//! Prometheus's relabeling (`relabel_configs` on targets,
//! `metric_relabel_configs` on samples), with its defaults, its validation
//! and its semantics: regexes are RE2 (the `regex` crate's syntax is the
//! same) anchored at both ends, `$1`/`${name}` expand in `replacement` and in
//! a `replace` rule's `target_label`, a label set to "" is removed, and
//! `hashmod` takes the last 8 bytes of the MD5 of the joined values, so a
//! target lands in the same bucket as in Prometheus.

use std::collections::BTreeMap;

use md5::{Digest, Md5};
use regex::Regex;
use serde::Deserialize;
use vigil_model::is_label_name;

/// A label set while rules run: name → value.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Replace,
    Keep,
    Drop,
    KeepEqual,
    DropEqual,
    HashMod,
    LabelMap,
    LabelDrop,
    LabelKeep,
    Lowercase,
    Uppercase,
}

impl Action {
    fn parse(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "replace" => Self::Replace,
            "keep" => Self::Keep,
            "drop" => Self::Drop,
            "keepequal" => Self::KeepEqual,
            "dropequal" => Self::DropEqual,
            "hashmod" => Self::HashMod,
            "labelmap" => Self::LabelMap,
            "labeldrop" => Self::LabelDrop,
            "labelkeep" => Self::LabelKeep,
            "lowercase" => Self::Lowercase,
            "uppercase" => Self::Uppercase,
            _ => {
                return Err(format!(
                    "unknown relabel action {s:?} (replace, keep, drop, keepequal, dropequal, hashmod, labelmap, labeldrop, labelkeep, lowercase, uppercase)"
                ))
            }
        })
    }
}

/// One rule as written in YAML; defaults as in Prometheus.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleDoc {
    #[serde(default)]
    source_labels: Vec<String>,
    separator: Option<String>,
    target_label: Option<String>,
    regex: Option<serde_norway::Value>,
    modulus: Option<u64>,
    replacement: Option<String>,
    action: Option<String>,
}

/// One checked rule.
#[derive(Debug, Clone)]
pub struct RelabelRule {
    source_labels: Vec<String>,
    separator: String,
    target_label: String,
    /// Anchored: `^(?:regex)$`.
    regex: Regex,
    modulus: u64,
    replacement: String,
    action: Action,
}

const DEFAULT_REGEX: &str = "(.*)";

/// A `replace` target may hold `$1` / `${name}` references.
fn valid_replace_target(s: &str) -> bool {
    let plain: String = {
        let mut out = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            if c != '$' {
                out.push(c);
                continue;
            }
            match chars.peek() {
                Some('{') => {
                    chars.next();
                    let mut name = String::new();
                    for c in chars.by_ref() {
                        if c == '}' {
                            break;
                        }
                        name.push(c);
                    }
                    if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_') {
                        return false;
                    }
                    out.push('x');
                }
                Some(c) if c.is_alphanumeric() || *c == '_' => {
                    while chars
                        .peek()
                        .is_some_and(|c| c.is_alphanumeric() || *c == '_')
                    {
                        chars.next();
                    }
                    out.push('x');
                }
                _ => return false,
            }
        }
        out
    };
    is_label_name(&plain)
}

impl RelabelRule {
    pub(crate) fn from_doc(d: RuleDoc) -> Result<Self, String> {
        let action = Action::parse(d.action.as_deref().unwrap_or("replace"))?;
        let regex_text = match &d.regex {
            None => DEFAULT_REGEX.to_string(),
            Some(serde_norway::Value::String(s)) => s.clone(),
            Some(serde_norway::Value::Number(n)) => n.to_string(),
            Some(serde_norway::Value::Bool(b)) => b.to_string(),
            Some(other) => return Err(format!("regex {other:?} is not a string")),
        };
        // As Prometheus compiles it: anchored, `.` matching newlines too.
        let regex = Regex::new(&format!("^(?s:{regex_text})$"))
            .map_err(|e| format!("regex {regex_text:?} does not compile: {e}"))?;
        let target = d.target_label.clone().unwrap_or_default();
        let name = format!("{action:?}").to_ascii_lowercase();
        let needs_target = matches!(
            action,
            Action::Replace
                | Action::HashMod
                | Action::Lowercase
                | Action::Uppercase
                | Action::KeepEqual
                | Action::DropEqual
        );
        if needs_target && target.is_empty() {
            return Err(format!("relabel action {name} needs target_label"));
        }
        if action == Action::Replace && !valid_replace_target(&target) {
            return Err(format!("target_label {target:?} is not a label name"));
        }
        if needs_target && action != Action::Replace && !is_label_name(&target) {
            return Err(format!("target_label {target:?} is not a label name"));
        }
        if action == Action::HashMod && d.modulus.unwrap_or(0) == 0 {
            return Err("relabel action hashmod needs a modulus above 0".into());
        }
        // Fields an action does not use may be written with their default
        // values (Prometheus's own config dump has them all).
        let regex_set = regex_text != DEFAULT_REGEX;
        let modulus_set = d.modulus.is_some_and(|m| m != 0);
        let separator_set = d.separator.as_deref().is_some_and(|s| s != ";");
        let replacement_set = d.replacement.as_deref().is_some_and(|r| r != "$1");
        if matches!(action, Action::KeepEqual | Action::DropEqual)
            && (regex_set || modulus_set || replacement_set)
        {
            return Err(format!(
                "relabel action {name} takes only source_labels, separator and target_label"
            ));
        }
        if matches!(action, Action::LabelDrop | Action::LabelKeep)
            && (!d.source_labels.is_empty()
                || !target.is_empty()
                || modulus_set
                || separator_set
                || replacement_set)
        {
            return Err(format!("relabel action {name} takes only regex"));
        }
        if matches!(
            action,
            Action::Keep | Action::Drop | Action::HashMod | Action::Lowercase | Action::Uppercase
        ) && d.source_labels.is_empty()
        {
            return Err(format!("relabel action {name} needs source_labels"));
        }
        if let Some(bad) = d.source_labels.iter().find(|l| !is_label_name(l)) {
            return Err(format!("source label {bad:?} is not a label name"));
        }
        Ok(Self {
            source_labels: d.source_labels,
            separator: d.separator.unwrap_or_else(|| ";".into()),
            target_label: target,
            regex,
            modulus: d.modulus.unwrap_or(0),
            replacement: d.replacement.unwrap_or_else(|| "$1".into()),
            action,
        })
    }

    fn joined(&self, labels: &Labels) -> String {
        let mut out = String::new();
        for (i, name) in self.source_labels.iter().enumerate() {
            if i > 0 {
                out.push_str(&self.separator);
            }
            if let Some(v) = labels.get(name) {
                out.push_str(v);
            }
        }
        out
    }

    /// Applies the rule; false when it drops the label set.
    fn apply(&self, labels: &mut Labels) -> bool {
        let set = |labels: &mut Labels, name: String, value: String| {
            if value.is_empty() {
                labels.remove(&name);
            } else {
                labels.insert(name, value);
            }
        };
        match self.action {
            Action::Replace => {
                let value = self.joined(labels);
                if let Some(caps) = self.regex.captures(&value) {
                    let mut target = String::new();
                    caps.expand(&self.target_label, &mut target);
                    if !is_label_name(&target) {
                        return true;
                    }
                    let mut out = String::new();
                    caps.expand(&self.replacement, &mut out);
                    set(labels, target, out);
                }
            }
            Action::Lowercase => {
                let value = self.joined(labels).to_lowercase();
                set(labels, self.target_label.clone(), value);
            }
            Action::Uppercase => {
                let value = self.joined(labels).to_uppercase();
                set(labels, self.target_label.clone(), value);
            }
            Action::Keep => return self.regex.is_match(&self.joined(labels)),
            Action::Drop => return !self.regex.is_match(&self.joined(labels)),
            Action::KeepEqual => {
                let other = labels.get(&self.target_label).map_or("", String::as_str);
                return self.joined(labels) == other;
            }
            Action::DropEqual => {
                let other = labels.get(&self.target_label).map_or("", String::as_str);
                return self.joined(labels) != other;
            }
            Action::HashMod => {
                let digest = Md5::digest(self.joined(labels).as_bytes());
                let mut last = [0u8; 8];
                last.copy_from_slice(&digest[8..16]);
                let bucket = u64::from_be_bytes(last) % self.modulus;
                set(labels, self.target_label.clone(), bucket.to_string());
            }
            Action::LabelMap => {
                let mapped: Vec<(String, String)> = labels
                    .iter()
                    .filter_map(|(name, value)| {
                        let caps = self.regex.captures(name)?;
                        let mut out = String::new();
                        caps.expand(&self.replacement, &mut out);
                        Some((out, value.clone()))
                    })
                    .collect();
                for (name, value) in mapped {
                    if is_label_name(&name) {
                        set(labels, name, value);
                    }
                }
            }
            Action::LabelDrop => labels.retain(|name, _| !self.regex.is_match(name)),
            Action::LabelKeep => labels.retain(|name, _| self.regex.is_match(name)),
        }
        true
    }
}

/// A list of rules, applied in order.
#[derive(Debug, Clone, Default)]
pub struct Relabeling {
    rules: Vec<RelabelRule>,
}

impl Relabeling {
    pub(crate) fn parse(docs: Vec<RuleDoc>) -> Result<Self, String> {
        let rules = docs
            .into_iter()
            .enumerate()
            .map(|(i, d)| RelabelRule::from_doc(d).map_err(|e| format!("rule {}: {e}", i + 1)))
            .collect::<Result<_, _>>()?;
        Ok(Self { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Runs every rule; `None` when one drops the label set.
    pub fn process(&self, mut labels: Labels) -> Option<Labels> {
        for r in &self.rules {
            if !r.apply(&mut labels) {
                return None;
            }
        }
        Some(labels)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Relabeling {
        let docs: Vec<RuleDoc> = serde_norway::from_str(yaml).unwrap();
        Relabeling::parse(docs).unwrap()
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn replace_expands_groups_and_removes_on_empty() {
        let r = rules(
            "- source_labels: [__address__]\n  regex: '([^:]+):(\\d+)'\n  target_label: host\n  replacement: '${1}'\n- source_labels: [__address__]\n  regex: '[^:]+:(?P<port>\\d+)'\n  target_label: 'port_$port'\n  replacement: yes\n- source_labels: [missing]\n  target_label: env\n",
        );
        let out = r
            .process(labels(&[("__address__", "db1:9100"), ("env", "prod")]))
            .unwrap();
        assert_eq!(out["host"], "db1");
        assert_eq!(out["port_9100"], "yes");
        // The default regex matches "", so env is set to "" and removed.
        assert!(!out.contains_key("env"), "{out:?}");
    }

    #[test]
    fn keep_drop_and_their_equal_forms() {
        let keep = rules("- source_labels: [team, env]\n  regex: 'db;prod'\n  action: keep\n");
        assert!(keep
            .process(labels(&[("team", "db"), ("env", "prod")]))
            .is_some());
        assert!(keep
            .process(labels(&[("team", "db"), ("env", "dev")]))
            .is_none());
        // Anchored: a match inside the value is not a match.
        assert!(keep
            .process(labels(&[("team", "xdb"), ("env", "prod")]))
            .is_none());
        let drop = rules("- source_labels: [__name__]\n  regex: 'go_.*'\n  action: drop\n");
        assert!(drop.process(labels(&[("__name__", "go_gc")])).is_none());
        assert!(drop.process(labels(&[("__name__", "up")])).is_some());
        let ke = rules("- source_labels: [a]\n  target_label: b\n  action: keepequal\n");
        assert!(ke.process(labels(&[("a", "1"), ("b", "1")])).is_some());
        assert!(ke.process(labels(&[("a", "1"), ("b", "2")])).is_none());
        let de = rules("- source_labels: [a]\n  target_label: b\n  action: dropequal\n");
        assert!(de.process(labels(&[("a", "1"), ("b", "1")])).is_none());
    }

    #[test]
    fn hashmod_matches_prometheus() {
        // Prometheus's relabel_test.go: "baz" mod 1000 is 976.
        let r = rules(
            "- source_labels: [a]\n  target_label: shard\n  modulus: 1000\n  action: hashmod\n",
        );
        let out = r.process(labels(&[("a", "baz")])).unwrap();
        assert_eq!(out["shard"], "976");
    }

    #[test]
    fn labelmap_labeldrop_labelkeep_and_case() {
        let r = rules(
            "- regex: '__meta_kubernetes_pod_label_(.+)'\n  action: labelmap\n- regex: '__meta_.*'\n  action: labeldrop\n- source_labels: [app]\n  target_label: app_upper\n  action: uppercase\n- source_labels: [Mixed]\n  target_label: mixed\n  action: lowercase\n",
        );
        let out = r
            .process(labels(&[
                ("__meta_kubernetes_pod_label_app", "web"),
                ("__meta_other", "x"),
                ("Mixed", "AbC"),
            ]))
            .unwrap();
        assert_eq!(
            out,
            labels(&[
                ("Mixed", "AbC"),
                ("app", "web"),
                ("app_upper", "WEB"),
                ("mixed", "abc")
            ])
        );
        let keep = rules("- regex: 'job|instance'\n  action: labelkeep\n");
        let out = keep
            .process(labels(&[("job", "a"), ("instance", "b"), ("x", "c")]))
            .unwrap();
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn unused_fields_at_their_defaults_are_accepted() {
        // The shape of Prometheus's own config dump.
        let r = rules("- separator: ;\n  regex: 'tmp_.*'\n  replacement: $1\n  action: labeldrop\n- source_labels: [a]\n  separator: ;\n  regex: (.*)\n  target_label: b\n  replacement: $1\n  action: keepequal\n");
        assert!(r
            .process(labels(&[("a", "1"), ("b", "1"), ("tmp_x", "y")]))
            .is_some_and(|l| !l.contains_key("tmp_x")));
        // `.` matches a newline, as in Prometheus.
        let drop = rules("- source_labels: [a]\n  regex: 'x.*'\n  action: drop\n");
        assert!(drop.process(labels(&[("a", "x\ny")])).is_none());
    }

    #[test]
    fn bad_rules_are_refused_with_the_reason() {
        for (yaml, what) in [
            ("- action: explode\n", "unknown relabel action"),
            (
                "- source_labels: [a]\n  action: replace\n",
                "needs target_label",
            ),
            (
                "- source_labels: [a]\n  target_label: b\n  action: hashmod\n",
                "modulus",
            ),
            (
                "- source_labels: [a]\n  target_label: 'b-c'\n",
                "not a label name",
            ),
            (
                "- source_labels: [a]\n  regex: '('\n  target_label: b\n",
                "does not compile",
            ),
            (
                "- regex: a\n  target_label: b\n  action: labeldrop\n",
                "takes only regex",
            ),
            (
                "- source_labels: [a]\n  regex: x\n  target_label: b\n  action: keepequal\n",
                "takes only",
            ),
            ("- action: keep\n", "needs source_labels"),
            (
                "- source_labels: [a]\n  target_label: b\n  bogus: 1\n",
                "unknown field",
            ),
        ] {
            let err = serde_norway::from_str::<Vec<RuleDoc>>(yaml)
                .map_err(|e| e.to_string())
                .and_then(Relabeling::parse)
                .expect_err(yaml);
            assert!(err.contains(what), "{yaml}: {err}");
        }
    }
}
