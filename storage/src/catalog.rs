//! The catalog: which Parquet files hold which table and time range, up to which WAL
//! sequence number the buffer has been persisted, and the table schemas.
//!
//! Saved as JSON by write-to-temp, fsync, rename, fsync-directory, so a crash leaves
//! either the old or the new catalog, never a mix. [`Catalog`] changes it only in
//! transactions: a copy is changed and saved, and becomes the state queries see
//! only once saved.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::schema::TableSchema;
use crate::wal::sync_dir;

/// One persisted Parquet file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ParquetFileMeta {
    pub id: u64,
    pub table: String,
    /// Path relative to the data directory.
    pub path: String,
    pub min_time: i64,
    pub max_time: i64,
    pub rows: u64,
    pub size_bytes: u64,
    /// Highest WAL sequence number whose data is in this file. Among files that overlap,
    /// the higher sequence wins on duplicate (series, time).
    pub seq: u64,
    /// UTC day (days since the epoch) all rows of the file fall in.
    pub day: i64,
    /// The tags the file's rows are sorted by (then `time`), a prefix of its
    /// table's sort key; empty for files written before sort keys were recorded,
    /// which queries must sort.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sort_key: Vec<String>,
    /// The series key (tag values in `sort_key` order) of the first and last row:
    /// two files whose key ranges do not meet hold no common series, so queries
    /// need not deduplicate them against each other even when their times overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_range: Option<(SeriesKey, SeriesKey)>,
    /// 0: written by a flush, may overlap any other file of its day. 1: written by
    /// compaction, holds one time window and overlaps no other level-1 file.
    #[serde(default)]
    pub level: u8,
    /// Which store holds the file: the data directory (hot) or the cold tier. A
    /// cold file keeps its path, relative to the cold store's root.
    #[serde(default, skip_serializing_if = "Tier::is_hot")]
    pub tier: Tier,
}

/// Where a Parquet file is stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// The data directory on local disk.
    #[default]
    Hot,
    /// The cold tier: a local directory or an S3-compatible bucket.
    Cold,
    /// Brought back from the archive by a restore: on local disk under
    /// `restored/<restore id>/`, outside retention, compaction and tiering, until
    /// the restore is dropped.
    Restored,
}

impl Tier {
    pub fn is_hot(&self) -> bool {
        *self == Tier::Hot
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cold => "cold",
            Tier::Restored => "restored",
        }
    }
}

/// Tag values of one series in sort-key order; `None` (no such tag on the series)
/// sorts first, as in the files.
pub type SeriesKey = Vec<Option<String>>;

impl ParquetFileMeta {
    pub fn overlaps(&self, min: i64, max: i64) -> bool {
        self.min_time <= max && self.max_time >= min
    }

