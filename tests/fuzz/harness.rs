//! What every fuzz target shares: the counting allocator's bound, the
//! watchdog, the case count and the report of executions.

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Counts live heap bytes and their peak, so a case that asks for far more
/// memory than its input justifies fails instead of passing quietly.
pub struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the counters are plain atomics and never touch the memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is, under the caller's contract.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is, under the caller's contract.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is, under the caller's contract.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is, under the caller's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

/// The most one case may hold at once beyond what was live before it: 64 MiB,
/// or 16 times its input when that is more.
pub fn allocation_bound(input_len: usize) -> usize {
    (64 << 20).max(16 * input_len)
}

/// Longest a single case may run before the watchdog aborts the process.
const CASE_TIMEOUT: Duration = Duration::from_secs(20);

/// The case running now: its target, its input (for the report), its start.
static CURRENT: Mutex<Option<(String, Vec<u8>, Instant)>> = Mutex::new(None);

/// One target at a time: the allocation counters are process-wide.
static SERIAL: Mutex<()> = Mutex::new(());

/// Hold while running cases: one target at a time.
pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A thread that aborts the process, naming the target and input, when a
/// case runs past [`CASE_TIMEOUT`]: a hang is a failure, not a stuck CI job.
fn watchdog() {
    static STARTED: OnceLock<()> = OnceLock::new();
    STARTED.get_or_init(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(200));
            let cur = CURRENT.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((target, input, at)) = cur.as_ref() {
                if at.elapsed() > CASE_TIMEOUT {
                    eprintln!(
                        "fuzz target {target}: a case ran longer than {CASE_TIMEOUT:?} (a hang); input ({} bytes): {}",
                        input.len(),
                        hex_prefix(input)
                    );
                    std::process::abort();
                }
            }
        });
    });
}

pub fn hex_prefix(b: &[u8]) -> String {
    const SHOWN: usize = 4096;
    let mut s: String = b.iter().take(SHOWN).map(|x| format!("{x:02x}")).collect();
    if b.len() > SHOWN {
        s.push('…');
    }
    s
}

/// Cases per target: `CAIRN_FUZZ_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("CAIRN_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Run `parse` on one input under the watchdog and the allocation bound.
/// Panics inside `parse` are caught by proptest and reported with the
/// shrunk input.
pub fn one_case(
    target: &str,
    input: &[u8],
    parse: impl FnOnce(&[u8]),
) -> Result<(), TestCaseError> {
    watchdog();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) =
        Some((target.to_string(), input.to_vec(), Instant::now()));
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| parse(input)));
    *CURRENT.lock().unwrap_or_else(|e| e.into_inner()) = None;
    if let Err(p) = outcome {
        std::panic::resume_unwind(p);
    }
    let used = PEAK.load(Ordering::Relaxed).saturating_sub(before);
    let bound = allocation_bound(input.len());
    if used > bound {
        return Err(TestCaseError::fail(format!(
            "{target}: one case of {} bytes held {used} bytes at once, more than the bound of {bound}",
            input.len()
        )));
    }
    Ok(())
}

static EXECUTED: AtomicU64 = AtomicU64::new(0);

/// Run `cases` inputs from `strategy` through `parse`; print how many ran.
pub fn fuzz(
    target: &str,
    default_cases: u32,
    strategy: impl Strategy<Value = Vec<u8>>,
    parse: impl Fn(&[u8]),
) {
    let _one_at_a_time = serial();
    watchdog();
    let n = cases(default_cases);
    let mut runner = TestRunner::new(Config {
        cases: n,
        // Each target's failing seeds, kept and replayed first on later runs.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(leak(format!(
            "{}/tests/fuzz/regressions/{target}.txt",
            env!("CARGO_MANIFEST_DIR")
        ))))),
        max_shrink_iters: 2000,
        ..Config::default()
    });
    let started = Instant::now();
    let count = AtomicU64::new(0);
    let result = runner.run(&strategy, |input| {
        count.fetch_add(1, Ordering::Relaxed);
        one_case(target, &input, &parse)
    });
    let ran = count.load(Ordering::Relaxed);
    EXECUTED.fetch_add(ran, Ordering::Relaxed);
    println!(
        "fuzz target {target}: {ran} executions ({n} cases) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    if let Err(e) = result {
        panic!("fuzz target {target} failed: {e}");
    }
}

fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}
