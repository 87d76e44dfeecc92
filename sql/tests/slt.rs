//! SQL behaviour as golden files: every `tests/slt/*.slt` file runs (sqllogictest,
//! DataFusion's own format) against a fresh storage engine through the query
//! engine every front end uses.
//!
//! Besides SQL, a file can write data and flush it, with two statements of its own:
//!
//! ```text
//! statement ok
//! WRITE LINE PROTOCOL
//! cpu,host=a usage=1 1000000000
//!
//! statement ok
//! FLUSH
//! ```
//!
//! `VIGIL_SLT_COMPLETE=1 cargo test -p vigil-sql --test slt` rewrites the expected
//! results from what the engine answers (review the diff before committing).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use sqllogictest::{DBOutput, DefaultColumnType};
use vigil_ingest::{Precision, WriteFormat, WriteLimits, WritePipeline};
use vigil_model::TableAccess;
use vigil_sql::{QueryConfig, QueryEngine};
use vigil_storage::{Storage, StorageConfig};

struct Vigil {
    _dir: tempfile::TempDir,
    pipeline: Arc<WritePipeline>,
    engine: QueryEngine,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct SltError(String);

impl Vigil {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let config = QueryConfig {
            target_partitions: 2,
            ..QueryConfig::default()
        };
        let engine = QueryEngine::new(Arc::clone(&storage), config).unwrap();
        let pipeline = Arc::new(WritePipeline::new(storage, WriteLimits::default()));
        Self {
            _dir: dir,
            pipeline,
            engine,
        }
    }
}

fn cell(a: &dyn Array, row: usize) -> String {
    if a.is_null(row) {
        return "NULL".into();
    }
    let options = FormatOptions::default();
    let f = ArrayFormatter::try_new(a, &options).expect("formattable");
    let s = f.value(row).to_string();
    if s.is_empty() {
        "(empty)".into()
    } else {
        s
    }
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(b.columns().iter().map(|c| cell(c.as_ref(), r)).collect());
        }
    }
    out
}

#[async_trait]
impl sqllogictest::AsyncDB for Vigil {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<Self::ColumnType>, Self::Error> {
        let trimmed = sql.trim();
        if let Some(lp) = trimmed.strip_prefix("WRITE LINE PROTOCOL") {
            let report = self
                .pipeline
                .write(
                    bytes::Bytes::from(lp.trim().to_string()),
                    false,
                    WriteFormat::LineProtocol(Precision::Nanosecond),
                    0,
                    TableAccess::all(),
                )
                .await
                .map_err(|e| SltError(e.to_string()))?;
            if let Some(e) = report.errors.first() {
                return Err(SltError(format!(
                    "line {}: {}",
                    e.line_number, e.error_message
                )));
            }
            return Ok(DBOutput::StatementComplete(report.accepted as u64));
        }
        if trimmed == "FLUSH" {
            self.pipeline
                .storage()
                .flush()
                .await
                .map_err(|e| SltError(e.to_string()))?;
            return Ok(DBOutput::StatementComplete(0));
        }
        let (schema, batches) = self
            .engine
            .sql(sql)
            .await
            .map_err(|e| SltError(e.to_string()))?;
        let types = vec![DefaultColumnType::Any; schema.fields().len()];
        Ok(DBOutput::Rows {
            types,
            rows: rows(&batches),
        })
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "vigil"
    }

    async fn sleep(dur: std::time::Duration) {
        tokio::time::sleep(dur).await
    }
}

async fn run_file(path: &Path) {
    let complete = std::env::var("VIGIL_SLT_COMPLETE").is_ok_and(|v| v == "1");
    let mut runner = sqllogictest::Runner::new(|| async { Ok(Vigil::new().await) });
    if complete {
        runner
            .update_test_file(
                path,
                " ",
                sqllogictest::default_validator,
                sqllogictest::default_normalizer,
                sqllogictest::default_column_validator,
            )
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    } else {
        runner
            .run_file_async(path)
            .await
            .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.display(true)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_files() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/slt");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "slt"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "slt files missing in {}", dir.display());
    for f in files {
        run_file(&f).await;
    }
}
