//! Rollup selection: an aggregate over time buckets reads the 10-minute and
//! 1-hour rollups wherever they give exactly the answer the raw rows would.
//!
//! `SELECT time_bucket('1 hour', time), avg(usage), max(usage) FROM cpu WHERE
//! time > now() - interval '90 days' GROUP BY 1` over 90 days of raw samples
//! reads millions of rows; the 1-hour rollup holds one row per series and hour,
//! and the raw rows past retention are gone anyway. The rule splits the query's
//! time range into parts, each read from the coarsest source that is complete
//! there and whose resolution divides the bucket: the 1-hour rollup up to its
//! watermark, the 10-minute rollup after it, the raw rows for the rest (the
//! unfinished buckets, the edges of a range that is not aligned, and buckets a
//! late write made stale). Each part computes the mergeable partial state of
//! every aggregate (count, sum, min, max) per bucket and series group, and one
//! final aggregate merges the parts: `avg` is the sum of sums over the sum of
//! counts, never an average of averages, so a bucket split between two parts
//! comes out as if read whole.
//!
//! Only shapes whose answer is exact are rewritten: `time_bucket`/`date_bin` with
//! a fixed width (or `date_trunc('hour' | 'day')`) that is a multiple of the rollup resolution (and an aligned
//! origin), grouped by tags, with `avg`, `sum`, `min`, `max` and `count` of
//! float and integer fields, filtered on time and tags only. Anything else reads
//! raw rows as written. Each part is a `SubqueryAlias` named after its source
//! and range, so `EXPLAIN` shows which tier served which time range.

use std::sync::Arc;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{DataType, TimeUnit, TimestampNanosecondType};
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, Result, ScalarValue, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::functions_aggregate::expr_fn::{count, max, min, sum};
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    cast, lit, when, Aggregate, Expr, LogicalPlan, LogicalPlanBuilder, TableScan,
};
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use vigil_storage::{Storage, TIME_COLUMN};

use crate::functions::bucket::{origin_from_scalar, Stride, TIMESCALE_ORIGIN_NS};
use crate::ranges::{ceil_to, coalesce, floor_to, HOUR, TEN_MINUTES};
use crate::table::VigilTable;
use crate::time_range::{is_time_bound, TimeRange};

/// More parts than this (many stale ranges) and the raw rows are read as written.
const MAX_PARTS: usize = 64;
/// Names of the parts start with this, which also keeps the rule from rewriting
/// what it wrote.
const PART_PREFIX: &str = "tier ";
const BUCKET: &str = "__vigil_bucket";

/// The optimizer rule; runs right after expressions are simplified (so `now()`
/// is a constant) and before filters are pushed down.
#[derive(Debug)]
pub(crate) struct RollupSelection {
    storage: Arc<Storage>,
}

impl RollupSelection {
    pub(crate) fn new(storage: Arc<Storage>) -> Self {
        Self { storage }
    }
}

impl OptimizerRule for RollupSelection {
    fn name(&self) -> &str {
        "vigil_rollup_selection"
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> Result<Transformed<LogicalPlan>> {
        plan.transform_down(|node| {
            if let LogicalPlan::SubqueryAlias(a) = &node {
                if a.alias.table().starts_with(PART_PREFIX) {
                    return Ok(Transformed::new(node, false, TreeNodeRecursion::Jump));
                }
            }
            let LogicalPlan::Aggregate(agg) = &node else {
                return Ok(Transformed::no(node));
            };
            match self.rewrite_aggregate(agg) {
                Ok(Some(plan)) => Ok(Transformed::new(plan, true, TreeNodeRecursion::Jump)),
                Ok(None) => Ok(Transformed::no(node)),
                // A rewrite that cannot be planned is not the query's error: it
                // reads raw rows as written.
                Err(e) => {
                    tracing::warn!(error = %e, "rollup selection gave up on a query");
                    Ok(Transformed::no(node))
                }
            }
        })
    }
}

/// One aggregate of the query, in terms of a field's partial state.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Merge {
    Avg,
    Sum,
    Min,
    Max,
    Count,
}

