//! The first error any thread of the pipeline hits. It is kept here, and
//! the packer stops at its next frame when it finds one (see
//! [`Packer::has_failed`](super::Packer::has_failed)); later errors are
//! consequences of the first and are dropped.

use crate::error::Error;
use std::sync::Mutex;

/// Where the pipeline's threads leave the first error any of them hit.
#[derive(Default)]
pub(super) struct Failure(Mutex<Option<Error>>);

impl Failure {
    /// Keep `e`, unless an earlier error is kept already.
    pub(super) fn record(&self, e: Error) {
        if let Ok(mut f) = self.0.lock() {
            if f.is_none() {
                *f = Some(e);
            }
        }
    }

    /// Whether an error is kept (or a thread panicked while keeping one).
    pub(super) fn is_set(&self) -> bool {
        self.0.lock().map(|f| f.is_some()).unwrap_or(true)
    }

    /// The kept error, taken out.
    pub(super) fn take(&self) -> Option<Error> {
        self.0.lock().ok().and_then(|mut f| f.take())
    }
}
