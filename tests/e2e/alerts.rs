//! Alerting end to end: rule files and an Alertmanager-format routing file, a
//! webhook receiver on a loopback port that refuses the first deliveries, a
//! SIGKILL while an alert fires, a broken rule file dropped in while running;
//! grouping, e-mail to a real SMTP server (aiosmtpd, STARTTLS and AUTH), SMS
//! to a form-taking gateway, a real Prometheus Alertmanager, mute time
//! intervals, dead letters, and two nodes that notify once.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use parking_lot::Mutex;
use serde_json::Value;

use crate::server::{wait_for, Helper, TestServer};

/// A delivery the receiver saw: the idempotency key, the answer it gave and
/// the body.
#[derive(Clone, Debug)]
struct Delivery {
    path: String,
    key: String,
    accepted: bool,
    body: Value,
    /// The body as sent (a form for SMS).
    raw: String,
    authorization: String,
}

#[derive(Default)]
struct Inbox {
    deliveries: Vec<Delivery>,
    /// Answer 500 to this many deliveries first.
    refuse: usize,
    /// Never answer this many deliveries first (a receiver hanging mid-send).
    hang: usize,
}

/// A webhook receiver (what a user points `webhook_configs` at).
struct WebhookReceiver {
    url: String,
    inbox: Arc<Mutex<Inbox>>,
    _runtime: tokio::runtime::Runtime,
}

async fn receive(
    State(inbox): State<Arc<Mutex<Inbox>>>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let hang = {
        let mut i = inbox.lock();
        let hang = i.hang > 0 && uri.path() == "/hook";
        if hang {
            i.hang -= 1;
            i.deliveries.push(Delivery {
                path: "/hang".into(),
                key: headers
                    .get("idempotency-key")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string(),
                accepted: false,
                body: serde_json::from_str(&body).unwrap_or(Value::Null),
                raw: body.clone(),
                authorization: String::new(),
            });
        }
        hang
    };
    if hang {
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut i = inbox.lock();
    // Only /hook refuses (the first `refuse` deliveries); /down always does.
    let accepted = (i.refuse == 0 || uri.path() != "/hook") && uri.path() != "/down";
    if uri.path() == "/hook" {
        i.refuse = i.refuse.saturating_sub(1);
    }
    i.deliveries.push(Delivery {
        path: uri.path().to_string(),
        key: headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        accepted,
        body: serde_json::from_str(&body).unwrap_or(Value::Null),
        raw: body,
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
    });
    if accepted {
        StatusCode::OK
    } else {
        StatusCode::INTERNAL_SERVER_ERROR
    }
}

impl WebhookReceiver {
    fn start(refuse: usize) -> Self {
        Self::start_with(refuse, 0)
    }

    fn start_with(refuse: usize, hang: usize) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let inbox = Arc::new(Mutex::new(Inbox {
            refuse,
            hang,
            ..Inbox::default()
        }));
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hook", post(receive))
            .route("/errors", post(receive))
            .route("/slack", post(receive))
            .route("/pd", post(receive))
            .route("/sms", post(receive))
            .route("/muted", post(receive))
            .route("/down", post(receive))
            .with_state(Arc::clone(&inbox));
        runtime.spawn(async move { axum::serve(listener, app).await });
        WebhookReceiver {
            url,
            inbox,
            _runtime: runtime,
        }
    }

    /// Deliveries to /hook.
    fn deliveries(&self) -> Vec<Delivery> {
        self.inbox
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.path == "/hook")
            .cloned()
            .collect()
    }

    /// Every delivery to `path`.
    fn at(&self, path: &str) -> Vec<Delivery> {
        self.inbox
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.path == path)
            .cloned()
            .collect()
    }

    /// Accepted deliveries with this status and host label.
    fn accepted(&self, status: &str, host: &str) -> Vec<Delivery> {
        self.deliveries()
            .into_iter()
            .filter(|d| {
                d.accepted
                    && d.body["status"] == status
                    && d.body["alerts"][0]["labels"]["host"] == host
            })
            .collect()
    }
}

const RULES: &str = r#"groups:
  - name: hosts
    interval: 1s
    rules:
      - alert: HighCpu
        sql: |
          SELECT host, usage AS value FROM (
            SELECT host, usage, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn
            FROM cpu
          ) WHERE rn = 1 AND usage > 90
        for: 2s
        labels: { severity: page }
        annotations:
          summary: "CPU {{ $value }} on {{ $labels.host }}"
      - record: cpu_last
        sql: SELECT host, max(usage) AS value FROM cpu GROUP BY host
      - alert: Broken
        sql: SELECT 1.0 AS value FROM no_such_table
        receiver: errors
"#;

fn routing(url: &str) -> String {
    format!(
        "route:\n  receiver: ops\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: ops\n    webhook_configs:\n      - url: \"{url}\"\n  - name: errors\n    webhook_configs:\n      - url: \"{}\"\n",
        url.replace("/hook", "/errors")
    )
}

