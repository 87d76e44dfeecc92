//! Postgres functions that clients call on the catalog and that DataFusion and
//! `datafusion-postgres` answer differently from Postgres.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use datafusion_postgres::pgwire::api::Type;

/// `quote_ident(text)` as Postgres quotes: unless the name is all lower-case
/// letters, digits and underscores, starts with a letter or underscore and is not a
/// reserved word (Grafana's column list shows `"time"` and `"Disk-IO"` so).
pub(crate) fn quote_ident_udf() -> ScalarUDF {
    text_udf("quote_ident", |name| {
        if needs_quotes(name) {
            format!("\"{}\"", name.replace('"', "\"\""))
        } else {
            name.to_string()
        }
    })
}

fn needs_quotes(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = matches!(chars.next(), Some('a'..='z' | '_'));
    !starts_well
        || !name
            .chars()
            .all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        || NOT_UNRESERVED_KEYWORDS.binary_search(&name).is_ok()
}

/// Postgres 15's keywords that are not UNRESERVED_KEYWORD (reserved, column-name
/// and type/function-name keywords, from its kwlist.h), which `quote_ident` quotes.
/// Sorted, for the binary search.
const NOT_UNRESERVED_KEYWORDS: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "between",
    "bigint",
    "binary",
    "bit",
    "boolean",
    "both",
    "case",
    "cast",
    "char",
    "character",
    "check",
    "coalesce",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "dec",
    "decimal",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "exists",
    "extract",
    "false",
    "fetch",
    "float",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "greatest",
    "group",
    "grouping",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "inout",
    "int",
    "integer",
    "intersect",
    "interval",
    "into",
    "is",
    "isnull",
    "join",
    "json_array",
    "json_arrayagg",
    "json_object",
    "json_objectagg",
    "lateral",
    "leading",
    "least",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "national",
    "natural",
    "nchar",
    "none",
    "normalize",
    "not",
    "notnull",
    "null",
    "nullif",
    "numeric",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "out",
    "outer",
    "overlaps",
    "overlay",
    "placing",
    "position",
    "precision",
    "primary",
    "real",
    "references",
    "returning",
    "right",
    "row",
    "select",
    "session_user",
    "setof",
    "similar",
    "smallint",
    "some",
    "substring",
    "symmetric",
    "table",
    "tablesample",
    "then",
    "time",
    "timestamp",
    "to",
    "trailing",
    "treat",
    "trim",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "values",
    "varchar",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
    "xmlattributes",
    "xmlconcat",
    "xmlelement",
    "xmlexists",
    "xmlforest",
    "xmlnamespaces",
    "xmlparse",
    "xmlpi",
    "xmlroot",
    "xmlserialize",
    "xmltable",
];

/// `to_regtype(name)`: the oid of a built-in type by any of its names, NULL for
/// others (psycopg's `TypeInfo.fetch` looks types up so).
pub(crate) fn to_regtype_udf() -> ScalarUDF {
    create_udf(
        "to_regtype",
        vec![DataType::Utf8],
        DataType::Int32,
        Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            over_text(&args[0], |names| {
                let oids: datafusion::arrow::array::Int32Array =
                    names.iter().map(|v| v.and_then(builtin_type_oid)).collect();
                Ok(Arc::new(oids))
            })
        }),
    )
}

fn builtin_type_oid(name: &str) -> Option<i32> {
    let name = name.trim().to_ascii_lowercase();
    let name = name.strip_prefix("pg_catalog.").unwrap_or(&name);
    let (base, array) = match name.strip_suffix("[]") {
        Some(b) => (b.trim(), true),
        None => (name, false),
    };
    let base = match base {
        "boolean" => "bool",
        "smallint" => "int2",
        "integer" | "int" => "int4",
        "bigint" => "int8",
        "real" => "float4",
        "double precision" => "float8",
        "character varying" => "varchar",
        "character" => "bpchar",
        "decimal" => "numeric",
        "timestamp without time zone" => "timestamp",
        "timestamp with time zone" => "timestamptz",
        "time without time zone" => "time",
        other => other,
    };
    // Postgres's array types are named `_<element>`.
    let key = if array {
        format!("_{base}")
    } else {
        base.to_string()
    };
    BUILTIN_TYPES.get(key.as_str()).map(|oid| *oid as i32)
}

/// The built-in types by `pg_type.typname` (their oids are all below 10000).
static BUILTIN_TYPES: std::sync::LazyLock<std::collections::HashMap<String, u32>> =
    std::sync::LazyLock::new(|| {
        (0..10_000u32)
            .filter_map(Type::from_oid)
            .map(|t| (t.name().to_string(), t.oid()))
            .collect()
    });

