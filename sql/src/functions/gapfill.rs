//! `date_bin_gapfill(interval, time [, origin])` with `locf(agg)` and
//! `interpolate(agg)`, as in InfluxDB 3:
//!
//! ```sql
//! SELECT date_bin_gapfill(interval '1 minute', time) AS t, host, locf(avg(usage))
//! FROM cpu WHERE time >= now() - interval '1 hour' AND time < now()
//! GROUP BY 1, 2
//! ```
//!
//! returns one row per host for *every* minute of the hour, including minutes with
//! no data. An analyzer rule ([`GapFillRule`]) puts a [`GapFill`] node above the
//! aggregate; it reads the time range from the query's `WHERE` clause, and its
//! physical form ([`GapFillExec`]) inserts the missing buckets, leaving their
//! aggregates NULL, or carrying the last value forward (`locf`) or interpolating
//! linearly between neighbours (`interpolate`).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, RecordBatchOptions,
    TimestampNanosecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat_batches, lexsort_to_indices, take, SortColumn};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::Session;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{exec_err, plan_err, Column, DFSchema, DFSchemaRef, Result, ScalarValue};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::utils::split_conjunction;
use datafusion::logical_expr::{
    BinaryExpr, ColumnarValue, Expr, Extension, LogicalPlan, Operator, Projection,
    ScalarFunctionArgs, ScalarUDFImpl, Signature, UserDefinedLogicalNode,
    UserDefinedLogicalNodeCore, Volatility,
};
use datafusion::optimizer::AnalyzerRule;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, Distribution, ExecutionPlan, Partitioning, PlanProperties,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use super::bucket::{
    bucket_return_type, coerce_bucket_args, invoke_bucket, origin_from_scalar, Bucketer, Stride,
};

/// More buckets than this per series is almost certainly a mistake (a wide range
/// with a tiny interval) and would exhaust memory.
const MAX_BUCKETS: i64 = 10_000_000;

const GAPFILL: &str = "date_bin_gapfill";

/// The bucketing function itself: outside a gap-filling query it is `date_bin`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateBinGapfill {
    signature: Signature,
}

impl DateBinGapfill {
    pub(crate) fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateBinGapfill {
    fn name(&self) -> &str {
        GAPFILL
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        coerce_bucket_args(GAPFILL, arg_types)
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        match arg_types.get(1) {
            Some(t) => bucket_return_type(GAPFILL, t),
            None => plan_err!("date_bin_gapfill(interval, time [, origin]) needs a time argument"),
        }
    }
    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        invoke_bucket(GAPFILL, &args, |_| 0)
    }
}

/// How the aggregate values of inserted buckets are filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd)]
pub(crate) enum Fill {
    Null,
    Locf,
    Interpolate,
}

impl Fill {
    fn name(self) -> &'static str {
        match self {
            Fill::Null => "null",
            Fill::Locf => "locf",
            Fill::Interpolate => "interpolate",
        }
    }
}

/// `locf(x)` / `interpolate(x)`: markers the analyzer rule removes; evaluating one
/// means it was used outside a gap-filling aggregate.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct FillFunction {
    fill: Fill,
    signature: Signature,
}

impl FillFunction {
    pub(crate) fn new(fill: Fill) -> Self {
        Self {
            fill,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for FillFunction {
    fn name(&self) -> &str {
        self.fill.name()
    }
    fn signature(&self) -> &Signature {
        &self.signature
    }
    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        if self.fill == Fill::Interpolate && !arg_types[0].is_numeric() {
            return plan_err!(
                "interpolate() needs a numeric argument, got {}",
                arg_types[0]
            );
        }
        Ok(arg_types[0].clone())
    }
    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!(
            "{}() can only wrap an aggregate in a query grouped by date_bin_gapfill(...)",
            self.fill.name()
        )
    }
}

/// The logical gap-filling node, directly above the aggregate it fills.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct GapFill {
    input: Arc<LogicalPlan>,
    schema: DFSchemaRef,
    /// The aggregate's output column holding the bucket.
    time: Column,
    /// The other group columns: one series per distinct combination.
    groups: Vec<Column>,
    /// Aggregate output columns and how their gaps are filled.
    fills: Vec<(Column, Fill)>,
    interval: Expr,
    origin: Option<Expr>,
    /// Lower bounds of `time` from WHERE (the largest applies).
    lowers: Vec<Expr>,
    /// Upper bounds of `time` and whether each is inclusive (the smallest applies).
    uppers: Vec<(Expr, bool)>,
}

