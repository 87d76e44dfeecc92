//! The time-series functions, end to end through SQL over real storage, against
//! values worked out by hand or by a plain re-computation in the test.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{Float64Type, Int64Type, TimestampNanosecondType};
use datafusion::arrow::util::pretty::pretty_format_batches;
use rand::{Rng, SeedableRng};
use vigil_ingest::{parse_line_protocol, Precision};
use vigil_storage::{Storage, StorageConfig};

use crate::{QueryConfig, QueryEngine};

const S: i64 = 1_000_000_000;
const MIN: i64 = 60 * S;

struct Fixture {
    _dir: tempfile::TempDir,
    storage: Arc<Storage>,
    engine: QueryEngine,
}

impl Fixture {
    async fn new() -> Self {
        Self::with_config(QueryConfig::default()).await
    }

    async fn with_config(config: QueryConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let storage = Storage::open(StorageConfig::new(dir.path())).await.unwrap();
        let engine = QueryEngine::new(Arc::clone(&storage), config).unwrap();
        Self {
            _dir: dir,
            storage,
            engine,
        }
    }

    async fn write(&self, lp: &str) {
        let parsed = parse_line_protocol(lp, Precision::Nanosecond, 0);
        assert!(parsed.errors.is_empty(), "{:?}", parsed.errors);
        let w = self.storage.validate(parsed.points);
        assert!(w.rejected.is_empty());
        self.storage.commit(w.tables).await.unwrap();
    }

