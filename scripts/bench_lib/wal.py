"""`scripts/bench wal`: cairn's WAL archiving (archive_command = 'cairn wal-push … %p',
restore_command = 'cairn wal-fetch … %f %p') against pgBackRest's synchronous
archive-push / archive-get, at the rate a bulk load writes WAL: how far archiving
falls behind during the load, how long the backlog takes to drain, and how fast a
recovery replays the archive."""
import datetime
import hashlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from bench_lib.common import (
    PASSWORD, MiB, BenchError, build_cairn, log, make_workdir, need, print_machine, repo_root, rm, run,
    settle_page_cache, tool_version)
from bench_lib.postgres import Cluster, as_postgres, pg

PGBACKREST = "/usr/bin/pgbackrest"
ARCHIVERS = ("cairn", "pgbackrest")
STANZA = "bench"
ROWS = 3_000_000  # the CREATE TABLE AS of the load
SCALE = 10  # pgbench -i -s of the load
LOAD_SQL = ("CREATE TABLE t AS SELECT g, md5(g::text) AS h, now() AS ts FROM generate_series(1, %d) g" % ROWS)
# The source cluster's settings beside pg_ctl's (port, socket, listen_addresses, fsync=off):
# checkpoints by WAL volume every ~1 GiB would split the load (max_wal_size 2GB keeps it to none).
SOURCE_CONF = ["wal_level = replica", "archive_mode = on", "max_wal_size = 2GB"]
POLL_S = 0.1
DRAIN_TIMEOUT_S = 1800
RECOVERY_TIMEOUT_S = 1800


def lsn(text):
    hi, lo = text.strip().split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def chown_postgres(*paths):
    if os.geteuid() == 0:
        for p in paths:
            subprocess.run(["chown", "-R", "postgres:postgres", p], check=True)


def conf_quote(s):
    return "'" + s.replace("'", "''") + "'"


class Archiver:
    """One archiver's repository, commands and files for one round, under WORK/NAME-rI (owned by postgres)."""
    name = ""

    def __init__(self, work, i):
        self.dir = os.path.join(work, "%s-r%d" % (self.name, i))
        self.repo = os.path.join(self.dir, "repo")

    def prepare(self):
        rm(self.dir)
        os.makedirs(self.dir)

    def after_start(self, cluster):
        """Once the source cluster runs, before any segment is archived."""

    def archive_command(self):
        raise NotImplementedError

    def restore_command(self, data):
        raise NotImplementedError

    def recoveries(self, data):
        """(prefix of the recorded keys, restore_command) of each recovery to measure."""
        return [("", self.restore_command(data))]


