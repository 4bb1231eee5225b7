//! A storage that fails, or dies, at a chosen mutating operation: the seam
//! of the crash-point tests (spec/repository.md "Crash points",
//! `tests/it/crash_points.rs`), in the manner of redb's fuzzing backend,
//! which fails its k-th write and then checks the database.
//!
//! Compiled only with the `testing` feature: a release build has neither
//! this wrapper nor the variables that turn it on. [`super::open`] wraps
//! the backend it opens when one of them is set:
//!
//! * `CAIRN_TEST_FAULT=OP:K:MODE` — the K-th operation (counted from 1,
//!   over the whole process, all threads) of kind OP meets MODE:
//!   `fail` (it returns an I/O error and does nothing), `abort-before`
//!   (the process is killed with SIGKILL before it: a `kill -9` at that
//!   point) or `abort-after` (it is done, then the process is killed).
//! * `CAIRN_TEST_FAULT_COUNTS=FILE` — FILE holds, as JSON, how many
//!   operations of each kind the process has made so far, rewritten after
//!   each one, so a test knows the range of K.
//!
//! The kinds are the trait's mutating methods (`create`, `write`,
//! `write_new`, `remove`, `remove_temporary`) and `rename`. The repository
//! itself never renames; a local directory renames once inside every
//! `write` and `write_new` (temporary file → its name, `local.rs`), so
//! each of those is also a `rename` there (none on object storage). The
//! one state only `rename` reaches is `abort-before`: the temporary file
//! written and fsynced in `tmp/`, not yet under its name. A `rename` that
//! fails is a write that fails (the temporary file is removed), and one
//! aborted after is a write aborted after.
//!
//! The process is killed rather than `abort()`ed: the same instant stop
//! (no destructor runs, no lock is released, other threads die wherever
//! they are), without a core dump per crash point.

use super::{Backend, FileRef, LocalBackend};
use crate::error::{Error, Result};
use crate::repo::{FileKind, Id};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// The fault to inject: `OP:K:MODE`.
pub const FAULT_VAR: &str = "CAIRN_TEST_FAULT";
/// Where to record how many operations of each kind were made.
pub const COUNTS_VAR: &str = "CAIRN_TEST_FAULT_COUNTS";

/// A kind of mutating operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Create,
    Write,
    WriteNew,
    Rename,
    Remove,
    RemoveTemporary,
}

const OPS: [Op; 6] = [
    Op::Create,
    Op::Write,
    Op::WriteNew,
    Op::Rename,
    Op::Remove,
    Op::RemoveTemporary,
];

impl Op {
    pub fn name(self) -> &'static str {
        match self {
            Op::Create => "create",
            Op::Write => "write",
            Op::WriteNew => "write_new",
            Op::Rename => "rename",
            Op::Remove => "remove",
            Op::RemoveTemporary => "remove_temporary",
        }
    }
    fn index(self) -> usize {
        OPS.iter().position(|o| *o == self).unwrap_or(0)
    }
}

/// What happens at the chosen operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Fail,
    AbortBefore,
    AbortAfter,
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Fail => "fail",
            Mode::AbortBefore => "abort-before",
            Mode::AbortAfter => "abort-after",
        }
    }
}

/// One injected fault: the `k`-th operation of kind `op` meets `mode`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub op: Op,
    pub k: u64,
    pub mode: Mode,
}

impl Fault {
    /// `OP:K:MODE`, as [`FAULT_VAR`] holds it.
    pub fn parse(text: &str) -> Result<Fault> {
        let bad = |why: &str| {
            Error::usage(format!("{FAULT_VAR}={text:?}: {why}")).with_hint(format!(
                "write OP:K:MODE, e.g. write:3:abort-before; OP is one of {}, K counts from 1, \
                 MODE is fail, abort-before or abort-after",
                OPS.map(Op::name).join(", ")
            ))
        };
        let parts: Vec<&str> = text.trim().split(':').collect();
        let [op, k, mode] = parts.as_slice() else {
            return Err(bad("not three fields separated by ':'"));
        };
        let op = OPS
            .into_iter()
            .find(|o| o.name() == *op)
            .ok_or_else(|| bad(&format!("unknown operation {op:?}")))?;
        let k = k
            .parse::<u64>()
            .ok()
            .filter(|k| *k > 0)
            .ok_or_else(|| bad(&format!("K must be a whole number from 1, not {k:?}")))?;
        let mode = [Mode::Fail, Mode::AbortBefore, Mode::AbortAfter]
            .into_iter()
            .find(|m| m.name() == *mode)
            .ok_or_else(|| bad(&format!("unknown mode {mode:?}")))?;
        Ok(Fault { op, k, mode })
    }
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.op.name(), self.k, self.mode.name())
    }
}

