//! The archive and restores. With archiving on, a raw file leaving retention is
//! copied to the cold store under `archive/` before the catalog forgets it, so
//! old data costs only cold storage. A restore brings a table's archived time
//! range back: each archived file is copied to local disk under
//! `restored/<restore id>/` and named in the catalog as a file of tier
//! `restored`, which retention, compaction and tiering leave alone and queries
//! read whatever the table's retention (within the restored range).
//!
//! A restore is a catalog record listing the archived files it brings back and
//! those already back; each file is copied, then named in one commit that also
//! marks it done. Interrupted (the client gone, the server stopped or killed),
//! it carries on from the next file when run again; a copy nothing names yet is
//! overwritten by that run. Restored rows keep their original sequence, so a
//! newer write of the same series and time still wins over them. Dropping a
//! restore removes its files from the catalog, then from disk.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::catalog::{Catalog, ParquetFileMeta, Tier};
use crate::engine::Storage;
use crate::error::{Error, Result};
use crate::parquet_store::ParquetStore;
use crate::retention::now_nanos;

/// Where archived files are kept in the cold store (followed by their path).
pub const ARCHIVE_DIR: &str = "archive";
/// Where restored files are kept on local disk (followed by the restore's id).
pub const RESTORED_DIR: &str = "restored";

/// One restore of archived data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Restore {
    pub id: u64,
    pub table: String,
    /// The range asked for, `[from, to)` in nanoseconds.
    pub from: i64,
    pub to: i64,
    /// The archived files (ids) it brings back...
    pub files: Vec<u64>,
    /// ...those already back...
    pub done: Vec<u64>,
    /// ...and their bytes, all and done.
    pub bytes: u64,
    pub bytes_done: u64,
    /// When it was started (nanoseconds since the epoch).
    pub created: i64,
}

impl Restore {
    pub fn complete(&self) -> bool {
        self.done.len() >= self.files.len()
    }
}

fn refused(message: String) -> Error {
    Error::Restore { message }
}

impl Storage {
    /// Copies an expiring file to the archive; returns its archive path.
    pub(crate) async fn archive_copy(&self, f: &ParquetFileMeta) -> Result<String> {
        let dest = format!("{ARCHIVE_DIR}/{}", f.path);
        let copied = self
            .store_of(f.tier)
            .copy_to(&f.path, &self.cold, &dest)
            .await?;
        if copied != f.size_bytes {
            return Err(Error::io(
                &dest,
                std::io::Error::other(format!(
                    "archived {copied} bytes of a {}-byte file",
                    f.size_bytes
                )),
            ));
        }
        info!(file = f.path, table = f.table, archive = dest, "archived");
        Ok(dest)
    }

    /// The archived files.
    pub fn archived(&self) -> Vec<ParquetFileMeta> {
        self.catalog.read(|c| c.archive.clone())
    }

    /// Every restore, oldest first.
    pub fn restores(&self) -> Vec<Restore> {
        self.catalog
            .read(|c| c.restores.values().cloned().collect())
    }

    /// The ranges restored for `table` (queries show them whatever the retention).
    pub fn restored_ranges(&self, table: &str) -> Vec<(i64, i64)> {
        self.catalog.read(|c| {
            c.restores
                .values()
                .filter(|r| r.table == table)
                .map(|r| (r.from, r.to))
                .collect()
        })
    }

