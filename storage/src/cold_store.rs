//! The cold tier's object store as the engine and queries use it: every request
//! counted by kind (an S3 bill is per request), and the byte ranges queries read
//! kept in a bounded in-memory cache, so a dashboard refreshing over cold data does
//! not fetch the same column chunks again.

use std::fmt;
use std::num::NonZeroUsize;
use std::ops::Range;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use lru::LruCache;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetRange, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
    Result,
};
use parking_lot::Mutex;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Request counters of the cold store and its read cache.
#[derive(Debug, Clone, Default)]
pub struct ColdStoreMetrics {
    /// By `kind`: get, put, list, delete, copy.
    pub requests: Family<Vec<(String, String)>, Counter>,
    pub request_errors: Family<Vec<(String, String)>, Counter>,
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_bytes: Gauge,
}

impl ColdStoreMetrics {
    fn request(&self, kind: &str) {
        self.requests
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .inc();
    }

    fn failed<T>(&self, kind: &str, r: Result<T>) -> Result<T> {
        if r.is_err() {
            self.request_errors
                .get_or_create(&vec![("kind".to_string(), kind.to_string())])
                .inc();
        }
        r
    }

    /// Requests of `kind` so far.
    pub fn requests_of(&self, kind: &str) -> u64 {
        self.requests
            .get_or_create(&vec![("kind".to_string(), kind.to_string())])
            .get()
    }

    pub fn register(&self, r: &mut Registry) {
        r.register(
            "vigil_cold_requests",
            "Requests to the cold tier's object store, by kind (get, put, list, delete, copy)",
            self.requests.clone(),
        );
        r.register(
            "vigil_cold_request_errors",
            "Failed requests to the cold tier's object store, by kind",
            self.request_errors.clone(),
        );
        r.register(
            "vigil_cold_cache_hits",
            "Cold byte ranges served from the read cache",
            self.cache_hits.clone(),
        );
        r.register(
            "vigil_cold_cache_misses",
            "Cold byte ranges fetched from the object store",
            self.cache_misses.clone(),
        );
        r.register(
            "vigil_cold_cache_bytes",
            "Bytes held by the cold read cache",
            self.cache_bytes.clone(),
        );
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct RangeKey {
    location: Path,
    range: Range<u64>,
}

#[derive(Debug)]
struct RangeCache {
    max_bytes: usize,
    bytes: usize,
    ranges: LruCache<RangeKey, Bytes>,
    /// The metadata of objects read, to answer a cached ranged GET in full.
    metas: LruCache<Path, ObjectMeta>,
}

impl RangeCache {
    fn get(&mut self, key: &RangeKey) -> Option<Bytes> {
        self.ranges.get(key).cloned()
    }

    fn insert(&mut self, key: RangeKey, data: Bytes) {
        // A range larger than a quarter of the cache would evict everything else.
        if data.len() > self.max_bytes / 4 {
            return;
        }
        self.bytes += data.len();
        if let Some(old) = self.ranges.put(key, data) {
            self.bytes -= old.len();
        }
        while self.bytes > self.max_bytes {
            match self.ranges.pop_lru() {
                Some((_, old)) => self.bytes -= old.len(),
                None => break,
            }
        }
    }
}

/// An object store that counts requests and caches the ranges read.
pub struct ObservedStore {
    inner: Arc<dyn ObjectStore>,
    metrics: ColdStoreMetrics,
    cache: Option<Mutex<RangeCache>>,
}

impl fmt::Debug for ObservedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObservedStore")
            .field("inner", &self.inner.to_string())
            .finish()
    }
}

impl fmt::Display for ObservedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Observed({})", self.inner)
    }
}

impl ObservedStore {
    /// `cache_bytes`: the read cache's bound (0: no cache).
    pub fn new(inner: Arc<dyn ObjectStore>, cache_bytes: usize, metrics: ColdStoreMetrics) -> Self {
        let cache = (cache_bytes > 0).then(|| {
            Mutex::new(RangeCache {
                max_bytes: cache_bytes,
                bytes: 0,
                ranges: LruCache::unbounded(),
                metas: LruCache::new(NonZeroUsize::new(4096).expect("4096 > 0")),
            })
        });
        Self {
            inner,
            metrics,
            cache,
        }
    }

