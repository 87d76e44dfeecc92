//! Postgres SQL that DataFusion reads differently, rewritten before pgwire's
//! statements reach `datafusion-postgres`'s own parser.
//!
//! Clients written for PostgreSQL (Grafana's query builder above all) send SQL that
//! plans in DataFusion but answers differently, or does not plan:
//! - `?` placeholders (numbered `$1`, `$2`, ...);
//! - `user`, which Postgres reads as `current_user`;
//! - a scalar function in `FROM` (`string_to_array(...) s`), which Postgres reads as
//!   a one-row table whose one column is named after the alias;
//! - a single-column table function with a table alias only
//!   (`generate_series(1, 3) AS i`): Postgres names the column `i` too;
//! - `information_schema.columns`, whose `data_type` Postgres clients read as a
//!   SQL type name (`double precision`, `timestamp with time zone`: Grafana picks
//!   time and value columns by it) and whose `ordinal_position` counts from 1;
//! - result column names: Postgres names `count(*)` `count`, not `count(*)`.
//!
//! The rewrite runs first, so `datafusion-postgres`'s whole-query substitutions
//! (one of which answers Grafana's search-path test with nothing, which made every
//! table `public.cpu` instead of `cpu`) never see these queries as they were sent.

use std::collections::HashMap;
use std::ops::ControlFlow;

use datafusion::execution::FunctionRegistry;
use datafusion::prelude::SessionContext;
use datafusion::sql::sqlparser::ast::{
    visit_expressions, CastKind, DataType as SqlType, Expr, FunctionArguments, GroupByExpr, Ident,
    ObjectName, OrderBy, OrderByExpr, OrderByKind, Query, SelectItem, SetExpr, Statement,
    TableAlias, TableAliasColumnDef, TableFactor, Value, VisitMut, VisitorMut,
};
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use datafusion::sql::sqlparser::parser::Parser;

/// `sql` as DataFusion should read it, or `sql` itself when it does not parse (the
/// parser downstream then reports the error in its own words). Placeholders in
/// two styles are refused here, with an error that says so.
pub(crate) fn rewrite(sql: &str, ctx: &SessionContext) -> Result<String, vigil_sql::Error> {
    let numbered = vigil_sql::number_placeholders(sql, &PostgreSqlDialect {})?;
    Ok(rewrite_numbered(numbered, ctx))
}

fn rewrite_numbered(numbered: std::borrow::Cow<'_, str>, ctx: &SessionContext) -> String {
    let Ok(mut statements) = Parser::parse_sql(&PostgreSqlDialect {}, &numbered) else {
        return numbered.into_owned();
    };
    if statements.is_empty() {
        return numbered.into_owned();
    }
    let original = statements.clone();
    let lowered = numbered.to_ascii_lowercase();
    for statement in &mut statements {
        // psql's, DBeaver's and pgcli's catalog queries are `datafusion-postgres`'s
        // to answer: some it recognises token by token and replaces whole, so
        // they only get what it lacks (search-path visibility, `user`).
        let catalog = reads_pg_catalog(statement);
        let _ = statement.visit(&mut Rewriter {
            ctx,
            catalog,
            sql: &lowered,
        });
        if let (Statement::Query(query), false) = (&mut *statement, catalog) {
            name_columns_as_postgres(query);
            in_subqueries_as_arrays(query);
            hoist_order_by_subqueries(query);
        }
    }
    if statements == original {
        return numbered.into_owned();
    }
    statements
        .iter()
        .map(|s| s.to_string())
        .collect::<Vec<_>>()
        .join(";\n")
}