/// How many operations of each kind were made.
#[derive(Default)]
pub struct Counters {
    counts: [AtomicU64; 6],
    /// Serializes rewrites of the counts file, so the last one is the latest.
    file: Mutex<()>,
}

impl Counters {
    /// Count one more operation of kind `op`; returns its number.
    fn next(&self, op: Op) -> u64 {
        self.counts[op.index()].fetch_add(1, Ordering::SeqCst) + 1
    }
    pub fn get(&self, op: Op) -> u64 {
        self.counts[op.index()].load(Ordering::SeqCst)
    }
    fn json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            OPS.iter()
                .map(|o| (o.name().to_string(), self.get(*o).into()))
                .collect(),
        )
    }
}

/// This process's operations: K counts over every backend it opens.
static PROCESS: std::sync::LazyLock<Counters> = std::sync::LazyLock::new(Counters::default);

/// `inner` wrapped as [`FAULT_VAR`] and [`COUNTS_VAR`] say, or as it is
/// when neither is set.
pub fn from_env(inner: Box<dyn Backend>, location: &str) -> Result<Box<dyn Backend>> {
    let fault = match std::env::var(FAULT_VAR) {
        Ok(s) if !s.trim().is_empty() => Some(Fault::parse(&s)?),
        _ => None,
    };
    let counts_file = std::env::var_os(COUNTS_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from);
    if fault.is_none() && counts_file.is_none() {
        return Ok(inner);
    }
    // A local directory is the one backend that renames.
    let stage = inner.is_local().then(|| LocalBackend::new(location));
    let b = FaultyBackend {
        inner,
        stage,
        fault,
        counts_file,
        counters: &PROCESS,
    };
    b.record()?;
    Ok(Box::new(b))
}

/// A backend that counts its mutating operations and meets one fault.
pub struct FaultyBackend {
    inner: Box<dyn Backend>,
    /// The same local directory, to stage a write without renaming it.
    stage: Option<LocalBackend>,
    fault: Option<Fault>,
    counts_file: Option<PathBuf>,
    counters: &'static Counters,
}

/// What one operation is, for counting and messages.
struct Step<'a> {
    op: Op,
    file: Option<&'a FileRef>,
    /// A write's bytes (for staging a `rename` fault).
    data: Option<&'a [u8]>,
}

impl FaultyBackend {
    /// A wrapper with its own counters (tests of the wrapper itself).
    pub fn new(
        inner: Box<dyn Backend>,
        stage: Option<LocalBackend>,
        fault: Option<Fault>,
        counts_file: Option<PathBuf>,
        counters: &'static Counters,
    ) -> Self {
        FaultyBackend {
            inner,
            stage,
            fault,
            counts_file,
            counters,
        }
    }

    /// Rewrite the counts file.
    fn record(&self) -> Result<()> {
        let Some(path) = &self.counts_file else {
            return Ok(());
        };
        let _one_at_a_time = self.counters.file.lock().unwrap_or_else(|e| e.into_inner());
        std::fs::write(path, self.counters.json().to_string())
            .map_err(|e| Error::io(format!("writing {COUNTS_VAR} file {}", path.display()), e))
    }

