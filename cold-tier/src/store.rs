//! Opening the cold tier's object store from its URL: `file:///path` for a local
//! directory, `s3://bucket/prefix` for any S3-compatible store (credentials and
//! endpoint from the configuration, or the standard `AWS_*` environment variables).

use std::sync::Arc;
use std::time::Duration;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::prefix::PrefixStore;
use object_store::{BackoffConfig, ClientOptions, ObjectStore, RetryConfig};

use crate::error::{ColdTierError, Result};

/// Where the cold tier is and how to reach it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ColdStoreOptions {
    /// `s3://bucket/prefix` or `file:///path`.
    pub url: String,
    /// An S3-compatible server's endpoint, e.g. `http://127.0.0.1:9000`.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Plain-HTTP endpoints are refused unless allowed (the credentials would
    /// travel in the clear).
    pub allow_http: bool,
}

/// Opens the store; nothing is requested from it yet (a server that is down now
/// fails the first move, not the start).
pub fn open_cold_store(options: &ColdStoreOptions) -> Result<Arc<dyn ObjectStore>> {
    let bad = |message: String| ColdTierError::Config {
        url: options.url.clone(),
        message,
    };
    let url = url::Url::parse(&options.url).map_err(|e| bad(e.to_string()))?;
    match url.scheme() {
        "file" => {
            let path = url
                .to_file_path()
                .map_err(|_| bad("not a local path".into()))?;
            std::fs::create_dir_all(&path).map_err(|e| bad(e.to_string()))?;
            let store = LocalFileSystem::new_with_prefix(&path).map_err(|e| bad(e.to_string()))?;
            Ok(Arc::new(store))
        }
        "s3" | "s3a" => {
            let bucket = url
                .host_str()
                .filter(|b| !b.is_empty())
                .ok_or_else(|| bad("no bucket: use s3://bucket/prefix".into()))?;
            // A store that is down fails a maintenance run in seconds (its files
            // stay hot and move at the next run) instead of holding it for minutes.
            let retry = RetryConfig {
                backoff: BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: Duration::from_secs(20),
            };
            let mut builder = AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry)
                .with_client_options(
                    ClientOptions::new()
                        .with_connect_timeout(Duration::from_secs(5))
                        .with_timeout(Duration::from_secs(120)),
                );
            if let Some(e) = &options.endpoint {
                builder = builder.with_endpoint(e);
            }
            if let Some(r) = &options.region {
                builder = builder.with_region(r);
            }
            if let Some(k) = &options.access_key_id {
                builder = builder.with_access_key_id(k);
            }
            if let Some(s) = &options.secret_access_key {
                builder = builder.with_secret_access_key(s);
            }
            if options.allow_http {
                builder = builder.with_allow_http(true);
            }
            if options.endpoint.is_some() {
                // Self-hosted S3-compatible servers address buckets by path.
                builder = builder.with_virtual_hosted_style_request(false);
            }
            let s3 = builder.build().map_err(|e| bad(e.to_string()))?;
            let prefix = url.path().trim_matches('/');
            if prefix.is_empty() {
                Ok(Arc::new(s3))
            } else {
                Ok(Arc::new(PrefixStore::new(s3, prefix)))
            }
        }
        other => Err(bad(format!(
            "unsupported scheme '{other}': use s3://bucket/prefix or file:///path"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked() {
        let open = |url: &str| {
            open_cold_store(&ColdStoreOptions {
                url: url.into(),
                region: Some("us-east-1".into()),
                ..Default::default()
            })
        };
        let dir = tempfile::tempdir().unwrap();
        let local = format!("file://{}/cold", dir.path().display());
        assert!(open(&local).is_ok());
        assert!(dir.path().join("cold").is_dir());
        assert!(open("s3://bucket/some/prefix").is_ok());
        let e = open("s3:///prefix").unwrap_err().to_string();
        assert!(e.contains("no bucket"), "{e}");
        let e = open("gs://bucket").unwrap_err().to_string();
        assert!(e.contains("unsupported scheme 'gs'"), "{e}");
        let e = open("not a url").unwrap_err().to_string();
        assert!(e.contains("not a url"), "{e}");
    }
}