/// What the query reads and computes, when it has a shape the rollups answer.
struct Shape {
    /// The stored table name.
    table: String,
    /// The scan of the raw table (possibly under an alias), filters removed.
    scan: LogicalPlan,
    /// Every filter conjunct, as written (for the raw parts).
    filters: Vec<Expr>,
    /// The filter conjuncts on tags only (for the rollup parts, unqualified).
    tag_filters: Vec<Expr>,
    range: TimeRange,
    time: Column,
    time_type: DataType,
    /// The bucket expression and its position among the group expressions.
    bucket: (usize, Expr),
    stride: i64,
    origin: i64,
    /// Tag group expressions with their position.
    group_tags: Vec<(usize, Column)>,
    /// Fields whose partial state is computed, in order.
    fields: Vec<Column>,
    /// Per aggregate: how it merges and which field (index into `fields`).
    aggregates: Vec<(Merge, usize)>,
}

/// A part of the range and where it is read from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Raw,
    TenMinutes,
    Hour,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Source::Raw => "raw",
            Source::TenMinutes => "rollup_10m",
            Source::Hour => "rollup_1h",
        }
    }
}

/// `ranges` without `holes` (both sorted and disjoint).
fn subtract(ranges: &[(i64, i64)], holes: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for &(a, b) in ranges {
        let mut start = a;
        for &(h0, h1) in holes {
            if h1 <= start || h0 >= b {
                continue;
            }
            if h0 > start {
                out.push((start, h0));
            }
            start = start.max(h1);
        }
        if start < b {
            out.push((start, b));
        }
    }
    out
}

/// Where both `a` and `b` (sorted, disjoint half-open ranges) are.
fn intersect(a: &[(i64, i64)], b: &[(i64, i64)]) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    for &(a0, a1) in a {
        for &(b0, b1) in b {
            let (lo, hi) = (a0.max(b0), a1.min(b1));
            if lo < hi {
                out.push((lo, hi));
            }
        }
    }
    coalesce(out)
}

/// The whole `step`-aligned pieces of `ranges`.
fn aligned(ranges: &[(i64, i64)], step: i64) -> Vec<(i64, i64)> {
    ranges
        .iter()
        .map(|&(a, b)| {
            // Unbounded ends stay unbounded.
            let a = if a == i64::MIN { a } else { ceil_to(a, step) };
            let b = if b == i64::MAX { b } else { floor_to(b, step) };
            (a, b)
        })
        .filter(|(a, b)| a < b)
        .collect()
}

/// The 10-minute buckets before `rolled` a buffered batch writes into, one range
/// per bucket (the batch's whole span if it touches too many to list).
fn stale_buckets(b: &vigil_storage::buffer::BufferedBatch, rolled: i64) -> Vec<(i64, i64)> {
    let span = vec![(
        floor_to(b.min_time, TEN_MINUTES),
        ceil_to(b.max_time.saturating_add(1), TEN_MINUTES).min(ceil_to(rolled, TEN_MINUTES)),
    )];
    let Some(times) = b
        .batch
        .column_by_name(TIME_COLUMN)
        .and_then(|c| c.as_primitive_opt::<TimestampNanosecondType>())
    else {
        return span;
    };
    let mut buckets = std::collections::BTreeSet::new();
    for t in times.iter().flatten().filter(|&t| t < rolled) {
        buckets.insert(floor_to(t, TEN_MINUTES));
        if buckets.len() > 4096 {
            return span;
        }
    }
    buckets
        .into_iter()
        .map(|a| (a, a.saturating_add(TEN_MINUTES)))
        .collect()
}

fn show(t: i64) -> String {
    match t {
        i64::MIN | i64::MAX => "*".to_string(),
        t => chrono::DateTime::from_timestamp_nanos(t)
            .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
    }
}

fn plain_column(e: &Expr) -> Option<&Column> {
    match e {
        Expr::Column(c) => Some(c),
        _ => None,
    }
}

/// The column named exactly `name` (never parsed: `Usage` or `service.name` are
/// names, not SQL).
fn col(name: &str) -> Expr {
    Expr::Column(Column::new_unqualified(name))
}