/// Plans only need `PartialOrd` to order equal nodes; schemas have no order.
impl PartialOrd for GapFill {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (self == other).then_some(std::cmp::Ordering::Equal)
    }
}

impl GapFill {
    fn nullable_schema(input: &LogicalPlan) -> Result<DFSchemaRef> {
        let s = input.schema();
        let fields = s
            .iter()
            .map(|(q, f)| (q.cloned(), Arc::new(f.as_ref().clone().with_nullable(true))))
            .collect::<Vec<_>>();
        Ok(Arc::new(DFSchema::new_with_metadata(
            fields,
            s.metadata().clone(),
        )?))
    }
}

impl UserDefinedLogicalNodeCore for GapFill {
    fn name(&self) -> &str {
        "GapFill"
    }
    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }
    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }
    fn expressions(&self) -> Vec<Expr> {
        let mut e = vec![self.interval.clone()];
        e.extend(self.origin.clone());
        e.extend(self.lowers.iter().cloned());
        e.extend(self.uppers.iter().map(|(u, _)| u.clone()));
        e
    }
    fn fmt_for_explain(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GapFill: time={}, groups=[", self.time)?;
        for (i, g) in self.groups.iter().enumerate() {
            write!(f, "{}{g}", if i > 0 { ", " } else { "" })?;
        }
        write!(f, "], fills=[")?;
        for (i, (c, fill)) in self.fills.iter().enumerate() {
            write!(f, "{}{c}: {}", if i > 0 { ", " } else { "" }, fill.name())?;
        }
        write!(f, "], interval={}", self.interval)
    }
    fn with_exprs_and_inputs(
        &self,
        exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> Result<Self> {
        let mut exprs = exprs.into_iter();
        let interval = exprs.next().expect("interval expression");
        let origin = self
            .origin
            .as_ref()
            .map(|_| exprs.next().expect("origin expression"));
        let lowers = (0..self.lowers.len())
            .map(|_| exprs.next().expect("lower bound"))
            .collect();
        let uppers = self
            .uppers
            .iter()
            .map(|(_, inclusive)| (exprs.next().expect("upper bound"), *inclusive))
            .collect();
        let input = inputs.swap_remove(0);
        Ok(Self {
            schema: Self::nullable_schema(&input)?,
            input: Arc::new(input),
            time: self.time.clone(),
            groups: self.groups.clone(),
            fills: self.fills.clone(),
            interval,
            origin,
            lowers,
            uppers,
        })
    }
}

/// Puts a [`GapFill`] above each aggregate grouped by `date_bin_gapfill`.
#[derive(Debug, Default)]
pub(crate) struct GapFillRule;

impl AnalyzerRule for GapFillRule {
    fn name(&self) -> &str {
        "gap_fill"
    }

    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let mut found = false;
        plan.apply_with_subqueries(|p| {
            if let LogicalPlan::Aggregate(a) = p {
                found |= a.group_expr.iter().any(is_gapfill_call);
            }
            Ok(if found {
                TreeNodeRecursion::Stop
            } else {
                TreeNodeRecursion::Continue
            })
        })?;
        if !found {
            return Ok(plan);
        }
        plan.transform_up_with_subqueries(|p| match p {
            LogicalPlan::Aggregate(ref a) if a.group_expr.iter().any(is_gapfill_call) => {
                wrap_aggregate(p)
            }
            LogicalPlan::Projection(p) if as_gapfill(&p.input).is_some() => apply_fills(p),
            other => Ok(Transformed::yes(other.recompute_schema()?)),
        })
        .map(|t| t.data)
    }
}

