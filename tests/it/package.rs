//! Issue 30, item 3: the Debian package. `scripts/package --binary` packages
//! this test build's `cairn` (cargo-deb, as a release would, without a
//! release build); the tests read the .deb with `dpkg-deb`, unpack it with
//! `dpkg -x` into a throwaway root and check what an operator gets: a binary
//! that runs, a gzipped manual page per command, completions that parse, a
//! hardened unit that points at files the package ships, maintainer scripts
//! that parse, an example plan that `plan check` accepts once its password
//! file exists, and no lintian errors. Then it is installed for real —
//! `dpkg -i`, the real `adduser`, its trigger, an upgrade, `dpkg --purge` —
//! on private overlays of this machine's `/etc`, `/usr`, `/var` and `/srv`
//! in a mount namespace of its own, which nothing outside sees. The package
//! is built once per test process and shared by these tests.

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
    for c in std::iter::once("cairn".to_string()).chain(crate::common::commands()) {
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
    for c in crate::common::commands() {
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

/// This machine with private, writable layers over `/etc`, `/usr`, `/var`
/// and `/srv`: each command runs in its own mount namespace (`unshare -m`)
/// on overlays whose upper layers persist between commands, so `dpkg -i`,
/// the real `adduser`, triggers and `dpkg --purge` run as on a real host,
/// and nothing of it is seen outside: not by this machine, not by the
/// other tests.
struct Overlay {
    dir: tempfile::TempDir,
}

const LAYERS: [&str; 4] = ["etc", "usr", "var", "srv"];

impl Overlay {
    fn new() -> Overlay {
        let dir = tempfile::Builder::new()
            .prefix("cairn-install-")
            .tempdir_in("/tmp")
            .unwrap();
        for layer in LAYERS {
            for sub in ["upper", "work"] {
                std::fs::create_dir_all(dir.path().join(layer).join(sub)).unwrap();
            }
        }
        Overlay { dir }
    }

    /// Run `script` (sh) on the layered machine; its output, whatever its exit.
    fn sh(&self, script: &str) -> Output {
        let d = self.dir.path().display();
        let mounts: String = LAYERS
            .iter()
            .map(|l| {
                format!(
                    "mount -t overlay overlay -o lowerdir=/{l},upperdir={d}/{l}/upper,workdir={d}/{l}/work /{l} || exit 99\n"
                )
            })
            .collect();
        let out = run(Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(format!("{mounts}{script}"))
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            // root's cairn cache, in the layers' directory, not in /root.
            .env("HOME", self.dir.path())
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(std::process::Stdio::null()));
        assert_ne!(
            out.status.code(),
            Some(99),
            "cannot layer an overlay over the system: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Run `script`, require exit 0; stdout and stderr together.
    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.code(), Some(0), "{script}:\n{text}");
        text
    }
}

#[test]
fn installs_upgrades_and_purges_on_a_real_dpkg() {
    let p = package();
    let m = Overlay::new();
    let deb = p.deb.display();
    // A machine without PostgreSQL's group yet (renamed away in the layer),
    // and without man-db's index rebuilds on each dpkg run (its documented
    // switch; nothing here reads that index).
    m.ok("groupmod -n postgres-later postgres
          rm -f /var/lib/man-db/auto-update");

    let out = m.ok(&format!("dpkg -i {deb}"));
    assert!(
        out.contains("installed but not enabled") && out.contains("README.Debian"),
        "{out}"
    );
    // A system user with its own group, no login, home /var/lib/cairn (0750).
    let passwd = m.ok("getent passwd cairn");
    let fields: Vec<&str> = passwd.trim().split(':').collect();
    assert!(
        fields[2].parse::<u32>().unwrap() < 1000,
        "not a system user: {passwd}"
    );
    assert_eq!(
        &fields[5..],
        ["/var/lib/cairn", "/usr/sbin/nologin"],
        "{passwd}"
    );
    assert_eq!(m.ok("id -nG cairn").trim(), "cairn");
    assert_eq!(
        m.ok("stat -c '%a %U:%G' /var/lib/cairn").trim(),
        "750 cairn:cairn"
    );
    // Registered, not enabled.
    let wants = m.sh("ls /etc/systemd/system/multi-user.target.wants/cairn.service");
    assert_ne!(
        wants.status.code(),
        Some(0),
        "the service was enabled on install"
    );

    // The unit's ExecStartPre as the unit's user: refused until the password
    // file exists, then the plan is good.
    let out = m.sh("runuser -u cairn -- cairn plan check /etc/cairn/plan.kdl");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(
        text.contains("cannot read password file /etc/cairn/password"),
        "{text}"
    );
    // README.Debian's first steps, as written there: password, repository,
    // a backup by the plan as cairn, and root using the same repository
    // through the default plan.
    m.ok(
        "(umask 027; head -c 24 /dev/urandom | base64 > /etc/cairn/password)
          chgrp cairn /etc/cairn/password
          runuser -u cairn -- cairn plan check /etc/cairn/plan.kdl
          install -d -o cairn -g cairn -m 2770 /srv/backup/repo
          runuser -u cairn -- cairn init --kdf-work-factor 10
          chmod -R g+rwX /srv/backup/repo
          runuser -u cairn -- cairn snapshot --plan /etc/cairn/plan.kdl -q
          cairn snapshot -q /etc/hostname
          runuser -u cairn -- cairn check",
    );
    let snapshots = m.ok("cairn snapshots");
    assert!(
        snapshots.contains("/etc/cairn") && snapshots.contains("2 snapshot(s)"),
        "{snapshots}"
    );

    // PostgreSQL arrives: its group appears and postgresql-common's files
    // activate cairn's trigger (as unpacking it would), which joins the group.
    let out = m.ok("groupmod -n postgres postgres-later
                    DPKG_MAINTSCRIPT_PACKAGE=postgresql-common dpkg-trigger --no-await /usr/share/postgresql-common
                    dpkg --triggers-only --pending");
    assert!(
        out.contains("added the cairn user to the postgres group"),
        "{out}"
    );
    assert_eq!(m.ok("id -nG cairn").trim(), "cairn postgres");

    // The same version again (an upgrade's path): the user is kept as it is,
    // the edited plan too, no install note.
    m.ok("echo '// edited' >> /etc/cairn/plan.kdl");
    let out = m.ok(&format!("dpkg -i {deb}"));
    assert!(!out.contains("not enabled"), "{out}");
    assert_eq!(m.ok("getent passwd cairn"), passwd);
    assert!(m.ok("tail -n 1 /etc/cairn/plan.kdl").contains("// edited"));

    // Purge: the plan, state and cache go; the password, the repository and
    // the user (it owns files there) stay.
    m.ok(
        "install -d -o cairn -g cairn /var/cache/cairn   # the service's CacheDirectory
          dpkg --purge cairn",
    );
    let left = m.ok("for f in /etc/cairn/plan.kdl /etc/cairn/password /var/lib/cairn /var/cache/cairn /srv/backup/repo/config /usr/bin/cairn; do
                       [ -e $f ] && echo \"kept $f\" || echo \"gone $f\"
                     done
                     getent passwd cairn >/dev/null && echo 'kept user'");
    for line in [
        "gone /etc/cairn/plan.kdl",
        "kept /etc/cairn/password",
        "gone /var/lib/cairn",
        "gone /var/cache/cairn",
        "kept /srv/backup/repo/config",
        "gone /usr/bin/cairn",
        "kept user",
    ] {
        assert!(left.lines().any(|l| l == line), "want {line:?}:\n{left}");
    }
}