fn start(dir: &Path, hook: &WebhookReceiver) -> TestServer {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(rules.join("hosts.yml"), RULES).unwrap();
    let routing_file = dir.join("alerting.yml");
    std::fs::write(&routing_file, routing(&hook.url)).unwrap();
    TestServer::start(
        &dir.join("data"),
        &[
            "--rules-dir",
            rules.to_str().unwrap(),
            "--alerting-config",
            routing_file.to_str().unwrap(),
        ],
    )
}

#[test]
fn rules_fire_notify_at_least_once_and_survive_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    // The receiver refuses the first two deliveries: vigil retries them.
    let hook = WebhookReceiver::start(2);
    let mut s = start(dir.path(), &hook);
    s.write_lp("cpu,host=a usage=95\ncpu,host=b usage=10\n");

    wait_for("the firing notification", Duration::from_secs(30), || {
        !hook.accepted("firing", "a").is_empty()
    });
    let all = hook.deliveries();
    // Two refused, then accepted: one notification, the same key every time.
    assert!(all.len() >= 3, "{all:?}");
    assert!(!all[0].accepted && !all[1].accepted && all[2].accepted);
    assert!(all.iter().all(|d| d.key == all[0].key && !d.key.is_empty()));
    let body = &all[2].body;
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "ops");
    let alert = &body["alerts"][0];
    assert_eq!(alert["labels"]["alertname"], "HighCpu");
    assert_eq!(alert["labels"]["severity"], "page");
    assert_eq!(alert["annotations"]["summary"], "CPU 95 on a");
    assert!(hook.accepted("firing", "b").is_empty());

    // `for: 2s`: pending first, firing 2 s (two evaluations) later.
    let history = s.sql(
        "SELECT from_state, to_state, CAST(time AS BIGINT) AS t FROM system.alert_history \
         WHERE labels LIKE '%\"host\":\"a\"%' ORDER BY time",
    );
    assert_eq!(history[0]["to_state"], "pending", "{history:?}");
    assert_eq!(history[1]["to_state"], "firing", "{history:?}");
    let waited = history[1]["t"].as_i64().unwrap() - history[0]["t"].as_i64().unwrap();
    assert!(waited >= 2_000_000_000, "fired after {waited} ns");
    let alerts = s.sql(
        "SELECT alertname, state, value, labels FROM system.alerts WHERE alertname = 'HighCpu'",
    );
    assert_eq!(alerts.len(), 1, "{alerts:?}");
    assert_eq!(alerts[0]["state"], "firing");
    assert_eq!(alerts[0]["value"], 95.0);
    let api: Value = s
        .request(reqwest::Method::GET, "/api/v1/alerts")
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(api["data"]["alerts"][0]["state"], "firing", "{api}");
    let rules: Value = s
        .request(reqwest::Method::GET, "/api/v1/rules")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let group = &rules["data"]["groups"][0];
    assert_eq!(group["rules"][0]["state"], "firing", "{rules}");
    assert_eq!(group["rules"][0]["health"], "ok", "{rules}");
    assert_eq!(group["rules"][1]["type"], "recording", "{rules}");
    // The recording rule wrote its table through the write pipeline.
    wait_for("recorded rows", Duration::from_secs(10), || {
        s.sql("SELECT count(*) AS n FROM cpu_last WHERE host = 'a' AND value = 95")[0]["n"]
            .as_i64()
            .unwrap()
            > 0
    });
    assert!(s.metric("vigil_notifications_sent_total") >= 1.0);

    // A rule whose query fails fires one `error` alert (value NaN, the error
    // in an annotation) to its own receiver; its health says why.
    wait_for("the error alert", Duration::from_secs(20), || {
        hook.inbox.lock().deliveries.iter().any(|d| {
            d.path == "/errors"
                && d.body["alerts"][0]["labels"]["alertstate"] == "error"
                && d.body["alerts"][0]["annotations"]["error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no_such_table"))
        })
    });
    let broken = s.sql("SELECT health, last_error FROM system.rules WHERE rule = 'Broken'");
    assert_eq!(broken[0]["health"], "err", "{broken:?}");

    // SIGKILL while firing: after the restart the alert is still firing, with
    // the same start, and nobody is told again (repeat_interval is 1 h).
    let fired_at = s
        .sql("SELECT CAST(fired_at AS BIGINT) AS f FROM system.alerts WHERE alertname = 'HighCpu'")
        [0]["f"]
        .clone();
    s.kill();
    let sent_before = hook.accepted("firing", "a").len();
    s.restart();
    std::thread::sleep(Duration::from_secs(4));
    let after = s.sql(
        "SELECT state, CAST(fired_at AS BIGINT) AS f FROM system.alerts WHERE alertname = 'HighCpu'",
    );
    assert_eq!(after.len(), 1, "{after:?}");
    assert_eq!(after[0]["state"], "firing");
    assert_eq!(after[0]["f"], fired_at);
    assert_eq!(hook.accepted("firing", "a").len(), sent_before);

    // A broken rule file: refused with file:line, the rules running go on.
    let bad = dir.path().join("rules/broken.yml");
    std::fs::write(&bad, "groups:\n  - name: more\n    rules:\n      - alert: X\n        sql: SELECT 1 AS value\n        for: soon\n").unwrap();
    let evaluated = |s: &TestServer| -> Value {
        let r: Value = s
            .request(reqwest::Method::GET, "/api/v1/rules")
            .send()
            .unwrap()
            .json()
            .unwrap();
        r
    };
    wait_for("the reload error", Duration::from_secs(10), || {
        evaluated(&s)["data"]["reloadError"]
            .as_str()
            .is_some_and(|e| e.contains("broken.yml:6:") && e.contains("not a duration"))
    });
    let before = evaluated(&s)["data"]["groups"][0]["lastEvaluation"].clone();
    wait_for("another evaluation", Duration::from_secs(10), || {
        evaluated(&s)["data"]["groups"][0]["lastEvaluation"] != before
    });
    std::fs::remove_file(&bad).unwrap();

    // Resolved: the last value drops below 90.
    s.write_lp("cpu,host=a usage=5\n");
    wait_for("the resolved notification", Duration::from_secs(30), || {
        !hook.accepted("resolved", "a").is_empty()
    });
    let resolved = &hook.accepted("resolved", "a")[0].body["alerts"][0];
    assert_ne!(resolved["endsAt"], "0001-01-01T00:00:00Z");
    let states = s.sql("SELECT state FROM system.alerts WHERE alertname = 'HighCpu'");
    assert_eq!(states[0]["state"], "resolved", "{states:?}");
}