/// The partial state column names of field number `i`.
fn state_names(i: usize) -> [String; 4] {
    ["n", "s", "lo", "hi"].map(|k| format!("__vigil_{i}_{k}"))
}

impl RollupSelection {
    fn rewrite_aggregate(&self, agg: &Aggregate) -> Result<Option<LogicalPlan>> {
        let Some(shape) = self.shape(agg) else {
            return Ok(None);
        };
        let Some(parts) = self.parts(&shape) else {
            return Ok(None);
        };
        let mut union: Option<LogicalPlanBuilder> = None;
        for (source, a, b) in parts {
            let part = match source {
                Source::Raw => self.raw_part(&shape, a, b)?,
                Source::TenMinutes | Source::Hour => {
                    let Some(part) = self.rollup_part(&shape, source, a, b)? else {
                        return Ok(None);
                    };
                    part
                }
            };
            let part = part.alias(TableReference::bare(format!(
                "{PART_PREFIX}{} [{}, {})",
                source.label(),
                show(a),
                show(b)
            )))?;
            union = Some(match union {
                None => part,
                Some(u) => u.union(part.build()?)?,
            });
        }
        let Some(union) = union else {
            return Ok(None);
        };
        // Merge the parts' partial states per bucket and group.
        let mut group = vec![col(BUCKET)];
        group.extend(shape.group_tags.iter().map(|(_, c)| col(c.name.as_str())));
        let mut merged = Vec::new();
        for i in 0..shape.fields.len() {
            let [n, s, lo, hi] = state_names(i);
            merged.push(sum(col(n.as_str())).alias(n.as_str()));
            merged.push(sum(col(s.as_str())).alias(s.as_str()));
            merged.push(min(col(lo.as_str())).alias(lo.as_str()));
            merged.push(max(col(hi.as_str())).alias(hi.as_str()));
        }
        let merged = union.aggregate(group, merged)?;
        // The columns the aggregate had, by the names and types it had.
        let schema = agg.schema.as_ref();
        let mut out: Vec<Expr> = Vec::with_capacity(schema.fields().len());
        let groups = agg.group_expr.len();
        for i in 0..schema.fields().len() {
            let (qualifier, field) = schema.qualified_field(i);
            let value = if i < groups {
                if i == shape.bucket.0 {
                    col(BUCKET)
                } else {
                    let (_, c) = shape
                        .group_tags
                        .iter()
                        .find(|(at, _)| *at == i)
                        .expect("every group expression is the bucket or a tag");
                    col(c.name.as_str())
                }
            } else {
                let (merge, f) = shape.aggregates[i - groups];
                let [n, s, lo, hi] = state_names(f);
                let counted = col(n.as_str()).gt(lit(0i64));
                match merge {
                    Merge::Count => {
                        datafusion::functions::expr_fn::coalesce(vec![col(n.as_str()), lit(0i64)])
                    }
                    Merge::Sum => when(counted, col(s.as_str())).end()?,
                    Merge::Avg => when(
                        counted,
                        col(s.as_str()) / cast(col(n.as_str()), DataType::Float64),
                    )
                    .end()?,
                    Merge::Min => col(lo.as_str()),
                    Merge::Max => col(hi.as_str()),
                }
            };
            out.push(
                cast(value, field.data_type().clone())
                    .alias_qualified(qualifier.cloned(), field.name()),
            );
        }
        Ok(Some(merged.project(out)?.build()?))
    }

