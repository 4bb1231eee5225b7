//! Ctrl-C / SIGTERM: long work stops at the next chunk boundary, releases its
//! lock and exits 130; nothing already stored is touched. A second signal
//! exits at once.

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if INTERRUPTED.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
}

pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}