/// `information_schema.columns.data_type` as Postgres spells it, from DataFusion's
/// Arrow type (`Float64` is `double precision`).
pub(crate) fn information_schema_type_udf() -> ScalarUDF {
    type_name_udf("pg_information_schema_type", |t| {
        let name = match t {
            t if t == &Type::INT2 => "smallint",
            t if t == &Type::INT4 => "integer",
            t if t == &Type::INT8 => "bigint",
            t if t == &Type::FLOAT4 => "real",
            t if t == &Type::FLOAT8 => "double precision",
            t if t == &Type::NUMERIC => "numeric",
            t if t == &Type::BOOL => "boolean",
            t if t == &Type::TEXT => "text",
            t if t == &Type::VARCHAR => "character varying",
            t if t == &Type::BPCHAR => "character",
            t if t == &Type::BYTEA => "bytea",
            t if t == &Type::DATE => "date",
            t if t == &Type::TIME => "time without time zone",
            t if t == &Type::TIMESTAMP => "timestamp without time zone",
            t if t == &Type::TIMESTAMPTZ => "timestamp with time zone",
            t if t == &Type::INTERVAL => "interval",
            t if t.name().starts_with('_') => "ARRAY",
            other => return other.name().to_string(),
        };
        name.to_string()
    })
}

/// `information_schema.columns.udt_name`: the `pg_type` name (`float8`).
pub(crate) fn information_schema_udt_udf() -> ScalarUDF {
    type_name_udf("pg_information_schema_udt", |t| t.name().to_string())
}

fn type_name_udf(name: &str, spell: fn(&Type) -> String) -> ScalarUDF {
    text_udf(name, move |arrow_name| {
        // Arrow's type parser recurses once per nesting level: a type name from a
        // query is read only when it is as short and shallow as real ones.
        let shallow = arrow_name.len() <= 256 && arrow_name.matches('(').count() <= 8;
        if !shallow {
            return arrow_name.to_string();
        }
        let arrow = match arrow_name.parse::<DataType>().ok() {
            Some(DataType::Dictionary(_, value)) => Some(*value),
            other => other,
        };
        arrow
            .and_then(|a| datafusion_postgres::arrow_pg::datatypes::into_pg_type(&a).ok())
            .map(|t| spell(&t))
            // A type Postgres has no name for keeps DataFusion's.
            .unwrap_or_else(|| arrow_name.to_string())
    })
}

/// A text -> text function, NULL in, NULL out.
fn text_udf(name: &str, f: impl Fn(&str) -> String + Send + Sync + 'static) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            over_text(&args[0], |values| {
                let out: StringArray = values.iter().map(|v| v.map(&f)).collect();
                Ok(Arc::new(out))
            })
        }),
    )
}

/// Runs `f` over a text argument's values (cast to `Utf8`): a scalar in gives a
/// scalar out, as DataFusion expects of a function over constants.
pub(crate) fn over_text(
    arg: &ColumnarValue,
    f: impl FnOnce(&StringArray) -> datafusion::error::Result<ArrayRef>,
) -> datafusion::error::Result<ColumnarValue> {
    let input = match arg {
        ColumnarValue::Array(a) => Arc::clone(a),
        ColumnarValue::Scalar(s) => s.to_array()?,
    };
    let input = datafusion::arrow::compute::cast(&input, &DataType::Utf8)?;
    let out = f(datafusion::common::cast::as_string_array(&input)?)?;
    Ok(match arg {
        ColumnarValue::Scalar(_) if !out.is_empty() => {
            ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
        }
        _ => ColumnarValue::Array(out),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deeply_nested_type_names_are_not_parsed() {
        let udf = information_schema_type_udf();
        let deep = "List(".repeat(200_000);
        let out = udf
            .invoke_with_args(datafusion::logical_expr::ScalarFunctionArgs {
                args: vec![ColumnarValue::Scalar(deep.clone().into())],
                arg_fields: vec![Arc::new(datafusion::arrow::datatypes::Field::new(
                    "t",
                    DataType::Utf8,
                    true,
                ))],
                number_rows: 1,
                return_field: Arc::new(datafusion::arrow::datatypes::Field::new(
                    "r",
                    DataType::Utf8,
                    true,
                )),
                config_options: Arc::new(Default::default()),
            })
            .unwrap();
        let ColumnarValue::Scalar(v) = out else {
            panic!("scalar in, scalar out")
        };
        assert_eq!(v.to_string().len(), deep.len());
    }

    #[test]
    fn builtin_types_are_found_by_any_name() {
        assert_eq!(builtin_type_oid("text"), Some(25));
        assert_eq!(builtin_type_oid("double precision"), Some(701));
        assert_eq!(builtin_type_oid("timestamptz"), Some(1184));
        assert_eq!(builtin_type_oid("int8[]"), Some(1016));
        assert_eq!(builtin_type_oid("no_such_type"), None);
    }

    #[test]
    fn keywords_are_sorted_for_the_search() {
        assert!(NOT_UNRESERVED_KEYWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn names_are_quoted_as_postgres_quotes_them() {
        for (name, quoted) in [
            ("cpu", false),
            ("usage_user", false),
            ("_x1", false),
            ("time", true),
            ("user", true),
            ("value", false),
            ("Disk", true),
            ("disk-io", true),
            ("1a", true),
            ("", true),
            ("été", true),
        ] {
            assert_eq!(needs_quotes(name), quoted, "{name}");
        }
    }
}
