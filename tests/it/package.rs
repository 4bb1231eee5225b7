//! Issue 30, item 3: the Debian package. `scripts/package --binary` packages
//! this test build's `cairn` (cargo-deb, as a release would, without a
//! release build); the tests read the .deb with `dpkg-deb`, unpack it with
//! `dpkg -x` into a throwaway root and check what an operator gets: a binary
//! that runs, a gzipped manual page per command, completions that parse, a
//! hardened unit that points at files the package ships, maintainer scripts
//! that parse, an example plan that `plan check` accepts once its password
//! file exists, and no lintian errors. The package is built once per test
//! process and shared by these tests.

use crate::common::{code_and_stderr, BIN};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

struct Package {
    deb: PathBuf,
    /// `dpkg -x` of the .deb.
    root: PathBuf,
    /// `dpkg-deb -e` of the .deb: control, conffiles, maintainer scripts.
    control: PathBuf,
}

fn project() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (scripts/setup installs it)"))
}

/// Stdout of a command that must succeed.
fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, 0, "{cmd:?} failed:\n{stderr}");
    String::from_utf8(out.stdout).unwrap()
}

fn package() -> &'static Package {
    static PACKAGE: OnceLock<Package> = OnceLock::new();
    PACKAGE.get_or_init(|| {
        // Under the target directory, so it goes with `cargo clean`; made
        // anew by each test process.
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("package");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let out = ok(Command::new(project().join("scripts/package"))
            .args(["--fast", "--binary", BIN, "--output"])
            .arg(&dir));
        let deb = PathBuf::from(out.lines().last().unwrap().trim());
        assert!(deb.is_file(), "scripts/package printed {out:?}");
        let root = dir.join("root");
        ok(Command::new("dpkg").arg("-x").arg(&deb).arg(&root));
        let control = dir.join("control");
        ok(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
        Package { deb, root, control }
    })
}

#[test]
fn the_script_refuses_a_binary_that_is_not_cairn() {
    let dir = tempfile::Builder::new()
        .prefix("cairn-package-")
        .tempdir_in("/tmp")
        .unwrap();
    for (binary, says) in [
        (
            "/nonexistent/cairn",
            "no executable cairn at /nonexistent/cairn",
        ),
        ("/bin/true", "is not a working cairn: `--version` printed"),
    ] {
        let out = run(Command::new(project().join("scripts/package"))
            .args(["--binary", binary, "--output"])
            .arg(dir.path()));
        let (code, stderr) = code_and_stderr(&out);
        assert_eq!(code, 2, "{binary}: {stderr}");
        assert!(
            stderr.contains(says) && stderr.contains("\nhint: "),
            "{stderr}"
        );
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            0,
            "a .deb of {binary}"
        );
    }
}