fn gapfill_args(e: &Expr) -> Option<&[Expr]> {
    match e {
        Expr::Alias(a) => gapfill_args(&a.expr),
        Expr::ScalarFunction(ScalarFunction { func, args }) if func.name() == GAPFILL => Some(args),
        _ => None,
    }
}

fn is_gapfill_call(e: &Expr) -> bool {
    gapfill_args(e).is_some()
}

fn as_gapfill(plan: &LogicalPlan) -> Option<&GapFill> {
    match plan {
        LogicalPlan::Extension(Extension { node }) => node.as_any().downcast_ref::<GapFill>(),
        _ => None,
    }
}

fn wrap_aggregate(plan: LogicalPlan) -> Result<Transformed<LogicalPlan>> {
    let LogicalPlan::Aggregate(agg) = &plan else {
        unreachable!("checked by caller")
    };
    let calls: Vec<usize> = (0..agg.group_expr.len())
        .filter(|&i| is_gapfill_call(&agg.group_expr[i]))
        .collect();
    if calls.len() != 1 {
        return plan_err!("a query can group by only one date_bin_gapfill(...)");
    }
    if agg
        .group_expr
        .iter()
        .any(|e| matches!(e, Expr::GroupingSet(_)))
    {
        return plan_err!("date_bin_gapfill cannot be combined with GROUPING SETS, CUBE or ROLLUP");
    }
    let args = gapfill_args(&agg.group_expr[calls[0]])
        .expect("gapfill call")
        .to_vec();
    let time_col = match &args[1] {
        Expr::Column(c) => c.clone(),
        Expr::Cast(c) => match c.expr.as_ref() {
            Expr::Column(c) => c.clone(),
            other => {
                return plan_err!(
                    "date_bin_gapfill: second argument must be a time column, got {other}"
                )
            }
        },
        other => {
            return plan_err!(
                "date_bin_gapfill: second argument must be a time column, got {other}"
            )
        }
    };
    let mut lowers = Vec::new();
    let mut uppers = Vec::new();
    collect_bounds(&agg.input, &time_col.name, &mut lowers, &mut uppers);
    if lowers.is_empty() {
        return plan_err!(
            "date_bin_gapfill needs a lower time bound in WHERE, such as time >= now() - interval '1 hour'"
        );
    }
    if uppers.is_empty() {
        uppers.push((datafusion::functions::datetime::expr_fn::now(), true));
    }
    let schema = plan.schema();
    let n_groups = agg.group_expr.len();
    let cols: Vec<Column> = schema.columns();
    let node = GapFill {
        schema: GapFill::nullable_schema(&plan)?,
        time: cols[calls[0]].clone(),
        groups: (0..n_groups)
            .filter(|&i| i != calls[0])
            .map(|i| cols[i].clone())
            .collect(),
        fills: cols[n_groups..]
            .iter()
            .map(|c| (c.clone(), Fill::Null))
            .collect(),
        interval: args[0].clone(),
        origin: args.get(2).cloned(),
        lowers,
        uppers,
        input: Arc::new(plan),
    };
    Ok(Transformed::yes(LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    })))
}

