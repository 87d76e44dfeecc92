//! Choosing which small Parquet files to merge.
//!
//! Only files of the same table and UTC day can overlap, and among overlapping files
//! the one with the higher sequence wins duplicates. Merging a run of files that is
//! contiguous in sequence order keeps that rule true for the merged file (it takes the
//! highest sequence of the run), so runs are always contiguous.

use std::collections::BTreeMap;

use crate::catalog::ParquetFileMeta;

/// Returns runs of files to merge: per (table, day), contiguous (by sequence) runs of at
/// least `min_files` files each smaller than `small_bytes`, capped at `max_run_bytes`.
pub fn plan_compactions(
    files: &[ParquetFileMeta],
    min_files: usize,
    small_bytes: u64,
    max_run_bytes: u64,
) -> Vec<Vec<ParquetFileMeta>> {
    let mut groups: BTreeMap<(&str, i64), Vec<&ParquetFileMeta>> = BTreeMap::new();
    for f in files {
        groups.entry((f.table.as_str(), f.day)).or_default().push(f);
    }
    let mut plans = Vec::new();
    for (_, mut g) in groups {
        g.sort_by_key(|f| (f.seq, f.id));
        let mut run: Vec<ParquetFileMeta> = Vec::new();
        let mut run_bytes = 0;
        let close = |run: &mut Vec<ParquetFileMeta>, plans: &mut Vec<Vec<ParquetFileMeta>>| {
            if run.len() >= min_files.max(2) {
                plans.push(std::mem::take(run));
            } else {
                run.clear();
            }
        };
        for f in g {
            if f.size_bytes >= small_bytes || run_bytes + f.size_bytes > max_run_bytes {
                close(&mut run, &mut plans);
                run_bytes = 0;
                if f.size_bytes >= small_bytes {
                    continue;
                }
            }
            run_bytes += f.size_bytes;
            run.push(f.clone());
        }
        close(&mut run, &mut plans);
    }
    plans
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: u64, day: i64, size: u64) -> ParquetFileMeta {
        ParquetFileMeta {
            id,
            table: "cpu".into(),
            path: String::new(),
            min_time: 0,
            max_time: 0,
            rows: 1,
            size_bytes: size,
            seq: id * 10,
            day,
            sort_key: Vec::new(),
            key_range: None,
        }
    }

    #[test]
    fn runs_are_contiguous_and_per_day() {
        let files = vec![
            f(1, 0, 10),
            f(2, 0, 10),
            f(3, 0, 1000),
            f(4, 0, 10),
            f(5, 0, 10),
            f(6, 1, 10),
        ];
        let plans = plan_compactions(&files, 2, 100, 10_000);
        let ids: Vec<Vec<u64>> = plans
            .iter()
            .map(|p| p.iter().map(|f| f.id).collect())
            .collect();
        // The big file 3 splits the run; day 1 has a single file.
        assert_eq!(ids, vec![vec![1, 2], vec![4, 5]]);
    }
}
