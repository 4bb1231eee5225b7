"""`scripts/bench postgres`: cairn's logical and physical snapshots and its restore
against pg_dump, pg_basebackup and pg_restore (and restic for storage) on throwaway
PostgreSQL 15 clusters loaded by pgbench."""
import datetime
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time

from bench_lib.common import (
    PASSWORD, MiB, BenchError, build_cairn, du, free_port, log, make_workdir, median_round, need, print_machine,
    ratio_line, repo_root, rm, run, settle_page_cache, tool_version, tree_bytes)

PG_BIN = "/usr/lib/postgresql/15/bin"


def pg(tool):
    return os.path.join(PG_BIN, tool)


def as_postgres(argv):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + list(argv)
    return list(argv)


class Cluster:
    """A throwaway PostgreSQL 15 cluster under WORK/pg-NAME (socket in that directory)."""

    def __init__(self, work, name):
        self.name = name
        self.dir = os.path.join(work, "pg-" + name)
        self.data = os.path.join(self.dir, "data")
        self.port = None
        self.running = False

    def start(self, conf=()):
        """initdb, then start; `conf` lines are appended to its postgresql.conf in between."""
        self.make_dir()
        log("cluster %s: initdb + start on port %d" % (self.name, self.port))
        self.pg_ctl_run([pg("initdb"), "-D", self.data, "-U", "postgres", "-A", "trust", "-E", "UTF8",
                         "--no-locale", "--no-sync"])
        self.append_conf(conf)
        self.launch()

    def make_dir(self):
        """An empty WORK/pg-NAME owned by postgres, and a free port for the server."""
        rm(self.dir)
        os.makedirs(self.dir)
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        self.port = free_port()

    def append_conf(self, lines):
        if lines:
            with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
                f.write("".join(line + "\n" for line in lines))

    def launch(self, wait=True):
        """pg_ctl start of the data directory; without `wait`, return as soon as the postmaster runs."""
        self.pg_ctl_run([pg("pg_ctl"), "-D", self.data, "-l", os.path.join(self.dir, "log"),
                         "-w" if wait else "-W", "-t", "120",
                         "-o", "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off" % (self.port, self.dir),
                         "start"])
        self.running = True

    def pg_ctl_run(self, argv):
        p = subprocess.run(as_postgres(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if p.returncode != 0:
            raise BenchError("cluster %s: %s failed:\n%s" % (self.name, os.path.basename(argv[0]), p.stdout[-3000:]))

    def stop(self):
        if self.running:
            subprocess.run(as_postgres([pg("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop"]),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.running = False

    def url(self, db="postgres"):
        return "postgres://postgres@127.0.0.1:%d/%s" % (self.port, db)

    def conn(self):
        return ["-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres"]

    def psql(self, db, sql):
        p = subprocess.run([pg("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1"] + self.conn() +
                           ["-d", db, "-c", sql], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if p.returncode != 0:
            raise BenchError("psql on %s/%s failed: %s\n%s" % (self.name, db, sql, p.stderr[-2000:]))
        return p.stdout.strip()


FINGERPRINT_SQL = (
    "SELECT (SELECT count(*) FROM pgbench_accounts) || ' ' || (SELECT sum(abalance) FROM pgbench_accounts)"
    " || ' ' || (SELECT count(*) FROM pgbench_branches) || ' ' || (SELECT sum(bbalance) FROM pgbench_branches)"
    " || ' ' || (SELECT count(*) FROM pgbench_tellers) || ' ' || (SELECT sum(tbalance) FROM pgbench_tellers)"
    " || ' ' || (SELECT count(*) FROM pgbench_history) || ' ' || (SELECT coalesce(sum(delta), 0) FROM pgbench_history)")
FINGERPRINT_FIELDS = ("accounts_rows", "accounts_abalance_sum", "branches_rows", "branches_bbalance_sum",
                      "tellers_rows", "tellers_tbalance_sum", "history_rows", "history_delta_sum")


def fingerprint(cluster, db="bench"):
    return dict(zip(FINGERPRINT_FIELDS, cluster.psql(db, FINGERPRINT_SQL).split()))


def log_times(stderr_path, message):
    """Timestamps (epoch seconds) of cairn's JSON log events whose message is `message`."""
    out = []
    with open(stderr_path) as f:
        for line in f:
            try:
                j = json.loads(line)
            except ValueError:
                continue
            if j.get("fields", {}).get("message") == message and "timestamp" in j:
                ts = j["timestamp"]
                # tracing prints nanoseconds; fromisoformat takes at most microseconds
                ts = re.sub(r"(\.\d{6})\d*", r"\1", ts).replace("Z", "+00:00")
                out.append(datetime.datetime.fromisoformat(ts).timestamp())
    return out


def postgres(args):
    if not need(["/usr/bin/time", "/usr/bin/restic", "/usr/bin/pgbench"] +
                [pg(t) for t in ("initdb", "pg_ctl", "psql", "pg_dump", "pg_restore", "pg_basebackup")]):
        return 1
    if os.geteuid() != 0 and os.environ.get("USER") != "postgres":
        print("bench: run as root (clusters are made with runuser -u postgres) or as postgres", file=sys.stderr)
        return 1
    if args.rounds < 1:
        print("bench: postgres needs --rounds >= 1 (got %d)" % args.rounds, file=sys.stderr)
        return 2
    root = repo_root()
    cairn = build_cairn(root)
    work = make_workdir(args, "cairn-bench-pg-")
    os.chmod(work, os.stat(work).st_mode | 0o755)  # the postgres user must reach its data directories
    N = args.scale
    repo = os.path.join(work, "repo-cairn")
    repo_phys = os.path.join(work, "repo-cairn-physical")
    restic_repo = os.path.join(work, "repo-restic")
    dumpfile = os.path.join(work, "bench.dump")
    basebackup = os.path.join(work, "basebackup")
    env = dict(os.environ, CAIRN_PASSWORD=PASSWORD, CAIRN_CACHE_DIR=os.path.join(work, "cache-cairn"),
               CAIRN_PG_BIN=PG_BIN, RESTIC_PASSWORD=PASSWORD, RESTIC_CACHE_DIR=os.path.join(work, "cache-restic"))
    env.pop("RESTIC_REPOSITORY", None)
    env.pop("CAIRN_REPOSITORY", None)
    src = Cluster(work, "src")
    clusters = [src]  # every cluster started, so that `finally` stops them all
    scratch = [repo, repo_phys, restic_repo, dumpfile, basebackup, env["CAIRN_CACHE_DIR"], env["RESTIC_CACHE_DIR"],
               src.dir]
    R = {"scale": N}
    status = 0

    def cairn_snapshot(extra, n, repo=repo):
        wall, rss, cpu, out = run([cairn, "snapshot", "-r", repo, "--postgres", src.url()] + extra +
                                  ["--json", "-q"], env=env)
        try:
            j = json.loads(out)
        except ValueError as e:
            raise BenchError("cairn snapshot printed no JSON summary (%s): %r" % (e, out[-2000:]))
        if not j.get("complete", True):
            raise BenchError("cairn snapshot %d is incomplete: %s" % (n, j.get("errors")))
        return wall, rss, cpu, j

    def dump_argv():
        return [pg("pg_dump"), "-Fc", "-Z0"] + src.conn() + ["bench"]

    def restic_stdin(n, pipe):
        """restic backup of a pg_dump -Fc -Z0 of bench via stdin; returns (wall, repo growth)."""
        before = du(restic_repo)
        rargv = ["/usr/bin/restic", "backup", "-r", restic_repo, "--stdin", "--stdin-filename", "bench.dump", "-q"]
        if pipe:
            cmd = "set -o pipefail; %s | %s" % (" ".join(shlex.quote(a) for a in dump_argv()),
                                                " ".join(shlex.quote(a) for a in rargv))
            wall = run(["bash", "-c", cmd], env=env)[0]
        else:
            wall = run(rargv, env=env, stdin_path=dumpfile)[0]
        return wall, du(restic_repo) - before

    try:
        src.start()
        src.psql("postgres", "CREATE DATABASE bench")
        log("pgbench -i -s %d" % N)
        R["pgbench_init_s"] = run(["/usr/bin/pgbench", "-i", "-q", "-s", str(N)] + src.conn() + ["bench"],
                                  env=env)[0]
        src.psql("bench", "CHECKPOINT")
        R["db_size_bytes"] = int(src.psql("bench", "SELECT pg_database_size('bench')"))
        for r in (repo, repo_phys):
            run([cairn, "init", "-r", r, "--kdf-work-factor", "10", "-q"], env=env)
        run(["/usr/bin/restic", "init", "-r", restic_repo], env=env)

        def rounds_vs(ref, run_ref, what, cairn_args, n, kept, fresh, before=lambda: None):
            """cairn snapshot `cairn_args` vs `run_ref()` (its seconds), --rounds times, alternating
            which goes first (cairn in odd rounds), `before()` ahead of every run; cairn's round 1 into
            `kept` (kept), later rounds into a fresh repository each (removed afterwards). Returns the
            rounds, cairn's median round and the reference's median seconds."""
            rounds = []
            for i in range(1, args.rounds + 1):
                rec = {"round": i, "first": "cairn" if i % 2 == 1 else ref}
                for side in (("cairn", ref) if i % 2 == 1 else (ref, "cairn")):
                    r = kept if i == 1 else os.path.join(work, "%s-round-%d" % (fresh, i))
                    if side == "cairn" and i > 1:
                        run([cairn, "init", "-r", r, "--kdf-work-factor", "10", "-q"], env=env)
                    before()
                    if side == ref:
                        rec[ref] = {"s": run_ref(i)}
                        continue
                    log("cairn snapshot --postgres %s (round %d)" % (what, i))
                    wall, rss, cpu, j = cairn_snapshot(cairn_args, n, repo=r)
                    rec["cairn"] = {"s": wall, "cpu_s": cpu, "rss_kib": rss, "summary": j}
                    if i > 1:
                        rm(r)
                rounds.append(rec)
            mc = rounds[median_round([r["cairn"] for r in rounds], "s")]["cairn"]
            return rounds, mc, rounds[median_round([r[ref] for r in rounds], "s")][ref]["s"]

        # 1. logical snapshot vs bare pg_dump, same state; every cairn round is a first snapshot
        #    (round 1's repository is kept for step 2)
        def pg_dump_devnull(i):
            log("pg_dump -Fc -Z0 > /dev/null (round %d)" % i)
            return run(dump_argv(), env=env, stdout_path=os.devnull)[0]

        srounds, mc, R["pg_dump_s"] = rounds_vs("pg_dump", pg_dump_devnull, "--database bench (1)",
                                                ["--database", "bench"], 1, repo, "repo-cairn")
        R["snapshot_rounds"] = srounds
        R.update(cairn_snap1_s=mc["s"], cairn_snap1_cpu_s=mc["cpu_s"], cairn_snap1_rss_kib=mc["rss_kib"],
                 cairn_snap1=srounds[0]["cairn"]["summary"], cairn_repo1_bytes=du(repo))
        log("restic backup --stdin of pg_dump (1)")
        R["restic_snap1_s"], R["restic_added1_bytes"] = restic_stdin(1, pipe=True)

        # 2. scattered updates, second snapshot: what does a day cost?
        log("pgbench -t 40000 -n -c 1")
        R["pgbench_run_s"] = run(["/usr/bin/pgbench", "-t", "40000", "-n", "-c", "1"] + src.conn() + ["bench"],
                                 env=env)[0]
        log("cairn snapshot --postgres --database bench (2)")
        wall, rss, cpu, j = cairn_snapshot(["--database", "bench"], 2)
        R.update(cairn_snap2_s=wall, cairn_snap2_cpu_s=cpu, cairn_snap2_rss_kib=rss, cairn_snap2=j,
                 cairn_added2_bytes=j["bytes_added"], cairn_added2_du_bytes=du(repo) - R["cairn_repo1_bytes"])
        log("pg_dump -Fc -Z0 -f bench.dump (for restic's 2nd backup and pg_restore)")
        R["pg_dump_to_file_s"] = run(dump_argv() + ["-f", dumpfile], env=env)[0]
        R["dump_bytes"] = os.path.getsize(dumpfile)
        log("restic backup --stdin of that dump (2)")
        R["restic_snap2_s"], R["restic_added2_bytes"] = restic_stdin(2, pipe=False)
        expected = fingerprint(src)
        R["source_fingerprint"] = expected

        # 3. physical: pg_basebackup to local disk vs cairn --physical, each run after writing back and
        #    dropping the page cache and reading the source cluster's files back in (a single run scattered
        #    1.34-3.21 s with earlier steps' writes still going to disk)
        def pg_basebackup(i):
            log("pg_basebackup -Ft -X fetch --checkpoint=fast (round %d)" % i)
            s = run([pg("pg_basebackup"), "-Ft", "-X", "fetch", "-D", basebackup, "--checkpoint=fast"] + src.conn(),
                    env=env)[0]
            R["basebackup_bytes"] = tree_bytes(basebackup)
            rm(basebackup)
            return s

        def settle_source():
            rm(basebackup)
            settle_page_cache(src.data)

        prounds, mc, R["pg_basebackup_s"] = rounds_vs("pg_basebackup", pg_basebackup, "--physical", ["--physical"],
                                                      3, repo_phys, "repo-cairn-physical", before=settle_source)
        R["physical_rounds"] = prounds
        R.update(cairn_physical_s=mc["s"], cairn_physical_cpu_s=mc["cpu_s"], cairn_physical_rss_kib=mc["rss_kib"],
                 cairn_physical=prounds[0]["cairn"]["summary"])

        # 4. restores: cairn restore (from its repository, then verified) vs pg_restore -j 2 of the local
        # dump, --rounds times, alternating which goes first, each into a fresh cluster; medians reported
        env_log = dict(env, CAIRN_LOG="cairn=info")

        def cairn_restore(i):
            c = Cluster(work, "cairn-restore-%d" % i)
            clusters.append(c)
            c.start()
            errlog = os.path.join(work, "cairn-restore-%d.log" % i)
            log("cairn restore latest --to (cluster on port %d)" % c.port)
            # -q as asked, but info events as JSON on stderr: their timestamps split the restore's time
            wall, rss, cpu, out = run([cairn, "restore", "latest", "-r", repo, "--to", c.url(), "--json", "-q",
                                       "--log-format", "json"], env=env_log, stderr_path=errlog)
            t_end = time.time()
            try:
                j = json.loads(out)
            except ValueError as e:
                raise BenchError("cairn restore printed no JSON (%s): %r" % (e, out[-2000:]))
            tables = j.get("report", {}).get("tables", [])
            bad = [t for t in tables if not t.get("ok")]
            done = log_times(errlog, "restored database")
            got = fingerprint(c)
            if bad or got != expected:
                raise BenchError("cairn restore differs: %d table mismatches reported; fingerprint %s, expected %s" % (
                    len(bad), got, expected))
            c.stop()
            rm(c.dir)
            return {"s": wall, "cpu_s": cpu, "rss_kib": rss, "duration_ms": j.get("duration_ms"),
                    "tables_checked": len(tables), "verify_s": (t_end - done[-1]) if done else None,
                    "loads": j.get("report", {}).get("loads", [])}

        def pg_restore_run(i):
            c = Cluster(work, "pg-restore-%d" % i)
            clusters.append(c)
            c.start()
            log("pg_restore -j 2 --create -d postgres (cluster on port %d)" % c.port)
            wall = run([pg("pg_restore"), "-j", "2", "--create", "-d", "postgres"] + c.conn() + [dumpfile],
                       env=env)[0]
            got = fingerprint(c)
            if got != expected:
                raise BenchError("pg_restore result differs: %s, expected %s" % (got, expected))
            c.stop()
            rm(c.dir)
            return {"s": wall}

        R["restore_rounds"] = []
        for i in range(1, args.rounds + 1):
            rec = {"round": i, "first": "cairn" if i % 2 == 1 else "pg_restore"}
            for side in (("cairn", "pg") if i % 2 == 1 else ("pg", "cairn")):
                # Earlier steps' writes (a base backup, the last restore's cluster) must not
                # still be going to disk during a timed restore, nor one side's input be cached
                # and the other's not: write back, drop, and re-read both inputs.
                R["page_cache_dropped"] = settle_page_cache(repo, dumpfile)
                if side == "cairn":
                    rec["cairn"] = cairn_restore(i)
                else:
                    rec["pg_restore"] = pg_restore_run(i)
            R["restore_rounds"].append(rec)
        rounds = R["restore_rounds"]
        mc = rounds[median_round([r["cairn"] for r in rounds], "s")]["cairn"]
        mp = rounds[median_round([r["pg_restore"] for r in rounds], "s")]["pg_restore"]
        R.update(cairn_restore_s=mc["s"], cairn_restore_cpu_s=mc["cpu_s"], cairn_restore_rss_kib=mc["rss_kib"],
                 cairn_restore_duration_ms=mc["duration_ms"], cairn_restore_tables_checked=mc["tables_checked"],
                 cairn_restore_verify_s=mc["verify_s"], cairn_restore_loads=mc["loads"], pg_restore_s=mp["s"])
        R["restores_verified"] = True
        pg_report(R, args, work, cairn)
    except (BenchError, subprocess.CalledProcessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        for c in clusters:
            c.stop()
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for p in scratch + [c.dir for c in clusters]:
                rm(p)
            log("removed clusters, repositories and dumps; results remain in %s" % work)
    return status


def pg_report(R, args, work, cairn):
    w = 26
    L = ["%-*s%12s  %-22s%9s%10s%6s" % (w, "", "cairn", "reference", "ratio", "target", "")]
    rows = [
        ("logical_snapshot", "logical snapshot (s)", R["cairn_snap1_s"], R["pg_dump_s"], "pg_dump", "s", "<=", 1.10),
        ("added_by_2nd", "added by 2nd (MiB)", R["cairn_added2_bytes"] / MiB, R["restic_added2_bytes"] / MiB,
         "restic", "MiB", "<=", 0.5),
        ("restore", "restore (s)", R["cairn_restore_s"], R["pg_restore_s"], "pg_restore -j2", "s", "<=", 1.2),
        ("physical_snapshot", "physical snapshot (s)", R["cairn_physical_s"], R["pg_basebackup_s"],
         "pg_basebackup", "s", "<=", 1.2),
    ]
    ratios = {}
    for key, head, c, ref, name, unit, op, target in rows:
        line, ratios[key] = ratio_line(w, head, c, ref, name, unit, op, target)
        L.append(line)
    vs = R.get("cairn_restore_verify_s")
    L += [
        "",
        "pgbench -i -s %d: database %.1f MiB, pg_dump -Fc -Z0 %.1f MiB; pgbench -t 40000 -n -c 1 took %.0f s" % (
            R["scale"], R["db_size_bytes"] / MiB, R["dump_bytes"] / MiB, R["pgbench_run_s"]),
        "logical: cairn 2nd snapshot %.2f s; restic backup --stdin (pg_dump piped in) 1st %.2f s, 2nd %.2f s" % (
            R["cairn_snap2_s"], R["restic_snap1_s"], R["restic_snap2_s"]),
        "added by 1st: cairn %.1f MiB (bytes_added), restic %.1f MiB (du -sb growth)" % (
            R["cairn_snap1"]["bytes_added"] / MiB, R["restic_added1_bytes"] / MiB),
        "added by 2nd: cairn bytes_added %.2f MiB, du -sb growth %.2f MiB (index + snapshot files included)" % (
            R["cairn_added2_bytes"] / MiB, R["cairn_added2_du_bytes"] / MiB),
        "logical snapshot rounds (s), alternating which goes first, cairn into an empty repository each time;",
        "  medians above:",
        "  cairn      %s" % " ".join("%.2f" % r["cairn"]["s"] for r in R["snapshot_rounds"]),
        "  pg_dump    %s" % " ".join("%.2f" % r["pg_dump"]["s"] for r in R["snapshot_rounds"]),
        "physical snapshot rounds (s), alternating, page cache dropped and the source's files re-read first:",
        "  cairn         %s" % " ".join("%.2f" % r["cairn"]["s"] for r in R["physical_rounds"]),
        "  pg_basebackup %s" % " ".join("%.2f" % r["pg_basebackup"]["s"] for r in R["physical_rounds"]),
        "restore rounds (s), alternating which goes first, each into a fresh cluster and after dropping",
        "  the page cache and re-reading the repository and the dump; medians above:",
        "  cairn      %s" % " ".join("%.2f" % r["cairn"]["s"] for r in R["restore_rounds"]),
        "  pg_restore %s" % " ".join("%.2f" % r["pg_restore"]["s"] for r in R["restore_rounds"]),
        "restore: cairn's time includes verifying every needed pack first and recomputing the row count",
        "  of all %d relations (no --prove: checksums not compared; %s after pg_restore finished)" % (
            R["cairn_restore_tables_checked"], "%.2f s of it" % vs if vs is not None else "time unknown"),
        "  loaded as: %s" % (", ".join("%s %s (--jobs %s%s)" % (l.get("database"), l.get("load"), l.get("jobs"),
                                                               "; %s by cairn's COPY" % l["copied"] if l.get("copied") else "")
                                       for l in R.get("cairn_restore_loads") or []) or "not reported"),
        "physical: pg_basebackup tar %.1f MiB to local disk; cairn --physical (own fresh repository) added %.1f MiB" % (
            R["basebackup_bytes"] / MiB, R["cairn_physical"]["bytes_added"] / MiB),
        "all three PostgreSQL 15 clusters: initdb --no-locale, fsync=off, TCP 127.0.0.1; restores verified",
        "(row counts and balance sums of the 4 pgbench tables equal the source's).",
    ]
    text = "\n".join(L)
    print(text)
    m = print_machine()
    out = {"command": "postgres", "scale": R["scale"],
           "machine": m,
           "versions": {"cairn": tool_version([cairn, "--version"]), "restic": tool_version(["/usr/bin/restic", "version"]),
                        "postgres": tool_version([pg("postgres"), "--version"])},
           "results": R, "cairn_vs_reference": ratios}
    path = os.path.join(work, "bench-postgres.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)