    /// Records a restore of `table`'s archived data in `[from, to)`; run it with
    /// [`Storage::run_restore`]. Refused when nothing archived falls in the range.
    pub fn start_restore(&self, table: &str, from: i64, to: i64) -> Result<Restore> {
        if from >= to {
            return Err(refused(format!(
                "the range to restore is empty: from ({from}) must be before to ({to})"
            )));
        }
        let restore = self.catalog.commit(|next| {
            let in_range: Vec<&ParquetFileMeta> = next
                .archive
                .iter()
                .filter(|f| f.table == table && f.overlaps(from, to - 1))
                .collect();
            if in_range.is_empty() {
                return Err(refused(format!(
                    "nothing of table '{table}' is archived in that range ({} archived files in all)",
                    next.archive.len()
                )));
            }
            // A file another restore brings back is not copied twice.
            let taken: HashSet<u64> = next
                .restores
                .values()
                .flat_map(|r| r.files.iter().copied())
                .collect();
            let files: Vec<&ParquetFileMeta> = in_range
                .into_iter()
                .filter(|f| !taken.contains(&f.id))
                .collect();
            if files.is_empty() {
                return Err(refused(format!(
                    "everything archived of table '{table}' in that range is restored already (vigil restore --list)"
                )));
            }
            next.next_restore_id = next.next_restore_id.max(1);
            let r = Restore {
                id: next.next_restore_id,
                table: table.to_string(),
                from,
                to,
                files: files.iter().map(|f| f.id).collect(),
                done: Vec::new(),
                bytes: files.iter().map(|f| f.size_bytes).sum(),
                bytes_done: 0,
                created: now_nanos(),
            };
            next.next_restore_id += 1;
            next.restores.insert(r.id, r.clone());
            Ok(r)
        })?;
        info!(
            restore = restore.id,
            table,
            files = restore.files.len(),
            bytes = restore.bytes,
            "restore started"
        );
        Ok(restore)
    }

    /// Brings back the files of restore `id` not yet back, one at a time, calling
    /// `progress` after each; returns the restore as it ends. Safe to run again
    /// (or twice at once): a file already back is skipped.
    pub async fn run_restore(&self, id: u64, progress: impl Fn(&Restore)) -> Result<Restore> {
        loop {
            // One file per hold of the lock that moves and expires files, so a
            // drop or a second run waits for the file in hand.
            let _guard = self.compactor.lock.lock().await;
            let Some(r) = self.catalog.read(|c| c.restores.get(&id).cloned()) else {
                return Err(refused(format!("there is no restore {id} (dropped?)")));
            };
            let done: HashSet<u64> = r.done.iter().copied().collect();
            let Some(&next_file) = r.files.iter().find(|f| !done.contains(f)) else {
                return Ok(r);
            };
            let archived = self
                .catalog
                .read(|c| c.archive.iter().find(|f| f.id == next_file).cloned());
            let new_file = match archived {
                Some(f) => {
                    let name = f.path.rsplit('/').next().unwrap_or(&f.path);
                    let dest = format!("{RESTORED_DIR}/{id}/{name}");
                    let copied = self.cold.copy_to(&f.path, &self.store, &dest).await?;
                    if copied != f.size_bytes {
                        let _ = self.store.remove(&dest).await;
                        return Err(Error::io(
                            &dest,
                            std::io::Error::other(format!(
                                "restored {copied} bytes of a {}-byte file",
                                f.size_bytes
                            )),
                        ));
                    }
                    // Tests stop here to interrupt a restore between two files.
                    fail::fail_point!("restore-before-commit", |_| Err(Error::io(
                        &dest,
                        std::io::Error::other("restore-before-commit failpoint")
                    )));
                    Some(ParquetFileMeta {
                        id: self.catalog.allocate_file_id(),
                        path: dest,
                        tier: Tier::Restored,
                        level: 0,
                        ..f
                    })
                }
                // Gone from the archive meanwhile: nothing to bring back.
                None => None,
            };
            let committed = self.catalog.commit_if(|next| {
                let Some(r) = next.restores.get_mut(&id) else {
                    return Ok(None);
                };
                r.done.push(next_file);
                if let Some(f) = &new_file {
                    r.bytes_done += f.size_bytes;
                    next.files.push(f.clone());
                }
                Ok(Some(r.clone()))
            });
            match committed {
                Ok(Some(r)) => {
                    progress(&r);
                    if r.complete() {
                        info!(
                            restore = id,
                            table = r.table,
                            files = r.files.len(),
                            "restore complete"
                        );
                    }
                }
                Ok(None) => {
                    if let Some(f) = &new_file {
                        let _ = self.store.remove(&f.path).await;
                    }
                }
                Err(e) => {
                    // Not named (or maybe named, if the save may have landed: then
                    // it must stay, and the next run skips it).
                    if let (false, Some(f)) = (e.maybe_saved, &new_file) {
                        let _ = self.store.remove(&f.path).await;
                    }
                    return Err(e.into());
                }
            }
        }
    }