/// Whether a statement reads `pg_catalog` (qualified, or a `pg_` relation).
fn reads_pg_catalog(statement: &Statement) -> bool {
    datafusion::sql::sqlparser::ast::visit_relations(statement, |name| {
        let catalog = name.0.iter().any(|p| {
            p.as_ident().is_some_and(|i| {
                i.value.eq_ignore_ascii_case("pg_catalog")
                    || (name.0.len() == 1 && i.value.to_ascii_lowercase().starts_with("pg_"))
            })
        });
        if catalog {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    })
    .is_break()
}

/// Postgres shows a table as visible only when its schema is on the search path
/// (`\dt` lists `public`, not `rollup_10m`); `datafusion-postgres` says yes to all.
const VISIBLE_TABLES: &str = "(SELECT c.oid FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
     WHERE n.nspname IN ('pg_catalog', 'public'))";

struct Rewriter<'a> {
    ctx: &'a SessionContext,
    /// The statement reads `pg_catalog`: only expressions are rewritten.
    catalog: bool,
    /// The statement's text, lower-cased.
    sql: &'a str,
}

impl VisitorMut for Rewriter<'_> {
    type Break = ();

    fn pre_visit_expr(&mut self, expr: &mut Expr) -> ControlFlow<()> {
        if let Expr::Function(f) = expr {
            if matches!(f.args, FunctionArguments::None)
                && f.name.0.len() == 1
                && f.name.to_string().eq_ignore_ascii_case("user")
            {
                f.name = ObjectName::from(vec![Ident::new("session_user")]);
            }
        }
        // `oid::regtype::text` (psycopg's type lookup) is the type's name, which
        // `format_type` gives; datafusion-postgres leaves the number.
        if let Expr::Cast {
            expr: inner,
            data_type: SqlType::Text,
            ..
        } = expr
        {
            if let Expr::Cast {
                expr: oid,
                data_type: SqlType::Custom(name, _),
                ..
            } = inner.as_ref()
            {
                let regtype = name
                    .0
                    .last()
                    .and_then(|p| p.as_ident())
                    .is_some_and(|i| i.value.eq_ignore_ascii_case("regtype"));
                if regtype {
                    let sql = format!("format_type({oid}, NULL)");
                    if let Some(e) = Parser::new(&PostgreSqlDialect {})
                        .try_with_sql(&sql)
                        .ok()
                        .and_then(|mut p| p.parse_expr().ok())
                    {
                        *expr = e;
                    }
                }
            }
        }
        if let Expr::Function(f) = expr {
            let visible = f
                .name
                .0
                .last()
                .and_then(|p| p.as_ident())
                .is_some_and(|i| i.value.eq_ignore_ascii_case("pg_table_is_visible"));
            if let (true, FunctionArguments::List(list)) = (visible, &f.args) {
                if let [arg] = list.args.as_slice() {
                    let sql = format!("({arg}) IN {VISIBLE_TABLES}");
                    if let Some(e) = Parser::new(&PostgreSqlDialect {})
                        .try_with_sql(&sql)
                        .ok()
                        .and_then(|mut p| p.parse_expr().ok())
                    {
                        *expr = Expr::Nested(Box::new(e));
                        // Not visited again: the subquery is the catalog's own.
                        return ControlFlow::Continue(());
                    }
                }
            }
        }
        ControlFlow::Continue(())
    }

    // After the children: a replacement is not visited again.
    fn post_visit_table_factor(&mut self, factor: &mut TableFactor) -> ControlFlow<()> {
        if self.catalog {
            return ControlFlow::Continue(());
        }
        let TableFactor::Table {
            name, alias, args, ..
        } = factor
        else {
            return ControlFlow::Continue(());
        };
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|p| match p.as_ident() {
                Some(i) if i.quote_style.is_none() => i.value.to_ascii_lowercase(),
                Some(i) => i.value.clone(),
                None => p.to_string(),
            })
            .collect();
        match args {
            None if parts.len() >= 2
                && parts[parts.len() - 2] == "information_schema"
                && parts[parts.len() - 1] == "columns" =>
            {
                let alias = alias.clone().unwrap_or_else(|| table_alias("columns"));
                if let Some(derived) = derived(&columns_view(name), alias) {
                    *factor = derived;
                }
            }
            Some(targs) if parts.len() == 1 => {
                let function = parts[0].as_str();
                // (Looked up by name: `ctx.state()` would copy the whole session.)
                let is_table_function = self.ctx.table_function(function).is_ok();
                if is_table_function {
                    // `generate_series(1, 3) AS i`: the column is `i` too.
                    let single_column = matches!(function, "generate_series" | "range");
                    if let Some(a) = alias.as_mut() {
                        // Unless the query reads DataFusion's name for the
                        // column (`a.value`), as vigil's own queries may.
                        let reads_value = self
                            .sql
                            .contains(&format!("{}.value", a.name.value.to_ascii_lowercase()));
                        if single_column && a.columns.is_empty() && !reads_value {
                            // The alias as written, quotes included.
                            a.columns = vec![TableAliasColumnDef {
                                name: a.name.clone(),
                                data_type: None,
                            }];
                        }
                    }
                    return ControlFlow::Continue(());
                }
                if self.ctx.udf(function).is_err() {
                    return ControlFlow::Continue(());
                }
                // A scalar function as a one-row table: `f(x) s` is `(SELECT f(x) AS s) s`.
                let column = alias
                    .as_ref()
                    .map(|a| {
                        a.columns
                            .first()
                            .map(|c| c.name.clone())
                            .unwrap_or_else(|| a.name.clone())
                    })
                    .unwrap_or_else(|| Ident::new(function));
                let args = targs
                    .args
                    .iter()
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ");
                let mut alias = alias.clone().unwrap_or_else(|| table_alias(function));
                alias.columns.clear();
                let sql = format!("SELECT {name}({args}) AS {column}");
                if let Some(derived) = derived(&sql, alias) {
                    *factor = derived;
                }
            }
            _ => {}
        }
        ControlFlow::Continue(())
    }
}

