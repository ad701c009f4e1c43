//! The suites that run on the crash-simulating storage (`backbone::sim`).
//!
//! The simulator is test-only machinery, not a feature of the published
//! crate: it exists only in the crate's own unit-test build (`cfg(test)`)
//! and in cargo-fuzz builds (`cfg(fuzzing)`). So these suites, written
//! against the public API like the other integration tests, are compiled
//! into the crate's unit-test binary through `#[path]` (see `src/lib.rs`,
//! where `extern crate self as backbone` lets them say `backbone::`), and
//! plain `cargo test` runs them. Run one alone with, for example,
//! `cargo test --lib sim_suites::damage`.

#[path = "../common/mod.rs"]
mod common;
#[path = "../oracles/mod.rs"]
mod oracles;

mod damage;
mod faults;
mod fuzz_oracles;
mod handoff;
mod model;
mod stream_jobs;
mod writeback;
