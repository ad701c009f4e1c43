//! The fuzz targets' oracles (`tests/oracles/mod.rs`, shared with the
//! cargo-fuzz targets in `fuzz/`) driven by proptest, so the stable
//! toolchain checks the same properties on every `cargo test`; and every
//! input under `fuzz/regressions/<target>/` (minimized crashes the fuzzer
//! found) replayed as an ordinary test.
//!
//! Each of `frame_decode`, `segment_recover`, `dir_recover` and
//! `index_parse` checks an input against every segment layout (a log this
//! build writes, a version-1 log, and a version-1 log continued in version
//! 2), so a regression input saved before version 2 still replays its
//! original case on the version-1 log.
//!
//! `PROPTEST_CASES` sets the cases per oracle (default 256).

use std::path::Path;

use super::oracles;

use proptest::prelude::*;

type Oracle = fn(&[u8]) -> oracles::Outcome;

const TARGETS: [(&str, Oracle); 5] = [
    ("frame_decode", oracles::frame_decode),
    ("segment_recover", oracles::segment_recover),
    ("dir_recover", oracles::dir_recover),
    ("index_parse", oracles::index_parse),
    ("api_ops", oracles::api_ops),
];

fn cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: cases(),
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Fuzzer-like inputs: random bytes of any length up to `max`.
fn input(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn frame_decode(data in input(2048)) {
        oracles::frame_decode(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn segment_recover(data in input(2048)) {
        oracles::segment_recover(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn dir_recover(data in input(1024)) {
        oracles::dir_recover(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn index_parse(data in input(1024)) {
        oracles::index_parse(&data).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn api_ops(data in input(1024)) {
        oracles::api_ops(&data).map_err(TestCaseError::fail)?;
    }
}

/// Every committed fuzzer finding still passes its oracle: the files under
/// `fuzz/regressions/<target>/`, each a minimized input that once crashed.
#[test]
fn fuzz_regressions_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions");
    let mut failures = Vec::new();
    let mut replayed = 0;
    for (target, oracle) in TARGETS {
        let Ok(dir) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = dir.map(|e| e.expect("dir entry").path()).collect();
        files.sort();
        for file in files.into_iter().filter(|f| f.is_file()) {
            let data = std::fs::read(&file).expect("read a regression input");
            let run = std::panic::catch_unwind(|| oracle(&data));
            let result = run.unwrap_or_else(|_| Err("panicked (see above)".into()));
            replayed += 1;
            if let Err(e) = result {
                failures.push(format!("{}: {e}", file.display()));
            }
        }
    }
    println!("replayed {replayed} fuzz regression inputs");
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