    /// Whether `agg` reads one raw table in a way the rollups can answer.
    fn shape(&self, agg: &Aggregate) -> Option<Shape> {
        // Below the aggregate: filters over a scan of a raw table.
        let mut filters = Vec::new();
        let mut node = agg.input.as_ref();
        let (scan, table_scan): (LogicalPlan, &TableScan) = loop {
            match node {
                LogicalPlan::Filter(f) => {
                    filters.extend(split_conjunction_owned(f.predicate.clone()));
                    node = f.input.as_ref();
                }
                LogicalPlan::TableScan(s) => break (node.clone(), s),
                LogicalPlan::SubqueryAlias(a) => match a.input.as_ref() {
                    LogicalPlan::TableScan(s) => break (node.clone(), s),
                    _ => return None,
                },
                _ => return None,
            }
        };
        if table_scan.fetch.is_some() {
            return None;
        }
        filters.extend(table_scan.filters.iter().cloned());
        let provider = datafusion::datasource::source_as_provider(&table_scan.source).ok()?;
        let table = provider.downcast_ref::<VigilTable>()?.name().to_string();
        if vigil_storage::is_rollup_table(&table) {
            return None;
        }
        let snap_schema = self.storage.table_schema(&table)?;
        let tags = self.storage.snapshot(&table)?.tags;
        let is_tag = |c: &Column| tags.contains(&c.name);

        // Filters: bounds on time, or conditions on tags only.
        let mut tag_filters = Vec::new();
        for f in &filters {
            let subquery = f
                .exists(|e| {
                    Ok(matches!(
                        e,
                        Expr::Exists(_)
                            | Expr::InSubquery(_)
                            | Expr::ScalarSubquery(_)
                            | Expr::OuterReferenceColumn(..)
                    ))
                })
                .unwrap_or(true);
            if subquery || f.is_volatile() {
                return None;
            }
            let cols = f.column_refs();
            if cols.iter().any(|c| c.name == TIME_COLUMN) {
                if !(is_time_bound(f) && cols.len() == 1) {
                    return None;
                }
            } else if cols.iter().all(|c| is_tag(c)) {
                tag_filters.push(unqualify(f.clone()).ok()?);
            } else {
                return None;
            }
        }
        let range = TimeRange::from_filters(&filters);

        // Groups: one bucket of time, and tags.
        let mut bucket = None;
        let mut group_tags = Vec::new();
        for (i, g) in agg.group_expr.iter().enumerate() {
            match g {
                Expr::Column(c) if is_tag(c) => group_tags.push((i, c.clone())),
                Expr::ScalarFunction(f) if bucket.is_none() => {
                    let name = f.func.name();
                    if !matches!(name, "time_bucket" | "date_bin" | "date_trunc")
                        || !(2..=3).contains(&f.args.len())
                    {
                        return None;
                    }
                    let time = plain_column(&f.args[1]).filter(|c| c.name == TIME_COLUMN)?;
                    let Expr::Literal(width, _) = &f.args[0] else {
                        return None;
                    };
                    if name == "date_trunc" {
                        // `date_trunc('hour' | 'day', time)` of a UTC time is a
                        // bucket of that width from the epoch (no zone argument).
                        let unit = match width {
                            ScalarValue::Utf8(Some(u))
                            | ScalarValue::Utf8View(Some(u))
                            | ScalarValue::LargeUtf8(Some(u)) => u.to_ascii_lowercase(),
                            _ => return None,
                        };
                        let stride = match (unit.as_str(), f.args.len()) {
                            ("hour", 2) => HOUR,
                            ("day", 2) => 24 * HOUR,
                            _ => return None,
                        };
                        bucket = Some((i, g.clone(), time.clone(), stride, 0));
                        continue;
                    }
                    let Stride::Nanos(stride) = Stride::from_scalar(width).ok()? else {
                        return None;
                    };
                    let origin = match f.args.get(2) {
                        Some(Expr::Literal(o, _)) => origin_from_scalar(o).ok()?,
                        Some(_) => return None,
                        None if name == "time_bucket" => TIMESCALE_ORIGIN_NS,
                        None => 0,
                    };
                    bucket = Some((i, g.clone(), time.clone(), stride, origin));
                }
                _ => return None,
            }
        }
        let (bucket_at, bucket_expr, time, stride, origin) = bucket?;
        let time_type = snap_schema
            .field_with_name(TIME_COLUMN)
            .ok()?
            .data_type()
            .clone();
        match &time_type {
            DataType::Timestamp(TimeUnit::Nanosecond, None) => {}
            DataType::Timestamp(TimeUnit::Nanosecond, Some(tz))
                if matches!(tz.as_ref(), "UTC" | "+00:00" | "Z") => {}
            _ => return None,
        }

        // Aggregates: avg, sum, min, max, count of one float or integer field.
        let mut fields: Vec<Column> = Vec::new();
        let mut aggregates = Vec::new();
        for a in &agg.aggr_expr {
            let Expr::AggregateFunction(f) = a else {
                return None;
            };
            let p = &f.params;
            if p.distinct || p.filter.is_some() || !p.order_by.is_empty() || p.args.len() != 1 {
                return None;
            }
            let merge = match f.func.name() {
                "avg" => Merge::Avg,
                "sum" => Merge::Sum,
                "min" => Merge::Min,
                "max" => Merge::Max,
                "count" => Merge::Count,
                _ => return None,
            };
            let field = match &p.args[0] {
                Expr::Column(c) => c,
                // avg of an integer field reads it as float.
                Expr::Cast(c) if c.field.data_type() == &DataType::Float64 => {
                    plain_column(&c.expr)?
                }
                _ => return None,
            };
            if field.name == TIME_COLUMN || is_tag(field) {
                return None;
            }
            let ty = snap_schema.field_with_name(&field.name).ok()?.data_type();
            // Rollups keep integer fields as floats: exact for counts and
            // averages, not for sums and extremes past 2^53.
            match ty {
                DataType::Float64 => {}
                DataType::Int64 if matches!(merge, Merge::Avg | Merge::Count) => {}
                _ => return None,
            }
            let at = match fields.iter().position(|c| c == field) {
                Some(at) => at,
                None => {
                    fields.push(field.clone());
                    fields.len() - 1
                }
            };
            aggregates.push((merge, at));
        }
        Some(Shape {
            table,
            scan,
            filters,
            tag_filters,
            range,
            time,
            time_type,
            bucket: (bucket_at, bucket_expr),
            stride,
            origin,
            group_tags,
            fields,
            aggregates,
        })
    }

