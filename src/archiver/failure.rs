//! The first error any thread of the pipeline hits. It is kept here, and
//! the packer stops at its next frame when it finds one (see
//! [`Packer::has_failed`](super::Packer::has_failed)); later errors are
//! consequences of the first and are dropped.

use crate::error::Error;
use std::sync::Mutex;

pub(super) fn record_failure(failed: &Mutex<Option<Error>>, e: Error) {
    if let Ok(mut f) = failed.lock() {
        if f.is_none() {
            *f = Some(e);
        }
    }
}