impl Package {
    /// A path inside the unpacked root, given as it is installed.
    fn installed(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    fn control_file(&self, name: &str) -> String {
        let path = self.control.join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    /// The value of one field of the control file.
    fn field(&self, name: &str) -> String {
        let control = self.control_file("control");
        let prefix = format!("{name}: ");
        control
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {name} in\n{control}"))
            .to_string()
    }
}

/// The unit, as installed (cargo-deb's place for it).
fn unit(p: &Package) -> String {
    let path = p.installed("/usr/lib/systemd/system/cairn.service");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `KEY=VALUE` lines of a unit, in order (comments left out).
fn unit_settings(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn control_names_version_dependencies_and_scripts() {
    let p = package();
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&p.deb));
    assert_eq!(p.field("Package"), "cairn", "{info}");
    let version = format!("{}-1", env!("CARGO_PKG_VERSION"));
    assert_eq!(p.field("Version"), version);
    let arch = ok(Command::new("dpkg").arg("--print-architecture"));
    assert_eq!(p.field("Architecture"), arch.trim());
    assert_eq!(p.field("Section"), "admin");
    // The synopsis is Cargo.toml's description, whole: cargo-deb wraps one of
    // 80 characters or more, and its end then reads as the long description.
    let synopsis = p.field("Description");
    assert_eq!(synopsis, env!("CARGO_PKG_DESCRIPTION"));
    assert!(synopsis.len() < 80, "{synopsis}");
    let depends = p.field("Depends");
    // adduser for the postinst; libc6 from dpkg-shlibdeps on the binary.
    for d in ["adduser", "libc6"] {
        assert!(depends.contains(d), "Depends: {depends}");
    }
    assert!(p.field("Recommends").contains("postgresql-client"));
    // The example plan is a conffile: an upgrade never overwrites the operator's edits.
    assert_eq!(p.control_file("conffiles").trim(), "/etc/cairn/plan.kdl");
    // PostgreSQL installed later runs the postinst again, which joins the group.
    assert_eq!(
        p.control_file("triggers").trim(),
        "interest-noawait /usr/share/postgresql-common"
    );
    // The changelog's newest entry is this version.
    let changelog = std::fs::read_to_string(project().join("deploy/debian/changelog")).unwrap();
    assert!(
        changelog.starts_with(&format!("cairn ({version}) ")),
        "deploy/debian/changelog does not start with version {version}"
    );
    for script in ["postinst", "postrm", "prerm"] {
        assert!(info.contains(script), "no {script} in\n{info}");
    }
}

#[test]
fn maintainer_scripts_parse_and_never_enable_the_service() {
    let p = package();
    for script in ["postinst", "postrm", "prerm"] {
        let path = p.control.join(script);
        let (code, stderr) = code_and_stderr(&run(Command::new("sh").arg("-n").arg(&path)));
        assert_eq!(code, 0, "sh -n {script}: {stderr}");
        let text = p.control_file(script);
        assert!(text.starts_with("#!/bin/sh\n"), "{script}");
        assert!(!text.contains("#DEBHELPER#"), "{script}: token left in");
        // Nothing enables or starts the unit: the plan needs editing first.
        // What they run of systemd: a reload, a restart of a running unit
        // after an upgrade, a stop on removal.
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("systemctl ") {
                assert_eq!(
                    rest, "--system daemon-reload >/dev/null || true",
                    "{script}"
                );
            }
            if let Some(rest) = line.strip_prefix("deb-systemd-invoke ") {
                let action = rest.split_whitespace().next().unwrap();
                assert!(
                    ["try-restart", "stop"].contains(&action),
                    "{script}: {line}"
                );
            }
        }
    }
    let postinst = p.control_file("postinst");
    assert!(postinst.contains("adduser --system"), "{postinst}");
    assert!(postinst.contains("adduser --quiet cairn postgres"));
    // cargo-deb's fragments: the unit is registered, not enabled, and only
    // restarted after an upgrade if it was running.
    assert!(postinst.contains("deb-systemd-helper update-state cairn.service"));
    assert!(postinst.contains("deb-systemd-invoke try-restart cairn.service"));
}

#[test]
fn files_land_in_debian_places_and_the_binary_runs() {
    let p = package();
    let contents = ok(Command::new("dpkg-deb").arg("--contents").arg(&p.deb));
    // Every entry owned by uid and gid 0: an archive of the builder's ids
    // would install files owned by whoever has them on the target.
    for line in contents.lines() {
        let owner = line.split_whitespace().nth(1).unwrap_or_default();
        assert!(owner == "0/0" || owner == "root/root", "not root's: {line}");
    }
    let mode = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(".{path}")))
            .unwrap_or_else(|| panic!("no {path} in\n{contents}"))
            .split_whitespace()
            .next()
            .unwrap()
            .to_string()
    };
    assert_eq!(mode("/usr/bin/cairn"), "-rwxr-xr-x");
    for path in [
        "/etc/cairn/plan.kdl",
        "/usr/lib/systemd/system/cairn.service",
        "/usr/share/bash-completion/completions/cairn",
        "/usr/share/zsh/vendor-completions/_cairn",
        "/usr/share/fish/vendor_completions.d/cairn.fish",
        "/usr/share/doc/cairn/copyright",
        "/usr/share/doc/cairn/changelog.Debian.gz",
        "/usr/share/doc/cairn/README.Debian",
        "/usr/share/doc/cairn/README.md",
        "/usr/share/doc/cairn/spec/plan.md",
        "/usr/share/doc/cairn/examples/plan.kdl",
        "/usr/share/doc/cairn/examples/run-as-root.conf",
        "/usr/share/doc/cairn/examples/cairn-dashboard.json",
        "/usr/share/doc/cairn/third-party.txt",
    ] {
        assert_eq!(mode(path), "-rw-r--r--", "{path}");
    }
    // Every spec file, so README's links to spec/ resolve.
    for entry in std::fs::read_dir(project().join("spec")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            p.installed(&format!("/usr/share/doc/cairn/spec/{name}"))
                .is_file(),
            "spec/{name} not in the package"
        );
    }

    // The packaged binary (stripped) is this build's: same version line.
    let installed = p.installed("/usr/bin/cairn");
    let version = ok(Command::new(&installed).arg("--version"));
    assert_eq!(version, ok(Command::new(BIN).arg("--version")));
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let file = ok(Command::new("file").arg("-b").arg(&installed));
    assert!(
        file.contains("stripped") && !file.contains("not stripped"),
        "{file}"
    );

    // The linked crates and their licenses, which the copyright points at.
    let third =
        std::fs::read_to_string(p.installed("/usr/share/doc/cairn/third-party.txt")).unwrap();
    for krate in ["tokio v", "age v", "rdkafka v"] {
        let line = third
            .lines()
            .find(|l| l.starts_with(krate))
            .unwrap_or_else(|| panic!("no {krate} in\n{third}"));
        assert!(
            line.contains(": ") && line.len() > krate.len() + 6,
            "{line}"
        );
    }
    let copyright = std::fs::read_to_string(p.installed("/usr/share/doc/cairn/copyright")).unwrap();
    assert!(copyright.contains("License: Apache-2.0") && copyright.contains("third-party.txt"));
}

