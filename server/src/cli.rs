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
        "  retention:  {} files expired ({} rows, {} bytes)",
        n("files_expired"),
        n("rows_expired"),
        n("bytes_expired")
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
