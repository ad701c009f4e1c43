//! Opening a log.
//!
//! - `open/clean_1gib`: a writer opens a 1 GiB log after a clean close. The
//!   log is written once under `target/tmp` and reused by later runs.
//! - `open/recover_unclean_64mib`: a writer opens a log whose only, 64 MiB
//!   segment was written but never synced nor closed (the handle was
//!   `mem::forget`-ed, so no clean shutdown was recorded), with a torn
//!   frame at its end: recovery scans the whole segment from its durable
//!   watermark and cuts the torn tail. This is the bound the issue sets:
//!   recovery reads at most one segment. Each iteration opens a fresh copy
//!   of that crashed directory (the copy is not timed).
//! - `open/recover_unclean_short_64mib`: the same with only 1,000 records in
//!   the segment and nothing torn after them. Recovery scans the records
//!   and then searches the rest of the segment, about 64 MiB of zeros, for
//!   anything a crash left behind them.
//! - `open/after_close_small` and `open/after_drop_small`: a writer reopens
//!   a log of 1,000 records in one default 64 MiB segment (`EveryAppend`)
//!   after `close()`, or after its last handle was dropped. Each iteration
//!   leaves it the same way for the next.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use criterion::Throughput;

use backbone::{Durability, Options};
use common::{benching, checkout, open, quick, selected, Checkout};

const GIB: u64 = 1 << 30;
const SEGMENT: u64 = 64 << 20;

/// A log of about `bytes` bytes at `dir`, reused if a previous run left a
/// complete one there.
fn large_log(dir: &Path, bytes: u64) -> u64 {
    let done = dir.with_extension("complete");
    if done.exists() {
        if let Ok(log) = Options::new().open::<Checkout>(dir) {
            let n = log.next_offset();
            log.close().unwrap();
            return n;
        }
    }
    let _ = std::fs::remove_dir_all(dir);
    let _ = std::fs::remove_file(&done);
    eprintln!(
        "writing a {} MiB log at {} once",
        bytes >> 20,
        dir.display()
    );
    let log = open(dir, Durability::Buffered);
    let batch: Vec<Checkout> = (0..1024).map(checkout).collect();
    while log.stats().bytes < bytes {
        for _ in 0..64 {
            log.append_batch(&batch).unwrap();
        }
    }
    let n = log.next_offset();
    log.close().unwrap();
    std::fs::write(&done, b"").unwrap();
    n
}

/// A directory left as a crash would leave it: one 64 MiB segment holding
/// `records` records (or as many as fit, if `None`) that were written to
/// the OS but never synced nor closed. A full segment also gets half a
/// frame after its last record.
fn crashed_log(dir: &Path, records: Option<u64>) {
    let log = open(dir, Durability::Buffered);
    let mut i = 0u64;
    let mut end = 64u64; // the segment header
    let segment_of = |log: &backbone::EventLog<Checkout>| log.stats().segments;
    while records.is_none_or(|n| i < n) {
        let event = checkout(i);
        let len = postcard::to_stdvec(&event).unwrap().len() as u64 + 24;
        if end + len + 4096 > SEGMENT {
            break;
        }
        log.append(&event).unwrap();
        end += len;
        i += 1;
    }
    log.flush().unwrap();
    assert_eq!(segment_of(&log), 1);
    std::mem::forget(log);
    if records.is_some() {
        return;
    }
    // A torn frame: a plausible length and then garbage, never completed.
    let seg = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "seg"))
        .expect("segment file");
    let file = std::fs::OpenOptions::new().write(true).open(seg).unwrap();
    use std::os::unix::fs::FileExt;
    let mut torn = 40u32.to_le_bytes().to_vec();
    torn.extend_from_slice(&[0xAB; 13]);
    file.write_all_at(&torn, end).unwrap();
}

/// Times opening fresh copies of the crashed directory `template` (the
/// copies are not timed).
fn bench_recovery(c: &mut criterion::Criterion, name: &str, template: &Path) {
    let scratch = tempfile::tempdir().unwrap();
    let mut n = 0u64;
    let mut checked = false;
    let mut group = c.benchmark_group("open");
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                n += 1;
                let dir = scratch.path().join(n.to_string());
                copy_dir(template, &dir);
                let t = Instant::now();
                let log = Options::new().open::<Checkout>(&dir).unwrap();
                total += t.elapsed();
                if !checked {
                    let report = log.recovery_report();
                    eprintln!(
                        "{name}: scanned {} bytes, cut {} bytes, {} records kept",
                        report.scanned_bytes,
                        report.truncated_bytes,
                        log.next_offset()
                    );
                    checked = true;
                }
                drop(log);
                std::fs::remove_dir_all(&dir).unwrap();
            }
            total
        })
    });
    group.finish();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

fn main() {
    let mut c = quick(2);
    let full = benching();
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));

    if selected("open/clean_1gib") {
        // Under `cargo test --benches`, a small log: the code runs, quickly.
        let (dir, bytes) = if full {
            (root.join("backbone-bench-open-1gib"), GIB)
        } else {
            (root.join("backbone-bench-open-small"), 8 << 20)
        };
        let records = large_log(&dir, bytes);
        let mut group = c.benchmark_group("open");
        group.throughput(Throughput::Elements(1));
        group.bench_function("clean_1gib", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let log = Options::new().open::<Checkout>(&dir).unwrap();
                    total += t.elapsed();
                    assert_eq!(log.next_offset(), records);
                    log.close().unwrap();
                }
                total
            })
        });
        group.finish();
    }

    for (name, close) in [("after_close_small", true), ("after_drop_small", false)] {
        if !selected(&format!("open/{name}")) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let log = Options::new().open::<Checkout>(dir.path()).unwrap();
        let batch: Vec<Checkout> = (0..1000).map(checkout).collect();
        log.append_batch(&batch).unwrap();
        log.close().unwrap();
        let mut group = c.benchmark_group("open");
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let log = Options::new().open::<Checkout>(dir.path()).unwrap();
                    total += t.elapsed();
                    assert_eq!(log.next_offset(), 1000);
                    assert!(log.recovery_report().closed_cleanly, "{name}");
                    if close {
                        log.close().unwrap();
                    } else {
                        drop(log);
                    }
                }
                total
            })
        });
        group.finish();
    }

    if selected("open/recover_unclean_64mib") {
        let template = tempfile::tempdir().unwrap();
        crashed_log(template.path(), None);
        bench_recovery(&mut c, "recover_unclean_64mib", template.path());
    }

    if selected("open/recover_unclean_short_64mib") {
        let template = tempfile::tempdir().unwrap();
        crashed_log(template.path(), Some(1000));
        bench_recovery(&mut c, "recover_unclean_short_64mib", template.path());
    }
    c.final_summary();
}