/// The visible commands `cairn --help` lists (without `help`): each has a
/// manual page `cairn-COMMAND.1`.
fn command_pages() -> Vec<String> {
    let help = ok(Command::new(BIN).arg("--help"));
    let list = help.split("Commands:\n").nth(1).unwrap();
    let commands: Vec<String> = list
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| *n != "help")
        .map(str::to_string)
        .collect();
    assert!(commands.len() > 10, "{help}");
    commands
}

#[test]
fn every_man_page_is_gzipped_roff_that_man_renders() {
    let p = package();
    let dir = p.installed("/usr/share/man/man1");
    let mut pages: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    pages.sort();
    let names: Vec<String> = pages
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    // cairn(1) and one page per command.
    for c in std::iter::once("cairn".to_string()).chain(command_pages()) {
        let name = if c == "cairn" {
            "cairn.1.gz".to_string()
        } else {
            format!("cairn-{c}.1.gz")
        };
        assert!(names.contains(&name), "no {name} in {names:?}");
    }
    for page in &pages {
        let name = page.file_name().unwrap().to_string_lossy();
        let stem = name
            .strip_suffix(".1.gz")
            .unwrap_or_else(|| panic!("{name}: not NAME.1.gz"));
        let roff = ok(Command::new("gzip").arg("-dc").arg(page));
        let title = roff
            .lines()
            .find(|l| !l.starts_with(".ie") && !l.starts_with(".el"))
            .unwrap();
        assert!(
            title.starts_with(&format!(".TH {stem} 1 ")),
            "{name}: title {title:?}"
        );
        assert!(
            roff.contains(".SH NAME") && roff.contains(".SH SYNOPSIS"),
            "{name}"
        );
        // man renders it with every warning on and none given (what
        // lintian's manpage-has-errors-from-man checks).
        let out = run(Command::new("man")
            .args(["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z"])
            .arg(page)
            .env("MANROFFSEQ", "")
            .env("MANWIDTH", "80"));
        let (code, stderr) = code_and_stderr(&out);
        assert_eq!(code, 0, "man -l {name}: {stderr}");
        assert_eq!(stderr.trim(), "", "man -l {name} warns");
    }
}

#[test]
fn completions_load_in_bash_and_name_every_command() {
    let p = package();
    let bash = p.installed("/usr/share/bash-completion/completions/cairn");
    let (code, stderr) = code_and_stderr(&run(Command::new("bash").arg("-n").arg(&bash)));
    assert_eq!(code, 0, "bash -n: {stderr}");
    // Sourced as bash-completion would, it completes `cairn`.
    let out = ok(Command::new("bash")
        .args(["--norc", "--noprofile", "-c"])
        .arg(format!(
            "set -e; source {}; complete -p cairn",
            bash.display()
        )));
    assert!(out.contains(" cairn"), "{out}");
    let zsh =
        std::fs::read_to_string(p.installed("/usr/share/zsh/vendor-completions/_cairn")).unwrap();
    assert!(
        zsh.starts_with("#compdef cairn\n"),
        "zsh: {:?}",
        zsh.lines().next()
    );
    let fish =
        std::fs::read_to_string(p.installed("/usr/share/fish/vendor_completions.d/cairn.fish"))
            .unwrap();
    assert!(fish.contains("complete -c cairn "), "fish");
    for c in command_pages() {
        for (shell, text) in [("zsh", &zsh), ("fish", &fish)] {
            assert!(text.contains(&c), "no {c} in the {shell} completions");
        }
    }
}

