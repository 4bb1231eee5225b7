//! Alerts through real servers: `cairn plan test-alert` against an SMTP
//! server (Debian's aiosmtpd, with and without AUTH) and a webhook.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

/// Debian's interpreter, which has aiosmtpd (the `python3` on PATH may not).
const PYTHON: &str = "/usr/bin/python3";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether process `pid` holds a socket listening on 127.0.0.1:`port` (Linux:
/// the socket's inode in /proc/net/tcp among the process's descriptors).
fn listens(pid: u32, port: u16) -> bool {
    let Ok(table) = std::fs::read_to_string("/proc/net/tcp") else {
        return false;
    };
    let local = format!("0100007F:{port:04X}");
    // "sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...", 0A = LISTEN
    let inodes: Vec<String> = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .filter(|f| f.len() > 9 && f[1] == local && f[3] == "0A")
        .map(|f| format!("socket:[{}]", f[9]))
        .collect();
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
}

/// An aiosmtpd server storing each message in `DIR/new/`; killed on drop.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
}

impl Smtp {
    /// Plain SMTP, no AUTH: `python3 -m aiosmtpd … -c aiosmtpd.handlers.Mailbox DIR`.
    fn start(dir: &Path) -> Smtp {
        let maildir = dir.join("mail");
        Smtp::launch(maildir.clone(), |port| {
            Command::new(PYTHON)
                .args(["-m", "aiosmtpd", "-n", "-l"])
                .arg(format!("127.0.0.1:{port}"))
                .args(["-c", "aiosmtpd.handlers.Mailbox"])
                .arg(&maildir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start aiosmtpd (scripts/setup installs python3-aiosmtpd)")
        })
    }

    /// SMTP with AUTH (PLAIN, LOGIN) over a plain connection, accepting
    /// only `user` / `password`.
    fn start_with_auth(dir: &Path, user: &str, password: &str) -> Smtp {
        let maildir = dir.join("mail");
        let script = dir.join("smtp_auth.py");
        std::fs::write(
            &script,
            r#"
import sys, threading
from aiosmtpd.controller import Controller
from aiosmtpd.handlers import Mailbox
from aiosmtpd.smtp import AuthResult, LoginPassword

port, maildir, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def authenticator(server, session, envelope, mechanism, auth_data):
    if (isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()):
        return AuthResult(success=True)
    # handled=False: aiosmtpd answers 535 itself (else the client hangs)
    return AuthResult(success=False, handled=False)

controller = Controller(Mailbox(maildir), hostname="127.0.0.1", port=port,
                        authenticator=authenticator, auth_require_tls=False,
                        auth_required=True)
controller.start()
threading.Event().wait()
"#,
        )
        .unwrap();
        Smtp::launch(maildir.clone(), |port| {
            Command::new(PYTHON)
                .arg(&script)
                .arg(port.to_string())
                .arg(&maildir)
                .args([user, password])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
    }

    /// Start a server on a free port and wait until it is the one listening
    /// there. A port found free can be taken by another test's server before
    /// ours binds it: ours then exits, and a bare connect would reach the
    /// other one (which may be gone by the time cairn sends). So the wait is
    /// for a listening socket held by our child, and a child that exits is
    /// started again on another port.
    fn launch(maildir: PathBuf, spawn: impl Fn(u16) -> Child) -> Smtp {
        for _ in 0..5 {
            let port = free_port();
            let mut child = spawn(port);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break; // most likely the port was taken: try another
                }
                if listens(child.id(), port) {
                    return Smtp {
                        child,
                        port,
                        maildir,
                    };
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the SMTP server did not start listening within 20 s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        panic!("the SMTP server exited at start five times");
    }

    /// The messages received so far (raw text).
    fn messages(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Header values of `name` in a raw message (unfolded, first block only).
fn headers(message: &str, name: &str) -> Vec<String> {
    let head = message.split("\n\n").next().unwrap_or("");
    let prefix = format!("{}:", name.to_ascii_lowercase());
    head.lines()
        .filter(|l| l.to_ascii_lowercase().starts_with(&prefix))
        .map(|l| l[prefix.len()..].trim().to_string())
        .collect()
}

fn write_plan(env: &Env, alerts: &str) -> PathBuf {
    env.write_plan(&format!(
        "source \"etc\" kind=\"files\" {{\n    path \"/etc/hostname\"\n}}\n{alerts}"
    ))
}

fn test_alert(env: &Env, plan: &Path, extra: &[&str]) -> (i32, String, String) {
    let out = env
        .cmd()
        .args(["plan", "test-alert"])
        .arg(plan)
        .args(extra)
        .output()
        .unwrap();
    let (code, err) = code_and_stderr(&out);
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), err)
}

#[test]
fn email_over_plain_smtp_reaches_every_recipient() {
    let env = Env::new();
    let smtp = Smtp::start(env.dir.path());
    let plan = write_plan(
        &env,
        &format!(
            r#"alerts {{
    email {{
        smtp "127.0.0.1" port={} security="plain"
        from "cairn@example.org"
        to "ops@example.org" "oncall@example.org"
    }}
}}
"#,
            smtp.port
        ),
    );
    let (code, out, err) = test_alert(&env, &plan, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(
        out.contains("e-mail: sent to ops@example.org, oncall@example.org"),
        "{out}"
    );
    let messages = smtp.messages();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    let mut rcpt = headers(m, "X-RcptTo").join(",");
    rcpt.retain(|c| !c.is_whitespace());
    let mut rcpt: Vec<&str> = rcpt.split(',').collect();
    rcpt.sort();
    assert_eq!(rcpt, ["oncall@example.org", "ops@example.org"], "{m}");
    let subject = headers(m, "Subject").join(" ");
    assert!(
        subject.starts_with("[cairn ") && subject.ends_with("] test alert"),
        "{m}"
    );
    assert_eq!(headers(m, "From"), ["cairn@example.org"], "{m}");
    assert!(m.contains("The alert channels of this plan work."), "{m}");

    // --kind sends a sample of that alert.
    let (code, out, err) = test_alert(&env, &plan, &["--kind", "backup-failed"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    let messages = smtp.messages();
    assert_eq!(messages.len(), 2);
    assert!(
        messages.iter().any(|m| headers(m, "Subject")
            .join(" ")
            .ends_with("] backup failed: example-source")),
        "{messages:?}"
    );
}

#[test]
fn email_with_smtp_auth() {
    let env = Env::new();
    let password = "s3cret-Pa55word";
    let smtp = Smtp::start_with_auth(env.dir.path(), "alerts", password);
    let pw_file = env.path("smtp-password");
    let plan_with = |file: &str| {
        write_plan(
            &env,
            &format!(
                r#"alerts {{
    email {{
        smtp "127.0.0.1" port={} security="plain"
        username "alerts"
        password-file "{file}"
        from "cairn@example.org"
        to "ops@example.org"
    }}
}}
"#,
                smtp.port
            ),
        )
    };

    std::fs::write(&pw_file, format!("{password}\nsecond line ignored\n")).unwrap();
    let plan = plan_with(pw_file.to_str().unwrap());
    let (code, out, err) = test_alert(&env, &plan, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(smtp.messages().len(), 1);
    assert!(!out.contains(password) && !err.contains(password));

    // A wrong password: refused, exit 1, the server named, the password not shown.
    let wrong = "wrong-Pa55word-xyz";
    std::fs::write(&pw_file, format!("{wrong}\n")).unwrap();
    let started = Instant::now();
    let (code, out, err) = test_alert(&env, &plan, &["-v"]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "took too long");
    assert!(err.contains(&format!("127.0.0.1:{}", smtp.port)), "{err}");
    assert!(err.contains("535"), "{err}");
    assert!(
        err.contains("hint: check alerts.email's username and password-file"),
        "{err}"
    );
    for text in [&out, &err] {
        assert!(!text.contains(wrong) && !text.contains(password), "{text}");
    }
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn smtp_server_down_fails_naming_it() {
    let env = Env::new();
    let port = free_port();
    let plan = write_plan(
        &env,
        &format!(
            r#"alerts {{
    email {{
        smtp "127.0.0.1" port={port} security="plain"
        from "cairn@example.org"
        to "ops@example.org"
    }}
}}
"#
        ),
    );
    let (code, out, err) = test_alert(&env, &plan, &[]);
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains(&format!("127.0.0.1:{port}")), "{err}");
    assert!(err.contains("error: alert"), "{err}");
}

/// A webhook receiver answering `status` to one request; returns the
/// request line and the JSON body.
fn webhook(status: u16) -> (u16, std::thread::JoinHandle<(String, serde_json::Value)>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        let mut r = BufReader::new(stream.try_clone().unwrap());
        let mut request_line = String::new();
        r.read_line(&mut request_line).unwrap();
        let mut len = 0;
        let mut json = false;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if line == "\r\n" || line.is_empty() {
                break;
            }
            let lower = line.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
            json |= lower.starts_with("content-type: application/json");
        }
        assert!(json, "no JSON content type");
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        let mut w = stream;
        write!(
            w,
            "HTTP/1.1 {status} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        (
            request_line.trim().to_string(),
            serde_json::from_slice(&body).unwrap(),
        )
    });
    (port, h)
}

