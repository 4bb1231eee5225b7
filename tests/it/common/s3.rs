//! A real S3-compatible server (s3s-fs) for tests, on a free port.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

pub const ACCESS_KEY: &str = "cairn-test-access";
pub const SECRET_KEY: &str = "cairn-test-secret-key";

pub struct S3Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("CAIRN_S3S_FS") {
        return PathBuf::from(p);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let cargo_bin = home.join(".cargo/bin/s3s-fs");
    if cargo_bin.exists() {
        return cargo_bin;
    }
    PathBuf::from("s3s-fs")
}

impl S3Server {
    /// Start s3s-fs with one bucket, `bucket`.
    pub fn start() -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("cairn-s3-")
            .tempdir_in("/tmp")
            .unwrap();
        std::fs::create_dir_all(dir.path().join("bucket")).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = S3Server {
            dir,
            port,
            child: None,
        };
        s.restart();
        s
    }

    pub fn restart(&mut self) {
        let child = Command::new(binary())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", ACCESS_KEY, "--secret-key", SECRET_KEY])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start s3s-fs ({e}); run scripts/setup to install it")
            });
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "s3s-fs did not start");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Kill the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AWS_ENDPOINT_URL".into(),
                format!("http://127.0.0.1:{}", self.port),
            ),
            ("AWS_ACCESS_KEY_ID".into(), ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY".into(), SECRET_KEY.into()),
            ("AWS_REGION".into(), "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.kill();
    }
}
