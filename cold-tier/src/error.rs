//! Errors of the cold tier.

#[derive(Debug, thiserror::Error)]
pub enum ColdTierError {
    #[error("cold tier '{url}': {message}")]
    Config { url: String, message: String },
    #[error(transparent)]
    Storage(#[from] vigil_storage::Error),
}

pub type Result<T, E = ColdTierError> = std::result::Result<T, E>;
