//! The status page of `cairn serve` (issue 30, items 1 and 2): a repository
//! with history made by the real binary and the daemon's own runs, the page
//! loaded in Debian's headless Chromium through chromedriver (W3C
//! WebDriver, spoken here over plain HTTP), asserted by what a person sees,
//! and a screenshot saved as `target/test-artifacts/status-page.png`. The
//! login and session rules are checked over plain HTTP as well.

use crate::common::daemon::*;
use crate::common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// A response: status, header lines (lower-case names), body.
struct Resp {
    code: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request to `addr`; the response is read to its
/// `Content-Length` (chromedriver keeps the connection open), else to the
/// end of a chunked body or of the connection.
fn http(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert!(
            n > 0,
            "{method} {path}: the connection closed before the headers"
        );
        raw.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.lines();
    let code = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut rest = raw[head_end + 4..].to_vec();
    let length = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok());
    let chunked = headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.contains("chunked"));
    loop {
        let done = match length {
            Some(n) => rest.len() >= n,
            None if chunked => rest.windows(5).any(|w| w == b"0\r\n\r\n"),
            None => false,
        };
        if done {
            break;
        }
        let n = s
            .read(&mut buf)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if n == 0 {
            break;
        }
        rest.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&rest).to_string();
    let body = if chunked { dechunk(&body) } else { body };
    Resp {
        code,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// chromedriver driving headless Chromium.
struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

impl Browser {
    fn start(profile: &Path) -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the status page test needs Debian's chromium and \
                 chromium-driver packages; run scripts/setup (CI installs them)"
            );
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(&addr).is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,2400",
                         format!("--user-data-dir={}", profile.display())],
            },
        }}});
        let v = b.call("POST", "/session", caps);
        b.session = v["sessionId"].as_str().expect("a session id").to_string();
        b
    }

    /// A WebDriver command; its `value`.
    fn call(&self, method: &str, path: &str, body: Value) -> Value {
        let path = if path == "/session" {
            path.to_string()
        } else {
            format!("/session/{}{path}", self.session)
        };
        let body = if method == "GET" {
            String::new()
        } else {
            body.to_string()
        };
        let r = http(
            &self.addr,
            method,
            &path,
            &[("Content-Type", "application/json")],
            &body,
        );
        let v: Value = serde_json::from_str(&r.body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}: {}", r.body));
        assert_eq!(r.code, 200, "{method} {path}: {v}");
        v["value"].clone()
    }

    fn go(&self, url: &str) {
        self.call("POST", "/url", json!({"url": url}));
    }

    /// Element ids matching a CSS selector.
    fn find_all(&self, css: &str) -> Vec<String> {
        let v = self.call(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        );
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_string))
            .collect()
    }

    fn find(&self, css: &str) -> String {
        let all = self.find_all(css);
        assert!(!all.is_empty(), "no element {css}");
        all[0].clone()
    }

    /// The text a person sees in the element (rendered, not the source).
    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call("GET", &format!("/element/{e}/text"), Value::Null)
            .as_str()
            .unwrap_or_default()
            .to_string()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            "POST",
            &format!("/element/{e}/value"),
            json!({"text": text}),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call("POST", &format!("/element/{e}/click"), json!({}));
    }

    fn screenshot(&self, to: &Path) {
        let b64 = self.call("GET", "/screenshot", Value::Null);
        let png = base64_decode(b64.as_str().unwrap());
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::write(to, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = http(
                &self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                &[],
                "",
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for v in s.bytes().filter_map(val) {
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

fn artifact(name: &str) -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("test-artifacts")
        .join(name)
}

fn session_cookie(r: &Resp) -> String {
    let set = r.header("set-cookie").expect("a Set-Cookie header");
    for part in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age="] {
        assert!(set.contains(part), "{set}");
    }
    set.split(';').next().unwrap().to_string()
}

#[test]
fn the_status_page_shows_runs_failures_proofs_and_the_retention_calendar_in_a_browser() {
    let _serial = serial();
    let env = Env::init();
    let files = env.path("etc");
    make_sample_tree(&files);
    // A schedule that does not fire during the test (1 January), whose tag
    // the snapshots made by hand carry; a source that always fails.
    let p = plan(
        &env,
        &format!(
            "source \"etc\" kind=\"files\" {{\n    path \"{}\"\n}}\n\
             source \"broken\" kind=\"command\" {{\n    command \"sh\" \"-c\" \"echo 'cannot reach the <b>db</b>' >&2; exit 3\"\n}}\n\
             schedule \"nightly\" {{\n    cron \"0 0 2 1 1 *\"\n    sources \"etc\"\n    tag \"nightly\"\n}}\n\
             retention {{\n    keep-last 3\n}}\n",
            files.display()
        ),
    );
    let plan_arg = p.to_str().unwrap();
    for i in 0..2 {
        std::fs::write(
            files.join(format!("new-{i}.txt")),
            format!("generation {i}\n"),
        )
        .unwrap();
        let out = env.run_plan(&[
            "snapshot", "--plan", plan_arg, "--source", "etc", "--tag", "nightly",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let d = Served::start(&env, &p);
    let addr = d.addr.clone();

    // The daemon's own runs: one of every source (a snapshot saved without
    // the failing one), one that saves nothing (the repository is away),
    // one good.
    let (code, body) = d.post_when_free("/backups?wait=true");
    assert_eq!(code, 500, "{body}");
    let away = env.path("repo-away");
    std::fs::rename(&env.repo, &away).unwrap();
    let (code, body) = d.post_when_free("/backups?wait=true&source=etc");
    assert_eq!(code, 500, "{body}");
    std::fs::rename(&away, &env.repo).unwrap();
    let (code, body) = d.post_when_free("/backups?wait=true&source=etc");
    assert_eq!(code, 200, "{body}");
    let newest = serde_json::from_str::<Value>(&body).unwrap()["snapshot"]
        .as_str()
        .unwrap()
        .to_string();
    // A restore test: a proof in the repository.
    let (code, body) = d.post_when_free("/checks?wait=true");
    assert_eq!(code, 200, "{body}");
    let proof: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(proof["outcome"], "passed", "{proof}");
    let proven = proof["snapshot"].as_str().unwrap().to_string();

    // Plain HTTP: without a session the page is a login form and shows no data.
    let r = http(&addr, "GET", "/", &[], "");
    assert_eq!(r.code, 200);
    assert!(r.body.contains("type=\"password\""), "{}", r.body);
    assert!(
        !r.body.contains(&newest) && !r.body.contains("Retention"),
        "{}",
        r.body
    );
    assert!(r
        .header("content-security-policy")
        .is_some_and(|c| c.contains("default-src 'none'")));
    // A wrong token: the form again, 401, no cookie.
    let r = http(
        &addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        "token=wrong",
    );
    assert_eq!(r.code, 401);
    assert!(r.body.contains("That token is not valid."), "{}", r.body);
    assert!(r.header("set-cookie").is_none());
    // The right one: a session cookie and a redirect to the page.
    let r = http(
        &addr,
        "POST",
        "/login",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        &format!("token={TOKEN}"),
    );
    assert_eq!((r.code, r.header("location")), (303, Some("/")));
    let cookie = session_cookie(&r);
    let page = http(&addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert_eq!(page.code, 200);
    assert!(page.body.contains(&newest), "the page shows the runs");
    // The session reads (GET) but starts nothing.
    assert_eq!(
        http(&addr, "GET", "/status", &[("Cookie", &cookie)], "").code,
        200
    );
    let r = http(&addr, "POST", "/backups", &[("Cookie", &cookie)], "");
    assert_eq!(
        r.code, 401,
        "a session cookie must not authorize POST /backups"
    );
    assert_eq!(
        http(&addr, "POST", "/checks", &[("Cookie", &cookie)], "").code,
        401
    );
    // Logging out ends it.
    let r = http(&addr, "POST", "/logout", &[("Cookie", &cookie)], "");
    assert_eq!(r.code, 303);
    let r = http(&addr, "GET", "/", &[("Cookie", &cookie)], "");
    assert!(r.body.contains("type=\"password\"") && !r.body.contains(&newest));
    assert_eq!(
        http(&addr, "GET", "/status", &[("Cookie", &cookie)], "").code,
        401
    );

    // The browser: the login form, the token typed once, then the page.
    let profile = env.path("chromium-profile");
    let b = Browser::start(&profile);
    b.go(&format!("http://{addr}/"));
    assert!(b.text("main.login").contains("Log in with an API token"));
    b.type_into("input#token", TOKEN);
    b.click("button[type=submit]");
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.find_all("#runs").is_empty() {
        assert!(
            Instant::now() < deadline,
            "the page did not come after logging in"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let runs = b.text("#runs");
    let short = |id: &str| id.chars().take(8).collect::<String>();
    for id in env.snapshot_ids() {
        assert!(runs.contains(&short(&id)), "run {id} in:\n{runs}");
    }
    // The run that saved nothing, and the one saved without its source.
    let failed = b.text("#runs tr.run-failed");
    assert!(
        failed.contains("failed") && failed.contains("no repository"),
        "{failed}"
    );
    let incomplete = b.text("#runs tr.run-incomplete");
    assert!(
        incomplete.contains("cannot reach the <b>db</b>"),
        "shown as text: {incomplete}"
    );
    let broken = b.text("article.source[data-source=broken]");
    assert!(broken.contains("Failures (1)"), "{broken}");
    // The proof.
    let proofs = b.text("#proofs");
    assert!(proofs.contains("Last restore test: passed"), "{proofs}");
    assert!(b.text("#proof-table").contains(&proven), "{proofs}");
    // The retention calendar: every kept snapshot by its rule, today's cell.
    let retention = b.text("#retention");
    assert!(retention.contains("Rules: keep-last 3"), "{retention}");
    assert!(retention.contains("last 1/3"), "{retention}");
    assert!(
        !b.find_all("svg.calendar rect.k-last").is_empty(),
        "kept days in the calendar"
    );
    assert!(retention.contains("Which go next"), "{retention}");
    // Charts drawn by the server.
    assert!(
        b.find_all("article.source[data-source=etc] svg.chart circle")
            .len()
            >= 3
    );
    b.screenshot(&artifact("status-page.png"));

    let (code, log) = d.stop();
    assert_eq!(code, Some(0), "{log}");
    // Every request is logged; the login and the session's requests name the token.
    assert!(log.contains("route=/login status=303"), "{log}");
    assert!(log.contains("via=\"login\""), "{log}");
    assert!(
        log.contains("token=\"tests\" method=GET route=/status status=200"),
        "{log}"
    );
    assert!(log.contains("via=\"session\""), "{log}");
    assert!(
        log.contains("method=POST route=/backups status=401"),
        "{log}"
    );
    assert!(
        log.contains("token=\"invalid\""),
        "the wrong login is logged: {log}"
    );
    assert!(!log.contains(TOKEN), "the token never appears in the log");
}