/// vigil refuses to start on an invalid rule file, naming file and line.
#[test]
fn an_invalid_rule_file_stops_the_start_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("bad.yaml"),
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELEC host\n",
    )
    .unwrap();
    let out = std::process::Command::new(crate::server::BIN)
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--rules-dir")
        .arg(&rules)
        .args([
            "--http-addr",
            "127.0.0.1:0",
            "--flight-addr",
            "127.0.0.1:0",
            "--pg-addr",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:5:") && err.contains("SQL"), "{err}");
}

/// `vigil rules check`: offline, then planned against a running server.
#[test]
fn rules_check_names_file_and_line_offline_and_against_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.yml");
    // The rules of the other test but the one on a missing table.
    let planned = RULES.split("      - alert: Broken").next().unwrap();
    std::fs::write(&good, planned).unwrap();
    let bad = dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "groups:\n  - name: g\n    rules:\n      - alert: A\n        sql: SELECT 1 AS value\n        annotations:\n          s: \"{{ $value | nosuch }}\"\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(crate::server::BIN)
            .args(["rules", "check"])
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&[good.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 rule(s)"));
    let out = run(&[good.to_str().unwrap(), bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.yml:6:") && err.contains("nosuch"),
        "{err}"
    );

    // Against a server: `cpu` exists there; a rule on a missing table or
    // without a `value` column does not plan.
    let s = TestServer::start(&dir.path().join("data"), &[]);
    s.write_lp("cpu,host=a usage=1\n");
    let out = run(&[good.to_str().unwrap(), "--url", &s.url]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wrong = dir.path().join("wrong.yml");
    std::fs::write(
        &wrong,
        "groups:\n  - name: g\n    rules:\n      - alert: NoTable\n        sql: SELECT host, 1 AS value FROM nosuch\n      - alert: NoValue\n        sql: SELECT host FROM cpu\n",
    )
    .unwrap();
    let out = run(&[wrong.to_str().unwrap(), "--url", &s.url]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let line = |at: &str| {
        err.lines()
            .find(|l| l.contains(at))
            .unwrap_or_else(|| panic!("no {at} in {err}"))
            .to_string()
    };
    assert!(line("wrong.yml:4:").contains("nosuch"), "{err}");
    assert!(line("wrong.yml:6:").contains("value"), "{err}");
    assert_eq!(
        err.lines().filter(|l| l.contains("wrong.yml:")).count(),
        2,
        "{err}"
    );
}

/// Silences (Alertmanager's v2 API and `vigil silence`): a silenced alert
/// fires but is not sent; once the silence ends it is.
#[test]
fn silences_hold_notifications_back_until_they_end() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start(0);
    let s = start(dir.path(), &hook);
    let out = s.cli(&[
        "silence",
        "add",
        "host=\"a\"",
        "alertname=~High.*",
        "--duration",
        "1h",
        "--comment",
        "deploy",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert_eq!(id.len(), 36, "{id}");
    let listed = s.cli(&["silence", "list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains(&id) && text.contains("active") && text.contains("deploy"),
        "{text}"
    );

    // Bad silences are refused with the reason; an unknown id is 404.
    for (body, what) in [
        ("{", "silence"),
        (
            r#"{"matchers":[],"startsAt":"2026-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z"}"#,
            "matcher",
        ),
        (
            r#"{"matchers":[{"name":"a","value":"b","isRegex":false}],"startsAt":"2020-01-01T00:00:00Z","endsAt":"2020-01-02T00:00:00Z"}"#,
            "past",
        ),
        (
            r#"{"matchers":[{"name":"a","value":"((","isRegex":true}],"startsAt":"2026-01-01T00:00:00Z","endsAt":"2099-01-01T00:00:00Z"}"#,
            "matcher",
        ),
    ] {
        let r = s
            .request(reqwest::Method::POST, "/api/v2/silences")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        assert_eq!(r.status(), 400, "{body}");
        assert!(r.text().unwrap().contains(what), "{body}");
    }
    let r = s
        .request(reqwest::Method::DELETE, "/api/v2/silence/nope")
        .send()
        .unwrap();
    assert_eq!(r.status(), 404);

    s.write_lp("cpu,host=a usage=97\n");
    wait_for("the alert to fire", Duration::from_secs(20), || {
        s.sql("SELECT state FROM system.alerts WHERE alertname = 'HighCpu'")
            .first()
            .is_some_and(|r| r["state"] == "firing")
    });
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        hook.accepted("firing", "a").is_empty(),
        "a silenced alert was sent"
    );

    let out = s.cli(&["silence", "expire", &id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(
        "the notification after the silence",
        Duration::from_secs(20),
        || !hook.accepted("firing", "a").is_empty(),
    );
    let silences: Value = s
        .request(reqwest::Method::GET, &format!("/api/v2/silence/{id}"))
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(silences["status"]["state"], "expired", "{silences}");

    // A preview renders a rule for the data as it is, and sends nothing.
    let sent = hook.deliveries().len();
    let preview = |body: &str| {
        s.request(reqwest::Method::POST, "/api/v1/alerts/preview")
            .body(body.to_string())
            .send()
            .unwrap()
    };
    let r = preview(
        "groups:\n  - name: p\n    rules:\n      - alert: Hot\n        sql: SELECT host, max(usage) AS value FROM cpu GROUP BY host\n        annotations: { summary: \"{{ $labels.host }} at {{ $value }}\" }\n",
    );
    assert_eq!(r.status(), 200);
    let v: Value = r.json().unwrap();
    let rule = &v["data"]["rules"][0];
    assert_eq!(
        rule["alerts"][0]["annotations"]["summary"], "a at 97",
        "{v}"
    );
    assert_eq!(rule["alerts"][0]["state"], "firing", "{v}");
    assert_eq!(rule["notifications"][0]["receiver"], "ops", "{v}");
    assert_eq!(
        rule["notifications"][0]["body"]["alerts"][0]["labels"]["alertname"], "Hot",
        "{v}"
    );
    let r = preview("groups:\n  - name: p\n    rules:\n      - alert: Hot\n        sql: SELECT 1 AS value\n        for: later\n");
    assert_eq!(r.status(), 400);
    assert!(r.text().unwrap().contains("preview.yml:6:"));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(hook.deliveries().len(), sent, "a preview sent something");
}

/// SIGKILL while a notification is being sent (the receiver has it and has not
/// answered): after the restart it is sent again, with the same idempotency
/// key, and the alert is still firing.
#[test]
fn a_kill_mid_send_delivers_after_restart_with_the_same_key() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start_with(0, 1);
    let mut s = start(dir.path(), &hook);
    s.write_lp("cpu,host=a usage=99\n");
    wait_for("the delivery in flight", Duration::from_secs(30), || {
        hook.inbox
            .lock()
            .deliveries
            .iter()
            .any(|d| d.path == "/hang")
    });
    let in_flight = hook
        .inbox
        .lock()
        .deliveries
        .iter()
        .find(|d| d.path == "/hang")
        .unwrap()
        .key
        .clone();
    s.kill();
    s.restart();
    wait_for(
        "the delivery after the restart",
        Duration::from_secs(30),
        || !hook.accepted("firing", "a").is_empty(),
    );
    let delivered = hook.accepted("firing", "a");
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    assert_eq!(delivered[0].key, in_flight);
    let state = s.sql("SELECT state FROM system.alerts WHERE alertname = 'HighCpu'");
    assert_eq!(state[0]["state"], "firing");

    // Deleting the rule ends its alert: receivers are told it resolved.
    std::fs::remove_file(dir.path().join("rules/hosts.yml")).unwrap();
    wait_for(
        "the resolved notification of a deleted rule",
        Duration::from_secs(20),
        || !hook.accepted("resolved", "a").is_empty(),
    );
    // It stays visible as resolved for a while, as Prometheus keeps them.
    let left = s.sql("SELECT state FROM system.alerts");
    assert!(left.iter().all(|r| r["state"] == "resolved"), "{left:?}");
}

/// `vigil rules test`: promtool's test format on SQL rules, no server.
#[test]
fn rules_test_runs_promtool_style_tests() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("rules.yml"),
        r#"groups:
  - name: hosts
    interval: 1m
    rules:
      - alert: HighCpu
        sql: |
          SELECT host, avg(value) AS value FROM cpu
          WHERE time > now() - interval '2 minutes' GROUP BY host HAVING avg(value) > 90
        for: 2m
        labels: { severity: page }
        annotations: { summary: "{{ $labels.host }} at {{ $value }}" }
"#,
    )
    .unwrap();
    let test = |expected_host: &str| {
        format!(
            r#"rule_files: [rules.yml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'cpu{{host="a"}}'
        values: '95x10'
      - series: 'cpu{{host="b"}}'
        values: '10+1x10'
    alert_rule_test:
      - eval_time: 1m
        alertname: HighCpu
        exp_alerts: []
      - eval_time: 5m
        alertname: HighCpu
        exp_alerts:
          - exp_labels: {{ host: {expected_host}, severity: page }}
            exp_annotations: {{ summary: "a at 95" }}
"#
        )
    };
    std::fs::write(dir.path().join("good.test.yml"), test("a")).unwrap();
    std::fs::write(dir.path().join("bad.test.yml"), test("b")).unwrap();
    let run = |file: &str| {
        std::process::Command::new(crate::server::BIN)
            .args(["rules", "test"])
            .arg(dir.path().join(file))
            .output()
            .unwrap()
    };
    let out = run("good.test.yml");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok"));
    let out = run("bad.test.yml");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("FAILED") && err.contains("at 300s") && err.contains("\"b\""),
        "{err}"
    );
}

/// Slack and PagerDuty receivers get their own formats: Slack's incoming
/// webhook message, PagerDuty Events v2 `trigger` then `resolve` with one
/// dedup key.
#[test]
fn slack_and_pagerduty_get_their_own_formats() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start(0);
    let base = hook.url.trim_end_matches("/hook").to_string();
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("flag.yml"),
        r#"groups:
  - name: flags
    interval: 1s
    rules:
      - alert: FlagUp
        sql: |
          SELECT name, value FROM (
            SELECT name, value, row_number() OVER (PARTITION BY name ORDER BY time DESC) AS rn FROM flag
          ) WHERE rn = 1 AND value > 0
        annotations: { summary: "flag {{ $labels.name }} is up" }
"#,
    )
    .unwrap();
    let routing = dir.path().join("alerting.yml");
    std::fs::write(
        &routing,
        format!(
            "route:\n  receiver: both\n  group_wait: 0s\n  group_interval: 1s\nreceivers:\n  - name: both\n    slack_configs:\n      - api_url: {base}/slack\n        channel: '#ops'\n        send_resolved: true\n    pagerduty_configs:\n      - routing_key: key-1\n        url: {base}/pd\n"
        ),
    )
    .unwrap();
    let s = TestServer::start(
        &dir.path().join("data"),
        &[
            "--rules-dir",
            rules.to_str().unwrap(),
            "--alerting-config",
            routing.to_str().unwrap(),
        ],
    );
    let at = |path: &str| -> Vec<Value> {
        hook.inbox
            .lock()
            .deliveries
            .iter()
            .filter(|d| d.path == path)
            .map(|d| d.body.clone())
            .collect()
    };
    s.write_lp("flag,name=f value=1\n");
    wait_for("slack and pagerduty", Duration::from_secs(20), || {
        !at("/slack").is_empty() && !at("/pd").is_empty()
    });
    let slack = &at("/slack")[0];
    assert_eq!(
        slack["text"], "[FIRING:1] (FlagUp f)\n- FlagUp: flag f is up",
        "{slack}"
    );
    assert_eq!(slack["channel"], "#ops");
    assert_eq!(slack["attachments"][0]["color"], "danger");
    let pd = &at("/pd")[0];
    assert_eq!(pd["event_action"], "trigger", "{pd}");
    assert_eq!(pd["routing_key"], "key-1");
    assert_eq!(pd["payload"]["severity"], "critical");
    assert_eq!(pd["payload"]["summary"], "[FIRING:1] (FlagUp f)");
    assert_eq!(
        pd["payload"]["custom_details"]["firing"][0]["annotations"]["summary"],
        "flag f is up"
    );
    let dedup = pd["dedup_key"].as_str().unwrap().to_string();
    assert!(!dedup.is_empty());

    s.write_lp("flag,name=f value=0\n");
    wait_for("the resolve event", Duration::from_secs(20), || {
        at("/pd").iter().any(|b| b["event_action"] == "resolve") && at("/slack").len() >= 2
    });
    let resolve = at("/pd")
        .into_iter()
        .find(|b| b["event_action"] == "resolve")
        .unwrap();
    assert_eq!(resolve["dedup_key"], dedup.as_str());
    assert_eq!(at("/slack")[1]["attachments"][0]["color"], "good");
}

/// A child process killed when the test ends (the SMTP server, Alertmanager).
/// aiosmtpd on a loopback port: STARTTLS and AUTH required; messages land in
/// `dir` as `<n>.eml`, its certificate in `dir/ca.pem`.
fn smtp_server(dir: &Path, user: &str, password: &str) -> (Helper, u16) {
    use std::io::BufRead;
    let port = crate::server::free_port();
    let mut child = std::process::Command::new("python3")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/clients/smtp_server.py"
        ))
        .args([&port.to_string(), dir.to_str().unwrap(), user, password])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the SMTP server (aiosmtpd: bash scripts/install-clients.sh)");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready", "the SMTP server did not start");
    (Helper(child), port)
}

