//! Shared helpers for end-to-end tests: a throwaway repository and the real
//! `cairn` binary with its environment set.

pub mod daemon;
pub mod kafka;
pub mod s3;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_cairn");

pub struct Env {
    pub dir: tempfile::TempDir,
    pub repo: PathBuf,
    /// Overrides CAIRN_REPOSITORY (e.g. an s3:// location) when set.
    pub location: Option<String>,
    /// More environment for every command (e.g. AWS_* for an S3 server).
    pub extra_env: Vec<(String, String)>,
    pub cache: PathBuf,
    pub password_file: PathBuf,
}

impl Env {
    /// A temporary directory with a password file; the repository is not created yet.
    pub fn new() -> Env {
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir_in("/tmp")
            .unwrap();
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, "correct horse\n").unwrap();
        Env {
            location: None,
            extra_env: Vec::new(),
            repo: dir.path().join("repo"),
            cache: dir.path().join("cache"),
            password_file,
            dir,
        }
    }

    /// A new environment with an initialized repository.
    pub fn init() -> Env {
        let env = Env::new();
        env.ok(&["init", "--kdf-work-factor", "10"]);
        env
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The binary, with repository, password file and cache set through the environment.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("TZ", "UTC")
            .env("CAIRN_REPOSITORY", &self.repo)
            .env("CAIRN_PASSWORD_FILE", &self.password_file)
            .env("CAIRN_CACHE_DIR", &self.cache)
            .stdin(Stdio::null());
        if let Some(l) = &self.location {
            c.env("CAIRN_REPOSITORY", l);
        }
        c.envs(self.extra_env.iter().map(|(k, v)| (k, v)));
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cmd().args(args).output().unwrap()
    }

    /// Run and require success; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "cairn {args:?} failed with {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Run with `--json` and parse stdout.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    /// Snapshot paths and return the new snapshot's id.
    pub fn snapshot(&self, paths: &[&Path]) -> String {
        let mut args = vec!["snapshot".to_string()];
        args.extend(paths.iter().map(|p| p.display().to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        self.json(&a)["id"].as_str().unwrap().to_string()
    }

    /// A plan file `plan.kdl` in the test directory: this environment's
    /// repository, password file and cache, then `body`.
    pub fn write_plan(&self, body: &str) -> PathBuf {
        let plan = self.path("plan.kdl");
        let text = format!(
            "repository \"{}\" {{\n    password-file \"password\"\n    cache-dir \"{}\"\n}}\n{body}",
            self.repo.display(),
            self.cache.display()
        );
        std::fs::write(&plan, text).unwrap();
        plan
    }

    /// The binary without CAIRN_REPOSITORY, password file or cache in the
    /// environment: the plan says them.
    pub fn plan_cmd(&self) -> Command {
        let mut c = self.cmd();
        c.env_remove("CAIRN_REPOSITORY")
            .env_remove("CAIRN_PASSWORD_FILE")
            .env_remove("CAIRN_CACHE_DIR");
        c
    }

    /// Run [`Env::plan_cmd`] with `args`.
    pub fn run_plan(&self, args: &[&str]) -> Output {
        self.plan_cmd().args(args).output().unwrap()
    }

    pub fn snapshot_ids(&self) -> Vec<String> {
        self.json(&["snapshots"])
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["id"].as_str().unwrap().to_string())
            .collect()
    }
}

