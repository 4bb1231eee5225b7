//! Ctrl-C / SIGTERM: long work stops at the next chunk boundary, releases its
//! lock and exits 130; nothing already stored is touched. A second signal
//! exits at once. (SIGHUP is left alone: `cairn serve` reloads its plan on it.)

use crate::error::{Error, Result};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};

static INTERRUPTED: LazyLock<Arc<AtomicBool>> = LazyLock::new(|| Arc::new(AtomicBool::new(false)));

pub fn install() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    for sig in [SIGINT, SIGTERM] {
        // Order matters: the exit check runs first and only fires when the
        // flag is already set, i.e. on the second signal.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 130, INTERRUPTED.clone());
        let _ = signal_hook::flag::register(sig, INTERRUPTED.clone());
    }
}

pub fn check() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        Err(Error::interrupted())
    } else {
        Ok(())
    }
}