#[test]
fn the_unit_is_hardened_and_points_at_shipped_files() {
    let p = package();
    let text = unit(p);
    let settings = unit_settings(&text);
    let get = |key: &str| -> Vec<&str> {
        settings
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    };
    let one = |key: &str| -> &str {
        let v = get(key);
        assert_eq!(v.len(), 1, "{key}: {v:?}");
        v[0]
    };
    assert_eq!(one("User"), "cairn");
    for (key, value) in [
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "read-only"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("RestrictNamespaces", "yes"),
        ("CapabilityBoundingSet", ""),
        ("StateDirectory", "cairn"),
        ("CacheDirectory", "cairn"),
        ("UMask", "0007"),
    ] {
        assert_eq!(one(key), value, "{key}");
    }
    assert_eq!(one("ReadWritePaths"), "-/srv/backup");
    // Every program it runs is the packaged binary, on the packaged plan.
    for key in ["ExecStartPre", "ExecStart"] {
        let cmd = one(key);
        let program = cmd.split_whitespace().next().unwrap();
        assert_eq!(program, "/usr/bin/cairn", "{key}");
        assert!(p.installed(program).is_file());
        assert!(cmd.contains("/etc/cairn/plan.kdl"), "{key}={cmd}");
        assert!(p.installed("/etc/cairn/plan.kdl").is_file());
    }
    // Every document it names is in the package.
    let docs: Vec<&str> = get("Documentation")
        .into_iter()
        .flat_map(str::split_whitespace)
        .collect();
    assert!(docs.len() >= 4, "{docs:?}");
    for doc in docs {
        let shipped = if let Some(path) = doc.strip_prefix("file://") {
            p.installed(path)
        } else if let Some(page) = doc.strip_prefix("man:") {
            let (name, section) = page.trim_end_matches(')').split_once('(').unwrap();
            p.installed(&format!("/usr/share/man/man{section}/{name}.{section}.gz"))
        } else {
            panic!("Documentation={doc}: neither file:// nor man:")
        };
        assert!(shipped.is_file(), "Documentation={doc}: not shipped");
    }

    // systemd's own reading of it, and of it with the run-as-root drop-in
    // (appended: the same as a drop-in for these keys): no unknown keys or
    // bad values. `verify` looks for the programs on this machine, where the
    // package is not installed: that one complaint is expected (the unpacked
    // root has the binary, checked above), any other is a fault.
    let file = p.installed("/usr/lib/systemd/system/cairn.service");
    let as_root = tempfile::Builder::new()
        .prefix("cairn-unit-")
        .tempdir_in("/tmp")
        .unwrap();
    let drop_in =
        std::fs::read_to_string(p.installed("/usr/share/doc/cairn/examples/run-as-root.conf"))
            .unwrap();
    let combined = as_root.path().join("cairn.service");
    std::fs::write(&combined, format!("{text}\n{drop_in}")).unwrap();
    for unit in [&file, &combined] {
        let out = run(Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(unit));
        let (_, stderr) = code_and_stderr(&out);
        let faults: Vec<&str> = stderr
            .lines()
            .filter(|l| {
                !l.ends_with("Command /usr/bin/cairn is not executable: No such file or directory")
            })
            .collect();
        assert!(
            faults.is_empty(),
            "systemd-analyze verify {}:\n{stderr}",
            unit.display()
        );
    }
    // Its exposure score (0 safest, 10 none) at most 4.0 (--threshold counts
    // in tenths); the root unit it replaced scored 9.1.
    let out = run(Command::new("systemd-analyze")
        .args([
            "security",
            "--offline=yes",
            "--threshold=40",
            "--no-pager",
            "--root",
        ])
        .arg(&p.root)
        .arg(&file));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (code, stderr) = code_and_stderr(&out);
    let level = stdout
        .lines()
        .find(|l| l.contains("Overall exposure level"))
        .unwrap_or_else(|| panic!("no exposure level:\n{stdout}\n{stderr}"));
    assert_eq!(code, 0, "exposure above 4.0: {level}\n{stdout}");
}

