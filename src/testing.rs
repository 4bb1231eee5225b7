//! Helpers for cairn's own integration tests (feature `testing`): not part
//! of the library's API, and not built into the `cairn` binary.

pub use crate::source::pg::{free_port, pg_tool, ScratchCluster};
