//! Moving files between tiers and deleting expired ones, as catalog transactions.
//! Which files to move or expire is the caller's policy (the cold-tier crate's
//! maintenance); this is the mechanism, and where crash safety lives.
//!
//! A move copies the file to the cold store under the same relative path, then
//! commits the catalog entry's new tier, then deletes the hot copy after the
//! grace time (queries planned before the commit still read it). A crash after
//! the copy and before the commit leaves an unnamed cold object (removed by
//! [`Storage::remove_cold_orphans`]; the move is simply done again); a crash
//! after the commit leaves an unnamed hot copy (removed at the next start). At no
//! point does the catalog name an object that is not there.

use std::collections::HashSet;

use tracing::{info, warn};

use crate::catalog::{ParquetFileMeta, Tier};
use crate::engine::Storage;
use crate::error::{Error, Result};

/// What a call to [`Storage::move_to_cold`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct MoveOutcome {
    pub files: usize,
    pub bytes: u64,
    /// Files that could not be moved (they stay hot and are tried again), with the
    /// first error.
    pub failed: usize,
    pub error: Option<String>,
}

/// What a call to [`Storage::expire_files`] did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ExpireOutcome {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
    /// Of those, kept in the archive.
    pub archived: usize,
    /// Files that could not be archived: they stay (hidden from queries) and are
    /// tried again, with the first error.
    pub archive_failed: usize,
    pub error: Option<String>,
}

impl Storage {
    /// The files in the catalog now.
    pub fn files(&self) -> Vec<ParquetFileMeta> {
        self.catalog.files()
    }

    /// Moves the hot files `ids` to the cold tier, one at a time; ids that are not
    /// (or no longer) hot files are skipped. Waits for a running compaction, and
    /// keeps compactions from starting meanwhile.
    pub async fn move_to_cold(&self, ids: &[u64]) -> Result<MoveOutcome> {
        let _guard = self.compactor.lock.lock().await;
        let mut out = MoveOutcome::default();
        for &id in ids {
            let Some(file) = self
                .catalog
                .read(|c| c.files.iter().find(|f| f.id == id).cloned())
                .filter(|f| f.tier == Tier::Hot)
            else {
                continue;
            };
            match self.move_one(&file).await {
                Ok(true) => {
                    out.files += 1;
                    out.bytes += file.size_bytes;
                }
                Ok(false) => {}
                Err(e) => {
                    warn!(file = file.path, table = file.table, error = %e, "could not move a file to the cold tier; it stays hot");
                    out.failed += 1;
                    out.error.get_or_insert_with(|| e.to_string());
                }
            }
        }
        self.compactor.update_gauges();
        Ok(out)
    }

    async fn move_one(&self, file: &ParquetFileMeta) -> Result<bool> {
        let copied = self
            .store
            .copy_to(&file.path, &self.cold, &file.path)
            .await?;
        if copied != file.size_bytes {
            let _ = self.cold.remove(&file.path).await;
            return Err(Error::io(
                &file.path,
                std::io::Error::other(format!(
                    "copied {copied} bytes of a {}-byte file",
                    file.size_bytes
                )),
            ));
        }
        // Tests stop here (`sleep`, then kill the server) to crash mid-move.
        fail::fail_point!("tier-before-commit", |_| Err(Error::io(
            &file.path,
            std::io::Error::other("tier-before-commit failpoint")
        )));
        let id = file.id;
        let committed = self.catalog.commit_if(|next| {
            let Some(f) = next
                .files
                .iter_mut()
                .find(|f| f.id == id && f.tier == Tier::Hot)
            else {
                return Ok(None);
            };
            f.tier = Tier::Cold;
            Ok(Some(()))
        });
        match committed {
            Ok(Some(())) => {
                self.reaper.delete_later(Tier::Hot, [file.path.clone()]);
                self.metrics.files_moved_to_cold.inc();
                self.metrics.bytes_moved_to_cold.inc_by(file.size_bytes);
                info!(
                    file = file.path,
                    table = file.table,
                    bytes = file.size_bytes,
                    "moved to the cold tier"
                );
                Ok(true)
            }
            Ok(None) => {
                let _ = self.cold.remove(&file.path).await;
                Ok(false)
            }
            Err(e) => {
                if e.maybe_saved {
                    self.reaper
                        .cold_uncertain
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                } else {
                    let _ = self.cold.remove(&file.path).await;
                }
                Err(e.into())
            }
        }
    }