#[test]
fn the_example_plan_checks_once_its_password_exists() {
    let p = package();
    let cairn = p.installed("/usr/bin/cairn");
    let plan = p.installed("/etc/cairn/plan.kdl");
    // As installed: refused until the password file is written, with the
    // file named (the unit's ExecStartPre stops there: no daemon starts).
    let password = p.installed("/etc/cairn/password");
    let _ = std::fs::remove_file(&password);
    let out = run(Command::new(&cairn).args(["plan", "check"]).arg(&plan));
    let (code, stderr) = code_and_stderr(&out);
    assert_eq!(code, 2, "{stderr}");
    assert!(
        stderr.contains(&format!("cannot read password file {}", password.display())),
        "{stderr}"
    );
    // README.Debian's first step, then it passes.
    std::fs::write(&password, "a long random password\n").unwrap();
    let out = ok(Command::new(&cairn)
        .args(["plan", "check", "--json"])
        .arg(&plan));
    let _ = std::fs::remove_file(&password);
    let plan: serde_json::Value = serde_json::from_str(&out).unwrap();
    // What it does as shipped: /etc/cairn only, into /srv/backup/repo.
    assert_eq!(
        plan["repository"]["location"], "/srv/backup/repo",
        "{plan:#}"
    );
    let sources = plan["sources"].as_array().unwrap();
    assert_eq!(sources.len(), 1, "{plan:#}");
    assert_eq!(
        sources[0]["paths"],
        serde_json::json!(["/etc/cairn"]),
        "{plan:#}"
    );
    assert!(
        plan["api"].is_null(),
        "no HTTP listener until one is configured: {plan:#}"
    );
}

#[test]
fn lintian_finds_no_errors() {
    let p = package();
    // --fail-on error: warnings are reported, errors fail. Any override
    // the package carries states its reason (usr/share/lintian/overrides).
    let out = run(Command::new("lintian")
        .args(["--fail-on", "error", "--no-tag-display-limit"])
        .arg(&p.deb));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (code, stderr) = code_and_stderr(&out);
    let errors: Vec<&str> = stdout.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{stdout}");
    assert_eq!(code, 0, "lintian:\n{stdout}\n{stderr}");
}

/// A directory of stand-ins for the account tools the postinst calls
/// (`getent`, `id`, `adduser`, `chown`) and the systemd helpers: run for
/// real they would change this machine's users. Each logs its arguments to
/// `calls`; the users and groups live in two small files the stand-ins
/// read and write, so a second run sees what the first did.
struct Accounts {
    dir: tempfile::TempDir,
}

impl Accounts {
    fn new(groups: &str) -> Accounts {
        let dir = tempfile::Builder::new()
            .prefix("cairn-postinst-")
            .tempdir_in("/tmp")
            .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        std::fs::write(dir.path().join("passwd"), "root\n").unwrap();
        // "group member,member" per line.
        std::fs::write(dir.path().join("group"), groups).unwrap();
        let d = dir.path().display().to_string();
        let stub = |name: &str, body: &str| {
            let path = bin.join(name);
            let text = format!("#!/bin/sh\necho \"{name} $*\" >> DIR/calls\n{body}\n");
            std::fs::write(&path, text.replace("DIR", &d)).unwrap();
            let mut perm = std::fs::metadata(&path).unwrap().permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
            std::fs::set_permissions(&path, perm).unwrap();
        };
        stub(
            "getent",
            r#"case $1 in
  passwd) grep -qx "$2" DIR/passwd ;;
  group) grep -q "^$2 " DIR/group ;;
  *) exit 2 ;;
esac"#,
        );
        // `id -nG USER`: the groups whose member list names USER.
        stub(
            "id",
            r#"[ "$1" = -nG ] || exit 2
echo $(grep "[ ,]$2\(,\|$\)" DIR/group | cut -d' ' -f1)"#,
        );
        // `adduser --system ... NAME` makes NAME and its group;
        // `adduser [--quiet] USER GROUP` adds USER to GROUP.
        stub(
            "adduser",
            r#"case "$*" in
  *--system*) eval last=\${$#}; echo "$last" >> DIR/passwd; echo "$last $last" >> DIR/group ;;
  *) while [ "${1#-}" != "$1" ]; do shift; done
     sed -i "s/^$2 \(..*\)$/$2 \1,$1/; s/^$2 $/$2 $1/" DIR/group ;;
