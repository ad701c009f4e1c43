//! Disk full on a real filesystem: a small tmpfs mounted by the test (it
//! needs root, as the tests run in CI here; elsewhere it says so and
//! returns). The simulator covers ENOSPC at every storage operation
//! (tests/sim/faults.rs); this checks the same promise against a real kernel:
//! the append that meets a full disk fails with a storage-full error, the
//! log refuses writes from then on, and after space is freed a reopen finds
//! every acknowledged record intact and appends resume.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use backbone::{Durability, Error, Options, Raw};

/// A tmpfs mounted for the test's lifetime.
struct Tmpfs {
    dir: PathBuf,
    _parent: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let parent = tempfile::tempdir().ok()?;
        let dir = parent.path().join("tmpfs");
        std::fs::create_dir(&dir).ok()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .status()
            .ok()?;
        status.success().then_some(Tmpfs {
            dir,
            _parent: parent,
        })
    }

    fn resize(&self, size: &str) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.dir)
            .status()
            .expect("run mount");
        assert!(status.success(), "remount {size}");
    }

    fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).status();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing_acknowledged() {
    if !is_root() {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let Some(fs) = Tmpfs::mount("2m") else {
        eprintln!("skipped: mount -t tmpfs failed here");
        return;
    };
    let log_dir = fs.path().join("log");
    let options = || {
        Options::new()
            .segment_bytes(256 << 10)
            .durability(Durability::EveryAppend)
    };
    let log = options().open_with_codec(&log_dir, Raw).unwrap();
    let mut acked = Vec::new();
    let error = loop {
        let i = acked.len() as u64;
        let value = common::payload(i, i).repeat(40);
        match log.append(&value) {
            Ok(offset) => {
                assert_eq!(offset, i);
                acked.push(value);
            }
            Err(e) => break e,
        }
        assert!(
            acked.len() < 1_000_000,
            "a 2 MiB filesystem never filled up"
        );
    };
    assert_eq!(
        error.io_kind(),
        Some(std::io::ErrorKind::StorageFull),
        "the append that met a full disk: {error}"
    );
    assert!(!acked.is_empty(), "nothing fitted at all");
    eprintln!(
        "disk full after {} acknowledged records: {error}",
        acked.len()
    );
    // No later call reports success: the log refuses writes until reopened.
    assert!(matches!(log.append(&vec![1]), Err(Error::Poisoned { .. })));
    assert!(matches!(log.sync(), Err(Error::Poisoned { .. })));
    // What was acknowledged stays readable.
    for (i, value) in acked.iter().enumerate() {
        assert_eq!(&log.get(i as u64).unwrap().unwrap().value, value);
    }
    drop(log);

    fs.resize("16m");
    let log = options().open_with_codec(&log_dir, Raw).unwrap();
    assert!(log.next_offset() >= acked.len() as u64);
    for (i, value) in acked.iter().enumerate() {
        assert_eq!(
            &log.get(i as u64).unwrap().unwrap().value,
            value,
            "acknowledged record {i} after the reopen"
        );
    }
    let next = log.next_offset();
    assert_eq!(log.append(&b"after".to_vec()).unwrap(), next);
    assert_eq!(log.verify().unwrap(), next + 1);
}
