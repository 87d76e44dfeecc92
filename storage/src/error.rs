use std::path::PathBuf;

/// Errors of the storage engine. Each carries the file or table it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("Parquet error on {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("object store error on {path}: {source}")]
    ObjectStore {
        path: String,
        #[source]
        source: object_store::Error,
    },
    #[error("catalog {path} is corrupt: {message}")]
    CorruptCatalog { path: PathBuf, message: String },
    #[error("WAL segment {path} is corrupt at offset {offset}: {message}")]
    CorruptWal {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("flushing table '{table}' failed (its data stays in the buffer and the WAL, and is retried): {message}")]
    FlushFailed { table: String, message: String },
    #[error("the write-ahead log is shut down")]
    WalClosed,
    #[error("the write-ahead log failed and takes no more writes until vigil restarts: {0}")]
    WalFailed(String),
    #[error("write is {size} bytes once encoded for the WAL, over the limit of {limit} (storage.max_wal_record_bytes): split it into smaller requests")]
    WriteTooLarge { size: usize, limit: usize },
    #[error("{dir} holds {files} Parquet files but no catalog.json: refusing to start with an empty catalog (which would delete them). Restore catalog.json from a backup, or move the parquet directory away to start empty")]
    MissingCatalog { dir: PathBuf, files: usize },
    #[error("restore refused: {message}")]
    Restore { message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        Error::Arrow {
            context: context.into(),
            source,
        }
    }
}