/// A real Prometheus Alertmanager (Debian's prometheus-alertmanager) on a
/// loopback port, clustering off.
fn alertmanager(dir: &Path) -> (Helper, String) {
    let port = crate::server::free_port();
    let config = dir.join("am.yml");
    std::fs::write(
        &config,
        "route: { receiver: none }\nreceivers: [{ name: none }]\n",
    )
    .unwrap();
    let bin = ["/usr/bin/prometheus-alertmanager", "/usr/bin/alertmanager"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Alertmanager is installed (bash scripts/install-clients.sh)");
    let child = std::process::Command::new(bin)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg(format!("--storage.path={}", dir.join("am-data").display()))
        .arg("--cluster.listen-address=")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let helper = Helper(child);
    wait_for("Alertmanager to start", Duration::from_secs(20), || {
        reqwest::blocking::get(format!("{url}/-/ready")).is_ok_and(|r| r.status().is_success())
    });
    (helper, url)
}

/// Mails received so far, as text.
fn mails(dir: &Path) -> Vec<String> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "eml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|p| std::fs::read_to_string(p).unwrap())
        .collect()
}

/// Three alerts of one rule become one message per receiver endpoint
/// (grouped by alertname): a webhook, an e-mail through a real SMTP server
/// with STARTTLS and AUTH, an SMS form post, and a real Alertmanager that
/// shows the alerts with their labels. A route in a mute time interval sends
/// nothing; an endpoint that never answers well ends as a dead letter.
#[test]
fn groups_reach_mail_sms_and_alertmanager_and_mutes_hold() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start(0);
    let base = hook.url.trim_end_matches("/hook").to_string();
    let mail_dir = dir.path().join("mail");
    let (_smtp, smtp_port) = smtp_server(&mail_dir, "vigil", "s3cret");
    let (_am, am_url) = alertmanager(dir.path());
    let rules = dir.path().join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("disk.yml"),
        r#"groups:
  - name: disks
    interval: 1s
    rules:
      - alert: DiskFull
        sql: |
          SELECT host, used AS value FROM (
            SELECT host, used, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn FROM disk
          ) WHERE rn = 1 AND used > 90
        labels: { severity: warning }
        annotations: { summary: "disk of {{ $labels.host }} at {{ $value }}%" }