fn collect_bounds(
    plan: &LogicalPlan,
    time: &str,
    lowers: &mut Vec<Expr>,
    uppers: &mut Vec<(Expr, bool)>,
) {
    let is_time = |e: &Expr| match e {
        Expr::Column(c) => c.name == time,
        Expr::Cast(c) => matches!(c.expr.as_ref(), Expr::Column(c) if c.name == time),
        _ => false,
    };
    let constant = |e: &Expr| e.column_refs().is_empty();
    match plan {
        LogicalPlan::Filter(f) => {
            for c in split_conjunction(&f.predicate) {
                match c {
                    Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                        let (op, bound) = if is_time(left) && constant(right) {
                            (*op, right.as_ref())
                        } else if is_time(right) && constant(left) {
                            match op.swap() {
                                Some(op) => (op, left.as_ref()),
                                None => continue,
                            }
                        } else {
                            continue;
                        };
                        match op {
                            Operator::GtEq | Operator::Gt => lowers.push(bound.clone()),
                            Operator::Lt => uppers.push((bound.clone(), false)),
                            Operator::LtEq => uppers.push((bound.clone(), true)),
                            _ => {}
                        }
                    }
                    Expr::Between(b)
                        if !b.negated
                            && is_time(&b.expr)
                            && constant(&b.low)
                            && constant(&b.high) =>
                    {
                        lowers.push(b.low.as_ref().clone());
                        uppers.push((b.high.as_ref().clone(), true));
                    }
                    _ => {}
                }
            }
            collect_bounds(&f.input, time, lowers, uppers);
        }
        LogicalPlan::Projection(p) => collect_bounds(&p.input, time, lowers, uppers),
        LogicalPlan::SubqueryAlias(s) => collect_bounds(&s.input, time, lowers, uppers),
        _ => {}
    }
}

/// Removes `locf(..)` / `interpolate(..)` from the projection above a [`GapFill`]
/// and records them as that node's fill strategies.
fn apply_fills(p: Projection) -> Result<Transformed<LogicalPlan>> {
    let mut node = as_gapfill(&p.input).expect("checked by caller").clone();
    check_one_fill_per_aggregate(&p.expr, &node)?;
    let mut exprs = Vec::with_capacity(p.expr.len());
    for e in p.expr {
        let name = e.schema_name().to_string();
        let was_alias = matches!(e, Expr::Alias(_));
        let mut error = None;
        let rewritten = e
            .transform_up(|e| match e {
                Expr::ScalarFunction(ScalarFunction { ref func, ref args })
                    if func.name() == "locf" || func.name() == "interpolate" =>
                {
                    let fill = if func.name() == "locf" {
                        Fill::Locf
                    } else {
                        Fill::Interpolate
                    };
                    match &args[0] {
                        Expr::Column(c) => match node.fills.iter_mut().find(|(col, _)| col == c) {
                            Some(slot) => {
                                slot.1 = fill;
                                Ok(Transformed::yes(args[0].clone()))
                            }
                            None => {
                                error = Some(format!(
                                    "{}() must wrap an aggregate, not group column {c}",
                                    func.name()
                                ));
                                Ok(Transformed::no(e))
                            }
                        },
                        other => {
                            error = Some(format!(
                                "{}() must wrap an aggregate such as avg(usage), got {other}",
                                func.name()
                            ));
                            Ok(Transformed::no(e))
                        }
                    }
                }
                other => Ok(Transformed::no(other)),
            })?
            .data;
        if let Some(msg) = error {
            return plan_err!("{msg}");
        }
        let keep_name = !was_alias && rewritten.schema_name().to_string() != name;
        exprs.push(if keep_name {
            rewritten.alias(name)
        } else {
            rewritten
        });
    }
    node.schema = GapFill::nullable_schema(&node.input)?;
    let input = LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    });
    Ok(Transformed::yes(LogicalPlan::Projection(
        Projection::try_new(exprs, Arc::new(input))?,
    )))
}