    async fn query(&self, sql: &str) -> RecordBatch {
        let (schema, batches) = self
            .engine
            .sql(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        datafusion::arrow::compute::concat_batches(&schema, &batches).unwrap()
    }

    async fn error(&self, sql: &str) -> String {
        match self.engine.sql(sql).await {
            Ok((_, b)) => panic!(
                "{sql} should fail, got\n{}",
                pretty_format_batches(&b).unwrap()
            ),
            Err(e) => e.to_string(),
        }
    }
}

fn f64s(b: &RecordBatch, col: usize) -> Vec<Option<f64>> {
    b.column(col).as_primitive::<Float64Type>().iter().collect()
}

fn times(b: &RecordBatch, col: usize) -> Vec<i64> {
    b.column(col)
        .as_primitive::<TimestampNanosecondType>()
        .values()
        .to_vec()
}

fn strings(b: &RecordBatch, col: usize) -> Vec<String> {
    let c = datafusion::arrow::compute::cast(
        b.column(col),
        &datafusion::arrow::datatypes::DataType::Utf8,
    )
    .unwrap();
    c.as_string::<i32>()
        .iter()
        .map(|s| s.unwrap_or("NULL").to_string())
        .collect()
}

#[tokio::test]
async fn time_bucket_matches_timescale_semantics() {
    let f = Fixture::new().await;
    // 2026-11-25T13:00:00Z
    let t0 = 1_795_611_600 * S;
    f.write(&format!(
        "m v=1 {}\nm v=2 {}\nm v=3 {}",
        t0 + 59 * S,
        t0 + 60 * S,
        t0 + 61 * MIN
    ))
    .await;
    let b = f
        .query("SELECT time_bucket('1m', time) AS b, count(*) AS n FROM m GROUP BY 1 ORDER BY 1")
        .await;
    assert_eq!(times(&b, 0), vec![t0, t0 + MIN, t0 + 61 * MIN]);
    // String and SQL intervals agree; weekly buckets start on Monday 2026-11-23.
    let b = f
        .query(
            "SELECT time_bucket(interval '1 hour', time) = time_bucket('60 minutes', time) AS same,
                    time_bucket('1w', time) AS w, time_bucket('1 month', time) AS mo
             FROM m ORDER BY time LIMIT 1",
        )
        .await;
    assert_eq!(strings(&b, 0), vec!["true"]);
    assert_eq!(strings(&b, 1), vec!["2026-11-23T00:00:00Z"]);
    assert_eq!(strings(&b, 2), vec!["2026-11-01T00:00:00Z"]);
    // An explicit origin shifts the buckets.
    let b = f
        .query("SELECT time_bucket('1h', time, '2026-11-25T12:30:00Z') AS b FROM m ORDER BY time LIMIT 1")
        .await;
    assert_eq!(strings(&b, 0), vec!["2026-11-25T12:30:00Z"]);
    let e = f.error("SELECT time_bucket('soon', time) FROM m").await;
    assert!(e.contains("invalid interval 'soon'"), "{e}");
}

#[tokio::test]
async fn counter_functions_handle_resets_and_out_of_order_input() {
    let f = Fixture::new().await;
    // Host a: 10, 15, reset to 3, 7 at 0/10/20/30 s, written out of order across a
    // flushed file and the buffer. Host b has one sample only.
    f.write("c,host=a v=3 20000000000\nc,host=a v=10 0\nc,host=b v=5 0")
        .await;
    f.storage.flush().await.unwrap();
    f.write("c,host=a v=7 30000000000\nc,host=a v=15 10000000000")
        .await;
    let b = f
        .query(
            "SELECT host, increase(v, time), rate(v, time), irate(v, time), delta(v, time)
             FROM c GROUP BY host ORDER BY host",
        )
        .await;
    assert_eq!(strings(&b, 0), vec!["a", "b"]);
    assert_eq!(f64s(&b, 1), vec![Some(12.0), None]);
    assert_eq!(f64s(&b, 2), vec![Some(0.4), None]);
    assert_eq!(f64s(&b, 3), vec![Some(0.4), None]);
    assert_eq!(f64s(&b, 4), vec![Some(-3.0), None]);

    // As a sliding window: the increase between consecutive samples.
    let b = f
        .query(
            "SELECT increase(v, time) OVER (PARTITION BY host ORDER BY time ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
             FROM c WHERE host = 'a' ORDER BY time",
        )
        .await;
    assert_eq!(f64s(&b, 0), vec![None, Some(5.0), Some(3.0), Some(4.0)]);

    // Empty input gives NULL, not an error.
    let b = f
        .query("SELECT rate(v, time) FROM c WHERE host = 'nobody'")
        .await;
    assert_eq!(f64s(&b, 0), vec![None]);
}

#[tokio::test]
async fn counter_rate_per_bucket_matches_a_plain_recomputation() {
    let f = Fixture::new().await;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut expected: BTreeMap<(String, i64), Vec<(i64, f64)>> = BTreeMap::new();
    let mut lp = String::new();
    for host in ["h1", "h2", "h3"] {
        let mut v = 0.0f64;
        for i in 0..600i64 {
            let t = i * 10 * S + rng.gen_range(0..S);
            v = if rng.gen_bool(0.01) {
                rng.gen_range(0.0..5.0)
            } else {
                v + rng.gen_range(0.0..100.0)
            };
            v = (v * 4.0).round() / 4.0;
            lp.push_str(&format!("req,host={host} total={v} {t}\n"));
            expected
                .entry((host.to_string(), t / (5 * MIN) * (5 * MIN)))
                .or_default()
                .push((t, v));
        }
    }
    f.write(&lp).await;
    f.storage.flush().await.unwrap();
    let b = f
        .query(
            "SELECT host, date_bin(interval '5 minutes', time) AS b, rate(total, time), increase(total, time)
             FROM req GROUP BY 1, 2 ORDER BY 1, 2",
        )
        .await;
    assert_eq!(b.num_rows(), expected.len());
    let hosts = strings(&b, 0);
    let buckets = times(&b, 1);
    let rates = f64s(&b, 2);
    let increases = f64s(&b, 3);
    for (i, ((host, bucket), samples)) in expected.iter().enumerate() {
        assert_eq!((&hosts[i], buckets[i]), (host, *bucket));
        let mut inc = 0.0;
        for w in samples.windows(2) {
            inc += if w[1].1 < w[0].1 {
                w[1].1
            } else {
                w[1].1 - w[0].1
            };
        }
        let secs = (samples.last().unwrap().0 - samples[0].0) as f64 / 1e9;
        assert!(
            (increases[i].unwrap() - inc).abs() < 1e-9,
            "{host} {bucket}"
        );
        assert!(
            (rates[i].unwrap() - inc / secs).abs() < 1e-9,
            "{host} {bucket}"
        );
    }
}

#[tokio::test]
async fn first_last_skip_nulls_and_moving_average_slides() {
    let f = Fixture::new().await;
    f.write("s,host=a x=1,y=10 1000\ns,host=a x=2 2000\ns,host=a x=3,y=30 3000\ns,host=a x=4 4000\ns,host=a x=5 5000")
        .await;
    let b = f
        .query("SELECT first(x, time), last(x, time), first(y, time), last(y, time) FROM s")
        .await;
    assert_eq!(f64s(&b, 0), vec![Some(1.0)]);
    assert_eq!(f64s(&b, 1), vec![Some(5.0)]);
    assert_eq!(f64s(&b, 2), vec![Some(10.0)]);
    assert_eq!(f64s(&b, 3), vec![Some(30.0)]);
    let b = f
        .query("SELECT moving_average(x, 3) OVER (PARTITION BY host ORDER BY time) AS ma FROM s ORDER BY time")
        .await;
    assert_eq!(
        f64s(&b, 0),
        vec![Some(1.0), Some(1.5), Some(2.0), Some(3.0), Some(4.0)]
    );
    let e = f
        .error("SELECT moving_average(x, 0) OVER (ORDER BY time) FROM s")
        .await;
    assert!(e.contains("n must be a constant integer >= 1"), "{e}");
}

#[tokio::test]
async fn gapfill_inserts_missing_buckets_with_null_locf_and_interpolate() {
    let f = Fixture::new().await;
    // Host a at minutes 0 and 3 (values 10, 40); host b at minute 1 (value 7).
    f.write(&format!(
        "g,host=a v=10 {}\ng,host=a v=40 {}\ng,host=b v=7 {}",
        0,
        3 * MIN + 5 * S,
        MIN + 30 * S
    ))
    .await;
    let sql = |agg: &str| {
        format!(
            "SELECT date_bin_gapfill(interval '1 minute', time) AS t, host, {agg} AS v FROM g
             WHERE time >= '1970-01-01T00:00:00Z' AND time < '1970-01-01T00:05:00Z'
             GROUP BY 1, 2 ORDER BY host, t"
        )
    };
    let b = f.query(&sql("avg(v)")).await;
    assert_eq!(
        strings(&b, 1),
        ["a", "a", "a", "a", "a", "b", "b", "b", "b", "b"]
    );
    assert_eq!(
        times(&b, 0),
        [
            0,
            MIN,
            2 * MIN,
            3 * MIN,
            4 * MIN,
            0,
            MIN,
            2 * MIN,
            3 * MIN,
            4 * MIN
        ]
    );
    assert_eq!(
        f64s(&b, 2),
        [
            Some(10.0),
            None,
            None,
            Some(40.0),
            None,
            None,
            Some(7.0),
            None,
            None,
            None
        ]
    );
    let b = f.query(&sql("locf(avg(v))")).await;
    assert_eq!(
        f64s(&b, 2),
        [
            Some(10.0),
            Some(10.0),
            Some(10.0),
            Some(40.0),
            Some(40.0),
            None,
            Some(7.0),
            Some(7.0),
            Some(7.0),
            Some(7.0)
        ]
    );
    let b = f.query(&sql("interpolate(avg(v))")).await;
    assert_eq!(
        f64s(&b, 2),
        [
            Some(10.0),
            Some(20.0),
            Some(30.0),
            Some(40.0),
            None,
            None,
            Some(7.0),
            None,
            None,
            None
        ]
    );
    // count(*) of an empty bucket is NULL like every other aggregate.
    let b = f.query(&sql("count(*)")).await;
    let counts: Vec<Option<i64>> = b.column(2).as_primitive::<Int64Type>().iter().collect();
    assert_eq!(counts[..5], [Some(1), None, None, Some(1), None]);

    // BETWEEN includes the upper bound's bucket; no group columns and no data still
    // gives every bucket.
    let b = f
        .query(
            "SELECT date_bin_gapfill(interval '2 minutes', time) AS t, sum(v) FROM g
             WHERE time BETWEEN '1970-01-01T01:00:00Z' AND '1970-01-01T01:04:00Z' GROUP BY 1 ORDER BY 1",
        )
        .await;
    assert_eq!(times(&b, 0), [60 * MIN, 62 * MIN, 64 * MIN]);
    assert_eq!(b.column(1).null_count(), 3);

    let e = f
        .error("SELECT date_bin_gapfill(interval '1 minute', time), avg(v) FROM g GROUP BY 1")
        .await;
    assert!(e.contains("needs a lower time bound"), "{e}");
    let e = f.error("SELECT locf(v) FROM g").await;
    assert!(e.contains("locf() can only wrap an aggregate"), "{e}");
    // One aggregate column cannot be both filled and unfilled (or filled two ways).
    for extra in ["avg(v)", "interpolate(avg(v))"] {
        let e = f
            .error(&format!(
                "SELECT date_bin_gapfill(interval '1 minute', time), locf(avg(v)), {extra} FROM g
                 WHERE time >= '1970-01-01T01:00:00Z' AND time < '1970-01-01T01:05:00Z' GROUP BY 1"
            ))
            .await;
        assert!(e.contains("different gap fillings"), "{e}");
    }
}

#[tokio::test]
async fn relative_time_literals_work() {
    let f = Fixture::new().await;
    let now = chrono::Utc::now().timestamp_nanos_opt().unwrap();
    f.write(&format!(
        "r v=1 {}\nr v=2 {}",
        now - 30 * MIN,
        now - 120 * MIN
    ))
    .await;
    let b = f
        .query("SELECT count(*) FROM r WHERE time >= now() - interval '1 hour' AND time <= now()")
        .await;
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 1);
    // Time zone offsets in literals are honoured.
    let b = f
        .query("SELECT TIMESTAMP '2026-01-01T02:00:00+02:00' = TIMESTAMP '2026-01-01T00:00:00Z' AS same")
        .await;
    assert_eq!(strings(&b, 0), vec!["true"]);
}

