//! Fuzz target `dir_recover`: see `oracles::dir_recover` in `tests/oracles/mod.rs`, the
//! oracle this target shares with `tests/sim/fuzz_oracles.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracles/mod.rs"]
mod oracles;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = oracles::dir_recover(data) {
        panic!("dir_recover: {e}");
    }
});