    /// Splits the query's range among the sources; `None` when no rollup helps.
    fn parts(&self, shape: &Shape) -> Option<Vec<(Source, i64, i64)>> {
        let watermark = self.storage.rollup_watermark(&shape.table)?;
        let lo = shape.range.min;
        let hi = match shape.range.max {
            i64::MAX => i64::MAX,
            m => m + 1,
        };
        if lo >= hi {
            return None;
        }
        // Buckets late writes landed in since the last rollup: flushed files
        // newer than it and buffered rows, before the watermark.
        let snap = self.storage.snapshot(&shape.table)?;
        let mut stale: Vec<(i64, i64)> = snap
            .files
            .iter()
            .map(|f| &f.meta)
            .filter(|m| m.seq > watermark.rolled_seq && m.min_time < watermark.rolled_10m)
            .map(|m| {
                (
                    floor_to(m.min_time, TEN_MINUTES),
                    ceil_to(m.max_time.saturating_add(1), TEN_MINUTES),
                )
            })
            .collect();
        for b in snap
            .buffer
            .iter()
            .filter(|b| b.min_time < watermark.rolled_10m)
        {
            stale.extend(stale_buckets(b, watermark.rolled_10m));
        }
        // Raw rows are kept from the retention cutoff on, and in restored ranges;
        // a stale bucket is read raw only where it is kept whole (elsewhere the
        // rollup, if stale, is all there is).
        let raw_start = self
            .storage
            .retention_cutoff(&shape.table)
            .unwrap_or(i64::MIN);
        let mut raw_kept = vec![(raw_start, i64::MAX)];
        raw_kept.extend(snap.restored.iter().copied());
        let raw_kept = coalesce(raw_kept);
        stale = intersect(&coalesce(stale), &aligned(&raw_kept, TEN_MINUTES));
        let stale_hours = coalesce(
            stale
                .iter()
                .map(|&(a, b)| (floor_to(a, HOUR), ceil_to(b, HOUR)))
                .collect(),
        );
        let serves = |step: i64| shape.stride % step == 0 && shape.origin.rem_euclid(step) == 0;
        let cutoff = |t: String| self.storage.retention_cutoff(&t).unwrap_or(i64::MIN);
        // Buckets before the first rollup were never rolled up (an unknown
        // edge, from an old catalog, trusts every bucket).
        let after_first = |step: i64| match watermark.rolled_from {
            i64::MIN => i64::MIN,
            t => ceil_to(t, step),
        };
        let hours = if serves(HOUR) {
            let from = lo
                .max(cutoff(format!("rollup_1h.{}", shape.table)))
                .max(after_first(HOUR));
            let to = hi.min(watermark.rolled_1h);
            subtract(&aligned(&[(from, to)], HOUR), &stale_hours)
        } else {
            Vec::new()
        };
        let tens = if serves(TEN_MINUTES) {
            let from = lo
                .max(cutoff(format!("rollup_10m.{}", shape.table)))
                .max(after_first(TEN_MINUTES));
            let to = hi.min(watermark.rolled_10m);
            let tens = subtract(&aligned(&[(from, to)], TEN_MINUTES), &stale);
            subtract(&tens, &hours)
        } else {
            Vec::new()
        };
        if hours.is_empty() && tens.is_empty() {
            return None;
        }
        let rolled = coalesce(hours.iter().chain(&tens).copied().collect());
        let raw = subtract(&intersect(&raw_kept, &[(lo, hi)]), &rolled);
        let mut parts: Vec<(Source, i64, i64)> = hours
            .into_iter()
            .map(|(a, b)| (Source::Hour, a, b))
            .chain(tens.into_iter().map(|(a, b)| (Source::TenMinutes, a, b)))
            .chain(raw.into_iter().map(|(a, b)| (Source::Raw, a, b)))
            .collect();
        parts.sort_by_key(|&(_, a, _)| a);
        (parts.len() <= MAX_PARTS).then_some(parts)
    }