#[tokio::test]
async fn a_query_over_its_memory_limit_fails_alone() {
    let f = Fixture::with_config(QueryConfig {
        memory_limit_bytes: 256 << 10,
        ..QueryConfig::default()
    })
    .await;
    let mut lp = String::new();
    for i in 0..50_000 {
        lp.push_str(&format!("big,host=h{} v={i} {i}\n", i % 5000));
    }
    f.write(&lp).await;
    // In Parquet, a count needs no memory (the buffer would need a deduplicating sort).
    f.storage.flush().await.unwrap();
    let e = f
        .error("SELECT host, array_agg(v ORDER BY v) FROM big GROUP BY host")
        .await;
    assert!(e.contains("Resources exhausted"), "{e}");
    // Small queries still run, and each query gets the whole limit again.
    let b = f.query("SELECT count(*) FROM big").await;
    assert_eq!(b.column(0).as_primitive::<Int64Type>().value(0), 50_000);
}

#[tokio::test]
async fn explain_shows_files_pruned_by_time() {
    let f = Fixture::new().await;
    for day in 0..3i64 {
        f.write(&format!("e,host=a v={day} {}", day * 86_400 * S))
            .await;
        f.storage.flush().await.unwrap();
    }
    let b = f
        .query("EXPLAIN SELECT * FROM e WHERE time >= '1970-01-03T00:00:00Z'")
        .await;
    let text = pretty_format_batches(&[b]).unwrap().to_string();
    assert!(text.contains("files=1 of 3 (2 pruned)"), "{text}");
    assert!(text.contains("time=[1970-01-03T00:00:00Z, *]"), "{text}");
    let b = f.query("EXPLAIN ANALYZE SELECT count(*) FROM e").await;
    let text = pretty_format_batches(&[b]).unwrap().to_string();
    assert!(text.contains("files=3 of 3 (0 pruned)"), "{text}");
}