class CairnArchiver(Archiver):
    name = "cairn"

    def __init__(self, work, i, binary):
        super().__init__(work, i)
        self.bin = binary
        self.password = os.path.join(self.dir, "password")
        self.cache = os.path.join(self.dir, "cache")
        # recovery reads with a cache of its own, empty, as a restore on another host would
        self.fetch_cache = os.path.join(self.dir, "cache-fetch")
        # ... and, the second time, as a recovery host with its own identity (spec/postgres.md,
        # "Recovery hosts: an identity, not a password")
        self.identity = os.path.join(self.dir, "recovery.key")
        self.identity_cache = os.path.join(self.dir, "cache-identity")

    def prepare(self):
        super().prepare()
        with open(self.password, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(self.password, 0o600)
        for d in (self.cache, self.fetch_cache, self.identity_cache):
            os.makedirs(d)
        chown_postgres(self.dir)
        # The default password work factor: what each wal-push pays to open the repository is what this measures.
        log("cairn init (default KDF work factor) %s" % self.repo)
        run(as_postgres([self.bin, "init", "-r", self.repo, "--password-file", self.password,
                         "--cache-dir", self.cache, "-q"]))
        run(as_postgres([self.bin, "key", "add", "-r", self.repo, "--password-file", self.password,
                         "--cache-dir", self.cache, "-q", "--generate-identity", self.identity]))

    def _args(self, cache):
        return "-r %s --password-file %s --cache-dir %s" % (self.repo, self.password, cache)

    def archive_command(self):
        return "%s wal-push %s %%p" % (self.bin, self._args(self.cache))

    def restore_command(self, data):
        return "%s wal-fetch %s %%f %%p" % (self.bin, self._args(self.fetch_cache))

    def recoveries(self, data):
        return [("", self.restore_command(data)),
                ("id_", "%s wal-fetch -r %s --identity %s --cache-dir %s %%f %%p" % (
                    self.bin, self.repo, self.identity, self.identity_cache))]


class PgBackRest(Archiver):
    name = "pgbackrest"

    def __init__(self, work, i):
        super().__init__(work, i)
        self.conf = os.path.join(self.dir, "pgbackrest.conf")

    def prepare(self):
        super().prepare()
        for d in ("repo", "log", "lock", "spool"):
            os.makedirs(os.path.join(self.dir, d))
        chown_postgres(self.dir)

    def after_start(self, cluster):
        # pg1-* name the source; the restored cluster's restore_command names its own pg1-path.
        with open(self.conf, "w") as f:
            f.write("[global]\nrepo1-path=%s\ncompress-type=zst\nlog-path=%s\nlock-path=%s\nspool-path=%s\n"
                    "log-level-console=warn\nlog-level-stderr=warn\n\n[%s]\npg1-path=%s\npg1-port=%d\n"
                    "pg1-socket-path=%s\n" % (self.repo, os.path.join(self.dir, "log"),
                                              os.path.join(self.dir, "lock"), os.path.join(self.dir, "spool"),
                                              STANZA, cluster.data, cluster.port, cluster.dir))
        chown_postgres(self.conf)
        log("pgbackrest stanza-create")
        run(as_postgres([PGBACKREST, "--config=" + self.conf, "--stanza=" + STANZA, "stanza-create"]))

    def _cmd(self):
        return "%s --config=%s --stanza=%s" % (PGBACKREST, self.conf, STANZA)

    def archive_command(self):
        return "%s archive-push %%p" % self._cmd()

    def restore_command(self, data):
        return '%s --pg1-path=%s archive-get %%f "%%p"' % (self._cmd(), data)


def ready_files(cluster):
    d = os.path.join(cluster.data, "pg_wal", "archive_status")
    return sum(1 for n in os.listdir(d) if n.endswith(".ready"))


def archiver_stats(cluster):
    row = cluster.psql("postgres", "SELECT archived_count || ' ' || failed_count || ' ' || "
                                   "coalesce(last_archived_wal, '-') || ' ' || coalesce(last_failed_wal, '-') "
                                   "FROM pg_stat_archiver").split()
    return {"archived": int(row[0]), "failed": int(row[1]), "last_archived_wal": row[2], "last_failed_wal": row[3]}


def log_tail(cluster, n=40):
    try:
        with open(os.path.join(cluster.dir, "log"), errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return "(no log)"


def check_failures(cluster, a, stats=None):
    stats = stats or archiver_stats(cluster)
    if stats["failed"]:
        raise BenchError("%s: archive_command failed %d time(s) (last failed WAL %s); the server log ends:\n%s" % (
            a.name, stats["failed"], stats["last_failed_wal"], log_tail(cluster)))
    return stats


def drain(cluster, a, t0):
    """Seconds from `t0` until no .ready file is left, polling every POLL_S (failed_count checked every second)."""
    last_check = time.perf_counter()
    while True:
        if ready_files(cluster) == 0:
            return time.perf_counter() - t0
        now = time.perf_counter()
        if now - t0 > DRAIN_TIMEOUT_S:
            raise BenchError("%s: WAL still not archived %d s after the load" % (a.name, DRAIN_TIMEOUT_S))
        if now - last_check >= 1.0:
            check_failures(cluster, a)
            last_check = now
        time.sleep(POLL_S)


def wait_archived(cluster, a, wal_name, timeout=600):
    t0 = time.perf_counter()
    while True:
        stats = check_failures(cluster, a)
        if stats["last_archived_wal"] != "-" and stats["last_archived_wal"] >= wal_name:
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            raise BenchError("%s: %s not archived after %d s" % (a.name, wal_name, timeout))
        time.sleep(0.2)


LOG_TS = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})")