    /// Whether the two files may hold a row of the same series and time: their
    /// times meet and their series-key ranges meet (files without a recorded range,
    /// or sorted by different keys, are assumed to meet).
    pub fn may_share_rows(&self, other: &ParquetFileMeta) -> bool {
        if !self.overlaps(other.min_time, other.max_time) {
            return false;
        }
        match (&self.key_range, &other.key_range) {
            (Some((a_min, a_max)), Some((b_min, b_max))) if self.sort_key == other.sort_key => {
                a_min <= b_max && b_min <= a_max
            }
            _ => true,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CatalogState {
    pub version: u32,
    /// Every WAL record up to this sequence is persisted (in all tables).
    pub flushed_seq: u64,
    /// Per table, beyond `flushed_seq`: the table's data up to this sequence is
    /// persisted (its flush succeeded while another table's failed).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub table_flushed_seq: BTreeMap<String, u64>,
    pub next_file_id: u64,
    pub tables: BTreeMap<String, TableSchema>,
    pub files: Vec<ParquetFileMeta>,
    /// Per raw table: how far its rollups are built.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rollups: BTreeMap<String, RollupWatermark>,
    /// Raw files past retention kept in the cold store's archive (`archive/`
    /// + their path), when archiving is on.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub archive: Vec<ParquetFileMeta>,
    /// Restores of archived data, by id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub restores: BTreeMap<u64, crate::archive::Restore>,
    #[serde(default)]
    pub next_restore_id: u64,
}

/// How far a table's rollups are built: every 10-minute bucket before
/// `rolled_10m` and every hour before `rolled_1h` is rolled up from the data of
/// the files with a sequence up to `rolled_seq`. A file with a higher sequence
/// that reaches back before `rolled_10m` is a late write: its buckets are rolled
/// up again. Buckets before `rolled_from` were never rolled up (their raw rows
/// had expired before the first rollup, or were written later): a query reads
/// them raw where raw rows are kept (restored ranges), never from an empty
/// rollup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollupWatermark {
    /// Catalogs from before this field count every bucket before the
    /// watermark as rolled up, as they did.
    #[serde(default = "unknown_start")]
    pub rolled_from: i64,
    pub rolled_10m: i64,
    pub rolled_1h: i64,
    pub rolled_seq: u64,
}

fn unknown_start() -> i64 {
    i64::MIN
}

impl Default for RollupWatermark {
    fn default() -> Self {
        RollupWatermark {
            rolled_from: unknown_start(),
            rolled_10m: 0,
            rolled_1h: 0,
            rolled_seq: 0,
        }
    }
}

pub const CATALOG_FILE: &str = "catalog.json";

pub fn catalog_path(data_dir: &Path) -> PathBuf {
    data_dir.join(CATALOG_FILE)
}

impl CatalogState {
    pub fn load(data_dir: &Path) -> Result<Self> {
        let path = catalog_path(data_dir);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| Error::CorruptCatalog {
                path: path.clone(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // No catalog is a new data directory, unless Parquet files are there:
                // then the catalog was lost, and starting empty would delete them.
                let parquet = data_dir.join("parquet");
                let files = fs::read_dir(&parquet)
                    .map(|d| {
                        d.filter_map(|e| e.ok())
                            .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
                            .count()
                    })
                    .unwrap_or(0);
                if files > 0 {
                    return Err(Error::MissingCatalog {
                        dir: data_dir.to_path_buf(),
                        files,
                    });
                }
                Ok(Self {
                    version: 1,
                    next_file_id: 1,
                    ..Default::default()
                })
            }
            Err(e) => Err(Error::io(path, e)),
        }
    }

    pub fn save(&self, data_dir: &Path) -> Result<()> {
        self.save_reporting(data_dir).map_err(|e| e.error)
    }

    /// Saves; a failure says whether the new catalog had already replaced the old.
    fn save_reporting(&self, data_dir: &Path) -> std::result::Result<(), CommitError> {
        let before = |error| CommitError {
            error,
            maybe_saved: false,
        };
        let path = catalog_path(data_dir);
        // Tests make the saves of one data directory fail, before anything is
        // written: `catalog-save=return(<data dir>)`.
        if fail::eval("catalog-save", |dir| dir.as_deref() == data_dir.to_str()) == Some(true) {
            return Err(before(Error::io(
                &path,
                std::io::Error::other("catalog-save failpoint"),
            )));
        }
        let tmp = data_dir.join(format!("{CATALOG_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| {
            before(Error::CorruptCatalog {
                path: path.clone(),
                message: e.to_string(),
            })
        })?;
        let written = (|| {
            let mut f = fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
            f.write_all(&bytes).map_err(|e| Error::io(&tmp, e))?;
            f.sync_all().map_err(|e| Error::io(&tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| Error::io(&path, e))
        })();
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(before(e));
        }
        sync_dir(data_dir).map_err(|error| CommitError {
            error,
            maybe_saved: true,
        })
    }
}

/// A save that failed. `maybe_saved`: it failed after the new catalog replaced the
/// old one (syncing the directory), so the new state may be what the next start
/// loads, and the files it names must be kept.
#[derive(Debug)]
pub struct CommitError {
    pub error: Error,
    pub maybe_saved: bool,
}

impl From<CommitError> for Error {
    fn from(e: CommitError) -> Self {
        e.error
    }
}

/// The catalog of a data directory, changed by transactions.
#[derive(Debug)]
pub struct Catalog {
    dir: PathBuf,
    state: Mutex<CatalogState>,
}

impl Catalog {
    /// Loads the catalog of `data_dir`; a new directory gets its (empty) catalog
    /// saved now, so that a crash during the first flush leaves one behind (or the
    /// next start would find Parquet files without a catalog and refuse to start).
    pub fn open(data_dir: &Path) -> Result<Self> {
        let state = CatalogState::load(data_dir)?;
        if !catalog_path(data_dir).exists() {
            state.save(data_dir)?;
        }
        Ok(Self {
            dir: data_dir.to_path_buf(),
            state: Mutex::new(state),
        })
    }

    /// Reads the current state.
    pub fn read<T>(&self, f: impl FnOnce(&CatalogState) -> T) -> T {
        f(&self.state.lock())
    }

    pub fn files(&self) -> Vec<ParquetFileMeta> {
        self.read(|c| c.files.clone())
    }

    /// A new file id. Not saved until a commit names the file: a crash before it
    /// leaves an orphan (removed at start) whose id may be given out again.
    pub fn allocate_file_id(&self) -> u64 {
        let mut c = self.state.lock();
        let id = c.next_file_id;
        c.next_file_id += 1;
        id
    }

    /// Changes the catalog: `change` edits a copy (and may refuse by returning an
    /// error), the copy is saved, and only then replaces the state. One transaction
    /// at a time; readers see the old state until the new one is saved.
    pub fn commit<T>(
        &self,
        change: impl FnOnce(&mut CatalogState) -> Result<T>,
    ) -> std::result::Result<T, CommitError> {
        self.commit_if(|next| change(next).map(Some))
            .map(|out| out.expect("the change always applies"))
    }

    /// [`Catalog::commit`] for a change that may turn out not to apply: `change`
    /// returns `None` and nothing is saved.
    pub fn commit_if<T>(
        &self,
        change: impl FnOnce(&mut CatalogState) -> Result<Option<T>>,
    ) -> std::result::Result<Option<T>, CommitError> {
        let mut current = self.state.lock();
        let mut next = current.clone();
        let out = change(&mut next).map_err(|error| CommitError {
            error,
            maybe_saved: false,
        })?;
        if out.is_none() {
            return Ok(None);
        }
        next.save_reporting(&self.dir)?;
        *current = next;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = CatalogState::load(dir.path()).unwrap();
        assert_eq!(c.next_file_id, 1);
        c.flushed_seq = 42;
        c.tables.insert("cpu".into(), TableSchema::default());
        c.save(dir.path()).unwrap();
        let c2 = CatalogState::load(dir.path()).unwrap();
        assert_eq!(c2.flushed_seq, 42);
        assert!(c2.tables.contains_key("cpu"));
        fs::write(catalog_path(dir.path()), b"{not json").unwrap();
        let err = CatalogState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("catalog.json"), "{err}");
    }

    #[test]
    fn lost_catalog_with_files_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("parquet")).unwrap();
        fs::write(
            dir.path().join("parquet/00000000000000000001.parquet"),
            b"x",
        )
        .unwrap();
        let err = CatalogState::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("1 Parquet files but no catalog.json"), "{err}");
    }
}
