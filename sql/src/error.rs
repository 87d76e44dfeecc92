use datafusion::error::DataFusionError;

/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    DataFusion(DataFusionError),
    #[error("query timed out after {0:?} (query.timeout)")]
    Timeout(std::time::Duration),
    #[error("SQL is read-only in vigil: {0} is not allowed; only queries (SELECT, WITH, EXPLAIN, SHOW, VALUES) run on any front end")]
    ReadOnly(String),
    #[error("permission denied: your token does not cover table '{0}'")]
    Forbidden(String),
    #[error("too many queries: {running} are running and none finished within {waited:?} (query.max_concurrent, query.queue_timeout); retry later")]
    Busy {
        running: usize,
        waited: std::time::Duration,
    },
}

/// What went wrong, in the terms every front end maps to its own status code
/// (HTTP status, SQLSTATE, gRPC code), so the three agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The query itself is wrong (syntax, unknown column, bad cast): the client's.
    Invalid,
    /// DDL, DML or file access.
    ReadOnly,
    /// The token does not cover a table the query reads.
    Forbidden,
    /// No query slot became free in time: retry later.
    Busy,
    /// The query ran past `query.timeout`.
    Timeout,
    /// The query needed more memory than it may have: retry later or narrow it.
    ResourcesExhausted,
    /// vigil's fault (I/O, corrupt file, a bug).
    Internal,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Timeout(_) => ErrorKind::Timeout,
            Error::ReadOnly(_) => ErrorKind::ReadOnly,
            Error::Forbidden(_) => ErrorKind::Forbidden,
            Error::Busy { .. } => ErrorKind::Busy,
            Error::DataFusion(e) => match e.find_root() {
                DataFusionError::ResourcesExhausted(_) => ErrorKind::ResourcesExhausted,
                DataFusionError::Internal(_)
                | DataFusionError::IoError(_)
                | DataFusionError::ObjectStore(_)
                | DataFusionError::ParquetError(_) => ErrorKind::Internal,
                _ => ErrorKind::Invalid,
            },
        }
    }
}

/// vigil's own errors (timeout, admission) travel through DataFusion streams as
/// `External`; converting unwraps them so that every front end sees the original.
impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::External(inner) => match inner.downcast::<Error>() {
                Ok(e) => *e,
                Err(other) => Error::DataFusion(DataFusionError::External(other)),
            },
            other => Error::DataFusion(other),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carried_through_datafusion_come_back_whole() {
        let carried =
            DataFusionError::External(Box::new(Error::Timeout(std::time::Duration::from_secs(3))));
        let e = Error::from(carried);
        assert!(matches!(e, Error::Timeout(_)), "{e:?}");
        assert_eq!(e.kind(), ErrorKind::Timeout);
    }

    #[test]
    fn memory_limits_are_not_the_clients_syntax_error() {
        let e = Error::from(DataFusionError::Context(
            "sorting".into(),
            Box::new(DataFusionError::ResourcesExhausted("pool".into())),
        ));
        assert_eq!(e.kind(), ErrorKind::ResourcesExhausted);
        let e = Error::from(DataFusionError::Plan("no column x".into()));
        assert_eq!(e.kind(), ErrorKind::Invalid);
    }
}
