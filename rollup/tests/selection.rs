//! Rollup selection against the raw answer: the same queries through an engine
//! that reads the rollups and one that reads raw rows only, over one storage.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::{DataType, Float64Type};
use arrow::util::display::array_value_to_string;
use vigil_model::{FieldValue, Point};
use vigil_rollup::Rollups;
use vigil_sql::{QueryConfig, QueryEngine};
use vigil_storage::retention::{now_nanos, RetentionPolicy};
use vigil_storage::{Storage, StorageConfig};

const SECOND: i64 = 1_000_000_000;
const HOUR: i64 = 3600 * SECOND;
/// 2026-01-01T00:00:00Z
const T0: i64 = 1_767_225_600 * SECOND;

fn point(host: &'static str, usage: f64, req: i64, t: i64) -> Point<'static> {
    Point {
        table: Cow::Borrowed("cpu"),
        tags: vec![(Cow::Borrowed("host"), Cow::Borrowed(host))],
        fields: vec![
            (Cow::Borrowed("usage"), FieldValue::F64(usage)),
            (Cow::Borrowed("req"), FieldValue::I64(req)),
        ],
        time: t,
    }
}

async fn store(storage: &Storage, pts: Vec<Point<'static>>) {
    let w = storage.validate(pts.into_iter().enumerate().collect());
    assert!(w.rejected.is_empty());
    storage.commit(w.tables).await.unwrap();
}

/// Three hosts, one sample every 37 s (not aligned to any bucket) for three days;
/// `req` is a counter that resets now and then.
fn samples() -> Vec<Point<'static>> {
    let mut out = Vec::new();
    for (h, host) in ["h1", "h2", "h3"].into_iter().enumerate() {
        let mut req = 0i64;
        let mut t = T0 + h as i64 * 11 * SECOND;
        let mut i = 0u64;
        while t < T0 + 72 * HOUR {
            i += 1;
            req = if i.is_multiple_of(997) {
                3
            } else {
                req + (i % 13) as i64
            };
            let usage = ((i * 7919 + h as u64 * 31) % 1000) as f64 / 10.0 + 0.125;
            let usage = if h == 2 && i == 3001 {
                // One infinity: the hour's sum and avg are infinite either way.
                f64::INFINITY
            } else {
                usage
            };
            out.push(point(host, usage, req, t));
            t += 37 * SECOND;
        }
    }
    // h4 writes only `req` for six hours: its groups have rows and no usage
    // (count 0, avg NULL in SQL).
    let mut t = T0 + 20 * HOUR + 3 * SECOND;
    while t < T0 + 26 * HOUR {
        let mut p = point("h4", 0.0, (t / SECOND) % 1000, t);
        p.fields.remove(0);
        out.push(p);
        t += 300 * SECOND;
    }
    // h5 writes only a text field for three hours: rows, and no number at all.
    let mut t = T0 + 30 * HOUR + 7 * SECOND;
    while t < T0 + 33 * HOUR {
        let mut p = point("h5", 0.0, 0, t);
        p.fields = vec![(
            Cow::Borrowed("state"),
            FieldValue::Str(Cow::Borrowed("idle")),
        )];
        out.push(p);
        t += 600 * SECOND;
    }
    out
}

fn engine(storage: &Arc<Storage>, rollup_reads: bool) -> QueryEngine {
    QueryEngine::new(
        Arc::clone(storage),
        QueryConfig {
            rollup_reads,
            target_partitions: 2,
            ..QueryConfig::default()
        },
    )
    .unwrap()
}

/// Rows as text, floats to 9 significant digits (the parts sum in another order).
fn rows(batches: &[RecordBatch]) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            out.push(
                b.columns()
                    .iter()
                    .map(|c| {
                        if c.is_null(r) {
                            "NULL".to_string()
                        } else if c.data_type() == &DataType::Float64 {
                            let v = c.as_primitive::<Float64Type>().value(r);
                            if v.is_nan() {
                                // The sign of a NaN decides its place in min/max.
                                format!("NaN(negative: {})", v.is_sign_negative())
                            } else {
                                format!("{v:.8e}")
                            }
                        } else {
                            array_value_to_string(c, r).unwrap()
                        }
                    })
                    .collect(),
            );
        }
    }
    out
}

