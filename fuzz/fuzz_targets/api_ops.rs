//! Fuzz target `api_ops`: see `oracles::api_ops` in `tests/oracles/mod.rs`, the
//! oracle this target shares with `tests/sim/fuzz_oracles.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "../../tests/oracles/mod.rs"]
mod oracles;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = oracles::api_ops(data) {
        panic!("api_ops: {e}");
    }
});