def log_lines(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().splitlines()
    except OSError:
        return []


def wait_recovery(cluster, a, t0):
    """Seconds from `t0` until the log says `archive recovery complete`, polled every 0.05 s."""
    path = os.path.join(cluster.dir, "log")
    while True:
        lines = log_lines(path)
        if any("archive recovery complete" in l for l in lines):
            return time.perf_counter() - t0
        bad = [l for l in lines if "PANIC:" in l or ("FATAL:" in l and "is starting up" not in l)
               or ("startup process" in l and "exited" in l)]
        if bad:
            raise BenchError("%s: recovery failed: %s\nthe server log ends:\n%s" % (a.name, bad[0], log_tail(cluster)))
        if time.perf_counter() - t0 > RECOVERY_TIMEOUT_S:
            raise BenchError("%s: recovery not complete after %d s" % (a.name, RECOVERY_TIMEOUT_S))
        time.sleep(0.05)


def recovery_log_facts(cluster):
    """From the restored server's log: redo's own elapsed time (`redo done at … elapsed: S s`) and, by
    the log's timestamps, the time from the server's start to `redo starts` (the first restore_command
    calls: the timeline's history file, the backup's first segment) and from there to `archive
    recovery complete`."""
    lines = log_lines(os.path.join(cluster.dir, "log"))
    facts = {"redo_elapsed_s": None, "startup_log_s": None, "redo_log_s": None}
    ts = {}
    for l in lines:
        m = re.search(r"redo done at \S+ system usage: .*elapsed: ([\d.]+) s", l)
        if m:
            facts["redo_elapsed_s"] = float(m.group(1))
        for key in ("starting PostgreSQL", "redo starts at", "archive recovery complete"):
            if key in l and key not in ts:
                mt = LOG_TS.match(l)
                if mt:
                    ts[key] = datetime.datetime.strptime(mt.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
    if "starting PostgreSQL" in ts and "redo starts at" in ts:
        facts["startup_log_s"] = ts["redo starts at"] - ts["starting PostgreSQL"]
    if "redo starts at" in ts and "archive recovery complete" in ts:
        facts["redo_log_s"] = ts["archive recovery complete"] - ts["redo starts at"]
    return facts


def verify(cluster):
    """The restored cluster holds the whole load."""
    got = cluster.psql("bench", "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM pgbench_accounts)")
    want = "%d %d" % (ROWS, SCALE * 100_000)
    if got != want:
        raise BenchError("restored cluster holds %s rows (t, pgbench_accounts), expected %s" % (got, want))


def wait_promoted(cluster, timeout=300):
    """Until the server accepts read-write connections (after its end-of-recovery checkpoint): during
    recovery it accepted read-only ones already."""
    path = os.path.join(cluster.dir, "log")
    t0 = time.perf_counter()
    while not any(l.endswith("database system is ready to accept connections") for l in log_lines(path)):
        if time.perf_counter() - t0 > timeout:
            raise BenchError("cluster %s does not accept read-write connections after %d s" % (cluster.name, timeout))
        time.sleep(0.1)


def bench_archiver(a, work, i, clusters):
    """Steps 1-3 for archiver `a` in round `i`; returns its record."""
    R = {}
    a.prepare()
    src = Cluster(work, "%s-r%d-src" % (a.name, i))
    clusters.append(src)
    # 1. a fresh cluster archiving through `a`, and its base copy
    # archive_command runs only once a segment is complete (the base backup's is the first); pgBackRest's
    # stanza-create, in after_start, needs the running server
    src.start(SOURCE_CONF + ["archive_command = %s" % conf_quote(a.archive_command())])
    a.after_start(src)
    src.psql("postgres", "CREATE DATABASE bench")
    base = os.path.join(a.dir, "base")
    log("%s: pg_basebackup -X fetch (plain) before the load" % a.name)
    run(as_postgres([pg("pg_basebackup"), "-X", "fetch", "-Fp", "--checkpoint=fast", "-D", base] + src.conn()))
    with open(os.path.join(base, "backup_label")) as f:
        m = re.search(r"START WAL LOCATION: (\S+)", f.read())
    R["base_start_lsn"] = m.group(1)
    # start the load with nothing waiting to be archived
    src.psql("postgres", "SELECT pg_switch_wal()")
    drain(src, a, time.perf_counter())
    src.psql("postgres", "CHECKPOINT")

    # 2. the bulk load
    before = archiver_stats(src)
    lsn0 = src.psql("postgres", "SELECT pg_current_wal_lsn()")
    log("%s: load: CREATE TABLE AS of %d rows, pgbench -i -s %d" % (a.name, ROWS, SCALE))
    t0 = time.perf_counter()
    run([pg("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1"] + src.conn() + ["-d", "bench", "-c", LOAD_SQL])
    run([pg("pgbench"), "-i", "-q", "-s", str(SCALE)] + src.conn() + ["bench"])
    t_end = time.perf_counter()
    backlog = ready_files(src)
    after = archiver_stats(src)
    lsn1 = src.psql("postgres", "SELECT pg_current_wal_lsn()")
    R.update(load_s=t_end - t0, wal_mib=(lsn(lsn1) - lsn(lsn0)) / MiB, backlog=backlog,
             archived_during_load=after["archived"] - before["archived"])
    R["drain_s"] = drain(src, a, t_end)
    log("%s: %.0f MiB of WAL in %.1f s; %d segments archived during it, %d waiting at its end, drained in %.2f s" % (
        a.name, R["wal_mib"], R["load_s"], R["archived_during_load"], backlog, R["drain_s"]))
    # the load's last, partial segment too, so that recovery replays all of it
    switch = src.psql("postgres", "SELECT pg_switch_wal()")
    wal_name = src.psql("postgres", "SELECT pg_walfile_name('%s')" % switch)
    R["final_segment_s"] = wait_archived(src, a, wal_name)
    stats = check_failures(src, a)
    R.update(failed_count=stats["failed"], archived_total=stats["archived"],
             last_archived_wal=stats["last_archived_wal"], last_archived_lsn=switch)
    src.stop()
    if a.name == "cairn":
        R["repo_bytes"] = sum(os.lstat(os.path.join(d, n)).st_size for d, _, fs in os.walk(a.repo) for n in fs)
    else:
        R["repo_bytes"] = sum(os.lstat(os.path.join(d, n)).st_size
                              for d, _, fs in os.walk(os.path.join(a.repo, "archive")) for n in fs)

    # 3. recovery of the base copy from the archive, to its end (cairn: once as a host with an
    #    empty key cache and the password, once as a recovery host with its own identity)
    R["replay_bytes"] = lsn(R["last_archived_lsn"]) - lsn(R["base_start_lsn"])
    for k, (prefix, restore_command) in enumerate(a.recoveries(base)):
        recover(a, work, i, clusters, base, R, prefix, restore_command, k)
    return R


def recover(a, work, i, clusters, base, R, prefix, restore_command, k):
    """Recover a copy of `base` with `restore_command` (its %p names the copy's own directory:
    pgBackRest's names it with --pg1-path), recording `prefix`+metric in `R`."""
    rec = Cluster(work, "%s-r%d-recovery%d" % (a.name, i, k))
    clusters.append(rec)
    rec.make_dir()
    subprocess.run(as_postgres(["cp", "-a", base, rec.data]), check=True)
    if a.name == "pgbackrest":
        restore_command = a.restore_command(rec.data)
    rec.append_conf(["archive_mode = off", "restore_command = %s" % conf_quote(restore_command)])
    open(os.path.join(rec.data, "recovery.signal"), "w").close()
    chown_postgres(os.path.join(rec.data, "recovery.signal"))
    R[prefix + "page_cache_dropped"] = settle_page_cache(a.repo, rec.data)
    log("%s: recovery%s from the archive (cluster %s, port %d)" % (
        a.name, " with an identity" if prefix == "id_" else "", rec.name, rec.port))
    t0 = time.perf_counter()
    rec.launch(wait=False)
    R[prefix + "recovery_s"] = wait_recovery(rec, a, t0)
    R[prefix + "replay_mibps"] = R["replay_bytes"] / MiB / R[prefix + "recovery_s"]
    R.update({prefix + k: v for k, v in recovery_log_facts(rec).items()})
    wait_promoted(rec)
    if rec.psql("postgres", "SELECT pg_is_in_recovery()") != "f":
        raise BenchError("%s: the restored cluster is still in recovery" % a.name)
    verify(rec)
    log("%s: recovered %.0f MiB of WAL in %.2f s (%.1f MiB/s); rows verified" % (
        a.name, R["replay_bytes"] / MiB, R[prefix + "recovery_s"], R[prefix + "replay_mibps"]))
    rec.stop()


METRICS = ("wal_mib", "load_s", "archived_during_load", "backlog", "drain_s", "final_segment_s", "recovery_s",
           "replay_mibps", "startup_log_s", "redo_log_s", "redo_elapsed_s", "repo_bytes",
           "id_recovery_s", "id_replay_mibps", "id_startup_log_s", "id_redo_log_s")


def wal(args):
    if not need(["/usr/bin/time", PGBACKREST] + [pg(t) for t in ("initdb", "pg_ctl", "psql", "pgbench",
                                                                   "pg_basebackup")]):
        print("bench: wal needs pgbackrest and PostgreSQL 15 (scripts/setup bench)", file=sys.stderr)
        return 1
    if os.geteuid() != 0:
        print("bench: run as root (clusters and archivers run as postgres through runuser)", file=sys.stderr)
        return 1
    if args.rounds < 1:
        print("bench: wal needs --rounds >= 1 (got %d)" % args.rounds, file=sys.stderr)
        return 2
    for k in list(os.environ):
        if k.startswith(("CAIRN_", "PGBACKREST_")) and k != "CAIRN_BENCH_BIN":
            os.environ.pop(k)  # archive_command inherits the server's environment: only its arguments count
    built = build_cairn(repo_root())
    work = make_workdir(args, "cairn-bench-wal-")
    os.chmod(work, os.stat(work).st_mode | 0o755)  # the postgres user must reach its data directories
    # archive_command runs this copy: the measured binary cannot change under a running round
    bindir = os.path.join(work, "bin")
    os.makedirs(bindir, exist_ok=True)
    cairn = os.path.join(bindir, "cairn")
    shutil.copy2(built, cairn)
    os.chmod(cairn, 0o755)
    clusters = []
    rounds = []
    status = 0
    load0 = os.getloadavg()
    try:
        for i in range(1, args.rounds + 1):
            order = ARCHIVERS if i % 2 == 1 else tuple(reversed(ARCHIVERS))
            rec = {"round": i, "first": order[0]}
            for name in order:
                a = CairnArchiver(work, i, cairn) if name == "cairn" else PgBackRest(work, i)
                log("round %d: %s" % (i, name))
                rec[name] = bench_archiver(a, work, i, clusters)
                if not args.keep:
                    for c in clusters:
                        c.stop()
                        rm(c.dir)
                    rm(a.dir)
            rounds.append(rec)
        wal_report(rounds, args, work, cairn, built, load0)
    except (BenchError, subprocess.CalledProcessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        for c in clusters:
            c.stop()
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for c in clusters:
                rm(c.dir)
            for name in ARCHIVERS:
                for i in range(1, args.rounds + 1):
                    rm(os.path.join(work, "%s-r%d" % (name, i)))
            rm(bindir)
            log("removed clusters, archives and base copies; results remain in %s" % work)
    return status


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def median(rounds, name, key):
    vals = [r[name][key] for r in rounds if r[name].get(key) is not None]
    return statistics.median(vals) if vals else None


def wal_report(rounds, args, work, cairn, built, load0):
    M = {name: {k: median(rounds, name, k) for k in METRICS} for name in ARCHIVERS}
    c, p = M["cairn"], M["pgbackrest"]
    w = 30
    L = ["%-*s%12s%12s%9s  %-28s%6s" % (w, "medians of %d round(s)" % len(rounds), "cairn", "pgBackRest", "ratio",
                                        "target", "")]
    verdicts = {}

    def row(key, head, unit_fmt, target=None, ok=None, pkey=None):
        cv, pv = c[key], p[pkey or key]
        ratio = (cv / pv) if pv else None
        v = "" if ok is None else ("PASS" if ok else "FAIL")
        L.append("%-*s%12s%12s%9s  %-28s%6s" % (w, head, unit_fmt % cv, unit_fmt % pv,
                                                "-" if ratio is None else "%.2fx" % ratio, target or "", v))
        if target:
            verdicts[key] = {"cairn": cv, "pgbackrest": pv, "ratio": ratio, "target": target, "result": v}

    row("wal_mib", "WAL written by the load (MiB)", "%.0f")
    row("load_s", "load (s)", "%.2f")
    row("archived_during_load", "archived during the load", "%.0f")
    row("backlog", "backlog at the load's end", "%.0f", "<= pgBackRest's", c["backlog"] <= p["backlog"])
    row("drain_s", "drain (s)", "%.2f", "<= 2x pgBackRest's or <= 5 s",
        c["drain_s"] <= 2 * p["drain_s"] or c["drain_s"] <= 5.0)
    row("recovery_s", "recovery (s)", "%.2f")
    row("replay_mibps", "replay (MiB/s)", "%.1f", ">= pgBackRest's", c["replay_mibps"] >= p["replay_mibps"])
    row("id_recovery_s", "recovery, identity (s)", "%.2f", pkey="recovery_s")
    row("id_replay_mibps", "replay, identity (MiB/s)", "%.1f", ">= pgBackRest's",
        c["id_replay_mibps"] >= p["replay_mibps"], pkey="replay_mibps")
    for side in (c, p):
        side["repo_mib"] = side["repo_bytes"] / MiB
    row("repo_mib", "archive size (MiB)", "%.1f")
    L += ["", "every round (first archiver of the round marked *):"]
    for key, head, f in (("wal_mib", "WAL MiB", "%.0f"), ("load_s", "load s", "%.2f"),
                         ("archived_during_load", "archived", "%d"), ("backlog", "backlog", "%d"),
                         ("drain_s", "drain s", "%.2f"), ("recovery_s", "recovery s", "%.2f"),
                         ("replay_mibps", "replay MiB/s", "%.1f"), ("startup_log_s", "to redo s", "%.2f"),
                         ("id_replay_mibps", "replay id", "%.1f"), ("id_startup_log_s", "to redo id", "%.2f"),
                         ("redo_log_s", "redo s", "%.2f")):
        for name in ARCHIVERS:
            cells = []
            for r in rounds:
                v = r[name].get(key)
                cells.append(("-" if v is None else f % v) + ("*" if r["first"] == name else " "))
            L.append("  %-13s %-11s %s" % (head, name, " ".join("%8s" % x for x in cells)))
    load1 = os.getloadavg()
    L += ["",
          "load: %s (one psql), then pgbench -i -q -s %d, into a fresh cluster (fsync=off, max_wal_size 2GB)" % (
              LOAD_SQL, SCALE),
          "archivers: cairn wal-push/wal-fetch (default KDF work factor, --cache-dir; recovery with an empty cache",
          "  and the password, then again as a recovery host with its own age identity: key add --generate-identity);",
          "  pgBackRest %s archive-push/archive-get, synchronous, compress-type=zst (no repository cipher)" % (
              (tool_version([PGBACKREST, "version"]) or "").replace("pgBackRest ", "")),
          "backlog = *.ready files in pg_wal/archive_status when the load ended; drain = seconds from then until",
          "  none was left (polled every %.1f s); replay = WAL from the base copy's start to the last" % POLL_S,
          "  archived LSN / seconds from pg_ctl start to 'archive recovery complete' (page cache dropped first);",
          "  by the server log's timestamps, 'to redo' = its start to 'redo starts', 'redo' = from there to",
          "  'archive recovery complete'",
          "every restored cluster verified: %d rows in t, %d in pgbench_accounts; failed_count 0 everywhere" % (
              ROWS, SCALE * 100_000),
          "load average at start %.2f, at end %.2f" % (load0[0], load1[0])]
    print("\n".join(L))
    m = print_machine()
    out = {"command": "wal", "rounds_asked": args.rounds, "machine": m,
           "load_average": {"start": load0, "end": load1},
           "versions": {"cairn": tool_version([cairn, "--version"]), "cairn_binary": built,
                        "cairn_sha256": sha256_file(cairn),
                        "pgbackrest": tool_version([PGBACKREST, "version"]),
                        "postgres": tool_version([pg("postgres"), "--version"])},
           "load": {"sql": LOAD_SQL, "pgbench_scale": SCALE, "source_conf": SOURCE_CONF},
           "medians": M, "cairn_vs_pgbackrest": verdicts, "rounds": rounds}
    path = os.path.join(work, "bench-wal.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)
