/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
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

pub type Result<T, E = Error> = std::result::Result<T, E>;
