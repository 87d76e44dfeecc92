/// Errors of the query layer.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("query timed out after {0:?}")]
    Timeout(std::time::Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