async fn run(engine: &QueryEngine, sql: &str) -> Vec<Vec<String>> {
    let (_, b) = engine
        .sql(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows(&b)
}

async fn explain(engine: &QueryEngine, sql: &str) -> String {
    let (_, b) = engine.sql(&format!("EXPLAIN {sql}")).await.unwrap();
    arrow::util::pretty::pretty_format_batches(&b)
        .unwrap()
        .to_string()
}

const QUERIES: [&str; 6] = [
    // The example, with an unaligned start.
    "SELECT time_bucket('1 hour', time) AS b, avg(usage), max(usage), min(usage), sum(usage), count(usage) \
     FROM cpu WHERE time > '2026-01-01T00:07:13Z' GROUP BY 1 ORDER BY 1",
    // Integer field, tag filter and group, 30-minute buckets, both ends unaligned.
    "SELECT host, time_bucket('30 minutes', time) AS b, avg(req), sum(req), max(req), min(req), count(req) \
     FROM cpu WHERE host IN ('h1', 'h3') AND time >= '2026-01-01T05:03:00Z' AND time < '2026-01-03T20:55:00Z' \
     GROUP BY 1, 2 ORDER BY 1, 2",
    // date_bin by day, no time filter.
    "SELECT date_bin(interval '1 day', time) AS d, host, avg(usage) AS a, count(usage) AS n \
     FROM cpu GROUP BY 1, 2 ORDER BY 1, 2",
    // An alias and HAVING above the aggregate.
    "SELECT time_bucket('2h', c.time) AS b, max(c.usage) AS m FROM cpu AS c \
     WHERE c.time BETWEEN '2026-01-02T00:00:00Z' AND '2026-01-03T12:00:00Z' GROUP BY 1 HAVING max(c.usage) > 1 ORDER BY 1",
    // No rollup fits a 5-minute bucket: raw rows, same answer.
    "SELECT time_bucket('5 minutes', time) AS b, avg(usage) FROM cpu \
     WHERE time >= '2026-01-02T00:00:00Z' AND time < '2026-01-02T03:00:00Z' GROUP BY 1 ORDER BY 1",
    // date_trunc by hour, as Grafana users write it.
    "SELECT date_trunc('hour', time) AS h, host, avg(usage) AS a, max(usage) AS m \
     FROM cpu WHERE time >= '2026-01-01T03:30:00Z' GROUP BY 1, 2 ORDER BY 1, 2",
];

/// The first query from a whole hour: no edge that only raw rows could give.
const ALIGNED: &str = "SELECT time_bucket('1 hour', time) AS b, avg(usage), max(usage), min(usage), sum(usage), count(usage) \
     FROM cpu WHERE time >= '2026-01-01T00:00:00Z' GROUP BY 1 ORDER BY 1";

#[tokio::test]
async fn rollup_reads_answer_as_raw_rows_do() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
    store(&storage, samples()).await;
    storage.flush().await.unwrap();
    let with = Arc::new(engine(&storage, true));
    let without = engine(&storage, false);
    // Rolled up as if it were 2026-01-03 07:03 (15 minutes' delay): 1-hour
    // buckets up to 06:00, 10-minute ones up to 06:40, raw rows after.
    let rollups = Rollups::new(
        Arc::clone(&with),
        Arc::clone(&storage),
        Duration::from_secs(900),
    );
    rollups
        .run_at(T0 + 55 * HOUR + 3 * 60 * SECOND)
        .await
        .unwrap();
    let w = storage.rollup_watermark("cpu").unwrap();
    assert_eq!(w.rolled_10m, T0 + 54 * HOUR + 40 * 60 * SECOND);
    assert_eq!(w.rolled_1h, T0 + 54 * HOUR);

    let plan = explain(&with, QUERIES[0]).await;
    for part in [
        "tier rollup_1h [2026-01-01T01:00:00Z, 2026-01-03T06:00:00Z)",
        "tier rollup_10m [2026-01-03T06:00:00Z, 2026-01-03T06:40:00Z)",
        "tier raw [2026-01-03T06:40:00Z, *)",
        // The unaligned start: the rest of its 10 minutes from raw rows, the rest
        // of its hour from 10-minute buckets.
        "tier raw [2026-01-01T00:07:13.000000001Z, 2026-01-01T00:10:00Z)",
        "tier rollup_10m [2026-01-01T00:10:00Z, 2026-01-01T01:00:00Z)",
    ] {
        assert!(plan.contains(part), "{part} missing:\n{plan}");
    }
    assert!(
        !explain(&without, QUERIES[0]).await.contains("tier "),
        "rollup reads off still rewrote"
    );
    assert!(!explain(&with, QUERIES[4]).await.contains("tier "));
    assert!(explain(&with, QUERIES[5]).await.contains("tier rollup_1h"));

    for q in QUERIES {
        let a = run(&with, q).await;
        let b = run(&without, q).await;
        assert!(!b.is_empty(), "{q}");
        assert_eq!(a, b, "{q}");
    }

    // A late write into rolled-up hours, still buffered: those buckets are read
    // from raw rows until maintenance rolls them up again.
    store(
        &storage,
        vec![
            point("h1", 1000.0, 5, T0 + 10 * HOUR + 17 * SECOND),
            point("h2", -5.0, 1, T0 + 30 * HOUR + 5 * 60 * SECOND),
        ],
    )
    .await;
    let plan = explain(&with, QUERIES[0]).await;
    assert!(
        plan.contains("tier raw [2026-01-01T10:00:00Z, 2026-01-01T10:10:00Z)")
            && plan.contains("tier rollup_10m [2026-01-01T10:10:00Z, 2026-01-01T11:00:00Z)")
            && plan.contains("tier raw [2026-01-02T06:00:00Z, 2026-01-02T06:10:00Z)"),
        "{plan}"
    );
    for q in QUERIES {
        assert_eq!(run(&with, q).await, run(&without, q).await, "{q}");
    }
    // Flushed, it is still not rolled up: the file marks the buckets stale.
    storage.flush().await.unwrap();
    for q in QUERIES {
        assert_eq!(run(&with, q).await, run(&without, q).await, "{q}");
    }
    // Rolled up again: the rollups serve those hours once more, with the late rows.
    rollups
        .run_at(T0 + 55 * HOUR + 3 * 60 * SECOND)
        .await
        .unwrap();
    let plan = explain(&with, QUERIES[0]).await;
    assert!(
        plan.contains("tier rollup_1h [2026-01-01T01:00:00Z, 2026-01-03T06:00:00Z)"),
        "{plan}"
    );
    assert_eq!(
        run(&with, QUERIES[0]).await,
        run(&without, QUERIES[0]).await
    );
    let full = run(&without, ALIGNED).await;
    let day = run(&without, QUERIES[2]).await;
    storage.shutdown().await.unwrap();
    drop((with, without, rollups, storage));

    // Raw rows kept only from 2026-01-02 on (as if the rest had expired): the
    // rollups still give the whole range, as the raw rows did.
    let mut config = StorageConfig::new(dir.path());
    let keep = now_nanos() - (T0 + 24 * HOUR);
    config.retention = RetentionPolicy {
        default: Some(Duration::from_nanos(keep as u64)),
        ..RetentionPolicy::forever()
    };
    let storage = Storage::open(config).await.unwrap();
    let with = engine(&storage, true);
    let without = engine(&storage, false);
    let raw_only = run(&without, ALIGNED).await;
    assert!(raw_only.len() + 20 < full.len(), "retention hid nothing");
    assert_eq!(run(&with, ALIGNED).await, full);
    assert_eq!(run(&with, QUERIES[2]).await, day);
    storage.shutdown().await.unwrap();
}