fn table_alias(name: &str) -> TableAlias {
    TableAlias {
        explicit: true,
        name: Ident::new(name),
        columns: vec![],
        at: None,
    }
}

fn derived(sql: &str, alias: TableAlias) -> Option<TableFactor> {
    let query = Parser::new(&PostgreSqlDialect {})
        .try_with_sql(sql)
        .ok()?
        .parse_query()
        .ok()?;
    Some(TableFactor::Derived {
        lateral: false,
        subquery: query,
        alias: Some(alias),
        sample: None,
    })
}

/// `information_schema.columns` with Postgres's type names and 1-based positions.
fn columns_view(name: &ObjectName) -> String {
    format!(
        "SELECT table_catalog, table_schema, table_name, column_name, \
         ordinal_position + 1 AS ordinal_position, column_default, is_nullable, \
         pg_information_schema_type(data_type) AS data_type, \
         character_maximum_length, character_octet_length, numeric_precision, \
         numeric_precision_radix, numeric_scale, datetime_precision, interval_type, \
         pg_information_schema_udt(data_type) AS udt_name FROM {name}"
    )
}

/// Ends a result column name made unique for DataFusion (a private-use character
/// no client writes); [`postgres_field_name`] cuts it off again.
pub(crate) const DUPLICATE_NAME_MARK: char = '\u{E000}';

/// The name a client sees for a result column.
pub(crate) fn postgres_field_name(name: &str) -> &str {
    match name.rfind(DUPLICATE_NAME_MARK) {
        Some(at)
            if name[at + DUPLICATE_NAME_MARK.len_utf8()..]
                .bytes()
                .all(|b| b.is_ascii_digit())
                && at + DUPLICATE_NAME_MARK.len_utf8() < name.len() =>
        {
            &name[..at]
        }
        _ => name,
    }
}

/// `schema` with the names clients see (see [`postgres_field_name`]).
pub(crate) fn client_schema(
    schema: &datafusion::arrow::datatypes::Schema,
) -> datafusion::arrow::datatypes::SchemaRef {
    use datafusion::arrow::datatypes::{Field, Schema};
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_name(postgres_field_name(f.name())))
        .collect();
    std::sync::Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// Aliases the unnamed result columns of a query as Postgres names them
