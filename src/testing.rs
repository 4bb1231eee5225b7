//! Helpers for cairn's own integration tests (feature `testing`): not part
//! of the library's API, and not built into the `cairn` binary.

pub use crate::source::pg::cluster::{free_port, ScratchCluster};
pub use crate::source::pg::tools::pg_tool;
pub use crate::source::pg::wal_records::{scan_segment, SegmentScan};

/// Parsers of untrusted bytes that live in the crate's private modules,
/// and writers of their valid inputs: the fuzz tests' entry points
/// (tests/fuzz/, spec/fuzzing.md).
pub mod fuzz {
    pub use crate::source::pg::archive::testing::archive as custom_archive;
    pub use crate::source::pg::archive::{copy_data_block, read_table_of_contents};
    pub use crate::source::pg::replication::read_copy_out;
    pub use crate::source::pg::stream::StreamScan;
    pub use crate::source::pg::wal_records::writer::SegmentWriter;
    pub use jiff::Timestamp;
}
