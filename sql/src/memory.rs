//! Query memory: one pool for the whole server, a cap per query.
//!
//! Every query's reservations (sorts, joins, aggregates, dedupe) come out of one
//! global pool of `query.memory_limit_bytes`, so many queries together cannot take
//! more than that; each query also has a cap of its own, so one heavy query fails
//! (or spills) alone instead of starving the rest. DataFusion's `MemoryPool` trait is
//! the seam: a [`QueryMemoryPool`] per query counts what the query holds and forwards
//! every reservation to the shared pool.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{
    MemoryConsumer, MemoryLimit, MemoryPool, MemoryReservation,
};

/// The memory pool of one query: a cap on top of the shared server pool.
#[derive(Debug)]
pub(crate) struct QueryMemoryPool {
    shared: Arc<dyn MemoryPool>,
    cap: usize,
    used: AtomicUsize,
}

impl QueryMemoryPool {
    pub(crate) fn new(shared: Arc<dyn MemoryPool>, cap: usize) -> Self {
        Self {
            shared,
            cap,
            used: AtomicUsize::new(0),
        }
    }
}

impl std::fmt::Display for QueryMemoryPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "query pool ({} of {} bytes used) in {}",
            self.used.load(Ordering::Relaxed),
            self.cap,
            self.shared
        )
    }
}

impl MemoryPool for QueryMemoryPool {
    fn name(&self) -> &str {
        "vigil_query"
    }

    fn register(&self, consumer: &MemoryConsumer) {
        self.shared.register(consumer)
    }

    fn unregister(&self, consumer: &MemoryConsumer) {
        self.shared.unregister(consumer)
    }

    fn grow(&self, reservation: &MemoryReservation, additional: usize) {
        self.shared.grow(reservation, additional);
        self.used.fetch_add(additional, Ordering::Relaxed);
    }

    fn shrink(&self, reservation: &MemoryReservation, shrink: usize) {
        self.shared.shrink(reservation, shrink);
        self.used.fetch_sub(shrink, Ordering::Relaxed);
    }

    fn try_grow(&self, reservation: &MemoryReservation, additional: usize) -> Result<()> {
        let used = self.used.load(Ordering::Relaxed);
        if used.saturating_add(additional) > self.cap {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "query memory limit reached: {used} bytes held, {additional} more requested by {}, over the per-query limit of {} bytes (query.max_query_memory_bytes)",
                reservation.consumer().name(),
                self.cap
            )));
        }
        self.shared.try_grow(reservation, additional)?;
        self.used.fetch_add(additional, Ordering::Relaxed);
        Ok(())
    }

    fn reserved(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn memory_limit(&self) -> MemoryLimit {
        MemoryLimit::Finite(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::execution::memory_pool::GreedyMemoryPool;

    #[test]
    fn cap_per_query_and_total_across_queries() {
        let shared: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(100));
        let a: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(Arc::clone(&shared), 60));
        let b: Arc<dyn MemoryPool> = Arc::new(QueryMemoryPool::new(Arc::clone(&shared), 60));
        let ra = MemoryConsumer::new("a").register(&a);
        let rb = MemoryConsumer::new("b").register(&b);
        ra.try_grow(50).unwrap();
        let e = ra.try_grow(20).unwrap_err().to_string();
        assert!(e.contains("per-query limit"), "{e}");
        rb.try_grow(40).unwrap();
        // 90 of the shared 100 are held: b may not take 20 more though under its cap.
        assert!(rb.try_grow(20).is_err());
        ra.free();
        rb.try_grow(20).unwrap();
        assert_eq!(shared.reserved(), 60);
        drop(rb);
        assert_eq!(shared.reserved(), 0);
    }
}