    pub fn metrics(&self) -> &ColdStoreMetrics {
        &self.metrics
    }

    fn cached(&self, key: &RangeKey) -> Option<(Bytes, Option<ObjectMeta>)> {
        let cache = self.cache.as_ref()?;
        let mut c = cache.lock();
        let data = c.get(key)?;
        let meta = c.metas.get(&key.location).cloned();
        Some((data, meta))
    }

    fn remember(&self, key: RangeKey, data: &Bytes, meta: Option<&ObjectMeta>) {
        if let Some(cache) = &self.cache {
            let mut c = cache.lock();
            if let Some(meta) = meta {
                c.metas.put(key.location.clone(), meta.clone());
            }
            c.insert(key, data.clone());
            self.metrics.cache_bytes.set(c.bytes as i64);
        }
    }

    /// Drops what is cached of an object (it was deleted or replaced).
    fn forget(&self, location: &Path) {
        if let Some(cache) = &self.cache {
            let mut c = cache.lock();
            c.metas.pop(location);
            let stale: Vec<RangeKey> = c
                .ranges
                .iter()
                .filter(|(k, _)| &k.location == location)
                .map(|(k, _)| k.clone())
                .collect();
            for k in stale {
                if let Some(old) = c.ranges.pop(&k) {
                    c.bytes -= old.len();
                }
            }
            self.metrics.cache_bytes.set(c.bytes as i64);
        }
    }
}

/// A plain ranged read: no preconditions, no version, not a HEAD.
fn plain_range(options: &GetOptions) -> Option<Range<u64>> {
    let plain = options.if_match.is_none()
        && options.if_none_match.is_none()
        && options.if_modified_since.is_none()
        && options.if_unmodified_since.is_none()
        && options.version.is_none()
        && !options.head;
    match (&options.range, plain) {
        (Some(GetRange::Bounded(r)), true) => Some(r.clone()),
        _ => None,
    }
}