    /// Count `step` (a write to a local directory is a rename too), then
    /// run it, unless the fault falls on it.
    fn guard<T>(&self, step: Step<'_>, run: impl FnOnce() -> Result<T>) -> Result<T> {
        let k = self.counters.next(step.op);
        let renames = matches!(step.op, Op::Write | Op::WriteNew) && self.stage.is_some();
        let rename_k = renames.then(|| self.counters.next(Op::Rename));
        self.record()?;
        let hit = match self.fault {
            Some(f) if f.op == step.op && f.k == k => Some(f),
            Some(f) if f.op == Op::Rename && Some(f.k) == rename_k => Some(f),
            _ => None,
        };
        let Some(fault) = hit else {
            return run();
        };
        let what = match step.file {
            Some(file) => format!("{} #{} ({file})", fault.op.name(), fault.k),
            None => format!("{} #{}", fault.op.name(), fault.k),
        };
        match (fault.op, fault.mode) {
            (Op::Rename, Mode::AbortBefore) => {
                if let (Some(stage), Some(file), Some(data)) = (&self.stage, step.file, step.data) {
                    // Kept: the process dies before it could be renamed.
                    let _ = stage.stage(file, data)?.into_temp_path().keep();
                }
                die(&format!("before {what}, its temporary file written"))
            }
            (_, Mode::AbortBefore) => die(&format!("before {what}")),
            (_, Mode::AbortAfter) => {
                let outcome = run();
                die(&format!(
                    "after {what} ({})",
                    if outcome.is_ok() { "done" } else { "failed" }
                ))
            }
            (_, Mode::Fail) => Err(Error::io(
                what,
                std::io::Error::other(format!("injected fault ({FAULT_VAR}={fault})")),
            )),
        }
    }
}

/// Stop the process at once, as `kill -9` would.
fn die(at: &str) -> ! {
    eprintln!("cairn: {FAULT_VAR}: killing the process {at}");
    let _ = rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    std::process::abort()
}

