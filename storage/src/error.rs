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
    #[error("catalog {path} is corrupt: {message}")]
    CorruptCatalog { path: PathBuf, message: String },
    #[error("WAL segment {path} is corrupt at offset {offset}: {message}")]
    CorruptWal {
        path: PathBuf,
        offset: u64,
        message: String,
    },
    #[error("the write-ahead log is shut down")]
    WalClosed,
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