/// Exit code and stderr of a finished command.
pub fn code_and_stderr(out: &Output) -> (i32, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `cmd` to its end and return its output, but kill it and fail the
/// test if it is still running after `secs` seconds. A liveness bound for
/// commands that used to hang (issue 24), not a timing assertion: pick it
/// generously.
pub fn output_within(cmd: &mut Command, secs: u64) -> Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            v
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
            panic!("still running after {secs} s (killed); stderr:\n{err}");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Where a backed-up absolute path ends up below a restore target.
pub fn restored(target: &Path, original: &Path) -> PathBuf {
    target.join(original.strip_prefix("/").unwrap())
}

/// Compare two trees: names, kinds, contents, modes, mtimes and link targets.
pub fn assert_same_tree(a: &Path, b: &Path) {
    let ma = std::fs::symlink_metadata(a).unwrap_or_else(|e| panic!("{}: {e}", a.display()));
    let mb = std::fs::symlink_metadata(b).unwrap_or_else(|e| panic!("{}: {e}", b.display()));
    assert_eq!(ma.file_type(), mb.file_type(), "type of {}", b.display());
    if ma.file_type().is_symlink() {
        assert_eq!(
            std::fs::read_link(a).unwrap(),
            std::fs::read_link(b).unwrap(),
            "link {}",
            b.display()
        );
        return;
    }
    assert_eq!(
        ma.mode() & 0o7777,
        mb.mode() & 0o7777,
        "mode of {}",
        b.display()
    );
    assert_eq!(
        (ma.mtime(), ma.mtime_nsec()),
        (mb.mtime(), mb.mtime_nsec()),
        "mtime of {}",
        b.display()
    );
    assert_eq!(
        (ma.uid(), ma.gid()),
        (mb.uid(), mb.gid()),
        "owner of {}",
        b.display()
    );
    if ma.is_dir() {
        let names = |p: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        let (na, nb) = (names(a), names(b));
        assert_eq!(na, nb, "entries of {}", b.display());
        for n in na {
            assert_same_tree(&a.join(&n), &b.join(&n));
        }
    } else {
        assert_eq!(ma.len(), mb.len(), "size of {}", b.display());
        assert!(files_equal(a, b), "content of {} differs", b.display());
    }
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    use std::io::Read;
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let na = fa.read(&mut ba).unwrap();
        let mut nb = 0;
        while nb < na {
            let n = fb.read(&mut bb[nb..na]).unwrap();
            if n == 0 {
                return false;
            }
            nb += n;
        }
        if na == 0 {
            return fb.read(&mut bb).unwrap() == 0;
        }
        if ba[..na] != bb[..na] {
            return false;
        }
    }
}

/// Deterministic pseudo-random bytes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect()
}

/// A small tree with the awkward cases: nested dirs, empty file and dir,
/// symlinks (relative, dangling), modes, a file spanning many chunks.
pub fn make_sample_tree(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(root.join("etc/app")).unwrap();
    std::fs::create_dir_all(root.join("empty-dir")).unwrap();
    std::fs::write(
        root.join("etc/app/app.conf"),
        "listen = 127.0.0.1\nworkers = 4\n",
    )
    .unwrap();
    std::fs::write(root.join("etc/secret.key"), "k3y").unwrap();
    std::fs::set_permissions(
        root.join("etc/secret.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    std::fs::write(root.join("empty"), "").unwrap();
    std::fs::write(root.join("data.bin"), noise(1, 3 << 20)).unwrap();
    let text: String = (0..20000)
        .map(|i| format!("row {i}\tservice-{}\tsome text\n", i % 7))
        .collect();
    std::fs::write(root.join("rows.tsv"), text).unwrap();
    std::os::unix::fs::symlink("etc/app/app.conf", root.join("link")).unwrap();
    std::os::unix::fs::symlink("does/not/exist", root.join("dangling")).unwrap();
    std::fs::set_permissions(root.join("etc/app"), std::fs::Permissions::from_mode(0o750)).unwrap();
    let t = filetime::FileTime::from_unix_time(1_700_000_000, 123_456_789);
    filetime::set_file_mtime(root.join("rows.tsv"), t).unwrap();
    filetime::set_symlink_file_times(root.join("link"), t, t).unwrap();
    filetime::set_file_mtime(root.join("etc"), t).unwrap();
}

// ---------------------------------------------------------------------------
// Helpers for the crash, corruption and concurrency tests.

/// Run a command and parse its `--json` stdout whatever the exit code.
/// Returns (exit code, parsed stdout or Null, stderr).
pub fn run_json(env: &Env, args: &[&str]) -> (i32, serde_json::Value, String) {
    let mut a = args.to_vec();
    a.push("--json");
    let out = env.run(&a);
    let (code, err) = code_and_stderr(&out);
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (code, v, err)
}

/// A seed for a test's random choices: `CAIRN_TEST_SEED` if set, else the
/// clock. Printed so a failing run can be repeated.
pub fn test_seed(test: &str) -> u64 {
    let seed = std::env::var("CAIRN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: CAIRN_TEST_SEED={seed}");
    seed
}

/// Fast deterministic incompressible bytes: the BLAKE3 output stream of the
/// seed (dependencies are optimized even in debug builds; [`noise`] is not).
pub fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut v);
    v
}