/// A gap-filled aggregate column is filled one way: `avg(x)` next to `locf(avg(x))`
/// (or `locf` next to `interpolate` of the same aggregate) would share one column
/// and get one filling, so such queries are refused rather than answered wrongly.
fn check_one_fill_per_aggregate(exprs: &[Expr], node: &GapFill) -> Result<()> {
    let mut uses: HashMap<&Column, HashSet<&'static str>> = HashMap::new();
    for e in exprs {
        e.apply(|e| {
            match e {
                Expr::ScalarFunction(ScalarFunction { func, args })
                    if func.name() == "locf" || func.name() == "interpolate" =>
                {
                    if let Some(Expr::Column(c)) = args.first() {
                        if let Some((col, _)) = node.fills.iter().find(|(col, _)| col == c) {
                            let name = if func.name() == "locf" {
                                "locf"
                            } else {
                                "interpolate"
                            };
                            uses.entry(col).or_default().insert(name);
                        }
                    }
                    return Ok(TreeNodeRecursion::Jump);
                }
                Expr::Column(c) => {
                    if let Some((col, _)) = node.fills.iter().find(|(col, _)| col == c) {
                        uses.entry(col).or_default().insert("no fill");
                    }
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
    }
    for (col, fills) in uses {
        if fills.len() > 1 {
            let mut fills: Vec<_> = fills.into_iter().collect();
            fills.sort();
            return plan_err!(
                "{} is used with different gap fillings ({}) in one query; \
                 use one filling per aggregate, e.g. run them as separate queries",
                col.name,
                fills.join(", ")
            );
        }
    }
    Ok(())
}

/// Plans [`GapFill`] nodes; every other node goes to DataFusion's planner.
#[derive(Debug, Default)]
pub(crate) struct VigilQueryPlanner;

#[async_trait]
impl QueryPlanner for VigilQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(GapFillPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}

#[derive(Debug)]
struct GapFillPlanner;

#[async_trait]
impl ExtensionPlanner for GapFillPlanner {
    async fn plan_extension(
        &self,
        planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        session: &dyn Session,
        planning_ctx: &datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(gf) = node.as_any().downcast_ref::<GapFill>() else {
            return Ok(None);
        };
        let in_schema = logical_inputs[0].schema();
        let eval = |e: &Expr| -> Result<ScalarValue> {
            let pe: Arc<dyn PhysicalExpr> =
                planner.create_physical_expr(e, in_schema, session, planning_ctx)?;
            let one_row = RecordBatch::try_new_with_options(
                Arc::new(Schema::empty()),
                vec![],
                &RecordBatchOptions::new().with_row_count(Some(1)),
            )?;
            match pe.evaluate(&one_row)? {
                ColumnarValue::Scalar(s) => Ok(s),
                ColumnarValue::Array(a) => ScalarValue::try_from_array(&a, 0),
            }
        };
        let stride = Stride::from_scalar(&eval(&gf.interval)?)?;
        let origin = match &gf.origin {
            Some(o) => origin_from_scalar(&eval(o)?)?,
            None => 0,
        };
        let bucketer = Bucketer { stride, origin };
        let mut lower = i64::MIN;
        for l in &gf.lowers {
            lower = lower.max(origin_from_scalar(&eval(l)?)?);
        }
        let mut upper = i64::MAX;
        for (u, inclusive) in &gf.uppers {
            let u = origin_from_scalar(&eval(u)?)?;
            upper = upper.min(if *inclusive { u } else { u.saturating_sub(1) });
        }
        let (Some(first), Some(last)) = (bucketer.bucket(lower), bucketer.bucket(upper)) else {
            return plan_err!("date_bin_gapfill: time range is out of bounds");
        };
        if let Stride::Nanos(n) = stride {
            let buckets = (last as i128 - first as i128) / n as i128 + 1;
            if buckets > MAX_BUCKETS as i128 {
                return plan_err!(
                    "date_bin_gapfill would make {buckets} buckets per series (limit {MAX_BUCKETS}); narrow the time range or widen the interval"
                );
            }
        }
        let idx = |c: &Column| in_schema.index_of_column(c);
        let schema: SchemaRef = Arc::new(gf.schema.as_arrow().clone());
        let exec = GapFillExec {
            input: Arc::clone(&physical_inputs[0]),
            properties: Arc::new(PlanProperties::new(
                EquivalenceProperties::new(Arc::clone(&schema)),
                Partitioning::UnknownPartitioning(1),
                EmissionType::Final,
                Boundedness::Bounded,
            )),
            params: Arc::new(GapFillParams {
                schema,
                time: idx(&gf.time)?,
                groups: gf.groups.iter().map(idx).collect::<Result<_>>()?,
                fills: gf
                    .fills
                    .iter()
                    .map(|(c, f)| Ok((idx(c)?, *f)))
                    .collect::<Result<_>>()?,
                bucketer,
                first,
                last,
            }),
        };
        Ok(Some(Arc::new(exec)))
    }
}

#[derive(Debug)]
struct GapFillParams {
    schema: SchemaRef,
    time: usize,
    groups: Vec<usize>,
    fills: Vec<(usize, Fill)>,
    bucketer: Bucketer,
    first: i64,
    last: i64,
}

#[derive(Debug)]
pub(crate) struct GapFillExec {
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    params: Arc<GapFillParams>,
}

impl DisplayAs for GapFillExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = &self.params;
        write!(
            f,
            "GapFillExec: stride={:?}, range=[{}, {}], fills={:?}",
            p.bucketer.stride, p.first, p.last, p.fills
        )
    }
}

impl ExecutionPlan for GapFillExec {
    fn name(&self) -> &str {
        "GapFillExec"
    }
    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }
    fn required_input_distribution(&self) -> Vec<Distribution> {
        vec![Distribution::SinglePartition]
    }
    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }
    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(GapFillExec {
            input: children.swap_remove(0),
            properties: Arc::clone(&self.properties),
            params: Arc::clone(&self.params),
        }))
    }
    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return exec_err!("GapFillExec has one partition, asked for {partition}");
        }
        let input = self.input.execute(0, context)?;
        let params = Arc::clone(&self.params);
        let fut = async move {
            let batches = datafusion::physical_plan::common::collect(input).await?;
            fill_gaps(&params, batches)
        };
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.params.schema),
            futures::stream::once(fut),
        )))
    }
}