impl Backend for FaultyBackend {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn create(&self) -> Result<()> {
        let step = Step {
            op: Op::Create,
            file: None,
            data: None,
        };
        self.guard(step, || self.inner.create())
    }
    fn write(&self, file: &FileRef, data: &[u8]) -> Result<()> {
        let step = Step {
            op: Op::Write,
            file: Some(file),
            data: Some(data),
        };
        self.guard(step, || self.inner.write(file, data))
    }
    fn write_new(&self, file: &FileRef, data: &[u8]) -> Result<bool> {
        let step = Step {
            op: Op::WriteNew,
            file: Some(file),
            data: Some(data),
        };
        self.guard(step, || self.inner.write_new(file, data))
    }
    fn read_into(&self, file: &FileRef, buf: &mut Vec<u8>) -> Result<()> {
        self.inner.read_into(file, buf)
    }
    fn read(&self, file: &FileRef) -> Result<Vec<u8>> {
        self.inner.read(file)
    }
    fn read_pieces(
        &self,
        file: &FileRef,
        piece: &mut dyn FnMut(&[u8]) -> Result<()>,
    ) -> Result<()> {
        self.inner.read_pieces(file, piece)
    }
    fn read_range_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner.read_range_into(file, offset, length, buf)
    }
    fn read_range_uncached_into(
        &self,
        file: &FileRef,
        offset: u64,
        length: u32,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.inner
            .read_range_uncached_into(file, offset, length, buf)
    }
    fn read_range(&self, file: &FileRef, offset: u64, length: u32) -> Result<Vec<u8>> {
        self.inner.read_range(file, offset, length)
    }
    fn content_id(&self, file: &FileRef) -> Result<Id> {
        self.inner.content_id(file)
    }
    fn list(&self, kind: FileKind) -> Result<Vec<(String, u64)>> {
        self.inner.list(kind)
    }
    fn list_prefix(&self, kind: FileKind, prefix: &str) -> Result<Vec<(String, u64)>> {
        self.inner.list_prefix(kind, prefix)
    }
    fn remove(&self, file: &FileRef) -> Result<()> {
        let step = Step {
            op: Op::Remove,
            file: Some(file),
            data: None,
        };
        self.guard(step, || self.inner.remove(file))
    }
    fn exists(&self, file: &FileRef) -> Result<bool> {
        self.inner.exists(file)
    }
    fn is_local(&self) -> bool {
        self.inner.is_local()
    }
    fn remove_temporary(&self) -> Result<u64> {
        let step = Step {
            op: Op::RemoveTemporary,
            file: None,
            data: None,
        };
        self.guard(step, || self.inner.remove_temporary())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(i: u64) -> FileRef {
        FileRef::new(FileKind::Pack, format!("{i:064x}"))
    }

    /// A local repository behind a wrapper with counters of its own.
    fn wrapped(dir: &std::path::Path, fault: Option<Fault>) -> FaultyBackend {
        let root = dir.join("repo");
        let local = LocalBackend::new(&root);
        local.create().unwrap();
        FaultyBackend::new(
            Box::new(local),
            Some(LocalBackend::new(&root)),
            fault,
            Some(dir.join("counts.json")),
            Box::leak(Box::default()),
        )
    }

    fn counts(dir: &std::path::Path) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("counts.json")).unwrap()).unwrap()
    }

    #[test]
    fn faults_parse_and_bad_ones_are_usage_errors_naming_the_problem() {
        let f = Fault::parse("write_new:12:abort-after").unwrap();
        assert_eq!(
            f,
            Fault {
                op: Op::WriteNew,
                k: 12,
                mode: Mode::AbortAfter
            }
        );
        assert_eq!(f.to_string(), "write_new:12:abort-after");
        for (text, names) in [
            ("write:3", "three fields"),
            ("move:3:fail", "unknown operation \"move\""),
            ("write:0:fail", "from 1"),
            ("write:x:fail", "from 1"),
            ("write:3:crash", "unknown mode \"crash\""),
        ] {
            let e = Fault::parse(text).unwrap_err();
            assert_eq!(e.kind(), crate::error::Kind::Usage, "{text}");
            assert!(e.to_string().contains(names), "{text}: {e}");
            assert!(e.hint().unwrap().contains("abort-before"), "{text}");
        }
    }

    /// `fail` fails exactly the k-th operation of its kind, which does
    /// nothing; the others go through; the counts file follows every one,
    /// a write to a local directory counting as a rename too.
    #[test]
    fn fail_refuses_only_the_kth_operation_and_counts_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let fault = Fault::parse("write:2:fail").unwrap();
        let b = wrapped(dir.path(), Some(fault));
        b.write(&pack(1), b"one").unwrap();
        assert_eq!(counts(dir.path())["write"], 1);
        let e = b.write(&pack(2), b"two").unwrap_err();
        assert!(
            e.to_string()
                .contains("injected fault (CAIRN_TEST_FAULT=write:2:fail)"),
            "{e}"
        );
        assert!(e.to_string().contains(&pack(2).to_string()), "{e}");
        b.write(&pack(3), b"three").unwrap();
        assert!(b.write_new(&pack(2), b"two").unwrap());
        b.remove(&pack(1)).unwrap();
        let names: Vec<String> = b
            .list(FileKind::Pack)
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, vec![pack(2).name, pack(3).name]);
        let c = counts(dir.path());
        assert_eq!(
            (&c["write"], &c["write_new"], &c["rename"], &c["remove"]),
            (&3.into(), &1.into(), &4.into(), &1.into())
        );
        assert_eq!(
            std::fs::read_dir(dir.path().join("repo/tmp"))
                .unwrap()
                .count(),
            0
        );
    }

    /// A failed rename leaves nothing: no file under its name, none in tmp/.
    #[test]
    fn a_failed_rename_leaves_no_file_and_no_temporary_one() {
        let dir = tempfile::tempdir().unwrap();
        let b = wrapped(dir.path(), Some(Fault::parse("rename:2:fail").unwrap()));
        b.write(&pack(1), b"one").unwrap();
        assert!(b.write_new(&pack(2), b"two").is_err());
        assert!(!b.exists(&pack(2)).unwrap());
        assert_eq!(
            std::fs::read_dir(dir.path().join("repo/tmp"))
                .unwrap()
                .count(),
            0
        );
        assert_eq!(counts(dir.path())["rename"], 2);
    }
}
