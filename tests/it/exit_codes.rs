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