/// Names are names: a capitalized field and a dotted tag (OpenTelemetry style)
/// are read from the rollups like any other, and integer sums stay raw.
#[tokio::test]
async fn odd_names_and_integer_sums() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
    let mut points = Vec::new();
    for i in 0..2000i64 {
        points.push(Point {
            table: Cow::Borrowed("Mem"),
            tags: vec![(
                Cow::Borrowed("service.name"),
                Cow::Owned(format!("svc{}", i % 3)),
            )],
            fields: vec![
                (Cow::Borrowed("Used"), FieldValue::F64(i as f64 * 1.5)),
                (Cow::Borrowed("n"), FieldValue::I64(i)),
            ],
            time: T0 + i * 61 * SECOND,
        });
    }
    store(&storage, points).await;
    storage.flush().await.unwrap();
    let with = Arc::new(engine(&storage, true));
    let without = engine(&storage, false);
    Rollups::new(Arc::clone(&with), Arc::clone(&storage), Duration::ZERO)
        .run_at(T0 + 40 * HOUR)
        .await
        .unwrap();
    let q = "SELECT time_bucket('1 hour', time) AS b, \"service.name\", avg(\"Used\"), max(\"Used\"), count(n), avg(n) \
             FROM \"Mem\" WHERE \"service.name\" <> 'svc2' GROUP BY 1, 2 ORDER BY 1, 2";
    assert!(explain(&with, q).await.contains("tier rollup_1h"));
    assert_eq!(run(&with, q).await, run(&without, q).await);
    // sum of an integer field: rollups keep floats, so raw rows answer it.
    let q = "SELECT time_bucket('1 hour', time) AS b, sum(n) FROM \"Mem\" GROUP BY 1 ORDER BY 1";
    assert!(!explain(&with, q).await.contains("tier "));
    storage.shutdown().await.unwrap();
}