/// (`count(*)` is `count`, `x::int` is `x`, `1` is `?column?`), where that name is
/// unique in the result: DataFusion refuses two columns of one name, Postgres does
/// not, so a repeated name keeps DataFusion's.
fn name_columns_as_postgres(query: &mut Query) {
    let mut body = query.body.as_mut();
    let select = loop {
        match body {
            SetExpr::Select(select) => break select,
            SetExpr::SetOperation { left, .. } => body = left.as_mut(),
            SetExpr::Query(q) => body = q.body.as_mut(),
            _ => return,
        }
    };
    if select.projection.iter().any(|item| {
        matches!(
            item,
            SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..)
        )
    }) {
        return;
    }
    // What each column would be called: Postgres's name where it differs from
    // DataFusion's, DataFusion's (the expression text) otherwise.
    let names: Vec<(String, bool)> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::UnnamedExpr(e) => match e {
                Expr::Identifier(i) => (i.value.clone(), false),
                Expr::CompoundIdentifier(parts) => (
                    parts.last().map(|p| p.value.clone()).unwrap_or_default(),
                    false,
                ),
                other => (postgres_column_name(other), true),
            },
            SelectItem::ExprWithAlias { alias, .. } => (alias.value.clone(), false),
            other => (other.to_string(), false),
        })
        .collect();
    // DataFusion refuses two columns of one name, Postgres does not: a repeated
    // name is made unique with a suffix the front end cuts off again.
    let mut seen: HashMap<String, usize> = HashMap::new();
    let aliases: Vec<Option<String>> = names
        .iter()
        .map(|(n, rename)| {
            let count = seen.entry(n.clone()).or_insert(0);
            *count += 1;
            match (*rename, *count) {
                (_, 1) if *rename => Some(n.clone()),
                (_, 1) => None,
                (_, k) => Some(format!("{n}{DUPLICATE_NAME_MARK}{k}")),
            }
        })
        .collect();
    for (item, alias) in select.projection.iter_mut().zip(aliases) {
        let Some(alias) = alias else { continue };
        match item {
            SelectItem::UnnamedExpr(e) => {
                *item = SelectItem::ExprWithAlias {
                    expr: e.clone(),
                    alias: Ident::with_quote('"', alias),
                };
            }
            SelectItem::ExprWithAlias { alias: a, .. } => *a = Ident::with_quote('"', alias),
            _ => {}
        }
    }
}

/// DataFusion runs `x IN (SELECT ...)` only as a filter; in a result column or a
/// sort key (Grafana's table list has both) it fails to plan. There an
/// uncorrelated `IN` is read as membership in the subquery's values gathered
/// once: `coalesce(array_has((SELECT array_agg(v) FROM (...)), x), false)`.
fn in_subqueries_as_arrays(query: &mut Query) {
    /// Rewrites the `IN`s of this query level only: inside a subquery (a filter
    /// there) DataFusion plans them itself.
    struct TopLevelIn {
        depth: usize,
    }
    impl VisitorMut for TopLevelIn {
        type Break = ();
        fn pre_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth += 1;
            ControlFlow::Continue(())
        }
        fn post_visit_query(&mut self, _: &mut Query) -> ControlFlow<()> {
            self.depth -= 1;
            ControlFlow::Continue(())
        }
        fn post_visit_expr(&mut self, e: &mut Expr) -> ControlFlow<()> {
            if self.depth == 0 {
                as_array_test(e);
            }
            ControlFlow::Continue(())
        }
    }
    fn rewrite(e: &mut Expr) {
        let _ = e.visit(&mut TopLevelIn { depth: 0 });
    }
    fn as_array_test(e: &mut Expr) {
        {
            if let Expr::InSubquery {
                expr,
                subquery,
                negated,
            } = e
            {
                let sql = format!(
                    "{not}coalesce(array_has((SELECT array_agg(\"?v\") FROM ({subquery}) AS \"?in\" (\"?v\")), {expr}), false)",
                    not = if *negated { "NOT " } else { "" },
                );
                if let Some(parsed) = Parser::new(&PostgreSqlDialect {})
                    .try_with_sql(&sql)
                    .ok()
                    .and_then(|mut p| p.parse_expr().ok())
                {
                    *e = Expr::Nested(Box::new(parsed));
                }
            }
        }
    }
    if let SetExpr::Select(select) = query.body.as_mut() {
        for item in &mut select.projection {
            match item {
                SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => {
                    rewrite(e)
                }
                _ => {}
            }
        }
    }
    if let Some(OrderBy {
        kind: OrderByKind::Expressions(order),
        ..
    }) = &mut query.order_by
    {
        for o in order {
            rewrite(&mut o.expr);
        }
    }
}