    fn bound(&self, shape: &Shape, column: Expr, a: i64, b: i64) -> Vec<Expr> {
        let tz = match &shape.time_type {
            DataType::Timestamp(_, tz) => tz.clone(),
            _ => None,
        };
        let ts = |t: i64| lit(ScalarValue::TimestampNanosecond(Some(t), tz.clone()));
        let mut out = Vec::new();
        if a != i64::MIN {
            out.push(column.clone().gt_eq(ts(a)));
        }
        if b != i64::MAX {
            out.push(column.lt(ts(b)));
        }
        out
    }

    /// The raw rows of `[a, b)`: every filter of the query, bucketed and reduced
    /// to the partial states.
    fn raw_part(&self, shape: &Shape, a: i64, b: i64) -> Result<LogicalPlanBuilder> {
        let filters = shape.filters.iter().cloned().chain(self.bound(
            shape,
            Expr::Column(shape.time.clone()),
            a,
            b,
        ));
        let mut plan = LogicalPlanBuilder::from(shape.scan.clone());
        if let Some(f) = conjunction(filters) {
            plan = plan.filter(f)?;
        }
        let mut group = vec![shape.bucket.1.clone().alias(BUCKET)];
        group.extend(
            shape
                .group_tags
                .iter()
                .map(|(_, c)| Expr::Column(c.clone())),
        );
        let mut states = Vec::new();
        for (i, field) in shape.fields.iter().enumerate() {
            let [n, s, lo, hi] = state_names(i);
            let f = || cast(Expr::Column(field.clone()), DataType::Float64);
            states.push(count(Expr::Column(field.clone())).alias(n));
            states.push(sum(f()).alias(s));
            states.push(min(skip_nan(f())?).alias(lo));
            states.push(max(skip_nan(f())?).alias(hi));
        }
        plan.aggregate(group, states)
    }