/// Rollups that began after the data did (raw rows before the first run had
/// left retention) hold nothing before their lower edge; when those raw rows
/// are visible again (a restore, a longer retention) a query reads them raw,
/// not an empty rollup.
#[tokio::test]
async fn buckets_before_the_first_rollup_are_read_raw() {
    let dir = tempfile::tempdir().unwrap();
    let day2 = T0 + 24 * HOUR;
    {
        let mut config = StorageConfig::new(dir.path());
        config.retention = RetentionPolicy {
            default: Some(Duration::from_nanos((now_nanos() - day2) as u64)),
            ..RetentionPolicy::forever()
        };
        let storage = Storage::open(config).await.unwrap();
        store(&storage, samples()).await;
        storage.flush().await.unwrap();
        let with = Arc::new(engine(&storage, true));
        Rollups::new(Arc::clone(&with), Arc::clone(&storage), Duration::ZERO)
            .run_at(T0 + 60 * HOUR)
            .await
            .unwrap();
        let w = storage.rollup_watermark("cpu").unwrap();
        // The retention cutoff, rounded up to its 10 minutes.
        assert!(
            w.rolled_from > day2 && w.rolled_from <= day2 + 600 * SECOND,
            "{w:?}"
        );
        storage.shutdown().await.unwrap();
    }
    let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
    let with = engine(&storage, true);
    let without = engine(&storage, false);
    let plan = explain(&with, ALIGNED).await;
    for part in [
        "tier raw [2026-01-01T00:00:00Z, 2026-01-02T00:10:00Z)",
        "tier rollup_10m [2026-01-02T00:10:00Z, 2026-01-02T01:00:00Z)",
        "tier rollup_1h [2026-01-02T01:00:00Z, ",
    ] {
        assert!(plan.contains(part), "{part} missing:\n{plan}");
    }
    let raw = run(&without, ALIGNED).await;
    assert!(raw.len() >= 72, "{}", raw.len());
    assert_eq!(run(&with, ALIGNED).await, raw);
    let by_host = run(&without, QUERIES[5]).await;
    assert_eq!(run(&with, QUERIES[5]).await, by_host);

    // The next run rolls the older raw rows up too, and the edge moves down.
    let with = Arc::new(with);
    Rollups::new(Arc::clone(&with), Arc::clone(&storage), Duration::ZERO)
        .run_at(T0 + 60 * HOUR)
        .await
        .unwrap();
    assert_eq!(storage.rollup_watermark("cpu").unwrap().rolled_from, T0);
    let plan = explain(&with, ALIGNED).await;
    assert!(
        plan.contains("tier rollup_1h [2026-01-01T00:00:00Z, "),
        "{plan}"
    );
    assert_eq!(run(&with, ALIGNED).await, raw);
    storage.shutdown().await.unwrap();
    drop(with);

    // Raw rows of the first day gone again: the rollups answer for them.
    let mut config = StorageConfig::new(dir.path());
    config.retention = RetentionPolicy {
        default: Some(Duration::from_nanos((now_nanos() - day2) as u64)),
        ..RetentionPolicy::forever()
    };
    let storage = Storage::open(config).await.unwrap();
    let with = engine(&storage, true);
    assert_eq!(run(&with, ALIGNED).await, raw);
    assert_eq!(run(&with, QUERIES[5]).await, by_host);
    storage.shutdown().await.unwrap();
}