/// DataFusion plans no subquery in `ORDER BY` (Grafana's table list sorts by its
/// search-path test): such a query sorts a derived table instead, whose extra
/// columns carry the sort keys, and shows only the columns asked for.
fn hoist_order_by_subqueries(query: &mut Query) {
    let Some(OrderBy {
        kind: OrderByKind::Expressions(order),
        ..
    }) = &query.order_by
    else {
        return;
    };
    let has_subquery = |e: &Expr| {
        visit_expressions(e, |e| match e {
            Expr::Subquery(_) | Expr::InSubquery { .. } | Expr::Exists { .. } => {
                ControlFlow::Break(())
            }
            _ => ControlFlow::Continue(()),
        })
        .is_break()
    };
    if !order.iter().any(|o| has_subquery(&o.expr)) {
        return;
    }
    let SetExpr::Select(select) = query.body.as_ref() else {
        return;
    };
    let grouped = !matches!(&select.group_by, GroupByExpr::Expressions(g, _) if g.is_empty());
    if select.distinct.is_some() || grouped || select.having.is_some() {
        return;
    }
    // Output names as Postgres folds them (unquoted is lower case).
    let folded = |i: &Ident| match i.quote_style {
        Some(_) => i.value.clone(),
        None => i.value.to_lowercase(),
    };
    let names: Option<Vec<String>> = select
        .projection
        .iter()
        .map(|item| match item {
            SelectItem::ExprWithAlias { alias, .. } => Some(folded(alias)),
            SelectItem::UnnamedExpr(Expr::Identifier(i)) => Some(folded(i)),
            SelectItem::UnnamedExpr(Expr::CompoundIdentifier(p)) => p.last().map(folded),
            _ => None,
        })
        .collect();
    let Some(names) = names else { return };
    let mut inner = select.as_ref().clone();
    let mut outer_order = Vec::with_capacity(order.len());
    for (k, o) in order.iter().enumerate() {
        let position = match &o.expr {
            Expr::Value(v) => match &v.value {
                Value::Number(n, _) => n.parse::<usize>().ok(),
                _ => None,
            },
            _ => None,
        };
        // A sort key naming an output column sorts by that column, as in Postgres.
        let output = match &o.expr {
            Expr::Identifier(i) => names.iter().position(|n| *n == folded(i)),
            _ => None,
        };
        let expr = match (position, output) {
            (Some(n), _) if (1..=names.len()).contains(&n) => {
                Expr::Identifier(Ident::with_quote('"', names[n - 1].clone()))
            }
            // Postgres refuses a position past the last column; so does DataFusion.
            (Some(_), _) => return,
            (None, Some(k)) => Expr::Identifier(Ident::with_quote('"', names[k].clone())),
            _ => {
                let key = Ident::with_quote('"', format!("?order{k}"));
                inner.projection.push(SelectItem::ExprWithAlias {
                    expr: o.expr.clone(),
                    alias: key.clone(),
                });
                Expr::Identifier(key)
            }
        };
        outer_order.push(OrderByExpr {
            expr,
            options: o.options,
            with_fill: None,
        });
    }
    let columns = names
        .iter()
        .map(|n| Ident::with_quote('"', n.clone()).to_string())
        .collect::<Vec<_>>()
        .join(", ");
    let Some(TableFactor::Derived { subquery, .. }) = derived(
        &format!("SELECT {columns} FROM ({inner}) AS \"?ordered\""),
        table_alias("unused"),
    ) else {
        return;
    };
    query.body = subquery.body;
    query.order_by = Some(OrderBy {
        kind: OrderByKind::Expressions(outer_order),
        interpolate: None,
    });
}

