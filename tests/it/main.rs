//! The end-to-end tests, one test binary. Each file here was a test binary of
//! its own, and each linked the whole crate and its dependencies again; one
//! binary links them once. Run one group with `cargo test --test it serve::`.
//!
//! The tests of all groups share this process and run on parallel threads:
//! nothing here may change process-wide state (environment variables, the
//! current directory, signal handlers) or listen on a fixed port.

mod common;

mod alerts;
mod archive_watch;
mod backends;
mod backup_restore;
mod cli_manual;
mod concurrency;
mod corruption;
mod crash_points;
mod daemon_log;
mod dashboard;
mod data_check;
mod exit_codes;
mod kafka;
mod kafka_recreate;
mod key_cache;
mod metrics;
mod package;
mod physical_proof;
mod plan_check;
mod plan_run;
mod postgres;
mod postgres_pitr;
mod restore_overwrite;
mod restore_plan;
mod restore_test_files;
mod retention_cli;
mod retention_decisions;
mod retention_sources;
mod s3;
mod serve;
mod shared_repo;
mod simulated_clock;
mod status_page;
mod unchanged_files;
mod wal_damage;
mod wal_prefetch;