"#,
    )
    .unwrap();
    let routing = dir.path().join("alerting.yml");
    std::fs::write(
        &routing,
        format!(
            r#"global:
  smtp_smarthost: '127.0.0.1:{smtp_port}'
  smtp_from: 'vigil@example.com'
  smtp_auth_username: vigil
  smtp_auth_password: s3cret
time_intervals:
  - name: always
    time_intervals: [{{ times: [{{ start_time: '00:00', end_time: '24:00' }}] }}]
route:
  receiver: team
  group_by: [alertname]
  group_wait: 2s
  group_interval: 1s
  routes:
    - matchers: ['alertname="DiskFull"']
      receiver: team
      continue: true
    - matchers: ['alertname="DiskFull"']
      receiver: muted
      mute_time_intervals: [always]
      continue: true
    - matchers: ['alertname="DiskFull"']
      receiver: broken
      continue: true
    - matchers: ['alertname="DiskFull"']
      receiver: forward
receivers:
  - name: team
    webhook_configs: [{{ url: '{base}/hook' }}]
    email_configs:
      - to: 'ops@example.com, dba@example.com'
        tls_config: {{ ca_file: '{ca}' }}
        headers: {{ X-Team: storage }}
        send_resolved: true
    sms_configs:
      - url: '{base}/sms'
        to: '+15550001'
        from: '+15550002'
        username: AC123
        password: tok
  - name: forward
    alertmanager_configs: [{{ url: '{am_url}' }}]
  - name: muted
    webhook_configs: [{{ url: '{base}/muted' }}]
  - name: broken
    webhook_configs: [{{ url: '{base}/down' }}]
"#,
            ca = mail_dir.join("ca.pem").display()
        ),
    )
    .unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[alerting]\ngive_up_after = \"3s\"\n").unwrap();
    let s = TestServer::start(
        &dir.path().join("data"),
        &[
            "--config",
            config.to_str().unwrap(),
            "--rules-dir",
            rules.to_str().unwrap(),
            "--alerting-config",
            routing.to_str().unwrap(),
        ],
    );
    s.write_lp(
        "disk,host=a used=95\ndisk,host=b used=97\ndisk,host=c used=99\ndisk,host=d used=10\n",
    );

    // One webhook message with the three alerts (group_wait gathers them).
    wait_for("the grouped webhook", Duration::from_secs(30), || {
        hook.at("/hook").iter().any(|d| d.accepted)
    });
    let first = &hook.at("/hook")[0].body;
    assert_eq!(
        first["groupLabels"],
        serde_json::json!({ "alertname": "DiskFull" }),
        "{first}"
    );
    assert_eq!(
        first["groupKey"],
        "{}/{alertname=\"DiskFull\"}:{alertname=\"DiskFull\"}"
    );
    assert_eq!(first["commonLabels"]["severity"], "warning");
    assert_eq!(first["status"], "firing");
    let hosts: Vec<&str> = first["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["labels"]["host"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["a", "b", "c"], "{first}");

    // The e-mail: over STARTTLS, authenticated, one for the group.
    wait_for("the e-mail", Duration::from_secs(30), || {
        !mails(&mail_dir).is_empty()
    });
    let mail = &mails(&mail_dir)[0];
    assert!(mail.contains("X-Was-Tls: True"), "{mail}");
    assert!(mail.contains("X-Authenticated: True"), "{mail}");
    assert!(
        mail.contains("X-Envelope-To: ops@example.com,dba@example.com"),
        "{mail}"
    );
    assert!(
        mail.contains("Subject: [FIRING:3] DiskFull (warning)"),
        "{mail}"
    );
    assert!(mail.contains("X-Team: storage"), "{mail}");
    assert!(mail.contains("summary: disk of b at 97%"), "{mail}");
    assert!(mail.contains("Message-ID: <"), "{mail}");

    // The SMS: a form post with basic auth.
    wait_for("the SMS", Duration::from_secs(30), || {
        !hook.at("/sms").is_empty()
    });
    let sms = &hook.at("/sms")[0];
    let form: std::collections::HashMap<String, String> =
        serde_urlencoded::from_str(&sms.raw).unwrap();
    assert_eq!(form["To"], "+15550001");
    assert_eq!(form["From"], "+15550002");
    assert!(
        form["Body"].starts_with("[FIRING:3] DiskFull (warning)\n- DiskFull: disk of a at 95%"),
        "{form:?}"
    );
    assert_eq!(sms.authorization, "Basic QUMxMjM6dG9r");

    // Alertmanager has the three alerts with their labels.
    wait_for(
        "the alerts in Alertmanager",
        Duration::from_secs(30),
        || {
            let got: Value = reqwest::blocking::get(format!("{am_url}/api/v2/alerts"))
                .unwrap()
                .json()
                .unwrap();
            got.as_array().is_some_and(|a| a.len() == 3)
        },
    );
    let got: Value = reqwest::blocking::get(format!("{am_url}/api/v2/alerts"))
        .unwrap()
        .json()
        .unwrap();
    let mut am_hosts: Vec<String> = got
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            assert_eq!(a["labels"]["alertname"], "DiskFull", "{a}");
            assert_eq!(a["labels"]["severity"], "warning", "{a}");
            assert_eq!(a["status"]["state"], "active", "{a}");
            a["labels"]["host"].as_str().unwrap().to_string()
        })
        .collect();
    am_hosts.sort();
    assert_eq!(am_hosts, ["a", "b", "c"]);

    // The always-failing endpoint is given up after 3 s: a dead letter.
    wait_for("the dead letter", Duration::from_secs(30), || {
        !s.sql(
            "SELECT state FROM system.notifications WHERE receiver = 'broken' AND state = 'dead'",
        )
        .is_empty()
    });
    let delivered = s.sql(
        "SELECT endpoint, alerts FROM system.notifications WHERE receiver IN ('team', 'forward') AND state = 'delivered' ORDER BY endpoint",
    );
    let endpoints: Vec<&str> = delivered
        .iter()
        .map(|r| r["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        ["alertmanager", "email", "sms", "webhook"],
        "{delivered:?}"
    );
    assert!(delivered.iter().all(|r| r["alerts"] == 3), "{delivered:?}");
    assert!(s.metric("vigil_notifications_dead_total") >= 1.0);

    // One resolves: the group's next message has two firing, one resolved.
    s.write_lp("disk,host=b used=50\n");
    wait_for("the change", Duration::from_secs(30), || {
        hook.at("/hook").len() >= 2
    });
    let second = &hook.at("/hook")[1].body;
    let states: Vec<(String, String)> = second["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["labels"]["host"].as_str().unwrap().to_string(),
                a["status"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("a".into(), "firing".into()),
            ("c".into(), "firing".into()),
            ("b".into(), "resolved".into())
        ],
        "{second}"
    );
    // Still one message per change: nothing more while nothing changes.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(hook.at("/hook").len(), 2);
    assert!(hook.at("/muted").is_empty(), "a muted route sent");
}

