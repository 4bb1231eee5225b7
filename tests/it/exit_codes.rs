//! Documented exit codes and helpful messages (README "Exit codes").

use crate::common::*;
use std::io::Write;
use std::process::Stdio;

#[test]
fn missing_repository_is_10() {
    let env = Env::new();
    let (code, err) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 10, "{err}");
    assert!(err.contains("no repository at"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}

#[test]
fn wrong_password_is_12() {
    let env = Env::init();
    std::fs::write(&env.password_file, "wrong\n").unwrap();
    let (code, err) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 12, "{err}");
    assert!(err.contains("no key of the repository"), "{err}");
}

#[test]
fn bad_flags_are_2_with_a_helpful_message() {
    let env = Env::init();
    let (code, err) = code_and_stderr(&env.run(&["snapshot", "--no-such-flag"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--no-such-flag"), "{err}");
    let (code, err) = code_and_stderr(&env.run(&[
        "restore",
        "latest",
        "--target",
        "/tmp/x",
        "--at",
        "yesterday-ish",
    ]));
    assert_eq!(code, 2, "{err}");
    let (code, err) =
        code_and_stderr(&env.run(&["restore", "--at", "not a time", "--target", "/tmp/x"]));
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("cannot read \"not a time\" as a time") && err.contains("hint:"),
        "{err}"
    );
    let (code, err) = code_and_stderr(&env.run(&["snapshot", "/definitely/not/here"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("/definitely/not/here does not exist"), "{err}");
    let (code, err) = code_and_stderr(&env.run(&["forget"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refusing to forget every snapshot"), "{err}");
    let (code, err) = code_and_stderr(&env.run(&["check", "--read-data-subset", "7/5"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn lock_conflict_is_11_and_names_the_holder() {
    let env = Env::init();
    // A snapshot reading from a pipe we keep open holds its shared lock.
    let mut child = env
        .cmd()
        .args(["snapshot", "--stdin-name", "slow"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"some data").unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while std::fs::read_dir(env.repo.join("locks")).unwrap().count() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "snapshot never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let (code, err) = code_and_stderr(&env.run(&["prune"]));
    assert_eq!(code, 11, "{err}");
    assert!(err.contains(&format!("pid {}", child.id())), "{err}");
    assert!(err.contains("`snapshot`"), "{err}");
    drop(stdin);
    assert!(child.wait().unwrap().success());
    // The lock is released: prune works now.
    env.ok(&["prune"]);
}

#[test]
fn interrupted_snapshot_is_130_and_saves_nothing() {
    let env = Env::init();
    let mut child = env
        .cmd()
        .args(["snapshot", "--stdin-name", "stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(&noise(3, 20 << 20)).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    // Keep feeding so the snapshot reaches its next chunk and notices.
    let _ = stdin.write_all(&noise(4, 20 << 20));
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 130, "{err}");
    assert!(env.snapshot_ids().is_empty());
    assert_eq!(
        std::fs::read_dir(env.repo.join("locks")).unwrap().count(),
        0,
        "lock released"
    );
    env.ok(&["check"]);
}

#[test]
fn keys_add_list_remove_and_the_last_key_is_kept() {
    let env = Env::init();
    let second = env.path("second-password");
    std::fs::write(&second, "another one\n").unwrap();
    env.ok(&[
        "key",
        "add",
        "--new-password-file",
        second.to_str().unwrap(),
        "--kdf-work-factor",
        "10",
    ]);
    let keys = env.json(&["key", "list"]);
    assert_eq!(keys.as_array().unwrap().len(), 2);
    let first_id = keys
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["current"] == true)
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Open with the second password and remove the first key.
    let mut c = env.cmd();
    c.env("CAIRN_PASSWORD_FILE", &second)
        .args(["key", "remove", &first_id[..12]]);
    assert!(c.output().unwrap().status.success());
    let (code, _) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 12, "the removed key no longer opens the repository");
    let mut c = env.cmd();
    c.env("CAIRN_PASSWORD_FILE", &second)
        .args(["key", "list", "--json"]);
    let out = c.output().unwrap();
    let keys: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let only = keys[0]["id"].as_str().unwrap().to_string();
    let mut c = env.cmd();
    c.env("CAIRN_PASSWORD_FILE", &second)
        .args(["key", "remove", &only]);
    let (code, err) = code_and_stderr(&c.output().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("refusing to remove the last key"), "{err}");
}

#[test]
fn an_age_identity_opens_the_repository() {
    let env = Env::new();
    let identity = age::x25519::Identity::generate();
    let idfile = env.path("identity.txt");
    use age::secrecy::ExposeSecret;
    std::fs::write(
        &idfile,
        format!("# test\n{}\n", identity.to_string().expose_secret()),
    )
    .unwrap();
    let mut c = env.cmd();
    c.env_remove("CAIRN_PASSWORD_FILE")
        .env("CAIRN_IDENTITY_FILE", &idfile)
        .args(["init"]);
    assert!(c.output().unwrap().status.success());
    let src = env.path("src");
    make_sample_tree(&src);
    let mut c = env.cmd();
    c.env_remove("CAIRN_PASSWORD_FILE")
        .env("CAIRN_IDENTITY_FILE", &idfile)
        .arg("snapshot")
        .arg(&src);
    assert!(c.output().unwrap().status.success());
    // A password does not open an identity-only repository.
    let (code, _) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 12);
}

/// Issue 26: a recovery host gets its own identity in one command, opens
/// the repository with it (no password), and an existing identity file is
/// never replaced (exit 2).
#[test]
fn key_add_generate_identity_makes_a_key_only_that_file_opens() {
    use std::os::unix::fs::PermissionsExt;
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    assert!(env
        .run(&["snapshot", src.to_str().unwrap()])
        .status
        .success());
    let idfile = env.path("recovery.key");
    let out = env.run(&[
        "key",
        "add",
        "--generate-identity",
        idfile.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta = std::fs::metadata(&idfile).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let text = std::fs::read_to_string(&idfile).unwrap();
    assert!(text.contains("# public key: age1"), "{text}");
    let mut c = env.cmd();
    c.env_remove("CAIRN_PASSWORD_FILE")
        .env("CAIRN_IDENTITY_FILE", &idfile)
        .args(["snapshots", "--json", "--no-key-cache"]);
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    // Twice with the same file: refused, the first identity kept.
    let (code, err) = code_and_stderr(&env.run(&[
        "key",
        "add",
        "--generate-identity",
        idfile.to_str().unwrap(),
    ]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("never replaced"), "{err}");
    assert_eq!(std::fs::read_to_string(&idfile).unwrap(), text);
    // A wrong password leaves no identity file behind.
    let other = env.path("other.key");
    let bad = env.path("bad-password");
    std::fs::write(&bad, "not the password\n").unwrap();
    let mut c = env.cmd();
    c.env("CAIRN_PASSWORD_FILE", &bad).args([
        "key",
        "add",
        "--no-key-cache",
        "--generate-identity",
        other.to_str().unwrap(),
    ]);
    let (code, _) = code_and_stderr(&c.output().unwrap());
    assert_eq!(code, 12);
    assert!(!other.exists());
    // The key file cannot be written: the new identity is taken back, so a
    // retry with the same path works.
    let mut c = env.cmd();
    c.env("CAIRN_TEST_FAULT", "write:1:fail").args([
        "key",
        "add",
        "--generate-identity",
        other.to_str().unwrap(),
    ]);
    let (code, err) = code_and_stderr(&c.output().unwrap());
    assert_eq!(code, 1, "{err}");
    assert!(!other.exists(), "an identity no key names was left behind");
    let out = env.run(&["key", "add", "--generate-identity", other.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Issue 24, finding 9: a password in a `--postgres` or `--to` URL is
/// visible to every user through `ps`. Like `plan check`, the CLI refuses
/// it (exit 2, same message and hint) before opening the repository or
/// connecting anywhere: the listener named in the URL is never contacted.
#[test]
fn passwords_in_postgres_urls_on_the_command_line_are_refused() {
    let env = Env::init();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let with_secret = [
        format!("postgres://u:secret@127.0.0.1:{port}/x"),
        format!("postgresql://u@127.0.0.1:{port}/x?password=secret"),
    ];
    for url in &with_secret {
        for args in [
            vec!["snapshot", "--postgres", url],
            vec!["restore", "latest", "--to", url],
        ] {
            let (code, err) = code_and_stderr(&output_within(env.cmd().args(&args), 60));
            assert_eq!(code, 2, "{args:?}: {err}");
            assert!(err.contains("contains a password"), "{args:?}: {err}");
            assert!(
                err.contains("hint: remove it from the URL; cairn gives PostgreSQL its password"),
                "{args:?}: {err}"
            );
            assert!(
                !err.contains("secret"),
                "the password is not repeated: {err}"
            );
        }
    }
    listener.set_nonblocking(true).unwrap();
    assert_eq!(
        listener.accept().unwrap_err().kind(),
        std::io::ErrorKind::WouldBlock,
        "cairn connected to the server"
    );
}

/// A repository that uses a format feature this build does not know is
/// refused before anything is read (spec/repository.md "Versions and
/// features"), rather than listed or restored with parts missing.
#[test]
fn a_repository_with_an_unknown_format_feature_is_refused_with_a_hint() {
    let env = Env::init();
    let data = env.path("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("f"), b"kept").unwrap();
    env.snapshot(&[&data]);
    let config_path = env.repo.join("config");
    let original = std::fs::read(&config_path).unwrap();
    let mut config: serde_json::Value = serde_json::from_slice(&original).unwrap();
    assert_eq!(config["version"], 2, "{config}");
    assert_eq!(
        config["features"],
        serde_json::json!(["zstd-delta"]),
        "{config}"
    );

    config["features"] = serde_json::json!(["zstd-delta", "sparse-files"]);
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let target = env.path("t");
    let target = target.to_str().unwrap();
    for args in [
        &["snapshots"][..],
        &["check"],
        &["restore", "latest", "--target", target],
    ] {
        let (code, err) = code_and_stderr(&env.run(args));
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(
            err.contains("format feature(s) this cairn does not know: sparse-files"),
            "{err}"
        );
        assert!(err.contains("hint: upgrade cairn"), "{err}");
    }
    assert!(!env.path("t").exists(), "nothing was restored");

    config["version"] = 3.into();
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    let (code, err) = code_and_stderr(&env.run(&["snapshots"]));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("format version 3 is newer"), "{err}");

    // A version-1 config (made before the list existed) still reads.
    config["version"] = 1.into();
    config.as_object_mut().unwrap().remove("features");
    std::fs::write(&config_path, serde_json::to_vec(&config).unwrap()).unwrap();
    env.ok(&["snapshots"]);
}

/// The exit codes of README's table, in order.
fn readme_exit_codes() -> Vec<i32> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let table = readme
        .split("## Exit codes")
        .nth(1)
        .expect("README has an Exit codes section");
    table
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .filter_map(|l| l.trim_matches('|').split('|').next()?.trim().parse().ok())
        .collect()
}

/// Issue 27, item 9: `cairn --help` lists every code of README's table
/// (it left out 4), and nothing else.
#[test]
fn help_lists_every_exit_code_of_the_readme() {
    let env = Env::new();
    let out = env.run(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    let list = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help has an exit code list");
    let list = list.split_whitespace().collect::<Vec<_>>().join(" ");
    let list = list.split('.').next().unwrap();
    let in_help: Vec<i32> = list
        .split(", ")
        .map(|item| item.split(' ').next().unwrap().parse().unwrap())
        .collect();
    let in_readme = readme_exit_codes();
    assert!(in_readme.contains(&4), "{in_readme:?}");
    assert_eq!(in_help, in_readme, "help: {list}");
}

/// Found by `scripts/bench scale` (issue 29): `cairn snapshots --json |
/// head` ended with "failed printing to stdout: Broken pipe" and exit 1.
/// A command whose reader goes away now ends as Unix tools do, killed by
/// SIGPIPE, with nothing on stderr.
#[test]
fn a_closed_stdout_ends_the_command_by_sigpipe_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    let env = Env::init();
    let src = env.path("src");
    make_sample_tree(&src);
    for _ in 0..3 {
        env.snapshot(&[&src]);
    }
    let mut child = env
        .cmd()
        .args(["snapshots", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before a byte is read
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGPIPE),
        "{:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked") && !err.contains("error"), "{err}");
}

/// Hostile input (seen while fuzzing, issue 28): a password or identity
/// file that is `/dev/zero` made `cairn` and `plan check` read without end.
/// Each is now refused after 64 KiB, exit 2, naming the file. (A pipe, as
/// `--password-file <(pass show cairn)` gives, is still read.)
#[test]
fn endless_secret_files_are_refused_not_read_forever() {
    let env = Env::init();
    for (var, file) in [
        ("CAIRN_PASSWORD_FILE", std::path::Path::new("/dev/zero")),
        ("CAIRN_IDENTITY_FILE", std::path::Path::new("/dev/zero")),
    ] {
        let mut c = env.cmd();
        c.env_remove("CAIRN_PASSWORD_FILE")
            .env(var, file)
            .args(["snapshots", "--no-key-cache"]);
        let (code, err) = code_and_stderr(&output_within(&mut c, 60));
        assert_eq!(code, 2, "{var}={}: {err}", file.display());
        assert!(err.contains(&file.display().to_string()), "{err}");
        assert!(err.contains("too large"), "{err}");
    }
    let plan = env.write_plan("");
    let text = std::fs::read_to_string(&plan)
        .unwrap()
        .replace("password-file \"password\"", "password-file \"/dev/zero\"");
    std::fs::write(&plan, text).unwrap();
    let mut c = env.plan_cmd();
    c.args(["plan", "check", plan.to_str().unwrap()]);
    let (code, err) = code_and_stderr(&output_within(&mut c, 60));
    assert_ne!(code, 0, "{err}");
    assert!(
        err.contains("/dev/zero") && err.contains("too large"),
        "{err}"
    );
}

/// Issue 27, item 9: a password or identity file that is not there is a
/// usage mistake (exit 2, the file named, a hint), not a failure.
#[test]
fn a_missing_password_or_identity_file_is_2() {
    let env = Env::init();
    let missing = env.path("no-such-password");
    let mut c = env.cmd();
    c.env("CAIRN_PASSWORD_FILE", &missing).arg("snapshots");
    let (code, err) = code_and_stderr(&c.output().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!("cannot read password file {}", missing.display())),
        "{err}"
    );
    assert!(err.contains("hint:"), "{err}");
    let (code, err) =
        code_and_stderr(&env.run(&["--password-file", missing.to_str().unwrap(), "snapshots"]));
    assert_eq!(code, 2, "{err}");
    let mut c = env.cmd();
    c.env("CAIRN_IDENTITY_FILE", env.path("no-such-identity"))
        .arg("snapshots");
    let (code, err) = code_and_stderr(&c.output().unwrap());
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("cannot read identity file"), "{err}");
    // An id that matches no snapshot is a mistake too.
    let (code, err) = code_and_stderr(&env.run(&["restore", "abcdef12", "--target", "/tmp/x"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no snapshot matches"), "{err}");
}

/// A TCP port on 127.0.0.1 that nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Issue 27, item 9: any server that cannot be reached is exit 4, as a
/// Kafka broker is: PostgreSQL refusing the connection or a host name that
/// does not resolve, for a snapshot and for a restore's target.
#[test]
fn an_unreachable_postgres_server_is_4() {
    let env = Env::init();
    let refused = format!("postgres://postgres@127.0.0.1:{}/postgres", closed_port());
    let unknown = "postgres://postgres@cairn-no-such-host.invalid/postgres".to_string();
    for url in [&refused, &unknown] {
        let (code, err) = code_and_stderr(&output_within(
            env.cmd().args(["snapshot", "--postgres", url]),
            120,
        ));
        assert_eq!(code, 4, "{url}: {err}");
        assert!(
            err.contains("cannot connect to postgres://postgres@"),
            "{err}"
        );
        assert!(err.contains("hint: check that the server runs"), "{err}");
    }
    assert!(env.snapshot_ids().is_empty());
    // Two PostgreSQL sources of a plan, both unreachable: still 4.
    let plan = env.write_plan(&format!(
        "source \"a\" kind=\"postgres\" {{\n    url \"{refused}\"\n}}\n\
         source \"b\" kind=\"postgres\" {{\n    url \"{refused}\"\n}}\n"
    ));
    let (code, err) = code_and_stderr(&output_within(
        env.plan_cmd()
            .args(["snapshot", "--plan", plan.to_str().unwrap()]),
        120,
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("every source failed"), "{err}");
}

/// Issue 27, item 9: a host that never answers (here: a listener whose
/// queue is full, so the kernel drops the connection attempt, as a
/// firewall would) no longer hangs: cairn gives up after its connect
/// timeout (10 s by default) and exits 4. The bound below only stops a
/// hang; it is not a timing assertion.
#[test]
fn a_postgres_server_that_never_answers_is_4_after_the_connect_timeout() {
    use std::os::fd::AsRawFd;
    let env = Env::init();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    // SAFETY: listen(2) on a socket this test owns; it only changes the backlog.
    assert_eq!(unsafe { libc::listen(listener.as_raw_fd(), 0) }, 0);
    let port = listener.local_addr().unwrap().port();
    // Fill the queue: from now on, connection attempts are dropped.
    let mut queued = Vec::new();
    loop {
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(1)) {
            Ok(s) => queued.push(s),
            Err(_) => break,
        }
        assert!(queued.len() < 16, "the listen queue never filled");
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let (code, err) = code_and_stderr(&output_within(
        env.cmd().args(["snapshot", "--postgres", &url]),
        90,
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("timeout"), "{err}");
    assert!(err.contains("connect_timeout"), "{err}");
    // A URL's connect_timeout is used instead.
    let url = format!("{url}?connect_timeout=1");
    let (code, err) = code_and_stderr(&output_within(
        env.cmd().args(["snapshot", "--postgres", &url]),
        90,
    ));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("waits 1s"), "{err}");
    drop(queued);
}

/// Issue 27, item 9: an object store that cannot be reached is exit 4.
#[test]
fn an_unreachable_object_store_is_4() {
    let mut env = Env::new();
    env.location = Some("s3://bucket/repo".into());
    env.extra_env = vec![
        (
            "AWS_ENDPOINT_URL".into(),
            format!("http://127.0.0.1:{}", closed_port()),
        ),
        ("AWS_ACCESS_KEY_ID".into(), "cairn-test".into()),
        ("AWS_SECRET_ACCESS_KEY".into(), "cairn-test-secret".into()),
    ];
    let (code, err) = code_and_stderr(&output_within(env.cmd().arg("snapshots"), 300));
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("cannot reach the object store"), "{err}");
    assert!(err.contains("hint: check AWS_ENDPOINT_URL"), "{err}");
}

/// A PostgreSQL "server" that accepts connections and never says a word
/// (a hung server, a proxy whose backend is gone): cairn gives up after the
/// connect timeout with exit 4 instead of hanging for ever, and SIGTERM
/// ends it while it waits.
#[test]
fn a_server_that_accepts_and_never_answers_is_unreachable_not_a_hang() {
    let env = Env::init();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let keep = held.clone();
    std::thread::spawn(move || {
        for c in listener.incoming().flatten() {
            keep.lock().unwrap().push(c);
        }
    });
    let url = format!("postgres://backup@127.0.0.1:{port}/postgres?connect_timeout=1");
    let mut cmd = env.cmd();
    cmd.args(["snapshot", "--postgres", &url]);
    // A liveness bound, generous: it used to wait for ever.
    let out = output_within(&mut cmd, 60);
    let (code, err) = code_and_stderr(&out);
    assert_eq!(code, 4, "{err}");
    assert!(err.contains("did not answer within"), "{err}");
    assert!(
        err.contains("connect_timeout"),
        "the hint names the setting: {err}"
    );

    // SIGTERM while it waits (a long connect timeout): exit 130, promptly.
    let url = format!("postgres://backup@127.0.0.1:{port}/postgres?connect_timeout=300");
    let mut child = env
        .cmd()
        .args(["snapshot", "--postgres", &url])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(2));
    rustix::process::kill_process(
        rustix::process::Pid::from_child(&child),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "SIGTERM did not end the wait"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert_eq!(status.code(), Some(130));
    assert!(!held.lock().unwrap().is_empty());
}
