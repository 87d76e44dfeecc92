//! Client commands: `vigil query` and `vigil write`.

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};

/// Arguments of `vigil query`.
#[derive(Debug, clap::Args)]
pub(crate) struct QueryArgs {
    /// The SQL statement.
    pub sql: String,
    /// Output format.
    #[arg(long, default_value = "table", value_parser = ["table", "csv", "json", "jsonl"])]
    pub format: String,
    /// The server's HTTP address.
    #[arg(long, env = "VIGIL_URL", default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// Token secret (needs `query`); prefer the environment variable.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// Arguments of `vigil write`.
#[derive(Debug, clap::Args)]
pub(crate) struct WriteArgs {
    /// Line protocol file, or `-` for standard input.
    pub file: PathBuf,
    /// Timestamp precision of the file: ns, us, ms or s.
    #[arg(long, default_value = "ns")]
    pub precision: String,
    /// The server's HTTP address.
    #[arg(long, env = "VIGIL_URL", default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// Size of each request body in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub batch_bytes: usize,
    /// Token secret (needs `write`); prefer the environment variable.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `vigil admin ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum AdminCommand {
    /// Run compaction, retention and tiering now; print what they did.
    Maintenance(AdminArgs),
}

/// The server a `vigil admin` command talks to.
#[derive(Debug, clap::Args)]
pub(crate) struct AdminArgs {
    /// The server's HTTP address.
    #[arg(long, env = "VIGIL_URL", default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// Token secret (needs `admin`); prefer the environment variable.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub(crate) async fn maintenance(args: AdminArgs) -> anyhow::Result<()> {
    let url = format!(
        "{}/api/v1/admin/maintenance",
        args.url.trim_end_matches('/')
    );
    let resp = with_token(reqwest::Client::new().post(&url), &args.token)
        .send()
        .await
        .with_context(|| format!("cannot reach vigil at {}", args.url))?;
    let status = resp.status();
    let body = resp.text().await?;
    let report = match serde_json::from_str::<serde_json::Value>(&body) {
        Ok(v) if v.get("id").is_some() => v,
        _ => bail!("{}", server_error(status, &body)),
    };
    let n = |k: &str| report.get(k).and_then(|v| v.as_u64()).unwrap_or(0);
    println!("maintenance run {} took {} ms", n("id"), n("duration_ms"));
    println!("  compaction: {} table-days merged", n("days_compacted"));
    println!("  rollups:    {} rows written", n("rollup_rows_written"));
    println!(
        "  retention:  {} files expired ({} rows, {} bytes), {} archived",
        n("files_expired"),
        n("rows_expired"),
        n("bytes_expired"),
        n("files_archived")
    );
    println!(
        "  tiering:    {} files moved to the cold tier ({} bytes), {} failed",
        n("files_moved_to_cold"),
        n("bytes_moved_to_cold"),
        n("move_failures")
    );
    println!(
        "  cold sweep: {} unnamed objects removed",
        n("cold_orphans_removed")
    );
    let errors: Vec<String> = report
        .get("errors")
        .and_then(|e| e.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    if !errors.is_empty() {
        bail!("maintenance failed in part: {}", errors.join("; "));
    }
    Ok(())
}

fn with_token(r: reqwest::RequestBuilder, token: &Option<String>) -> reqwest::RequestBuilder {
    match token {
        Some(t) => r.bearer_auth(t),
        None => r,
    }
}

fn server_error(status: reqwest::StatusCode, body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
        .unwrap_or_else(|| format!("server answered {status}: {body}"))
}

pub(crate) async fn query(args: QueryArgs) -> anyhow::Result<()> {
    let wire = if args.format == "table" {
        "arrow"
    } else {
        args.format.as_str()
    };
    let url = format!("{}/api/v1/sql", args.url.trim_end_matches('/'));
    let resp = with_token(reqwest::Client::new().post(&url), &args.token)
        .json(&serde_json::json!({"sql": args.sql, "format": wire}))
        .send()
        .await
        .with_context(|| format!("cannot reach vigil at {}", args.url))?;
    let status = resp.status();
    let body = resp.bytes().await?;
    if !status.is_success() {
        bail!("{}", server_error(status, &String::from_utf8_lossy(&body)));
    }
    if args.format == "table" {
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(body), None)?;
        let batches = reader.collect::<Result<Vec<_>, _>>()?;
        println!("{}", arrow::util::pretty::pretty_format_batches(&batches)?);
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        out.write_all(&body)?;
        if !body.ends_with(b"\n") {
            out.write_all(b"\n")?;
        }
    }
    Ok(())
}

pub(crate) async fn write(args: WriteArgs) -> anyhow::Result<()> {
    let (mut reader, total): (Box<dyn Read + Send>, Option<u64>) = if args.file.as_os_str() == "-" {
        (Box::new(std::io::stdin()), None)
    } else {
        let f = std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?;
        let len = f.metadata().map(|m| m.len()).ok();
        (Box::new(f), len)
    };
    let bar = match total {
        Some(n) => ProgressBar::new(n).with_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("valid template"),
        ),
        None => ProgressBar::new_spinner().with_style(
            ProgressStyle::with_template("{spinner} {bytes} {bytes_per_sec}")
                .expect("valid template"),
        ),
    };
    let client = reqwest::Client::new();
    let url = format!(
        "{}/api/v3/write_lp?precision={}",
        args.url.trim_end_matches('/'),
        args.precision
    );
    let mut carry: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; args.batch_bytes.max(1024)];
    let mut first_line = 1usize;
    let (mut written, mut rejected) = (0u64, 0u64);
    loop {
        let n = reader.read(&mut buf)?;
        let eof = n == 0;
        carry.extend_from_slice(&buf[..n]);
        if carry.len() < args.batch_bytes && !eof {
            continue;
        }
        // Send whole lines only; the rest waits for the next read.
        let cut = if eof {
            carry.len()
        } else {
            carry
                .iter()
                .rposition(|b| *b == b'\n')
                .map(|i| i + 1)
                .unwrap_or(0)
        };
        if cut > 0 {
            let chunk: Vec<u8> = carry.drain(..cut).collect();
            let lines = chunk.iter().filter(|b| **b == b'\n').count()
                + usize::from(!chunk.ends_with(b"\n"));
            let sent = chunk.len() as u64;
            // The server answers 503 while its buffer is full: wait as it asks.
            let resp = loop {
                let resp = with_token(client.post(&url), &args.token)
                    .body(chunk.clone())
                    .send()
                    .await
                    .with_context(|| format!("cannot reach vigil at {}", args.url))?;
                if resp.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE {
                    break resp;
                }
                let wait = resp
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(1);
                tokio::time::sleep(std::time::Duration::from_secs(wait.min(30))).await;
            };
            let status = resp.status();
            let text = resp.text().await?;
            if status.is_success() {
                written += lines as u64;
            } else if status == reqwest::StatusCode::BAD_REQUEST {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                let Some(errors) = v.get("data").and_then(|d| d.as_array()) else {
                    bail!("{}", server_error(status, &text));
                };
                written += v.get("lines_written").and_then(|n| n.as_u64()).unwrap_or(0);
                for e in errors {
                    rejected += 1;
                    let line = e.get("line_number").and_then(|l| l.as_u64()).unwrap_or(0) as usize;
                    let msg = e
                        .get("error_message")
                        .and_then(|m| m.as_str())
                        .unwrap_or("");
                    bar.suspend(|| {
                        eprintln!("line {}: {}", first_line + line.saturating_sub(1), msg)
                    });
                }
            } else {
                bail!("{}", server_error(status, &text));
            }
            first_line += lines;
            bar.inc(sent);
        }
        if eof {
            break;
        }
    }
    bar.finish_and_clear();
    eprintln!("wrote {written} lines, {rejected} rejected");
    if rejected > 0 {
        bail!("{rejected} lines were rejected");
    }
    Ok(())
}