/// One output row: where its aggregate values and its group values come from.
struct OutRow {
    values: Option<u32>,
    group: u32,
    time: i64,
}

fn fill_gaps(p: &GapFillParams, batches: Vec<RecordBatch>) -> Result<RecordBatch> {
    let in_schema = match batches.first() {
        Some(b) => b.schema(),
        None => Arc::new(Schema::new(
            p.schema
                .fields()
                .iter()
                .map(|f| f.as_ref().clone())
                .collect::<Vec<_>>(),
        )),
    };
    let input = concat_batches(&in_schema, &batches)?;
    let n = input.num_rows();
    let times = cast(
        input.column(p.time),
        &DataType::Timestamp(TimeUnit::Nanosecond, None),
    )?;
    let times = cast(&times, &DataType::Int64)?;
    let times = times.as_primitive::<Int64Type>();

    // Sort by series, then time.
    let mut keys: Vec<SortColumn> = p
        .groups
        .iter()
        .map(|&i| SortColumn {
            values: Arc::clone(input.column(i)),
            options: None,
        })
        .collect();
    keys.push(SortColumn {
        values: Arc::new(times.clone()),
        options: None,
    });
    let order = lexsort_to_indices(&keys, None)?;
    let rows = if p.groups.is_empty() {
        None
    } else {
        let converter = RowConverter::new(
            p.groups
                .iter()
                .map(|&i| SortField::new(input.column(i).data_type().clone()))
                .collect(),
        )?;
        Some(
            converter.convert_columns(
                &p.groups
                    .iter()
                    .map(|&i| Arc::clone(input.column(i)))
                    .collect::<Vec<_>>(),
            )?,
        )
    };

    let mut out: Vec<OutRow> = Vec::with_capacity(n);
    let mut segments: Vec<std::ops::Range<usize>> = Vec::new();
    let order: Vec<u32> = order.values().to_vec();
    let mut start = 0;
    while start < order.len() || (start == 0 && p.groups.is_empty()) {
        let mut end = start + 1;
        if let Some(rows) = &rows {
            while end < order.len()
                && rows.row(order[end] as usize) == rows.row(order[start] as usize)
            {
                end += 1;
            }
        } else {
            end = order.len();
        }
        let series = &order[start..end.min(order.len())];
        let seg_start = out.len();
        let group = series.first().copied().unwrap_or(0);
        let mut k = 0;
        let mut b = p.first;
        loop {
            while k < series.len()
                && times.is_valid(series[k] as usize)
                && times.value(series[k] as usize) < b
            {
                out.push(OutRow {
                    values: Some(series[k]),
                    group,
                    time: times.value(series[k] as usize),
                });
                k += 1;
            }
            if b > p.last {
                break;
            }
            if k < series.len() && times.value(series[k] as usize) == b {
                out.push(OutRow {
                    values: Some(series[k]),
                    group,
                    time: b,
                });
                k += 1;
            } else {
                out.push(OutRow {
                    values: None,
                    group,
                    time: b,
                });
            }
            match p.bucketer.next(b) {
                Some(next) => b = next,
                None => break,
            }
        }
        for &r in &series[k..] {
            out.push(OutRow {
                values: Some(r),
                group,
                time: times.value(r as usize),
            });
        }
        segments.push(seg_start..out.len());
        start = end;
        if order.is_empty() {
            break;
        }
    }

    let group_idx = UInt32Array::from_iter_values(out.iter().map(|r| r.group));
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(p.schema.fields().len());
    for (i, field) in p.schema.fields().iter().enumerate() {
        let col = if i == p.time {
            let tz = match field.data_type() {
                DataType::Timestamp(_, tz) => tz.clone(),
                _ => None,
            };
            let t = TimestampNanosecondArray::from_iter_values(out.iter().map(|r| r.time))
                .with_timezone_opt(tz);
            cast(&t, field.data_type())?
        } else if p.groups.contains(&i) {
            take(input.column(i), &group_idx, None)?
        } else {
            let fill = p
                .fills
                .iter()
                .find(|(c, _)| *c == i)
                .map_or(Fill::Null, |(_, f)| *f);
            fill_column(input.column(i), &out, &segments, fill, field.data_type())?
        };
        columns.push(col);
    }
    Ok(RecordBatch::try_new(Arc::clone(&p.schema), columns)?)
}

