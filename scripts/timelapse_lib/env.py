"""The world a time-lapse run lives in: the cairn binary (a build with the `testing`
feature, which reads CAIRN_TEST_CLOCK), the simulated clock file, the SMTP sink
(aiosmtpd, one file per mail), throwaway PostgreSQL clusters (bench_lib's) and the
`cairn serve` daemon with its HTTP API."""
import datetime
import email
import email.policy
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time

from bench_lib.common import free_port, stop_process, wait_port

UTC = datetime.timezone.utc


class HarnessError(Exception):
    """The harness itself could not go on (a server did not start, a wait timed out)."""


def log(msg):
    print("timelapse: " + msg, file=sys.stderr, flush=True)


# --- the binary ---------------------------------------------------------------

def has_test_clock(path):
    """Whether the binary was built with the `testing` feature: only such a build contains
    the name of the clock variable (spec/logging.md, "Simulated time")."""
    needle = b"CAIRN_TEST_CLOCK"
    tail = b""
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 22)
            if not block:
                return False
            if needle in tail + block:
                return True
            tail = block[-len(needle):]


def find_cairn(root):
    """CAIRN_BIN when set (used as it is), else `cargo build --features testing` in the
    checkout and the binary cargo reports (whatever its target directory)."""
    given = os.environ.get("CAIRN_BIN")
    if given:
        path = os.path.abspath(given)
        log("CAIRN_BIN=%s: not building" % path)
    else:
        log("cargo build --features testing --bin cairn")
        p = subprocess.run(["cargo", "build", "--features", "testing", "--bin", "cairn",
                            "--message-format", "json-render-diagnostics"],
                           cwd=root, stdout=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise HarnessError("cargo build --features testing failed (exit %d)" % p.returncode)
        path = None
        for line in p.stdout.splitlines():
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("reason") == "compiler-artifact" and j.get("executable") and \
                    j.get("target", {}).get("name") == "cairn":
                path = j["executable"]
        if not path:
            raise HarnessError("cargo build printed no executable for the cairn binary")
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        raise HarnessError("%s is not an executable file" % path)
    if not has_test_clock(path):
        raise HarnessError("%s was built without the `testing` feature: it ignores CAIRN_TEST_CLOCK "
                           "(build it with `cargo build --features testing`)" % path)
    return path


# --- the simulated clock --------------------------------------------------------

def rfc3339(t):
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class SimClock:
    """CAIRN_TEST_CLOCK=FILE: the file holds a time, and every cairn process reads "now" as
    that time plus the real time since the file was written (src/clock.rs). With
    `offset_path`, a second file holds the same clock for libfaketime (the PostgreSQL
    servers): the simulated time's offset from the real clock, in seconds."""

    def __init__(self, path, start, offset_path=None):
        self.path = path
        self.offset_path = offset_path
        self.set(start)

    def set(self, t):
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            f.write(rfc3339(t) + "\n")
        self.real = time.time()
        if self.offset_path:
            otmp = self.offset_path + ".tmp"
            with open(otmp, "w") as f:
                f.write("%+.6f\n" % (t.timestamp() - self.real))
            os.replace(otmp, self.offset_path)
        os.replace(tmp, self.path)  # whole, so a reader never sees half a time
        self.base = t

    def now(self):
        return self.base + datetime.timedelta(seconds=time.time() - self.real)


# --- the SMTP sink --------------------------------------------------------------

class Mail:
    def __init__(self, name, msg):
        self.name = name
        self.subject = " ".join(str(msg.get("Subject", "")).split())
        body = msg.get_body(preferencelist=("plain",))
        self.body = body.get_content() if body is not None else ""
        # "[cairn HOST] missed backup: db, none for 1day 1h" -> kind, key
        s = self.subject.split("] ", 1)[-1]
        title, _, what = s.partition(": ")
        self.kind = {"backup failed": "backup-failed", "storage high": "storage-high",
                     "storage critical": "storage-critical", "missed backup": "missed-backup",
                     "slow backup": "slow-backup", "restore test failed": "restore-test-failed",
                     "restore test skipped": "restore-test-skipped", "WAL archive": "wal-archive",
                     "test alert": "test"}.get(title, title)
        self.what = what
        self.key = what.split(",")[0].strip()

    def label(self):
        # A failed restore test's key is the snapshot, which the harness cannot foresee.
        if self.kind == "restore-test-failed":
            return self.kind
        # "storage high: 87% full": the alert's key is the repository's storage.
        if self.kind in ("storage-high", "storage-critical"):
            return "%s:storage" % self.kind
        # "slow backup: TRIGGER": one schedule here, so the kind says it.
        if self.kind == "slow-backup":
            return self.kind
        return "%s:%s" % (self.kind, self.key)


class Smtp:
    """aiosmtpd's Mailbox handler: each message becomes a file in DIR/new/ (DESIGN.md §6)."""

    def __init__(self, work):
        self.dir = os.path.join(work, "mail")
        self.log = os.path.join(work, "smtp.log")
        self.port = free_port()
        self.proc = None
        self.seen = set()

    def start(self):
        with open(self.log, "a") as lf:
            self.proc = subprocess.Popen(
                ["/usr/bin/python3", "-m", "aiosmtpd", "-n", "-l", "127.0.0.1:%d" % self.port,
                 "-c", "aiosmtpd.handlers.Mailbox", self.dir], stdout=lf, stderr=lf)
        wait_port(self.port, self.proc, timeout=30)

    def stop(self):
        stop_process(self.proc)
        self.proc = None

    def new_mails(self):
        """Mails not returned before, oldest file first."""
        d = os.path.join(self.dir, "new")
        try:
            names = [n for n in os.listdir(d) if n not in self.seen]
        except FileNotFoundError:
            return []
        paths = sorted((os.stat(os.path.join(d, n)).st_mtime, n) for n in names)
        out = []
        for _, n in paths:
            with open(os.path.join(d, n), "rb") as f:
                msg = email.message_from_binary_file(f, policy=email.policy.default)
            self.seen.add(n)
            out.append(Mail(n, msg))
        return out


# --- the S3 server --------------------------------------------------------------

S3S_FS = os.path.expanduser("~/.cargo/bin/s3s-fs")


class S3Server:
    """s3s-fs (DESIGN.md §6) on a fixed port, its objects as files below `dir`; one bucket.
    `kill()` is SIGKILL, as a crash would be."""

    ACCESS_KEY = "timelapse-access"
    SECRET_KEY = "timelapse-secret-key"

    def __init__(self, work, directory, bucket="timelapse"):
        self.dir = directory
        self.log = os.path.join(work, "s3s-fs.log")
        self.port = free_port()
        self.proc = None
        os.makedirs(os.path.join(directory, bucket), exist_ok=True)

    def env(self):
        return {"AWS_ENDPOINT_URL": "http://127.0.0.1:%d" % self.port, "AWS_ACCESS_KEY_ID": self.ACCESS_KEY,
                "AWS_SECRET_ACCESS_KEY": self.SECRET_KEY, "AWS_REGION": "us-east-1"}

    def start(self):
        if not os.access(S3S_FS, os.X_OK):
            raise HarnessError("%s is missing: run scripts/setup (it installs s3s-fs 0.14.1)" % S3S_FS)
        with open(self.log, "a") as lf:
            self.proc = subprocess.Popen([S3S_FS, "--host", "127.0.0.1", "--port", str(self.port), "--access-key",
                                          self.ACCESS_KEY, "--secret-key", self.SECRET_KEY, self.dir],
                                         stdout=lf, stderr=lf, stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, timeout=30)

    def kill(self):
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def stop(self):
        stop_process(self.proc)
        self.proc = None


# --- the daemon -----------------------------------------------------------------

class Daemon:
    """`cairn serve --plan PLAN` with its own state directory, its log in a file."""

    def __init__(self, binary, plan, state_dir, env, log_path, token, check_every="1s"):
        self.binary = binary
        self.plan = plan
        self.state_dir = state_dir
        self.env = env
        self.log_path = log_path
        self.token = token
        self.check_every = check_every
        self.proc = None
        self.addr = None
        self.starts = 0
        self.dropped = []

    def start(self):
        lf = open(self.log_path, "a")
        lf.write("==== start %d\n" % (self.starts + 1))
        lf.flush()
        self.proc = subprocess.Popen(
            [self.binary, "serve", "--plan", self.plan, "--listen", "127.0.0.1:0",
             "--check-every", self.check_every, "--state-dir", self.state_dir],
            env=self.env, stdout=subprocess.PIPE, stderr=lf, stdin=subprocess.DEVNULL)
        lf.close()
        line = self.proc.stdout.readline().decode(errors="replace")
        if "http://" not in line:
            self.proc.wait(10)
            raise HarnessError("cairn serve printed no listen address (%r, exit %s); log: %s" % (
                line, self.proc.returncode, self.log_path))
        self.addr = line.strip().rsplit("http://", 1)[-1].rstrip("/")
        # The rest of its standard output, so the pipe never fills.
        out = self.proc.stdout
        threading.Thread(target=lambda: out.read(), daemon=True).start()
        self.starts += 1

    def rss_kib(self):
        """The daemon's resident memory now (VmRSS), or None."""
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except (OSError, AttributeError):
            return None
        return None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, timeout=60):
        if not self.alive():
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise HarnessError("cairn serve did not stop within %d s of SIGTERM" % timeout)

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(30)

    def request(self, method, path, timeout=120):
        host, port = self.addr.rsplit(":", 1)
        c = http.client.HTTPConnection(host, int(port), timeout=timeout)
        try:
            c.request(method, path, headers={"Authorization": "Bearer " + self.token,
                                             "Content-Length": "0"})
            r = c.getresponse()
            return r.status, r.read().decode(errors="replace")
        finally:
            c.close()

    def get_json(self, path):
        try:
            code, body = self.request("GET", path)
        except (http.client.RemoteDisconnected, ConnectionResetError) as e:
            # Seen once right after a plan reload: counted and reported, then asked again.
            self.dropped.append("%s: %s" % (path, e))
            code, body = self.request("GET", path)
        if code != 200:
            raise HarnessError("GET %s: %d %s" % (path, code, body[:500]))
        return json.loads(body)

    def status(self):
        return self.get_json("/status")

    def snapshots(self):
        return self.get_json("/snapshots")

    def log_text(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def log_count(self, needle):
        return self.log_text().count(needle)


def wait_for(what, timeout, f, interval=0.05):
    """Poll f() until it returns something true; return it, or raise after `timeout` s."""
    t0 = time.time()
    while True:
        v = f()
        if v:
            return v
        if time.time() - t0 > timeout:
            raise HarnessError("timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(interval)
