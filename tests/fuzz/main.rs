//! Fuzzing every parser of untrusted or stored bytes (spec/fuzzing.md):
//! property tests over arbitrary bytes and over structure-aware mutations
//! of valid encodings made by cairn's own writers. Every case must not
//! panic, must finish (a watchdog aborts a case that runs 20 s), and must
//! not hold more than `harness::allocation_bound` bytes at once, measured
//! by the counting allocator below: this is a test binary of its own so
//! that allocator sees nothing but the fuzz cases (run one target at a time).
//!
//! `CAIRN_FUZZ_CASES=N cargo test --features testing --test fuzz -- --nocapture`
//! runs N cases per target and prints the executions of each.

mod found;
mod harness;
mod kafka;
mod mutate;
mod pg;
mod plan;
mod repo_files;
mod tar;

#[global_allocator]
static ALLOC: harness::Counting = harness::Counting;
