"""What every mode of scripts/bench shares: running a tool under /usr/bin/time (wall
time, peak RSS, CPU), the backup tools compared (cairn, restic, borg), sizes and
corpora, the machine line that ends every report, table cells and verdicts, and
the servers' ports, the page cache and the rounds of timed comparisons."""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

TOOLS = ("cairn", "restic", "borg")
PASSWORD = "bench"
MB = 1_000_000  # throughput unit: MB/s = 10^6 bytes per second
MiB = 1 << 20


class BenchError(Exception):
    pass


def cpu_ticks():
    """(total, steal) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        return sum(v[:8]), v[7]
    except (OSError, ValueError, IndexError):
        return None


START_TICKS = cpu_ticks()


def machine():
    """What ran the benchmark: figures from different machines (or days of one VM) are not
    comparable, ratios within one run are. Steal is the share of CPU time the hypervisor
    gave to other guests while this run went on."""
    m = {"nproc": os.cpu_count(), "uname": " ".join(os.uname()), "cpu_model": None, "steal_pct": None}
    try:
        with open("/proc/cpuinfo") as f:
            m["cpu_model"] = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), None)
    except OSError:
        pass
    # One core's speed at the end of the run, for comparing runs on different machines.
    block = b"\x5a" * (64 << 20)
    t0 = time.perf_counter()
    hashlib.sha256(block).digest()
    m["sha256_mbps_one_core"] = round(len(block) / 1e6 / (time.perf_counter() - t0))
    now = cpu_ticks()
    if START_TICKS and now and now[0] > START_TICKS[0]:
        m["steal_pct"] = round(100.0 * (now[1] - START_TICKS[1]) / (now[0] - START_TICKS[0]), 1)
    return m


def print_machine():
    """Measure `machine()` once, print the report's last line from it and return it for the
    JSON, so that the two agree."""
    m = machine()
    steal = "" if m["steal_pct"] is None else "; CPU time stolen by the hypervisor during the run: %.1f%%" % m["steal_pct"]
    print("machine: %s, %d cores, SHA-256 at %d MB/s on one core%s" % (
        m["cpu_model"] or "unknown CPU", m["nproc"] or 0, m["sha256_mbps_one_core"], steal))
    return m


def log(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


def run(argv, env=None, cwd=None, capture=True, stdout_path=None, stdin_path=None, stderr_path=None):
    """Run a command, return (wall seconds, peak RSS KiB, cpu seconds, stdout).

    stdout_path / stdin_path redirect the command's stdout / stdin to / from a file
    (stdout is then returned as ""); stderr_path keeps a copy of its stderr there."""
    with tempfile.NamedTemporaryFile("r", prefix="bench-time-") as tf, \
            open(stdout_path or os.devnull, "wb") as fout, open(stdin_path or os.devnull, "rb") as fin:
        full = ["/usr/bin/time", "-f", "%M %U %S", "-o", tf.name] + list(argv)
        t0 = time.perf_counter()
        p = subprocess.run(full, env=env, cwd=cwd,
                           stdout=fout if stdout_path else (subprocess.PIPE if capture else None),
                           stdin=fin if stdin_path else None, stderr=subprocess.PIPE, text=True)
        wall = time.perf_counter() - t0
        stats = tf.read().strip().splitlines()
    if stderr_path:
        with open(stderr_path, "w") as f:
            f.write(p.stderr or "")
    if p.returncode != 0:
        raise BenchError("command failed (exit %d): %s\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            p.returncode, " ".join(argv), (p.stdout or "")[-4000:], (p.stderr or "")[-4000:]))
    # the last line is ours; earlier lines would be "Command exited with ..." notes
    rss_kib, user, sys_ = stats[-1].split()
    return wall, int(rss_kib), float(user) + float(sys_), p.stdout or ""


def du(path):
    out = subprocess.run(["du", "-sb", path], check=True, stdout=subprocess.PIPE, text=True).stdout
    return int(out.split()[0])


def tree_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.lstat(os.path.join(root, f)).st_size
    return total


def rm(path):
    if os.path.lexists(path):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def place_corpus(staging, corpus):
    """Replace the corpus path with a fresh copy (new inodes and mtimes) of `staging`."""
    rm(corpus)
    subprocess.run(["cp", "-r", staging, corpus], check=True)
    subprocess.run(["sync"], check=True)


# --- tools -----------------------------------------------------------------

class Tool:
    name = ""
    note = ""

    def __init__(self, work, bin_path=None):
        self.work = work
        self.repo = os.path.join(work, "repo-" + self.name)
        self.bin = bin_path
        self.env = dict(os.environ)
        self.reported = {}

    def init(self):
        raise NotImplementedError

    def snapshot(self, corpus, n):
        raise NotImplementedError

    def restore(self, target):
        raise NotImplementedError


class Cairn(Tool):
    name = "cairn"
    note = "zstd level 3 per 512 KiB frame, age encryption, FastCDC (init default: 2/8/32 KiB)"

    def __init__(self, work, bin_path):
        super().__init__(work, bin_path)
        self.env.update(CAIRN_PASSWORD=PASSWORD, CAIRN_CACHE_DIR=os.path.join(work, "cache-cairn"))

    def init(self):
        # The default password work factor, as a user gets: restic too pays its own
        # calibrated scrypt (~0.5 s here) every time it opens a repository.
        return run([self.bin, "init", "-r", self.repo, "-q"], env=self.env)

    def snapshot(self, corpus, n):
        r = run([self.bin, "snapshot", "-r", self.repo, corpus, "--json", "-q"], env=self.env)
        try:
            j = json.loads(r[3])
            self.reported["snapshot%d" % n] = {k: j.get(k) for k in ("bytes_read", "bytes_added", "duration_ms")}
        except ValueError as e:
            raise BenchError("cairn snapshot printed no JSON summary (%s): %r" % (e, r[3][-2000:]))
        return r

    def restore(self, target):
        return run([self.bin, "restore", "-r", self.repo, "latest", "--target", target, "-q"], env=self.env)


def restic_summary(stdout):
    """The `summary` message of `restic backup --json` output ({} when there is none)."""
    summary = {}
    for line in stdout.splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if j.get("message_type") == "summary":
            summary = j
    return summary


class Restic(Tool):
    name = "restic"
    note = "repository v2, compression auto (zstd default level)"

    def __init__(self, work, bin_path="/usr/bin/restic"):
        super().__init__(work, bin_path)
        self.env.update(RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=os.path.join(work, "cache-restic"))
        self.env.pop("RESTIC_REPOSITORY", None)

    def init(self):
        return run([self.bin, "init", "-r", self.repo], env=self.env)

    def snapshot(self, corpus, n):
        r = run([self.bin, "backup", "-r", self.repo, corpus, "--json", "-q"], env=self.env)
        j = restic_summary(r[3])
        if j:
            self.reported["snapshot%d" % n] = {k: j.get(k) for k in (
                "total_bytes_processed", "data_added", "total_duration")}
        return r

    def restore(self, target):
        return run([self.bin, "restore", "latest", "-r", self.repo, "--target", target], env=self.env)


class Borg(Tool):
    name = "borg"
    note = "repokey encryption, --compression zstd,3"

    def __init__(self, work, bin_path="/usr/bin/borg"):
        super().__init__(work, bin_path)
        self.env.update(BORG_PASSPHRASE=PASSWORD, BORG_BASE_DIR=os.path.join(work, "borg-base"),
                        BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK="no")
        self.env.pop("BORG_REPO", None)

    def init(self):
        return run([self.bin, "init", "-e", "repokey", self.repo], env=self.env)

    def snapshot(self, corpus, n):
        return run([self.bin, "create", "--compression", "zstd,3", "%s::gen%d" % (self.repo, n - 1), corpus],
                   env=self.env)

    def restore(self, target):
        # the latest archive is gen1; borg extracts its stored (relative) paths into the cwd
        return run([self.bin, "extract", "%s::gen1" % self.repo], env=self.env, cwd=target)


# --- table cells, versions, corpora (core, s3) -----------------------------

def fmt(v, unit):
    if unit == "s":
        return "%.2f" % v
    if unit == "MiB" and abs(v) >= 10000:
        return "%.0f" % v
    return "%.1f" % v


def verdict(ratio, op, target):
    if op is None:
        return ""
    ok = ratio >= target if op == ">=" else ratio <= target
    return "PASS" if ok else "FAIL"


def versions(tools, results):
    v = {}
    for t in tools:
        b = results[t].get("bin")
        try:
            v[t] = subprocess.run([b, "--version"] if t != "restic" else [b, "version"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()
        except OSError:
            pass
    return v


def make_corpora(make_corpus, generations, size_mb):
    """Write each (generation, dir) with make-corpus, all at once (one process each;
    make-corpus is single-threaded)."""
    procs = []
    t0 = time.perf_counter()
    for g, d in generations:
        rm(d)
        log("make-corpus generation %d (%d MiB) -> %s" % (g, size_mb, d))
        procs.append(subprocess.Popen([sys.executable, make_corpus, d, "--size-mb", str(size_mb),
                                       "--generation", str(g)]))
    codes = [p.wait() for p in procs]
    if any(codes):
        raise BenchError("make-corpus failed")
    log("  took %.0f s" % (time.perf_counter() - t0))


# --- work directories, servers, page cache, rounds (postgres, s3, kafka) ---

def repo_root():
    return subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                           "--show-toplevel"], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


def build_cairn(root):
    """The cairn binary to measure: `cargo build --release` in `root`, or, when the environment
    names one in CAIRN_BENCH_BIN, that binary as it is (no build)."""
    given = os.environ.get("CAIRN_BENCH_BIN")
    if given:
        if not (os.path.isfile(given) and os.access(given, os.X_OK)):
            print("bench: CAIRN_BENCH_BIN=%s is not an executable file" % given, file=sys.stderr)
            raise SystemExit(1)
        log("CAIRN_BENCH_BIN=%s: not building" % given)
        return os.path.abspath(given)
    log("cargo build --release")
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=root, check=True)
    return os.path.join(root, "target", "release", "cairn")


def make_workdir(args, prefix):
    if args.workdir:
        work = os.path.abspath(args.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix=prefix, dir="/tmp")
    log("workdir %s" % work)
    return work


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def stop_process(proc, timeout=10):
    """Terminate `proc` if it still runs, killing it after `timeout` seconds."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_port(port, proc, timeout=30):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise BenchError("server exited (code %s) before listening on port %d" % (proc.returncode, port))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise BenchError("nothing listens on port %d after %d s" % (port, timeout))


