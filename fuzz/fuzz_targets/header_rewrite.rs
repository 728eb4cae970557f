//! Fuzz target `header_rewrite`: the invariants in harness/header_rewrite.rs (docs/fuzzing.md).
#![no_main]

// Every target carries the whole harness and uses one check of it.
#[allow(dead_code)]
#[path = "../harness/mod.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    harness::header_rewrite::check(data);
});