fn rows_text(b: &RecordBatch) -> String {
    pretty_format_batches(std::slice::from_ref(b))
        .unwrap()
        .to_string()
}

#[tokio::test]
async fn last_cache_serves_the_latest_row_per_series_and_follows_writes() {
    let f = Fixture::new().await;
    f.write("lv,host=a v=1 1\nlv,host=a v=2 2\nlv,host=b v=50 5")
        .await;
    f.storage.flush().await.unwrap();
    f.write("lv,host=a v=3 3\nlv,host=b v=40 4").await; // b@4 is a late write
    let lc = "SELECT host, v, time FROM last_cache('lv') ORDER BY host";
    let scan = "SELECT DISTINCT ON (host) host, v, time FROM lv ORDER BY host, time DESC";
    let b = f.query(lc).await;
    assert_eq!(strings(&b, 0), ["a", "b"]);
    assert_eq!(f64s(&b, 1), [Some(3.0), Some(50.0)]);
    // Overwriting the latest point, a new series, and a new column.
    f.write("lv,host=a v=33 3\nlv,host=c v=7,w=1i 9").await;
    let b = f.query(lc).await;
    assert_eq!(f64s(&b, 1), [Some(33.0), Some(50.0), Some(7.0)]);
    assert_eq!(rows_text(&b), rows_text(&f.query(scan).await));
    let b = f
        .query("SELECT host, w FROM last_cache('lv') WHERE host = 'c'")
        .await;
    assert_eq!(b.num_rows(), 1);
    let e = f.error("SELECT * FROM last_cache('nope')").await;
    assert!(e.contains("table 'nope' not found"), "{e}");
}