/// NaN (a Prometheus staleness marker): `count`, `sum` and `avg` from rollups
/// are what the raw rows give (NaN counted, the sum NaN); `min` and `max` skip
/// it, as they do over raw rows without NaN (DataFusion's own grouped min/max
/// over raw NaN depend on row order).
#[tokio::test]
async fn nan_is_counted_by_sums_and_skipped_by_extremes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
    let mut points = Vec::new();
    for (h, host) in ["a", "b"].into_iter().enumerate() {
        for i in 0..720i64 {
            let v = if (i + h as i64).rem_euclid(50) == 7 {
                f64::NAN
            } else {
                ((i * 37 + h as i64) % 101) as f64 / 4.0
            };
            let mut p = point(host, v, 0, T0 + i * 30 * SECOND + h as i64);
            p.fields.truncate(1);
            points.push(p);
        }
    }
    store(&storage, points).await;
    storage.flush().await.unwrap();
    let with = Arc::new(engine(&storage, true));
    let without = engine(&storage, false);
    Rollups::new(Arc::clone(&with), Arc::clone(&storage), Duration::ZERO)
        .run_at(T0 + 7 * HOUR)
        .await
        .unwrap();
    let sums =
        "SELECT time_bucket('1 hour', time) AS b, host, avg(usage), sum(usage), count(usage) \
                FROM cpu GROUP BY 1, 2 ORDER BY 1, 2";
    assert!(explain(&with, sums).await.contains("tier rollup_1h"));
    let raw = run(&without, sums).await;
    assert!(raw.iter().any(|r| r[2].starts_with("NaN")), "{raw:?}");
    assert_eq!(run(&with, sums).await, raw);
    let extremes = "SELECT time_bucket('1 hour', time) AS b, host, min(usage), max(usage) FROM cpu";
    let q = format!("{extremes} GROUP BY 1, 2 ORDER BY 1, 2");
    assert!(explain(&with, &q).await.contains("tier rollup_1h"));
    let skipped = format!("{extremes} WHERE NOT isnan(usage) GROUP BY 1, 2 ORDER BY 1, 2");
    assert_eq!(run(&with, &q).await, run(&without, &skipped).await);
    storage.shutdown().await.unwrap();
}