    /// Undoes restore `id`: its files leave the catalog (queries stop showing
    /// them) and are deleted after the grace time. Returns the files removed.
    pub async fn drop_restore(&self, id: u64) -> Result<usize> {
        let _guard = self.compactor.lock.lock().await;
        let prefix = format!("{RESTORED_DIR}/{id}/");
        let removed = self.catalog.commit_if(|next| {
            if next.restores.remove(&id).is_none() {
                return Err(refused(format!("there is no restore {id}")));
            }
            let (gone, keep): (Vec<ParquetFileMeta>, Vec<ParquetFileMeta>) = next
                .files
                .drain(..)
                .partition(|f| f.tier == Tier::Restored && f.path.starts_with(&prefix));
            next.files = keep;
            Ok(Some(gone))
        })?;
        let gone = removed.unwrap_or_default();
        let n = gone.len();
        self.reaper
            .delete_later(Tier::Restored, gone.into_iter().map(|f| f.path));
        self.compactor.update_gauges();
        info!(restore = id, files = n, "restore dropped");
        Ok(n)
    }
}

/// Removes restored files the catalog does not name: those of restores dropped
/// before their deletion ran, and copies a crash left before their commit.
pub(crate) async fn remove_dropped_restores(
    store: &ParquetStore,
    catalog: &Catalog,
) -> Result<usize> {
    let known: HashSet<String> = catalog.read(|c| {
        c.files
            .iter()
            .filter(|f| f.tier == Tier::Restored)
            .map(|f| f.path.clone())
            .collect()
    });
    let mut removed = 0;
    for (path, _) in store.list(RESTORED_DIR).await? {
        if path.ends_with(".parquet") && !known.contains(&path) {
            warn!(
                file = path,
                "removing a restored file the catalog does not name"
            );
            match store.remove(&path).await {
                Ok(()) => removed += 1,
                Err(e) => warn!(file = path, error = %e, "could not remove a restored file"),
            }
        }
    }
    Ok(removed)
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

    fn point(v: f64, t: i64) -> Point<'static> {
        Point {
            table: Cow::Borrowed("cpu"),
            tags: vec![(Cow::Borrowed("host"), Cow::Borrowed("a"))],
            fields: vec![(Cow::Borrowed("v"), FieldValue::F64(v))],
            time: t,
        }
    }

    fn config(dir: &std::path::Path) -> StorageConfig {
        let mut c = StorageConfig::new(dir);
        c.deletion_grace = Duration::ZERO;
        c.archive = true;
        c.retention = RetentionPolicy {
            default: Some(Duration::from_secs(7 * 86_400)),
            ..Default::default()
        };
        c
    }

    async fn write_and_flush(s: &Storage, points: Vec<Point<'static>>) {
        let w = s.validate(points.into_iter().enumerate().collect());
        s.commit(w.tables).await.unwrap();
        s.flush().await.unwrap();
    }

    /// Expired files go to the archive; a restore brings them back as files of
    /// their own, survives an interruption, and is undone by a drop.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn archive_restore_resume_and_drop() {
        let dir = tempfile::tempdir().unwrap();
        let s = Storage::open(config(dir.path())).await.unwrap();
        let now = now_nanos();
        write_and_flush(
            &s,
            vec![point(1.0, now - 10 * DAY), point(2.0, now - 10 * DAY + 1)],
        )
        .await;
        write_and_flush(&s, vec![point(3.0, now - 12 * DAY)]).await;
        write_and_flush(&s, vec![point(4.0, now - DAY)]).await;
        let old: Vec<u64> = s
            .files()
            .iter()
            .filter(|f| f.max_time < now - 7 * DAY)
            .map(|f| f.id)
            .collect();
        let out = s.expire_files(&old).await.unwrap();
        assert_eq!((out.files, out.archived, out.archive_failed), (2, 2, 0));
        assert_eq!(s.files().len(), 1);
        let archived = s.archived();
        assert_eq!(archived.len(), 2);
        for a in &archived {
            assert!(a.path.starts_with("archive/parquet/"), "{}", a.path);
            assert!(dir.path().join("cold").join(&a.path).exists());
        }
        s.delete_replaced_files(false).await;

        let e = s
            .start_restore("cpu", now - 30 * DAY, now - 20 * DAY)
            .unwrap_err();
        assert!(
            e.to_string().contains("nothing of table 'cpu' is archived"),
            "{e}"
        );
        assert!(s.start_restore("cpu", now, now - DAY).is_err());
        // The range covers the file 10 days old, not the one 12 days old.
        let r = s
            .start_restore("cpu", now - 11 * DAY, now - 9 * DAY)
            .unwrap();
        assert_eq!(r.files.len(), 1);
        let e = s
            .start_restore("cpu", now - 10 * DAY, now - 9 * DAY)
            .unwrap_err();
        assert!(e.to_string().contains("restored already"), "{e}");
        {
            let _scenario = fail::FailScenario::setup();
            fail::cfg("restore-before-commit", "return").unwrap();
            assert!(s.run_restore(r.id, |_| {}).await.is_err());
        }
        assert!(!s.restores()[0].complete(), "interrupted");
        assert_eq!(s.snapshot("cpu").unwrap().files.len(), 1);
        let seen = std::sync::Mutex::new(Vec::new());
        let done = s
            .run_restore(r.id, |r| seen.lock().unwrap().push(r.done.len()))
            .await
            .unwrap();
        assert!(done.complete());
        assert_eq!(*seen.lock().unwrap(), vec![1]);
        // Running it again brings nothing back twice.
        s.run_restore(r.id, |_| {}).await.unwrap();
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!(
            snap.files.len(),
            2,
            "the restored file is read past retention"
        );
        assert_eq!(snap.restored, vec![(now - 11 * DAY, now - 9 * DAY)]);
        let restored = snap
            .files
            .iter()
            .find(|f| f.meta.tier == Tier::Restored)
            .unwrap()
            .meta
            .clone();
        assert_eq!(restored.rows, 2);
        assert!(restored.path.starts_with(&format!("restored/{}/", r.id)));
        // Retention does not expire it; maintenance is told to, it stays.
        assert_eq!(s.expire_files(&[restored.id]).await.unwrap().files, 0);

        // A restart keeps it; a stray copy in its directory goes.
        s.shutdown().await.unwrap();
        drop(s);
        let stray = dir.path().join(format!("restored/{}/stray.parquet", r.id));
        std::fs::write(&stray, b"x").unwrap();
        let s = Storage::open(config(dir.path())).await.unwrap();
        assert!(!stray.exists());
        assert!(dir.path().join(&restored.path).exists());
        assert_eq!(s.snapshot("cpu").unwrap().files.len(), 2);

        assert_eq!(s.drop_restore(r.id).await.unwrap(), 1);
        assert!(s.drop_restore(r.id).await.is_err());
        s.delete_replaced_files(false).await;
        assert!(!dir.path().join(&restored.path).exists());
        let snap = s.snapshot("cpu").unwrap();
        assert_eq!((snap.files.len(), snap.restored.len()), (1, 0));
        assert_eq!(s.archived().len(), 2, "the archive keeps its files");
    }
}