/// Arguments of `vigil restore`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["table", "list", "drop", "resume"])))]
pub(crate) struct RestoreArgs {
    /// The table whose archived data to bring back (with --from and --to).
    #[arg(long, requires_all = ["from", "to"])]
    pub table: Option<String>,
    /// Start of the range: `2026-01-01T00:00:00Z` or `2026-01-01`.
    #[arg(long)]
    pub from: Option<String>,
    /// End of the range (not included).
    #[arg(long)]
    pub to: Option<String>,
    /// List the restores and their progress.
    #[arg(long)]
    pub list: bool,
    /// Undo restore ID: its data is hidden and its files deleted.
    #[arg(long, value_name = "ID")]
    pub drop: Option<u64>,
    /// Carry on with a restore that stopped (and follow it).
    #[arg(long, value_name = "ID")]
    pub resume: Option<u64>,
    /// Start the restore and return without following it.
    #[arg(long)]
    pub no_wait: bool,
    #[command(flatten)]
    pub server: AdminArgs,
}

pub(crate) async fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let base = format!(
        "{}/api/v1/admin/restore",
        args.server.url.trim_end_matches('/')
    );
    let client = reqwest::Client::new();
    let token = &args.server.token;
    let server_url = &args.server.url;
    let send = |r: reqwest::RequestBuilder| async move {
        let resp = with_token(r, token)
            .send()
            .await
            .with_context(|| format!("cannot reach vigil at {server_url}"))?;
        let status = resp.status();
        let body = resp.text().await?;
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(v) if status.is_success() => Ok(v),
            _ => bail!("{}", server_error(status, &body)),
        }
    };
    if args.list {
        let v = send(client.get(&base)).await?;
        let all = v["restores"].as_array().cloned().unwrap_or_default();
        if all.is_empty() {
            println!("no restores");
        }
        for r in all {
            println!(
                "{:>4}  {:<20} {} .. {}  {}/{} files  {} bytes  {}{}",
                r["id"],
                r["table"].as_str().unwrap_or(""),
                r["from"].as_str().unwrap_or(""),
                r["to"].as_str().unwrap_or(""),
                r["files_done"],
                r["files"],
                r["bytes"],
                r["state"].as_str().unwrap_or(""),
                r["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
        return Ok(());
    }
    if let Some(id) = args.drop {
        let v = send(client.delete(format!("{base}/{id}"))).await?;
        println!(
            "restore {id} dropped ({} files removed)",
            v["files_removed"]
        );
        return Ok(());
    }
    let started = match (args.resume, &args.table) {
        (Some(id), _) => send(client.post(format!("{base}/{id}"))).await?,
        (None, Some(table)) => {
            let body = serde_json::json!({"table": table, "from": args.from, "to": args.to});
            send(client.post(&base).json(&body)).await?
        }
        (None, None) => bail!("say what to restore: --table T --from TS --to TS"),
    };
    let id = started["id"]
        .as_u64()
        .context("the server answered no restore id")?;
    println!(
        "restore {id}: {} files ({} bytes) of {}",
        started["files"],
        started["bytes"],
        started["table"].as_str().unwrap_or("")
    );
    if args.no_wait {
        return Ok(());
    }
    let bar = ProgressBar::new(started["bytes"].as_u64().unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} ({bytes_per_sec}, {eta}) {msg}",
        )
        .expect("valid template"),
    );
    loop {
        let v = send(client.get(&base)).await?;
        let Some(r) = v["restores"]
            .as_array()
            .and_then(|a| a.iter().find(|r| r["id"].as_u64() == Some(id)))
            .cloned()
        else {
            bar.abandon();
            bail!("restore {id} is gone (dropped meanwhile?)");
        };
        bar.set_position(r["bytes_done"].as_u64().unwrap_or(0));
        bar.set_message(format!("{}/{} files", r["files_done"], r["files"]));
        match r["state"].as_str() {
            Some("complete") => {
                bar.finish();
                println!("restore {id} complete: {} files", r["files_done"]);
                return Ok(());
            }
            Some("failed") | Some("stopped") => {
                bar.abandon();
                bail!(
                    "restore {id} stopped: {} (carry on with `vigil restore --resume {id}`)",
                    r["error"].as_str().unwrap_or("interrupted")
                );
            }
            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

/// `vigil rules ...`.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum RulesCommand {
    /// Check rule files offline (YAML, keys, durations, templates, SQL syntax);
    /// with --url also plan every rule's SQL against a running server's tables
    /// and check that it returns a `value` column. Errors are `file:line:`.
    Check(RulesCheckArgs),
    /// Run unit tests of rules (Prometheus's `promtool test rules` format:
    /// `rule_files`, `tests` with `input_series` and `alert_rule_test`) on a
    /// temporary embedded engine; no server needed.
    Test(RulesTestArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct RulesTestArgs {
    /// Test files (YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

pub(crate) async fn rules_test(args: RulesTestArgs) -> anyhow::Result<()> {
    let mut failed = 0;
    for f in &args.files {
        match vigil_alert::rule_test::run_test_file(f).await {
            Ok(failures) if failures.is_empty() => println!("{}: ok", f.display()),
            Ok(failures) => {
                for x in &failures {
                    eprintln!("{}: FAILED: {x}", f.display());
                }
                failed += failures.len();
            }
            Err(e) => {
                eprintln!("{}: {e}", f.display());
                failed += 1;
            }
        }
    }
    if failed > 0 {
        bail!("{failed} failure(s)");
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub(crate) struct RulesCheckArgs {
    /// Rule files (YAML).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Plan the SQL on this server too (e.g. http://127.0.0.1:8181).
    #[arg(long)]
    pub url: Option<String>,
    /// Token secret (needs `query`); prefer the environment variable.
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

pub(crate) async fn rules_check(args: RulesCheckArgs) -> anyhow::Result<()> {
    let groups =
        match vigil_alert::rules::load_files(&args.files, std::time::Duration::from_secs(60)) {
            Ok(g) => g,
            Err(errors) => {
                for e in &errors {
                    eprintln!("{e}");
                }
                bail!("{} error(s) in the rule files", errors.len());
            }
        };
    let rules: usize = groups.iter().map(|g| g.rules.len()).sum();
    if let Some(url) = &args.url {
        let endpoint = format!("{}/api/v1/sql", url.trim_end_matches('/'));
        let client = reqwest::Client::new();
        let mut failed = 0;
        for g in &groups {
            for r in &g.rules {
                // Plans the rule's SQL and needs its `value` column; returns no row.
                let body = r.sql.trim_end().trim_end_matches(';');
                let sql = format!("SELECT value FROM ({body}\n) AS rule LIMIT 0");
                let resp = with_token(client.post(&endpoint), &args.token)
                    .json(&serde_json::json!({"sql": sql, "format": "json"}))
                    .send()
                    .await
                    .with_context(|| format!("cannot reach vigil at {url}"))?;
                let status = resp.status();
                if !status.is_success() {
                    let body = resp.text().await.unwrap_or_default();
                    eprintln!(
                        "{}:{}: rule {:?}: {}",
                        g.file.display(),
                        r.line,
                        r.name,
                        server_error(status, &body)
                    );
                    failed += 1;
                }
            }
        }
        if failed > 0 {
            bail!("{failed} rule(s) do not plan on {url}");
        }
    }
    println!(
        "ok: {} file(s), {} group(s), {rules} rule(s){}",
        args.files.len(),
        groups.len(),
        if args.url.is_some() {
            ", all planned on the server"
        } else {
            ""
        }
    );
    Ok(())
}

/// `vigil silence ...`: Alertmanager's `amtool silence`, against a running
/// server.
#[derive(Debug, clap::Subcommand)]
pub(crate) enum SilenceCommand {
    /// Silence alerts matching every matcher (`host="web-1"`, `job=~"node|db"`,
    /// `severity!=page`) for a while; prints the silence's id.
    Add(SilenceAddArgs),
    /// List silences (active, pending and recently expired).
    List(SilenceServer),
    /// End a silence now.
    Expire(SilenceExpireArgs),
}

#[derive(Debug, clap::Args)]
pub(crate) struct SilenceServer {
    /// The server's HTTP address.
    #[arg(long, env = "VIGIL_URL", default_value = "http://127.0.0.1:8181")]
    pub url: String,
    /// Token secret (`admin` to add or expire, `query` to list).
    #[arg(long, env = "VIGIL_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SilenceAddArgs {
    #[arg(required = true)]
    pub matchers: Vec<String>,
    /// How long, from now.
    #[arg(long, default_value = "1h")]
    pub duration: humantime::Duration,
    #[arg(long, default_value = "")]
    pub comment: String,
    #[arg(long, env = "USER", default_value = "vigil")]
    pub author: String,
    #[command(flatten)]
    pub server: SilenceServer,
}

#[derive(Debug, clap::Args)]
pub(crate) struct SilenceExpireArgs {
    pub id: String,
    #[command(flatten)]
    pub server: SilenceServer,
}

pub(crate) async fn silence(cmd: SilenceCommand) -> anyhow::Result<()> {
    let client = reqwest::Client::new();
    match cmd {
        SilenceCommand::Add(a) => {
            let mut matchers = Vec::new();
            for m in &a.matchers {
                let parsed = vigil_rules::Matcher::parse(m).map_err(|e| anyhow::anyhow!(e))?;
                let (name, value, is_regex, is_equal) = parsed.parts();
                matchers.push(serde_json::json!({
                    "name": name, "value": value, "isRegex": is_regex, "isEqual": is_equal,
                }));
            }
            let now = chrono::Utc::now();
            let end = chrono::Duration::from_std(a.duration.into())
                .ok()
                .and_then(|d| now.checked_add_signed(d))
                .filter(|e| e.timestamp_nanos_opt().is_some())
                .context("--duration is too long (a silence ends before 2262)")?;
            let body = serde_json::json!({
                "matchers": matchers,
                "startsAt": now.to_rfc3339(),
                "endsAt": end.to_rfc3339(),
                "createdBy": a.author,
                "comment": a.comment,
            });
            let url = format!("{}/api/v2/silences", a.server.url.trim_end_matches('/'));
            let resp = with_token(client.post(&url), &a.server.token)
                .json(&body)
                .send()
                .await
                .with_context(|| format!("cannot reach vigil at {}", a.server.url))?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("{}", server_error(status, &text));
            }
            let v: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", v["silenceID"].as_str().unwrap_or_default());
        }
        SilenceCommand::List(s) => {
            let url = format!("{}/api/v2/silences", s.url.trim_end_matches('/'));
            let resp = with_token(client.get(&url), &s.token)
                .send()
                .await
                .with_context(|| format!("cannot reach vigil at {}", s.url))?;
            let status = resp.status();
            let text = resp.text().await?;
            if !status.is_success() {
                bail!("{}", server_error(status, &text));
            }
            let list: Vec<serde_json::Value> = serde_json::from_str(&text)?;
            let mut table = comfy_table::Table::new();
            table.set_header(["id", "state", "matchers", "ends", "by", "comment"]);
            for s in list {
                let matchers: Vec<String> = s["matchers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|m| {
                        let op = match (m["isRegex"].as_bool(), m["isEqual"].as_bool()) {
                            (Some(true), Some(false)) => "!~",
                            (Some(true), _) => "=~",
                            (_, Some(false)) => "!=",
                            _ => "=",
                        };
                        format!(
                            "{}{op}{:?}",
                            m["name"].as_str().unwrap_or(""),
                            m["value"].as_str().unwrap_or("")
                        )
                    })
                    .collect();
                table.add_row([
                    s["id"].as_str().unwrap_or("").to_string(),
                    s["status"]["state"].as_str().unwrap_or("").to_string(),
                    matchers.join(", "),
                    s["endsAt"].as_str().unwrap_or("").to_string(),
                    s["createdBy"].as_str().unwrap_or("").to_string(),
                    s["comment"].as_str().unwrap_or("").to_string(),
                ]);
            }
            println!("{table}");
        }
        SilenceCommand::Expire(e) => {
            // The id as one path segment, whatever it holds.
            let mut url = reqwest::Url::parse(&e.server.url)
                .with_context(|| format!("--url {:?}", e.server.url))?;
            url.path_segments_mut()
                .map_err(|_| anyhow::anyhow!("--url {:?} cannot take a path", e.server.url))?
                .pop_if_empty()
                .extend(["api", "v2", "silence", e.id.as_str()]);
            let resp = with_token(client.delete(url), &e.server.token)
                .send()
                .await
                .with_context(|| format!("cannot reach vigil at {}", e.server.url))?;
            let status = resp.status();
            if !status.is_success() {
                bail!(
                    "{}",
                    server_error(status, &resp.text().await.unwrap_or_default())
                );
            }
            println!("expired {}", e.id);
        }
    }
    Ok(())
}