fn fill_column(
    col: &ArrayRef,
    out: &[OutRow],
    segments: &[std::ops::Range<usize>],
    fill: Fill,
    data_type: &DataType,
) -> Result<ArrayRef> {
    let present = |r: &OutRow| r.values.filter(|&v| col.is_valid(v as usize));
    match fill {
        Fill::Null => Ok(take(
            col,
            &UInt32Array::from_iter(out.iter().map(|r| r.values)),
            None,
        )?),
        Fill::Locf => {
            let mut idx = Vec::with_capacity(out.len());
            for seg in segments {
                let mut last = None;
                for r in &out[seg.clone()] {
                    if let Some(v) = present(r) {
                        last = Some(v);
                    }
                    idx.push(last);
                }
            }
            Ok(take(col, &UInt32Array::from(idx), None)?)
        }
        Fill::Interpolate => {
            let values = cast(col, &DataType::Float64)?;
            let values = values.as_primitive::<Float64Type>();
            let mut result: Vec<Option<f64>> = Vec::with_capacity(out.len());
            for seg in segments {
                let rows = &out[seg.clone()];
                let known: Vec<(usize, f64)> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(j, r)| present(r).map(|v| (j, values.value(v as usize))))
                    .collect();
                let mut next = 0;
                for (j, r) in rows.iter().enumerate() {
                    if let Some(v) = present(r) {
                        result.push(Some(values.value(v as usize)));
                        continue;
                    }
                    while next < known.len() && known[next].0 < j {
                        next += 1;
                    }
                    let value = match (next.checked_sub(1).map(|i| known[i]), known.get(next)) {
                        (Some((j0, v0)), Some(&(j1, v1))) => {
                            let (t0, t1, t) =
                                (rows[j0].time as f64, rows[j1].time as f64, r.time as f64);
                            Some(v0 + (v1 - v0) * (t - t0) / (t1 - t0))
                        }
                        _ => None,
                    };
                    result.push(value);
                }
            }
            let f: ArrayRef = Arc::new(Float64Array::from(result));
            Ok(cast(&f, data_type)?)
        }
    }
}