def need(paths):
    missing = [p for p in paths if not os.access(p, os.X_OK)]
    if missing:
        print("bench: missing %s" % ", ".join(missing), file=sys.stderr)
        return False
    return True


def cache_note(dropped):
    """How a round started, for the reports: `dropped` as settle_page_cache returned it, per run."""
    return "sync, page cache dropped" if all(dropped) else "sync (page cache NOT dropped: not root)"


def settle_page_cache(*warm):
    """Before a timed restore: write back and drop the page cache (root only), then read
    the files under each `warm` path back in, so that every round starts from the same
    memory state with its inputs cached (the server's objects, a repository, a dump). Without it, later rounds ran on page cache grown by earlier
    restores and diffs: the same cairn restore's system time grew from 1.3 s to 5 s
    over six runs (benches/README.md)
    Returns whether the cache was dropped."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        dropped = True
    except OSError:
        dropped = False
    paths = []
    for w in warm:
        if os.path.isdir(w):
            paths += [os.path.join(d, n) for d, _, files in os.walk(w) for n in files]
        else:
            paths.append(w)
    for p in paths:
        try:
            with open(p, "rb") as f:
                while f.read(1 << 20):
                    pass
        except FileNotFoundError:  # a live cluster's temporary file, gone since the walk
            pass
    return dropped


def median_round(records, key="wall_s"):
    """Index of the median record by `key`: the middle one, the lower middle for an even count."""
    order = sorted(range(len(records)), key=lambda i: records[i][key])
    return order[(len(order) - 1) // 2]


def ratio_line(w, head, cairn_v, ref_v, ref_name, unit, op, target):
    ratio = cairn_v / ref_v if ref_v else float("inf")
    v = verdict(ratio, op, target)
    line = "%-*s%12s  %-22s%9s%10s%6s" % (w, head, fmt(cairn_v, unit), "%s %s" % (fmt(ref_v, unit), ref_name),
                                          "%.2fx" % ratio, "" if op is None else "%s %.2fx" % (op, target), v)
    return line, {"cairn": cairn_v, "reference": ref_v, "reference_tool": ref_name, "unit": unit,
                  "ratio": ratio, "target": None if op is None else "%s %.2f" % (op, target),
                  "result": v or None}


def tool_version(argv):
    try:
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True).stdout.strip()
    except OSError:
        return None