    /// The rollup rows of `[a, b)` (whole buckets of the source), merged into the
    /// query's buckets; `None` if the rollup table lacks a column the query needs.
    fn rollup_part(
        &self,
        shape: &Shape,
        source: Source,
        a: i64,
        b: i64,
    ) -> Result<Option<LogicalPlanBuilder>> {
        let stored = format!("{}.{}", source.label(), shape.table);
        let Some(table) = VigilTable::open(Arc::clone(&self.storage), &stored) else {
            return Ok(None);
        };
        let schema = table.schema();
        let has = |c: &str| schema.field_with_name(c).is_ok();
        let typed =
            |c: &str, t: &DataType| schema.field_with_name(c).is_ok_and(|f| f.data_type() == t);
        let needed_tags = shape.group_tags.iter().map(|(_, c)| c.name.clone()).chain(
            shape
                .tag_filters
                .iter()
                .flat_map(|f| f.column_refs().into_iter().map(|c| c.name.clone())),
        );
        let mut needed_fields = shape.fields.iter().flat_map(|f| {
            [
                ("count", DataType::Int64),
                ("sum", DataType::Float64),
                ("min", DataType::Float64),
                ("max", DataType::Float64),
            ]
            .map(|(k, t)| (format!("{}_{k}", f.name), t))
        });
        if !needed_tags
            .chain(std::iter::once(TIME_COLUMN.to_string()))
            .all(|c| has(&c))
            || !needed_fields.all(|(c, t)| typed(&c, &t))
        {
            return Ok(None);
        }
        let reference = TableReference::partial(source.label(), shape.table.as_str());
        let mut plan =
            LogicalPlanBuilder::scan(reference, provider_as_source(Arc::new(table)), None)?;
        let filters =
            shape
                .tag_filters
                .iter()
                .cloned()
                .chain(self.bound(shape, col(TIME_COLUMN), a, b));
        if let Some(f) = conjunction(filters) {
            plan = plan.filter(f)?;
        }
        let bucket = match &shape.bucket.1 {
            Expr::ScalarFunction(f) => {
                let mut f = f.clone();
                f.args[1] = col(TIME_COLUMN);
                Expr::ScalarFunction(f)
            }
            _ => unreachable!("the bucket is a function call"),
        };
        let mut group = vec![bucket.alias(BUCKET)];
        group.extend(shape.group_tags.iter().map(|(_, c)| col(c.name.as_str())));
        let mut states = Vec::new();
        for (i, field) in shape.fields.iter().enumerate() {
            let [n, s, lo, hi] = state_names(i);
            let c = |k: &str| col(&format!("{}_{k}", field.name));
            states.push(sum(c("count")).alias(n));
            states.push(sum(c("sum")).alias(s));
            states.push(min(skip_nan(c("min"))?).alias(lo));
            states.push(max(skip_nan(c("max"))?).alias(hi));
        }
        Ok(Some(plan.aggregate(group, states)?))
    }
}

/// NaN as NULL for `min` and `max`: DataFusion's grouped min/max let a NaN
/// reset the running value (`partial_cmp` is None), so over raw rows the answer
/// depends on row order. Rollups keep the extremes without NaN (as Prometheus
/// ignores staleness markers), and the rewrite reads every part that way.
fn skip_nan(e: Expr) -> Result<Expr> {
    when(
        datafusion::functions::math::expr_fn::isnan(e.clone()),
        lit(ScalarValue::Float64(None)),
    )
    .otherwise(e)
}

/// `e` with its columns unqualified, to be applied to another table.
fn unqualify(e: Expr) -> Result<Expr> {
    e.transform(|e| match e {
        Expr::Column(c) => Ok(Transformed::yes(Expr::Column(Column::new_unqualified(
            c.name,
        )))),
        e => Ok(Transformed::no(e)),
    })
    .map(|t| t.data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_subtract_and_align() {
        assert_eq!(
            subtract(&[(0, 100)], &[(10, 20), (50, 60)]),
            vec![(0, 10), (20, 50), (60, 100)]
        );
        assert_eq!(subtract(&[(0, 100)], &[(-5, 200)]), vec![]);
        assert_eq!(aligned(&[(5, 95)], 10), vec![(10, 90)]);
        assert_eq!(aligned(&[(5, 9)], 10), vec![]);
        assert_eq!(
            intersect(&[(0, 10), (20, 30)], &[(5, 25)]),
            vec![(5, 10), (20, 25)]
        );
        assert_eq!(
            coalesce(vec![(5, 9), (0, 5), (20, 30)]),
            vec![(0, 9), (20, 30)]
        );
        assert_eq!(ceil_to(-5, 10), 0);
        assert_eq!(floor_to(-5, 10), -10);
    }

    #[test]
    fn merge_names_are_unique_per_field() {
        let a = state_names(0);
        let b = state_names(1);
        assert!(a.iter().all(|n| !b.contains(n)));
    }
}