#[async_trait]
impl ObjectStore for ObservedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.metrics.request("put");
        self.forget(location);
        let r = self.inner.put_opts(location, payload, opts).await;
        self.metrics.failed("put", r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.metrics.request("put");
        self.forget(location);
        let r = self.inner.put_multipart_opts(location, opts).await;
        self.metrics.failed("put", r)
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let range = plain_range(&options);
        let key = range.map(|range| RangeKey {
            location: location.clone(),
            range,
        });
        if let Some(key) = &key {
            if let Some((data, Some(meta))) = self.cached(key) {
                self.metrics.cache_hits.inc();
                return Ok(GetResult {
                    payload: GetResultPayload::Stream(
                        futures::stream::once(async move { Ok(data) }).boxed(),
                    ),
                    meta,
                    range: key.range.clone(),
                    attributes: Default::default(),
                });
            }
        }
        let kind = if options.head { "head" } else { "get" };
        self.metrics.request(kind);
        let mut result = self
            .metrics
            .failed(kind, self.inner.get_opts(location, options).await)?;
        // The object is the one asked for. object_store 0.13's `PrefixStore`
        // answers with its full path (prefix included), which DataFusion's file
        // listing then filters out: a cold file would read as empty.
        result.meta.location = location.clone();
        let Some(key) = key.filter(|_| self.cache.is_some()) else {
            return Ok(result);
        };
        self.metrics.cache_misses.inc();
        let meta = result.meta.clone();
        let range = result.range.clone();
        let attributes = result.attributes.clone();
        let data = result.bytes().await?;
        self.remember(key, &data, Some(&meta));
        Ok(GetResult {
            payload: GetResultPayload::Stream(
                futures::stream::once(async move { Ok(data) }).boxed(),
            ),
            meta,
            range,
            attributes,
        })
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        let mut out: Vec<Option<Bytes>> = vec![None; ranges.len()];
        let mut missing = Vec::new();
        for (i, r) in ranges.iter().enumerate() {
            let key = RangeKey {
                location: location.clone(),
                range: r.clone(),
            };
            match self.cached(&key) {
                Some((data, _)) => {
                    self.metrics.cache_hits.inc();
                    out[i] = Some(data);
                }
                None => missing.push(i),
            }
        }
        if !missing.is_empty() {
            // The store coalesces nearby ranges into fewer GETs; count the call.
            self.metrics.request("get");
            if self.cache.is_some() {
                self.metrics.cache_misses.inc_by(missing.len() as u64);
            }
            let wanted: Vec<Range<u64>> = missing.iter().map(|&i| ranges[i].clone()).collect();
            let fetched = self
                .metrics
                .failed("get", self.inner.get_ranges(location, &wanted).await)?;
            for (i, data) in missing.into_iter().zip(fetched) {
                self.remember(
                    RangeKey {
                        location: location.clone(),
                        range: ranges[i].clone(),
                    },
                    &data,
                    None,
                );
                out[i] = Some(data);
            }
        }
        Ok(out
            .into_iter()
            .map(|b| b.expect("every range filled"))
            .collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let metrics = self.metrics.clone();
        let counted = locations
            .map(move |l| {
                metrics.request("delete");
                l
            })
            .boxed();
        // Deleted objects' ranges age out of the cache: a path is written again only
        // by a put, which forgets them first.
        self.inner.delete_stream(counted)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.metrics.request("list");
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.metrics.request("list");
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.metrics.request("list");
        let r = self.inner.list_with_delimiter(prefix).await;
        self.metrics.failed("list", r)
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.metrics.request("copy");
        self.forget(to);
        let r = self.inner.copy_opts(from, to, options).await;
        self.metrics.failed("copy", r)
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.metrics.request("copy");
        self.forget(from);
        self.forget(to);
        let r = self.inner.rename_opts(from, to, options).await;
        self.metrics.failed("copy", r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn ranges_are_cached_and_counted() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = ObservedStore::new(Arc::clone(&inner), 1 << 20, ColdStoreMetrics::default());
        let p = Path::from("parquet/1.parquet");
        store
            .put(&p, PutPayload::from(Bytes::from(vec![7u8; 1000])))
            .await
            .unwrap();
        let a = store.get_range(&p, 10..20).await.unwrap();
        let b = store.get_range(&p, 10..20).await.unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let m = store.metrics();
        assert_eq!(
            m.requests_of("get"),
            1,
            "the second read came from the cache"
        );
        assert_eq!(m.cache_hits.get(), 1);
        let r = store.get_ranges(&p, &[10..20, 30..40]).await.unwrap();
        assert_eq!(r[1].len(), 10);
        assert_eq!(m.cache_hits.get(), 2);
        assert_eq!(m.requests_of("get"), 2);
        // A GET answers with the path asked for, even through a prefix.
        let prefixed = ObservedStore::new(
            Arc::new(object_store::prefix::PrefixStore::new(
                Arc::clone(&inner),
                "parquet",
            )),
            0,
            ColdStoreMetrics::default(),
        );
        let meta = prefixed.head(&Path::from("1.parquet")).await.unwrap();
        assert_eq!(meta.location, Path::from("1.parquet"));
        // Replacing the object drops its cached ranges.
        store
            .put(&p, PutPayload::from(Bytes::from(vec![9u8; 1000])))
            .await
            .unwrap();
        assert_eq!(store.get_range(&p, 10..20).await.unwrap()[0], 9);
    }

    #[tokio::test]
    async fn the_cache_stays_within_its_bound() {
        let inner: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let store = ObservedStore::new(inner, 4000, ColdStoreMetrics::default());
        let p = Path::from("x");
        store
            .put(&p, PutPayload::from(Bytes::from(vec![1u8; 100_000])))
            .await
            .unwrap();
        for i in 0..100u64 {
            store.get_range(&p, i * 900..i * 900 + 900).await.unwrap();
        }
        assert!(store.metrics().cache_bytes.get() <= 4000);
        // A range over a quarter of the bound is not cached at all.
        store.get_range(&p, 0..2000).await.unwrap();
        store.get_range(&p, 0..2000).await.unwrap();
        assert_eq!(store.metrics().cache_hits.get(), 0);
    }
}