#[test]
fn webhook_receives_the_alert_as_json() {
    let env = Env::new();
    let (port, server) = webhook(200);
    let plan = write_plan(
        &env,
        &format!("alerts {{\n    webhook \"http://127.0.0.1:{port}/hooks/t0k3n\"\n}}\n"),
    );
    let (code, out, err) = test_alert(&env, &plan, &["--kind", "missed-backup"]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("webhook: sent to http://127.0.0.1"), "{out}");
    assert!(!out.contains("t0k3n"), "the webhook path is shown: {out}");
    let (request, body) = server.join().unwrap();
    assert_eq!(request, "POST /hooks/t0k3n HTTP/1.1");
    assert_eq!(body["kind"], "missed-backup");
    let subject = body["subject"].as_str().unwrap();
    assert!(
        subject.starts_with("[cairn ")
            && subject.ends_with("] missed backup: example-source, none for 25h"),
        "{body}"
    );
    assert!(body["body"].as_str().unwrap().contains("25h"), "{body}");
    assert!(!body["host"].as_str().unwrap().is_empty(), "{body}");
    let time: jiff::Timestamp = body["time"].as_str().unwrap().parse().unwrap();
    assert!((jiff::Timestamp::now() - time).abs().as_secs() < 60);
}

#[test]
fn one_failing_channel_does_not_stop_the_other() {
    let env = Env::new();
    let smtp = Smtp::start(env.dir.path());
    let (port, server) = webhook(500);
    let plan = write_plan(
        &env,
        &format!(
            r#"alerts {{
    email {{
        smtp "127.0.0.1" port={} security="plain"
        from "cairn@example.org"
        to "ops@example.org"
    }}
    webhook "http://127.0.0.1:{port}/hook"
}}
"#,
            smtp.port
        ),
    );
    let (code, out, err) = test_alert(&env, &plan, &[]);
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("e-mail: sent to ops@example.org"), "{out}");
    assert!(out.contains("webhook: FAILED"), "{out}");
    assert!(out.contains("500"), "{out}");
    server.join().unwrap();
    assert_eq!(smtp.messages().len(), 1);
}

#[test]
fn a_plan_without_alert_channels_is_a_usage_error() {
    let env = Env::new();
    let plan = write_plan(&env, "alerts {\n    repeat-every \"1h\"\n}\n");
    let (code, _, err) = test_alert(&env, &plan, &[]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("configures no alert channel"), "{err}");
    assert!(err.contains("hint:"), "{err}");
}