/// All pack files of the repository.
pub fn pack_files(repo: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for d in std::fs::read_dir(repo.join("data")).unwrap() {
        let d = d.unwrap().path();
        if d.is_dir() {
            out.extend(std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()));
        }
    }
    out.sort();
    out
}

/// Names of the files in one of the repository's directories (`index`, `locks`, `tmp`, ...).
pub fn repo_files(repo: &Path, dir: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(repo.join(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Shape of a generated tree, see [`write_generation`].
#[derive(Clone, Copy, Debug)]
pub struct TreeShape {
    /// Number of incompressible files; each changes every `period`
    /// generations, staggered, so about `random_files / period` of them
    /// change from one generation to the next.
    pub random_files: usize,
    pub random_file_len: usize,
    pub period: u64,
    /// Size of the compressible text file (it changes a little every generation).
    pub text_len: usize,
    /// Mixed into every seed, so different tests write different data.
    pub salt: u64,
}

fn base_text(len: usize) -> &'static [u8] {
    static TEXT: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    let t = TEXT.get_or_init(|| {
        let mut s = String::with_capacity(32 << 20);
        let mut i = 0u64;
        while s.len() < 32 << 20 {
            use std::fmt::Write;
            let _ = writeln!(
                s,
                "{i:08}\tservice-{}\tGET /api/v1/items/{} 200 {}ms",
                i % 7,
                i % 1013,
                i % 97
            );
            i += 1;
        }
        s.into_bytes()
    });
    &t[..len.min(t.len())]
}

fn set_mtime(path: &Path, secs: i64) {
    let t = filetime::FileTime::from_unix_time(secs, 123_456_789);
    filetime::set_symlink_file_times(path, t, t).unwrap();
}

/// Write generation `generation` of a deterministic tree below `root`, so that
/// writing the same generation anywhere gives identical trees (contents,
/// modes and mtimes of files, directories and symlinks): the expected side of
/// a restore can be re-created at will. Files already at the right version
/// (same size and mtime) are left alone, so moving a tree to the next
/// generation only rewrites what changed.
pub fn write_generation(root: &Path, shape: TreeShape, generation: u64) {
    use std::os::unix::fs::PermissionsExt;
    let mode =
        |p: &Path, m: u32| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
    let write_if_changed = |p: &Path, mtime: i64, content: &dyn Fn() -> Vec<u8>, len: usize| {
        if let Ok(m) = std::fs::symlink_metadata(p) {
            if m.len() == len as u64 && m.mtime() == mtime {
                return;
            }
        }
        std::fs::write(p, content()).unwrap();
        set_mtime(p, mtime);
    };
    for d in ["big", "text", "small/nested/deep", "small/empty-dir"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    for i in 0..shape.random_files {
        let version = (generation + i as u64) / shape.period.max(1);
        let seed = shape.salt.wrapping_mul(1_000_003) ^ ((i as u64) << 32) ^ version;
        let p = root.join("big").join(format!("r{i}.bin"));
        let len = shape.random_file_len;
        write_if_changed(
            &p,
            1_500_000_000 + (version * 100 + i as u64) as i64,
            &|| random_bytes(seed, len),
            len,
        );
        mode(&p, 0o644);
    }
    let footer = format!("generation {generation} of tree {}\n", shape.salt);
    let text_len = shape.text_len + footer.len();
    let p = root.join("text/log.txt");
    write_if_changed(
        &p,
        1_600_000_000 + generation as i64,
        &|| [base_text(shape.text_len), footer.as_bytes()].concat(),
        text_len,
    );
    mode(&p, 0o644);
    let small: [(&str, &[u8], u32); 4] = [
        (
            "small/app.conf",
            b"listen = 127.0.0.1\nworkers = 4\n",
            0o644,
        ),
        ("small/secret.key", b"k3y", 0o600),
        ("small/empty", b"", 0o644),
        ("small/nested/deep/note.txt", b"deep down\n", 0o640),
    ];
    for (rel, content, m) in small {
        let p = root.join(rel);
        write_if_changed(&p, 1_400_000_000, &|| content.to_vec(), content.len());
        mode(&p, m);
    }
    let link = root.join("small/link");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("../text/log.txt", &link).unwrap();
    }
    set_mtime(&link, 1_400_000_001);
    // Directories last, deepest first, so nothing changes their times afterwards.
    let dirs = [
        "small/nested/deep",
        "small/nested",
        "small/empty-dir",
        "small",
        "text",
        "big",
        "",
    ];
    for d in dirs {
        let p = if d.is_empty() {
            root.to_path_buf()
        } else {
            root.join(d)
        };
        mode(&p, if d == "small/nested" { 0o750 } else { 0o755 });
        set_mtime(&p, 1_700_000_000 + generation as i64);
    }
}

/// Restore `snapshot` into a fresh `target` and compare it with generation
/// `generation` of `shape`, re-created in `scratch` (`target` is removed first
/// and afterwards; `scratch` is brought to that generation).
pub fn assert_restores_generation(
    env: &Env,
    snapshot: &str,
    source: &Path,
    shape: TreeShape,
    generation: u64,
    target: &Path,
    scratch: &Path,
) {
    let _ = std::fs::remove_dir_all(target);
    env.ok(&["restore", snapshot, "--target", target.to_str().unwrap()]);
    write_generation(scratch, shape, generation);
    assert_same_tree(scratch, &restored(target, source));
    std::fs::remove_dir_all(target).unwrap();
}

/// Assert that snapshot `second` (its `--json` output) added less than
/// `1/times` of what `first` added: how a test sees delta encoding work.
pub fn assert_adds_a_fraction(first: &serde_json::Value, second: &serde_json::Value, times: u64) {
    let added = |s: &serde_json::Value| s["bytes_added"].as_u64().unwrap();
    let (a1, a2) = (added(first), added(second));
    assert!(
        a2 * times < a1,
        "the second snapshot added {a2} bytes, the first {a1}"
    );
}

/// Run `statements` in database `db` of the PostgreSQL server at `url`.
pub fn sql(url: &str, db: &str, statements: &str) {
    let mut cfg: postgres::Config = url.parse().unwrap();
    cfg.dbname(db);
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    c.batch_execute(statements).unwrap();
}

/// The single bigint `q` returns in database `db` of the server at `url`.
pub fn query_i64(url: &str, db: &str, q: &str) -> i64 {
    let mut cfg: postgres::Config = url.parse().unwrap();
    cfg.dbname(db);
    let mut c = cfg.connect(postgres::NoTls).unwrap();
    c.query_one(q, &[]).unwrap().get(0)
}

/// The visible commands `cairn --help` lists (without `help`).
pub fn commands() -> Vec<String> {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    let list = help.split("Commands:\n").nth(1).unwrap();
    let names: Vec<String> = list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(names.len() > 10, "{help}");
    names
}