    /// Removes the files `ids` from the catalog (their data is past retention) and
    /// deletes them from their tier after the grace time.
    /// With archiving on, a raw file is first copied to the archive (a file that
    /// cannot be copied stays); restored files only go when their restore is
    /// dropped.
    pub async fn expire_files(&self, ids: &[u64]) -> Result<ExpireOutcome> {
        let _guard = self.compactor.lock.lock().await;
        let mut ids: HashSet<u64> = ids.iter().copied().collect();
        let mut out = ExpireOutcome::default();
        let mut archived: std::collections::HashMap<u64, String> = Default::default();
        let candidates: Vec<ParquetFileMeta> = self.catalog.read(|c| {
            c.files
                .iter()
                .filter(|f| ids.contains(&f.id))
                .cloned()
                .collect()
        });
        for f in candidates {
            if f.tier == Tier::Restored {
                ids.remove(&f.id);
            } else if self.config.archive && !crate::is_rollup_table(&f.table) {
                match self.archive_copy(&f).await {
                    Ok(path) => {
                        archived.insert(f.id, path);
                    }
                    Err(e) => {
                        warn!(file = f.path, table = f.table, error = %e, "could not archive an expired file; it stays until it can be");
                        ids.remove(&f.id);
                        out.archive_failed += 1;
                        out.error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
        }
        let removed = self.catalog.commit_if(|next| {
            let (gone, keep): (Vec<ParquetFileMeta>, Vec<ParquetFileMeta>) =
                next.files.drain(..).partition(|f| ids.contains(&f.id));
            next.files = keep;
            for f in &gone {
                if let Some(path) = archived.get(&f.id) {
                    next.archive.retain(|a| a.id != f.id);
                    next.archive.push(ParquetFileMeta {
                        path: path.clone(),
                        tier: Tier::Cold,
                        ..f.clone()
                    });
                }
            }
            Ok((!gone.is_empty()).then_some(gone))
        })?;
        for f in removed.unwrap_or_default() {
            out.files += 1;
            out.archived += usize::from(archived.contains_key(&f.id));
            out.rows += f.rows;
            out.bytes += f.size_bytes;
            info!(
                file = f.path,
                table = f.table,
                tier = f.tier.as_str(),
                max_time = f.max_time,
                "expired"
            );
            self.reaper.delete_later(f.tier, [f.path]);
        }
        self.metrics.files_expired.inc_by(out.files as u64);
        self.metrics.rows_expired.inc_by(out.rows);
        self.compactor.update_gauges();
        Ok(out)
    }

    /// Removes cold objects the catalog does not name: copies of moves a crash
    /// (or a failed commit) interrupted. Waits for running moves.
    pub async fn remove_cold_orphans(&self) -> Result<usize> {
        let _guard = self.compactor.lock.lock().await;
        self.reaper
            .remove_orphans_of(Tier::Cold, &self.catalog)
            .await
    }

    /// The cold tier's store (queries register it under its URL).
    pub fn cold_store(&self) -> &crate::ParquetStore {
        &self.cold
    }

    /// The store holding `tier`'s files.
    pub fn store_of(&self, tier: Tier) -> &crate::ParquetStore {
        match tier {
            Tier::Hot | Tier::Restored => &self.store,
            Tier::Cold => &self.cold,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::time::Duration;

    use vigil_model::{FieldValue, Point};

    use crate::catalog::Tier;
    use crate::retention::now_nanos;
    use crate::{RetentionPolicy, Storage, StorageConfig};

    const DAY: i64 = 86_400_000_000_000;

    fn point(host: &'static str, v: f64, t: i64) -> Point<'static> {
        Point {
            table: Cow::Borrowed("cpu"),
            tags: vec![(Cow::Borrowed("host"), Cow::Borrowed(host))],
            fields: vec![(Cow::Borrowed("v"), FieldValue::F64(v))],
            time: t,
        }
    }

    fn config(dir: &std::path::Path) -> StorageConfig {
        let mut c = StorageConfig::new(dir);
        c.deletion_grace = Duration::ZERO;
        c
    }

    async fn write_and_flush(s: &Storage, points: Vec<Point<'static>>) {
        let w = s.validate(points.into_iter().enumerate().collect());
        s.commit(w.tables).await.unwrap();
        s.flush().await.unwrap();
    }

    /// The rows of every snapshot file, read from the store the snapshot names.
    fn snapshot_rows(s: &Storage) -> Vec<(String, usize)> {
        let snap = s.snapshot("cpu").unwrap();
        snap.files
            .iter()
            .map(|f| {
                let store = s.store_of(f.meta.tier).clone();
                let path = f.meta.path.clone();
                let n = std::thread::spawn(move || {
                    store
                        .open(&path, None, 1024)
                        .unwrap()
                        .map(|b| b.unwrap().num_rows())
                        .sum::<usize>()
                })
                .join()
                .unwrap();
                (f.url.clone(), n)
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_moved_file_is_read_from_the_cold_tier_and_its_hot_copy_goes() {
        // Failpoints are global: hold the scenario lock so another test's
        // `tier-before-commit` cannot fail these moves.
        let _scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(config(dir.path())).await.unwrap();
        let old = now_nanos() - 3 * DAY;
        write_and_flush(&s, vec![point("a", 1.0, old), point("b", 2.0, old + 1)]).await;
        let file = s.files()[0].clone();
        assert_eq!(file.tier, Tier::Hot);
        let out = s.move_to_cold(&[file.id, 12345]).await.unwrap();
        assert_eq!((out.files, out.bytes, out.failed), (1, file.size_bytes, 0));
        assert_eq!(s.files()[0].tier, Tier::Cold);
        assert!(dir.path().join("cold").join(&file.path).exists());
        assert_eq!(
            snapshot_rows(&s),
            vec![(format!("vigil://cold/{}", file.path), 2)]
        );
        s.delete_replaced_files(false).await;
        assert!(!dir.path().join(&file.path).exists(), "hot copy deleted");
        // Moving it again does nothing.
        assert_eq!(s.move_to_cold(&[file.id]).await.unwrap().files, 0);
        s.shutdown().await.unwrap();
        drop(s);
        let s = Storage::open(config(dir.path())).await.unwrap();
        assert_eq!(s.files()[0].tier, Tier::Cold);
        assert_eq!(snapshot_rows(&s)[0].1, 2);
        // Compaction leaves cold files alone.
        write_and_flush(&s, vec![point("a", 5.0, old)]).await;
        assert_eq!(s.compact().await.unwrap(), 0);
    }

    /// A crash between copying and committing leaves a cold object nothing names:
    /// the catalog still reads the hot file, the sweep removes the copy, and the
    /// next move succeeds. A crash after the commit leaves a hot copy nothing
    /// names: the next start removes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn interrupted_moves_leave_no_orphan_and_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(config(dir.path())).await.unwrap();
        let old = now_nanos() - 3 * DAY;
        write_and_flush(&s, vec![point("a", 1.0, old)]).await;
        let file = s.files()[0].clone();
        let cold_copy = dir.path().join("cold").join(&file.path);
        {
            let _scenario = fail::FailScenario::setup();
            fail::cfg("tier-before-commit", "return").unwrap();
            let out = s.move_to_cold(&[file.id]).await.unwrap();
            assert_eq!((out.files, out.failed), (0, 1));
            assert!(out.error.unwrap().contains("failpoint"));
        }
        assert!(cold_copy.exists(), "the copy a crash would leave");
        assert_eq!(s.files()[0].tier, Tier::Hot);
        assert_eq!(snapshot_rows(&s)[0].1, 1);
        assert_eq!(s.remove_cold_orphans().await.unwrap(), 1);
        assert!(!cold_copy.exists());
        assert_eq!(s.move_to_cold(&[file.id]).await.unwrap().files, 1);
        // The hot copy is still there (grace not yet run) when the process dies.
        let hot_copy = dir.path().join(&file.path);
        assert!(hot_copy.exists());
        drop(s);
        let s = Storage::open(config(dir.path())).await.unwrap();
        assert!(!hot_copy.exists(), "the next start removes the hot copy");
        assert_eq!(s.remove_cold_orphans().await.unwrap(), 0);
        assert_eq!(snapshot_rows(&s)[0].1, 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expired_rows_are_never_read_and_expired_files_are_deleted() {
        let _scenario = fail::FailScenario::setup();
        let dir = tempfile::tempdir().unwrap();
        let mut c = config(dir.path());
        c.retention = RetentionPolicy {
            default: Some(Duration::from_secs(7 * 86_400)),
            ..Default::default()
        };
        let s = Storage::open(c).await.unwrap();
        let now = now_nanos();
        write_and_flush(&s, vec![point("a", 1.0, now - 10 * DAY)]).await;
        write_and_flush(&s, vec![point("a", 2.0, now - DAY)]).await;
        let (old, recent): (Vec<_>, Vec<_>) = s
            .files()
            .into_iter()
            .partition(|f| f.max_time < now - 7 * DAY);
        assert_eq!(s.move_to_cold(&[old[0].id]).await.unwrap().files, 1);
        let snap = s.snapshot("cpu").unwrap();
        let cutoff = snap.retention_cutoff.unwrap();
        assert!((now - 7 * DAY..now - 7 * DAY + 60_000_000_000).contains(&cutoff));
        assert_eq!(
            snap.files.iter().map(|f| f.meta.id).collect::<Vec<_>>(),
            vec![recent[0].id],
            "the expired file is not read, though not yet deleted"
        );
        let out = s.expire_files(&[old[0].id]).await.unwrap();
        assert_eq!((out.files, out.rows), (1, 1));
        s.delete_replaced_files(false).await;
        assert!(!dir.path().join("cold").join(&old[0].path).exists());
        assert_eq!(s.files().len(), 1);
    }
}