/// Postgres's name for an unaliased result column (its `FigureColname`).
fn postgres_column_name(e: &Expr) -> String {
    figure_column_name(e).0
}

/// A name and how strongly the expression implies it (Postgres's `strength`:
/// 2 for a column or function name, 1 for a type or `case`, 0 for `?column?`).
fn figure_column_name(e: &Expr) -> (String, u8) {
    fn ident(i: &Ident) -> String {
        if i.quote_style.is_some() {
            i.value.clone()
        } else {
            i.value.to_lowercase()
        }
    }
    let name = match e {
        Expr::Identifier(i) => Some(ident(i)),
        Expr::CompoundIdentifier(parts) => parts.last().map(ident),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map(ident),
        Expr::Nested(inner) => return figure_column_name(inner),
        Expr::Cast {
            expr,
            data_type,
            kind,
            ..
        } if !matches!(kind, CastKind::TryCast | CastKind::SafeCast) => {
            let inner = figure_column_name(expr);
            return match (inner.1, postgres_type_name(data_type)) {
                (0, Some(t)) => (t, 1),
                _ => inner,
            };
        }
        Expr::Case { else_result, .. } => {
            return match else_result.as_deref().map(figure_column_name) {
                Some(named) if named.1 == 2 => named,
                _ => ("case".into(), 1),
            };
        }
        Expr::Array(_) => Some("array".into()),
        Expr::Exists { .. } => Some("exists".into()),
        Expr::Extract { .. } => Some("extract".into()),
        Expr::Substring { .. } => Some("substring".into()),
        Expr::Position { .. } => Some("position".into()),
        Expr::Overlay { .. } => Some("overlay".into()),
        Expr::Trim { .. } => Some("btrim".into()),
        Expr::Ceil { .. } => Some("ceil".into()),
        Expr::Floor { .. } => Some("floor".into()),
        Expr::TypedString(t) => {
            return postgres_type_name(&t.data_type).map_or(("?column?".into(), 0), |t| (t, 1))
        }
        _ => None,
    };
    name.map_or(("?column?".into(), 0), |n| (n, 2))
}