#[tokio::test]
async fn last_cache_stays_right_under_concurrent_writes() {
    let f = Arc::new(Fixture::new().await);
    f.write("lc,host=h0 v=0 0").await;
    // Start the cache, then write from several tasks while querying it.
    f.query("SELECT * FROM last_cache('lc')").await;
    let mut tasks = Vec::new();
    for w in 0..4i64 {
        let fx = Arc::clone(&f);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(w as u64);
            for i in 0..200i64 {
                let host = rng.gen_range(0..20);
                let t = rng.gen_range(0..1_000i64);
                fx.write(&format!("lc,host=h{host} v={} {t}", w * 1000 + i))
                    .await;
                if i % 50 == 0 {
                    fx.query("SELECT count(*) FROM last_cache('lc')").await;
                }
            }
        }));
        if w == 1 {
            f.storage.flush().await.unwrap();
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let cached = f
        .query("SELECT host, v, time FROM last_cache('lc') ORDER BY host")
        .await;
    let scanned = f
        .query("SELECT DISTINCT ON (host) host, v, time FROM lc ORDER BY host, time DESC")
        .await;
    assert_eq!(rows_text(&cached), rows_text(&scanned));
}

#[tokio::test]
async fn result_cache_hits_over_flushed_data_and_sees_late_writes_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = StorageConfig::new(dir.path());
    cfg.compaction_min_files = 2;
    let storage = Storage::open(cfg).await.unwrap();
    let f = Fixture {
        engine: QueryEngine::new(Arc::clone(&storage), QueryConfig::default()).unwrap(),
        storage,
        _dir: dir,
    };
    let hits = |f: &Fixture| f.engine.result_cache_metrics().hits.get();
    f.write("rc,host=a v=1 1000\nrc,host=b v=2 2000").await;
    f.storage.flush().await.unwrap();
    let q = "SELECT count(*) AS n, sum(v) AS s FROM rc WHERE time < '1970-01-02T00:00:00Z'";
    let sum = |b: &RecordBatch| f64s(b, 1)[0];
    assert_eq!(sum(&f.query(q).await), Some(3.0));
    assert_eq!(hits(&f), 0);
    assert_eq!(sum(&f.query(q).await), Some(3.0));
    assert_eq!(hits(&f), 1, "a repeated query over flushed data is a hit");

    // A write elsewhere in time does not invalidate; a late write into the range does.
    f.write("rc,host=a v=100 500000000000000").await;
    assert_eq!(sum(&f.query(q).await), Some(3.0));
    assert_eq!(hits(&f), 2);
    f.write("rc,host=c v=4 3000").await;
    assert_eq!(sum(&f.query(q).await), Some(7.0));
    assert_eq!(hits(&f), 2, "buffered rows in the range: no hit");
    f.storage.flush().await.unwrap();
    assert_eq!(sum(&f.query(q).await), Some(7.0));
    assert_eq!(hits(&f), 2, "new file in the range: no hit");
    assert_eq!(sum(&f.query(q).await), Some(7.0));
    assert_eq!(hits(&f), 3);

    // Compaction replaces the files: the next query runs again, same answer.
    assert!(f.storage.compact().await.unwrap() > 0);
    assert_eq!(sum(&f.query(q).await), Some(7.0));
    assert_eq!(hits(&f), 3, "compacted files: no hit");
    assert_eq!(sum(&f.query(q).await), Some(7.0));
    assert_eq!(hits(&f), 4);

    // Not cached: statements over the catalog, volatile functions.
    f.query("SHOW TABLES").await;
    f.query("SHOW TABLES").await;
    f.query("SELECT random() FROM rc WHERE time < '1970-01-02T00:00:00Z'")
        .await;
    f.query("SELECT random() FROM rc WHERE time < '1970-01-02T00:00:00Z'")
        .await;
    assert_eq!(hits(&f), 4);
}
