//! Helpers for cairn's own integration tests (feature `testing`): not part
//! of the library's API, and not built into the `cairn` binary.

pub use crate::source::pg::cluster::{free_port, ScratchCluster};
pub use crate::source::pg::tools::pg_tool;
pub use crate::source::pg::wal_records::{scan_segment, SegmentScan};