/// The `pg_type.typname` of a cast's target, as Postgres names a cast constant.
fn postgres_type_name(t: &SqlType) -> Option<String> {
    let name = match t {
        SqlType::Int(_) | SqlType::Integer(_) | SqlType::Int4(_) => "int4",
        SqlType::BigInt(_) | SqlType::Int8(_) => "int8",
        SqlType::SmallInt(_) | SqlType::Int2(_) => "int2",
        SqlType::Real | SqlType::Float4 => "float4",
        SqlType::DoublePrecision | SqlType::Float8 | SqlType::Double(_) => "float8",
        SqlType::Text | SqlType::Varchar(_) | SqlType::CharacterVarying(_) => {
            if matches!(t, SqlType::Text) {
                "text"
            } else {
                "varchar"
            }
        }
        SqlType::Boolean | SqlType::Bool => "bool",
        SqlType::Date => "date",
        SqlType::Timestamp(_, tz) => {
            if matches!(
                tz,
                datafusion::sql::sqlparser::ast::TimezoneInfo::WithTimeZone
                    | datafusion::sql::sqlparser::ast::TimezoneInfo::Tz
            ) {
                "timestamptz"
            } else {
                "timestamp"
            }
        }
        SqlType::Interval { .. } => "interval",
        SqlType::Numeric(_) | SqlType::Decimal(_) => "numeric",
        SqlType::Bytea => "bytea",
        _ => return None,
    };
    Some(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rewritten(sql: &str) -> String {
        rewrite(sql, &SessionContext::new()).unwrap()
    }

    #[test]
    fn grafana_search_path_subquery_plans_as_postgres_reads_it() {
        let sql = rewritten(
            "SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END \
             FROM generate_series(1, 2) as i, string_to_array(current_setting('search_path'),',') s",
        );
        assert!(sql.contains("THEN session_user ELSE"), "{sql}");
        assert!(sql.contains("generate_series(1, 2) AS i (i)"), "{sql}");
        assert!(
            sql.contains("(SELECT string_to_array(current_setting('search_path'), ',') AS s) s"),
            "{sql}"
        );
        // The CASE column is named as Postgres names it: after its ELSE.
        assert!(sql.contains("END AS \"btrim\""), "{sql}");
    }

    #[test]
    fn a_table_function_column_read_by_its_datafusion_name_keeps_it() {
        let sql = "SELECT count(*) FROM generate_series(1, 3) a WHERE a.value > 1";
        assert_eq!(
            rewritten(sql),
            "SELECT count(*) AS \"count\" FROM generate_series(1, 3) a WHERE a.value > 1"
        );
    }

    #[test]
    fn columns_get_postgres_names_unless_repeated() {
        assert_eq!(
            rewritten("SELECT count(*), max(v), host, t.region, 1, x::int FROM t"),
            "SELECT count(*) AS \"count\", max(v) AS \"max\", host, t.region, 1 AS \"?column?\", x::INT AS \"x\" FROM t"
        );
        assert_eq!(
            rewritten("SELECT max(a), max(b) FROM t"),
            "SELECT max(a) AS \"max\", max(b) AS \"max\u{E000}2\" FROM t"
        );
        assert_eq!(postgres_field_name("max\u{E000}2"), "max");
        assert_eq!(
            rewritten("SELECT CASE WHEN a THEN 1 END, CASE WHEN a THEN 1 ELSE b END FROM t"),
            "SELECT CASE WHEN a THEN 1 END AS \"case\", CASE WHEN a THEN 1 ELSE b END AS \"b\" FROM t"
        );
        assert_eq!(
            rewritten("SELECT *, count(*) FROM t"),
            "SELECT *, count(*) FROM t"
        );
    }

    #[test]
    fn information_schema_columns_is_read_with_postgres_types() {
        let sql =
            rewritten("SELECT data_type FROM information_schema.columns WHERE table_name = 'cpu'");
        assert!(
            sql.contains("pg_information_schema_type(data_type) AS data_type"),
            "{sql}"
        );
        assert!(sql.contains(") AS columns WHERE"), "{sql}");
        let sql = rewritten("SELECT c.data_type FROM information_schema.columns c");
        assert!(sql.ends_with("FROM information_schema.columns) c"), "{sql}");
    }

    #[test]
    fn subqueries_leave_order_by_for_a_derived_table() {
        assert_eq!(
            rewritten("SELECT a AS x, b FROM t WHERE c > 0 ORDER BY CASE WHEN a IN (SELECT 1) THEN 0 ELSE 1 END DESC, 1 LIMIT 3"),
            "SELECT \"x\", \"b\" FROM (SELECT a AS x, b, CASE WHEN (coalesce(array_has((SELECT array_agg(\"?v\") FROM (SELECT 1) AS \"?in\" (\"?v\")), a), false)) THEN 0 ELSE 1 END AS \"?order0\" FROM t WHERE c > 0) AS \"?ordered\" ORDER BY \"?order0\" DESC, \"x\" LIMIT 3"
        );
        // Without a subquery, or with grouping, the query is left as it is.
        assert_eq!(
            rewritten("SELECT a FROM t ORDER BY b"),
            "SELECT a FROM t ORDER BY b"
        );
        // Grouped, the sort key stays where it is (as an array test).
        let grouped = "SELECT a FROM t GROUP BY a ORDER BY a IN (SELECT 1)";
        assert!(rewritten(grouped)
            .starts_with("SELECT a FROM t GROUP BY a ORDER BY (coalesce(array_has("));
    }

    #[test]
    fn grafana_table_list_is_rewritten_whole() {
        let sp = "quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), array_upper(string_to_array(current_setting('search_path'),','),1)) as i, string_to_array(current_setting('search_path'),',') s)";
        let sql = rewritten(&format!("SELECT CASE WHEN {sp} THEN quote_ident(table_name) ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS \"table\" FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog') ORDER BY CASE WHEN {sp} THEN 0 ELSE 1 END, 1"));
        assert!(
            sql.contains("AS \"?ordered\" ORDER BY \"?order0\""),
            "{sql}"
        );
    }

    #[test]
    fn catalog_queries_keep_their_text_but_see_the_search_path() {
        let psql = "SELECT n.nspname, c.relname, pg_catalog.format_type(1, 2) FROM pg_catalog.pg_class c LEFT JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";
        assert_eq!(rewritten(psql), psql);
        let dt = rewritten("SELECT c.relname FROM pg_catalog.pg_class c WHERE pg_catalog.pg_table_is_visible(c.oid)");
        assert!(
            dt.contains("WHERE ((c.oid) IN (SELECT c.oid FROM pg_catalog.pg_class c"),
            "{dt}"
        );
    }

    #[test]
    fn in_subqueries_in_results_read_arrays_and_regtype_names_read_format_type() {
        assert_eq!(
            rewritten("SELECT a IN (SELECT b FROM t) AS x FROM u"),
            "SELECT (coalesce(array_has((SELECT array_agg(\"?v\") FROM (SELECT b FROM t) AS \"?in\" (\"?v\")), a), false)) AS x FROM u"
        );
        // In a filter DataFusion plans it itself.
        let filter = "SELECT a FROM u WHERE a IN (SELECT b FROM t)";
        assert_eq!(rewritten(filter), filter);
        assert_eq!(
            rewritten("SELECT typname, oid::regtype::text AS regtype FROM pg_type"),
            "SELECT typname, format_type(oid, NULL) AS regtype FROM pg_type"
        );
    }

    #[test]
    fn review_cases_keep_their_meaning() {
        // A quoted alias stays quoted (no SQL from an identifier).
        let sql = rewritten(
            "SELECT count(*) FROM generate_series(1,3) AS \"x) CROSS JOIN cpu --\" WHERE false",
        );
        assert!(
            sql.contains("AS \"x) CROSS JOIN cpu --\" (\"x) CROSS JOIN cpu --\")"),
            "{sql}"
        );
        assert!(sql.ends_with("WHERE false"), "{sql}");
        // An output alias in ORDER BY is the output column, and names fold.
        let sql = rewritten("SELECT -usage AS host FROM cpu ORDER BY host, (SELECT 1)");
        assert!(sql.ends_with("ORDER BY \"host\", \"?order1\""), "{sql}");
        let sql = rewritten("SELECT Host FROM cpu ORDER BY (SELECT 1)");
        assert!(sql.starts_with("SELECT \"host\" FROM"), "{sql}");
        // IN inside a subquery's filter is DataFusion's to plan.
        let nested = "SELECT (SELECT count(*) FROM cpu WHERE usage NOT IN (SELECT 1)) AS n";
        assert_eq!(rewritten(nested), nested);
        // A user's own U+E000 is not a duplicate mark.
        assert_eq!(postgres_field_name("x\u{E000}y"), "x\u{E000}y");
        assert_eq!(postgres_field_name("x\u{E000}"), "x\u{E000}");
    }

    #[test]
    fn placeholders_are_numbered_and_bad_sql_passes_through() {
        assert_eq!(
            rewritten("SELECT a FROM t WHERE b = ?"),
            "SELECT a FROM t WHERE b = $1"
        );
        assert_eq!(rewritten("SELEC oops"), "SELEC oops");
        let mixed = rewrite("SELECT ? + $1", &SessionContext::new()).unwrap_err();
        assert!(mixed.to_string().contains("mixes"), "{mixed}");
    }
}