/// The rule and routing files of two nodes evaluating the same rules: the
/// latest sample up to the evaluation time, so with samples stamped a little
/// in the future both nodes see a change at the same tick.
fn pair_files(dir: &Path, hook: &WebhookReceiver) -> (std::path::PathBuf, std::path::PathBuf) {
    let rules = dir.join("rules");
    std::fs::create_dir_all(&rules).unwrap();
    std::fs::write(
        rules.join("cpu.yml"),
        r#"groups:
  - name: hosts
    interval: 1s
    rules:
      - alert: HighCpu
        sql: |
          SELECT host, usage AS value FROM (
            SELECT host, usage, row_number() OVER (PARTITION BY host ORDER BY time DESC) AS rn
            FROM cpu WHERE time <= now()
          ) WHERE rn = 1 AND usage > 90
"#,
    )
    .unwrap();
    let routing_file = dir.join("alerting.yml");
    std::fs::write(&routing_file, routing(&hook.url)).unwrap();
    (rules, routing_file)
}

/// Two nodes evaluate the same rules over the same data (an HA pair): the
/// receiver hears each change once. When the node that sent stops, the other
/// sends the next change.
#[test]
fn two_nodes_notify_once_and_the_survivor_takes_over() {
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start(0);
    let (rules, routing_file) = pair_files(dir.path(), &hook);
    let addrs: Vec<String> = (0..2)
        .map(|_| format!("127.0.0.1:{}", crate::server::free_port()))
        .collect();
    let nodes: Vec<TestServer> = addrs
        .iter()
        .enumerate()
        .map(|(i, addr)| {
            let config = dir.path().join(format!("vigil-{i}.toml"));
            std::fs::write(
                &config,
                format!(
                    "[alerting]\npeers = [\"http://{}\", \"http://{}\"]\npeer_timeout = \"4s\"\n",
                    addrs[0], addrs[1]
                ),
            )
            .unwrap();
            TestServer::start_at(
                &dir.path().join(format!("data-{i}")),
                addr,
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--rules-dir",
                    rules.to_str().unwrap(),
                    "--alerting-config",
                    routing_file.to_str().unwrap(),
                ],
            )
        })
        .collect();
    // Stamped ahead, so both nodes hold the sample before the tick that
    // sees it (a slow write on a loaded machine included).
    let in_5s = || {
        (std::time::SystemTime::now() + Duration::from_secs(5))
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    };
    let t = in_5s();
    for n in &nodes {
        n.write_lp(&format!("cpu,host=a usage=95 {t}\n"));
    }
    wait_for("the notification", Duration::from_secs(30), || {
        !hook.accepted("firing", "a").is_empty()
    });
    // Both fired; the second in line waited 4 s (room for a slow first
    // delivery), asked, and did not send.
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(
        hook.accepted("firing", "a").len(),
        1,
        "{:?}",
        hook.deliveries()
    );
    let outcome = |n: &TestServer| -> Vec<String> {
        n.sql("SELECT state FROM system.notifications ORDER BY enqueued_at")
            .iter()
            .map(|r| r["state"].as_str().unwrap().to_string())
            .collect()
    };
    let mut outcomes = [outcome(&nodes[0]), outcome(&nodes[1])];
    outcomes.sort();
    assert_eq!(
        outcomes,
        [
            vec!["delivered".to_string()],
            vec!["sent_by_peer".to_string()]
        ]
    );

    // The node that sent stops; the other alone sees the alert end and,
    // with its peer unreachable, sends that after its turn.
    let sender = usize::from(outcome(&nodes[1]) == ["delivered"]);
    let mut nodes = nodes;
    nodes[sender].kill();
    let survivor = &nodes[1 - sender];
    survivor.write_lp(&format!("cpu,host=a usage=5 {}\n", in_5s()));
    wait_for("the resolved notification", Duration::from_secs(30), || {
        !hook.accepted("resolved", "a").is_empty()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(hook.accepted("resolved", "a").len(), 1);
    assert_eq!(hook.accepted("firing", "a").len(), 1);
}

/// With Kafka as the notification queue, two nodes evaluating the same rules
/// both publish the group's message; the one consumer of its partition takes
/// it once, so the receiver hears it once.
#[test]
fn kafka_queue_carries_notifications_once_from_two_nodes() {
    let broker = crate::kafka::Broker::start();
    let rt = tokio::runtime::Runtime::new().unwrap();
    broker.create_topics(&rt, &[("vigil-notifications", 4), ("metrics", 1)]);
    let dir = tempfile::tempdir().unwrap();
    let hook = WebhookReceiver::start(0);
    let (rules, routing_file) = pair_files(dir.path(), &hook);
    let config = dir.path().join("vigil.toml");
    std::fs::write(&config, "[alerting]\nqueue = \"kafka\"\n").unwrap();
    let nodes: Vec<TestServer> = (0..2)
        .map(|i| {
            TestServer::start(
                &dir.path().join(format!("data-{i}")),
                &[
                    "--config",
                    config.to_str().unwrap(),
                    "--kafka-brokers",
                    &broker.addr,
                    "--kafka-topic",
                    "metrics",
                    "--rules-dir",
                    rules.to_str().unwrap(),
                    "--alerting-config",
                    routing_file.to_str().unwrap(),
                ],
            )
        })
        .collect();
    let t = (std::time::SystemTime::now() + Duration::from_secs(3))
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    for n in &nodes {
        n.write_lp(&format!("cpu,host=a usage=95 {t}\n"));
    }
    let total = |name: &str| nodes.iter().map(|n| n.metric(name)).sum::<f64>();
    wait_for(
        "both copies taken from Kafka",
        Duration::from_secs(60),
        || {
            total("vigil_notifications_published_total") >= 2.0
                && total("vigil_notifications_duplicates_total") >= 1.0
                && !hook.accepted("firing", "a").is_empty()
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        hook.accepted("firing", "a").len(),
        1,
        "{:?}",
        hook.deliveries()
    );
    // Each node published its copy; the consumer took one (a rebalance may
    // make it read one again, and skip it as seen). A node whose first
    // ticks come before the `cpu` table exists also raises and resolves the
    // rule's error alert (2 more messages, without `host`), so publishes are
    // counted at least, not exactly; the receiver hears each message once.
    assert!(total("vigil_notifications_published_total") >= 2.0);
    assert!(total("vigil_notifications_duplicates_total") >= 1.0);
    assert!(
        hook.accepted("resolved", "a").len() <= 1,
        "{:?}",
        hook.deliveries()
    );
}
