//! Table schemas: which columns are tags, which are fields of which type.
//!
//! Tags are `Dictionary(Int32, Utf8)`, `time` is `Timestamp(ns, "UTC")`, fields are
//! Float64/Int64/UInt64/Boolean/Utf8. Columns only ever get added; a field keeps the
//! type it was first written with.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use vigil_model::FieldValue;

pub const TIME_COLUMN: &str = "time";
/// Hidden column carrying the WAL sequence number, used to pick the last write of a
/// duplicated (series, time). Never stored in Parquet, never shown to users.
pub const SEQ_COLUMN: &str = "__seq";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FieldType {
    Float,
    Integer,
    UInteger,
    Boolean,
    String,
}

impl FieldType {
    pub fn of(value: &FieldValue<'_>) -> Self {
        match value {
            FieldValue::F64(_) => FieldType::Float,
            FieldValue::I64(_) => FieldType::Integer,
            FieldValue::U64(_) => FieldType::UInteger,
            FieldValue::Bool(_) => FieldType::Boolean,
            FieldValue::Str(_) => FieldType::String,
        }
    }

    pub fn data_type(self) -> DataType {
        match self {
            FieldType::Float => DataType::Float64,
            FieldType::Integer => DataType::Int64,
            FieldType::UInteger => DataType::UInt64,
            FieldType::Boolean => DataType::Boolean,
            FieldType::String => DataType::Utf8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FieldType::Float => "float",
            FieldType::Integer => "integer",
            FieldType::UInteger => "unsigned integer",
            FieldType::Boolean => "boolean",
            FieldType::String => "string",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", tag = "kind", content = "type")]
pub enum ColumnKind {
    Tag,
    Field(FieldType),
    Time,
}

pub fn tag_data_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

pub fn time_data_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into()))
}

/// The schema of one table (measurement).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    columns: BTreeMap<String, ColumnKind>,
    /// The order of tags that every Parquet file of the table is sorted by (then
    /// `time`). Fixed at the first flush (most distinct tag first) and only ever
    /// extended by tags added later, so that files of different flushes share one
    /// order and queries can merge them instead of sorting. A file written before a
    /// tag was added has nulls there, which keeps it sorted by the longer key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    sort_key: Vec<String>,
    #[serde(skip)]
    arrow: Option<SchemaRef>,
}

impl Default for TableSchema {
    fn default() -> Self {
        let mut columns = BTreeMap::new();
        columns.insert(TIME_COLUMN.to_string(), ColumnKind::Time);
        Self {
            columns,
            sort_key: Vec::new(),
            arrow: None,
        }
    }
}

impl TableSchema {
    pub fn column(&self, name: &str) -> Option<ColumnKind> {
        self.columns.get(name).copied()
    }

    /// Tags and fields (not counting `time`).
    pub fn column_count(&self) -> usize {
        self.columns.len().saturating_sub(1)
    }

    /// Adds a column; the caller has checked that it does not exist yet.
    pub fn add_column(&mut self, name: &str, kind: ColumnKind) {
        self.columns.insert(name.to_string(), kind);
        self.arrow = None;
    }

    /// Tag column names, sorted: the sort key of stored data (then `time`).
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.columns
            .iter()
            .filter(|(_, k)| **k == ColumnKind::Tag)
            .map(|(n, _)| n.as_str())
    }

    /// The table's sort key as persisted (may lack tags no flush has seen yet).
    pub fn sort_key(&self) -> &[String] {
        &self.sort_key
    }

    /// Every tag in sort-key order: the persisted key, then tags no flush has seen
    /// yet in name order. Queries merge by this order.
    pub fn full_sort_key(&self) -> Vec<String> {
        let mut key = self.sort_key.clone();
        key.extend(
            self.tags()
                .filter(|t| !self.sort_key.iter().any(|k| k == t))
                .map(str::to_string),
        );
        key
    }

    /// Tags the persisted sort key lacks.
    pub fn unsorted_tags(&self) -> Vec<String> {
        self.tags()
            .filter(|t| !self.sort_key.iter().any(|k| k == t))
            .map(str::to_string)
            .collect()
    }

    /// Extends the sort key by the tags it lacks: first those of `ranked` (most
    /// distinct first), then any others (added since they were ranked) by name.
    /// Returns the whole key, which now names every tag.
    pub fn extend_sort_key(&mut self, ranked: &[String]) -> Vec<String> {
        for t in ranked {
            if self.column(t) == Some(ColumnKind::Tag) && !self.sort_key.contains(t) {
                self.sort_key.push(t.clone());
            }
        }
        let rest = self.unsorted_tags();
        self.sort_key.extend(rest);
        self.sort_key.clone()
    }

    pub fn fields(&self) -> impl Iterator<Item = (&str, FieldType)> {
        self.columns.iter().filter_map(|(n, k)| match k {
            ColumnKind::Field(t) => Some((n.as_str(), *t)),
            _ => None,
        })
    }

    /// The Arrow schema: tags (sorted), fields (sorted), then `time`.
    pub fn arrow_schema(&mut self) -> SchemaRef {
        if let Some(s) = &self.arrow {
            return Arc::clone(s);
        }
        let s = Arc::new(self.build_arrow_schema());
        self.arrow = Some(Arc::clone(&s));
        s
    }

    pub fn build_arrow_schema(&self) -> Schema {
        let mut fields: Vec<Field> = self
            .tags()
            .map(|t| Field::new(t, tag_data_type(), true))
            .collect();
        fields.extend(
            self.fields()
                .map(|(n, t)| Field::new(n, t.data_type(), true)),
        );
        fields.push(Field::new(TIME_COLUMN, time_data_type(), false));
        Schema::new(fields)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arrow_schema_orders_tags_fields_time() {
        let mut s = TableSchema::default();
        s.add_column("usage", ColumnKind::Field(FieldType::Float));
        s.add_column("host", ColumnKind::Tag);
        s.add_column("az", ColumnKind::Tag);
        let a = s.arrow_schema();
        let names: Vec<_> = a.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(names, ["az", "host", "usage", "time"]);
        let json = serde_json::to_string(&s).unwrap();
        let back: TableSchema = serde_json::from_str(&json).unwrap();
        assert_eq!(back.columns, s.columns);
    }

    #[test]
    fn sort_key_is_fixed_and_only_extended() {
        let mut s = TableSchema::default();
        s.add_column("host", ColumnKind::Tag);
        s.add_column("az", ColumnKind::Tag);
        assert_eq!(s.full_sort_key(), ["az", "host"]);
        let key = s.extend_sort_key(&["host".to_string()]);
        assert_eq!(key, ["host", "az"]);
        s.add_column("rack", ColumnKind::Tag);
        assert_eq!(s.full_sort_key(), ["host", "az", "rack"]);
        assert_eq!(s.unsorted_tags(), ["rack"]);
        // The first flush's order stays whatever later data looks like.
        let key = s.extend_sort_key(&["rack".to_string(), "az".to_string()]);
        assert_eq!(key, ["host", "az", "rack"]);
        let back: TableSchema = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back.sort_key(), ["host", "az", "rack"]);
    }
}