esac"#,
        );
        // A unit nobody enabled yet, as on a first install.
        stub(
            "deb-systemd-helper",
            r#"case "$*" in *was-enabled*) exit 1 ;; esac"#,
        );
        for name in ["chown", "deb-systemd-invoke", "systemctl"] {
            stub(name, "exit 0");
        }
        Accounts { dir }
    }

    /// Run a maintainer script with these stand-ins first on PATH and the
    /// package's files under `DPKG_ROOT`; returns its stdout.
    fn run(&self, script: &Path, args: &[&str]) -> String {
        let path = format!(
            "{}:/usr/sbin:/usr/bin:/sbin:/bin",
            self.dir.path().join("bin").display()
        );
        ok(Command::new("sh")
            .arg(script)
            .args(args)
            .env_clear()
            .env("PATH", path)
            .env("DPKG_ROOT", self.root()))
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// The calls logged so far, and the log emptied.
    fn take_calls(&self) -> Vec<String> {
        let path = self.dir.path().join("calls");
        let calls = std::fs::read_to_string(&path).unwrap_or_default();
        let _ = std::fs::remove_file(&path);
        calls.lines().map(str::to_string).collect()
    }

    fn group(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("group")).unwrap()
    }
}

#[test]
fn postinst_makes_the_user_once_and_joins_postgres_when_it_appears() {
    use std::os::unix::fs::PermissionsExt;
    let p = package();
    let postinst = p.control.join("postinst");
    let postrm = p.control.join("postrm");

    // First install, no PostgreSQL yet: the system user, its home, a note
    // that the service is not enabled.
    let a = Accounts::new("root root\n");
    let out = a.run(&postinst, &["configure", ""]);
    assert!(
        out.contains("not enabled") && out.contains("README.Debian"),
        "{out}"
    );
    let calls = a.take_calls();
    let adds: Vec<&String> = calls.iter().filter(|c| c.starts_with("adduser")).collect();
    assert_eq!(adds.len(), 1, "{calls:#?}");
    for flag in [
        "--system",
        "--group",
        "--home /var/lib/cairn",
        "--shell /usr/sbin/nologin",
    ] {
        assert!(adds[0].contains(flag), "{}", adds[0]);
    }
    assert!(adds[0].ends_with(" cairn"), "{}", adds[0]);
    let home = a.root().join("var/lib/cairn");
    assert_eq!(
        std::fs::metadata(&home).unwrap().permissions().mode() & 0o7777,
        0o750
    );
    assert!(
        calls
            .iter()
            .any(|c| c == &format!("chown cairn:cairn {}", home.display())),
        "{calls:#?}"
    );
    // The unit is registered with deb-systemd-helper, never enabled.
    assert!(
        calls
            .iter()
            .any(|c| c == "deb-systemd-helper update-state cairn.service"),
        "{calls:#?}"
    );
    assert!(!calls.iter().any(|c| c.contains(" enable")), "{calls:#?}");
    assert!(!a.group().contains("postgres"));

    // Reconfigured (an upgrade): nothing made again, no note.
    let out = a.run(&postinst, &["configure", "0.1.0-1"]);
    assert!(!out.contains("not enabled"), "{out}");
    let calls = a.take_calls();
    assert!(
        !calls
            .iter()
            .any(|c| c.starts_with("adduser") || c.starts_with("chown")),
        "{calls:#?}"
    );

    // PostgreSQL installed later: its group appears, the trigger joins it,
    // once.
    std::fs::write(
        a.dir.path().join("group"),
        format!("{}postgres \n", a.group()),
    )
    .unwrap();
    let out = a.run(&postinst, &["triggered", "/usr/share/postgresql-common"]);
    assert!(
        out.contains("added the cairn user to the postgres group"),
        "{out}"
    );
    assert!(
        a.group().lines().any(|l| l == "postgres cairn"),
        "{}",
        a.group()
    );
    a.take_calls();
    a.run(&postinst, &["triggered", "/usr/share/postgresql-common"]);
    assert!(!a.take_calls().iter().any(|c| c.starts_with("adduser")));

    // Installed where PostgreSQL already is: a member from the start.
    let b = Accounts::new("root root\npostgres \n");
    b.run(&postinst, &["configure", ""]);
    assert!(
        b.group().lines().any(|l| l == "postgres cairn"),
        "{}",
        b.group()
    );

    // Purge: the state and cache go, the user stays.
    std::fs::create_dir_all(a.root().join("var/cache/cairn")).unwrap();
    a.run(&postrm, &["purge"]);
    assert!(!home.exists() && !a.root().join("var/cache/cairn").exists());
    assert!(!a
        .take_calls()
        .iter()
        .any(|c| c.starts_with("deluser") || c.starts_with("userdel")));
}
