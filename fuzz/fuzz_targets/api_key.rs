//! Fuzz target `api_key`: the invariants in harness/api_key.rs (docs/fuzzing.md).
#![no_main]

// Every target carries the whole harness and uses one check of it.
#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::api_key::check(data);
});
