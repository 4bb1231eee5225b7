"""`scripts/bench kafka`: cairn's Kafka snapshot and restore against bare rdkafka
clients (examples/kafka_baseline.rs) on throwaway Tansu brokers, and what a second
day's snapshot adds."""
import json
import os
import subprocess
import sys
import time

from bench_lib.common import (
    PASSWORD, MB, MiB, BenchError, build_cairn, cache_note, du, free_port, log, make_workdir, median_round, need,
    print_machine, ratio_line, repo_root, rm, run, settle_page_cache, stop_process, tool_version, wait_port)

TANSU = os.path.expanduser("~/.cargo/bin/tansu")
KAFKA_TOPIC = "bench"
KAFKA_FETCH_WAIT_NOTE = """\
Both readers wait at most 10 ms per Fetch (fetch.wait.max.ms, cairn's setting; librdkafka's
default is 500 ms). Tansu 0.6.0 holds every Fetch response for at least half of the request's
max wait, even when it has data, and answers at most 5 MiB per response: at 500 ms any
consumer reads at most ~20 MB/s from it, and a comparison at that setting measures the
broker's sleeps (a bare consumer took 35 s for this topic, 3.5 s at 10 ms)."""


def wait_for_file(path, what, timeout=3600):
    """`scripts/setup` may still be installing `path` in the background: wait for it."""
    t0 = time.time()
    while not os.access(path, os.X_OK):
        if time.time() - t0 > timeout:
            raise BenchError("%s did not appear at %s within %d s (run scripts/setup)" % (what, path, timeout))
        if int(time.time() - t0) % 60 < 10:
            log("waiting for %s at %s (scripts/setup may still be installing it)" % (what, path))
        time.sleep(10)


class Tansu:
    """A throwaway in-memory Tansu broker on a free port; its output goes to WORK/tansu-NAME.log."""

    def __init__(self, work, name):
        self.name = name
        self.log = os.path.join(work, "tansu-%s.log" % name)
        self.port = None
        self.proc = None

    def start(self):
        self.port = free_port()
        url = "tcp://127.0.0.1:%d" % self.port
        log("tansu broker %s on 127.0.0.1:%d" % (self.name, self.port))
        with open(self.log, "wb") as lf:
            self.proc = subprocess.Popen([TANSU, "broker", "--listener-url", url, "--advertised-listener-url", url,
                                          "--storage-engine", "memory://tansu/"], stdout=lf, stderr=subprocess.STDOUT)
        wait_port(self.port, self.proc)
        return self

    def brokers(self):
        return "127.0.0.1:%d" % self.port

    def peak_rss_kib(self):
        try:
            with open("/proc/%d/status" % self.proc.pid) as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except (OSError, AttributeError):
            pass
        return None

    def stop(self):
        stop_process(self.proc)
        self.proc = None


def kafka(args):
    if args.messages < 100 or args.partitions < 1:
        print("bench: kafka needs --messages >= 100 and --partitions >= 1", file=sys.stderr)
        return 2
    if args.rounds < 1:
        print("bench: kafka needs --rounds >= 1 (got %d)" % args.rounds, file=sys.stderr)
        return 2
    if not need(["/usr/bin/time"]):
        return 1
    root = repo_root()
    cairn = build_cairn(root)
    log("cargo build --release --examples")
    subprocess.run(["cargo", "build", "--release", "--examples", "--quiet"], cwd=root, check=True)
    example = os.path.join(root, "target", "release", "examples", "kafka_baseline")
    work = make_workdir(args, "cairn-bench-kafka-")
    N, P, rounds = args.messages, args.partitions, args.rounds
    N2 = N // 100  # the second day's new records: 1%
    repo = os.path.join(work, "repo-cairn")
    pwfile = os.path.join(work, "password")
    env = dict(os.environ, CAIRN_REPOSITORY=repo, CAIRN_PASSWORD_FILE=pwfile,
               CAIRN_CACHE_DIR=os.path.join(work, "cache-cairn"))
    for v in ("CAIRN_PASSWORD", "CAIRN_IDENTITY_FILE", "CAIRN_KAFKA_CONFIG", "KAFKA_BASELINE_CONFIG"):
        env.pop(v, None)
    src = Tansu(work, "source")
    brokers = [src]  # every broker started, so that `finally` stops them all

    def broker(name):
        b = Tansu(work, name)
        brokers.append(b)
        return b.start()

    scratch = [repo, pwfile, env["CAIRN_CACHE_DIR"]]
    R = {"messages": N, "partitions": P, "value_bytes": 1024, "topic": KAFKA_TOPIC, "day2_messages": N2}
    status = 0

    def example_run(mode, broker, n, start=None, extra_env=None):
        argv = [example, mode, broker.brokers(), KAFKA_TOPIC, str(P), str(n)] + ([str(start)] if start else [])
        wall, rss, cpu, out = run(argv, env=dict(env, **(extra_env or {})))
        try:
            j = json.loads(out.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            raise BenchError("kafka_baseline %s printed no JSON (%s): %r" % (mode, e, out[-2000:]))
        j.update(wall_s=wall, rss_kib=rss, cpu_s=cpu)
        return j

    def cairn_snapshot(n, expected, repo_args=(), extra=()):
        log("cairn snapshot --kafka (%s): %d records expected" % (n, expected))
        wall, rss, cpu, out = run([cairn, "snapshot", "--kafka", src.brokers(), "--json", "-q"] + list(repo_args) +
                                  list(extra), env=env)
        try:
            j = json.loads(out)
        except ValueError as e:
            raise BenchError("cairn snapshot printed no JSON summary (%s): %r" % (e, out[-2000:]))
        if not j.get("complete"):
            raise BenchError("cairn snapshot %s is incomplete: %s" % (n, j.get("errors")))
        manifest = json.loads(run([cairn, "cat", "snapshot", j["id"]] + list(repo_args), env=env)[3])
        parts = [p for s in manifest["sources"] if s["kind"] == "kafka"
                 for t in s["metadata"]["topics"] if t["name"] == KAFKA_TOPIC for p in t["partitions"]]
        got = sum(p["records"] for p in parts)
        if len(parts) != P or got != expected:
            raise BenchError("cairn snapshot %s holds %d records in %d partitions of %s, expected %d in %d" % (
                n, got, len(parts), KAFKA_TOPIC, expected, P))
        return {"wall_s": wall, "rss_kib": rss, "cpu_s": cpu, "messages": got,
                "messages_per_s": got / wall, "summary": j}

    def cairn_restore(dst):
        log("cairn restore latest --to-brokers (fresh broker %s)" % dst.name)
        wall, rss, cpu, out = run([cairn, "restore", "latest", "--to-brokers", dst.brokers(), "--json", "-q"],
                                  env=env)
        try:
            j = json.loads(out)
        except ValueError as e:
            raise BenchError("cairn restore printed no JSON (%s): %r" % (e, out[-2000:]))
        topics = j.get("report", {}).get("topics", [])
        restored = sum(t.get("records", 0) for t in topics)
        rec = {"wall_s": wall, "rss_kib": rss, "cpu_s": cpu, "messages": restored,
               "messages_per_s": restored / wall, "report": j.get("report"),
               "broker_peak_rss_kib": dst.peak_rss_kib()}
        if restored != N:
            raise BenchError("cairn restore reported %d records, expected %d: %s" % (restored, N, topics))
        log("verify: digest of the restored topic")
        got = example_run("verify", dst, N)["per_partition"]
        if got != R["source_digest"]:
            raise BenchError("the restored topic differs from the source:\n  source   %s\n  restored %s" % (
                R["source_digest"], got))
        rec["verified"] = True
        return rec

    try:
        wait_for_file(TANSU, "tansu")
        R["tansu_version"] = tool_version([TANSU, "--version"])
        with open(pwfile, "w") as f:
            f.write(PASSWORD + "\n")
        os.chmod(pwfile, 0o600)
        run([cairn, "init", "-r", repo, "--password-file", pwfile, "--kdf-work-factor", "10", "-q"], env=env)

        src.start()
        log("fill: %d records of 1 KiB into %s (%d partitions)" % (N, KAFKA_TOPIC, P))
        R["fill"] = example_run("fill", src, N)
        R["rounds"] = {"count": rounds, "order": "odd rounds run the baseline first, even rounds cairn first",
                       "snapshot": [], "restore": []}

        # 1. snapshot vs a bare consumer reading the same topic, `rounds` times in alternating order.
        # Round 1's cairn snapshot goes into the repository kept for the restore and day 2; the other
        # rounds' into a throw-away repository each, so nothing deduplicates against an earlier round.
        for i in range(1, rounds + 1):
            baseline_first = i % 2 == 1
            rec = {"round": i, "first": "baseline" if baseline_first else "cairn"}
            log("snapshot round %d of %d (%s first)" % (i, rounds, rec["first"]))
            if i == 1:
                target, repo_args = repo, []
            else:
                target = os.path.join(work, "repo-cairn-round%d" % i)
                scratch.append(target)
                run([cairn, "init", "-r", target, "--password-file", pwfile, "--kdf-work-factor", "10", "-q"],
                    env=env)
                repo_args = ["-r", target]
            for side in (("baseline", "cairn") if baseline_first else ("cairn", "baseline")):
                if side == "baseline":
                    log("baseline: rdkafka consumer, all partitions to end-of-partition")
                    rec["consume"] = example_run("consume", src, N)
                else:
                    rec["snap"] = cairn_snapshot("1, round %d" % i, N, repo_args)
                    rec["snap"]["repository"] = os.path.basename(target) if i == 1 else "throw-away"
            if i > 1:
                rm(target)
            R["rounds"]["snapshot"].append(rec)
        snaps = R["rounds"]["snapshot"]
        R["rounds"]["median_consume"] = median_round([r["consume"] for r in snaps]) + 1
        R["rounds"]["median_snap"] = median_round([r["snap"] for r in snaps]) + 1
        R["consume"] = snaps[R["rounds"]["median_consume"] - 1]["consume"]
        R["snap1"] = snaps[R["rounds"]["median_snap"] - 1]["snap"]
        log("verify: digest of the source topic")
        R["source_digest"] = example_run("verify", src, N)["per_partition"]

        # 2. restore vs a bare idempotent producer, `rounds` times in alternating order, every run into
        # a fresh broker that is stopped right after it; every restored topic is verified
        for i in range(1, rounds + 1):
            baseline_first = i % 2 == 1
            rec = {"round": i, "first": "baseline" if baseline_first else "cairn"}
            log("restore round %d of %d (%s first)" % (i, rounds, rec["first"]))
            for side in (("baseline", "cairn") if baseline_first else ("cairn", "baseline")):
                # Every run from the same memory state, the repository cached: cairn writes
                # packs around the page cache (O_DIRECT), so without this round 1's restore
                # read them from disk and the later rounds from memory.
                rec[side + "_page_cache_dropped"] = settle_page_cache(repo)
                if side == "baseline":
                    dst = broker("produce-%d" % i)
                    log("baseline: rdkafka idempotent producer, %d records into a fresh broker" % N)
                    rec["produce"] = example_run("produce", dst, N)
                    rec["produce"]["broker_peak_rss_kib"] = dst.peak_rss_kib()
                else:
                    dst = broker("restore-%d" % i)
                    rec["restore"] = cairn_restore(dst)
                dst.stop()
            R["rounds"]["restore"].append(rec)
        rests = R["rounds"]["restore"]
        R["rounds"]["median_produce"] = median_round([r["produce"] for r in rests]) + 1
        R["rounds"]["median_restore"] = median_round([r["restore"] for r in rests]) + 1
        R["produce"] = rests[R["rounds"]["median_produce"] - 1]["produce"]
        R["restore"] = rests[R["rounds"]["median_restore"] - 1]["restore"]
        R["restore_verified"] = True

        # 3. a day later: 1% more records, second snapshot
        log("fill: %d more records (day 2)" % N2)
        R["fill2"] = example_run("fill", src, N2, start=N)
        R["snap2"] = cairn_snapshot(2, N + N2)
        R["source_broker_peak_rss_kib"] = src.peak_rss_kib()
        R["repo_bytes"] = du(repo)
        kafka_report(R, args, work, cairn)
    except (BenchError, subprocess.CalledProcessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        for b in brokers:
            b.stop()
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for p in scratch + [b.log for b in brokers]:
                rm(p)
            log("removed brokers, repositories and cache; results remain in %s" % work)
    return status


def kafka_report(R, args, work, cairn):
    w = 26
    L = ["%-*s%12s  %-22s%9s%10s%6s" % (w, "", "cairn", "reference", "ratio", "target", "")]
    rounds = R["rounds"]
    nr = rounds["count"]
    # the first snapshot that stayed in the repository, which the restores and day 2 build on
    kept1 = rounds["snapshot"][0]["snap"]
    a1, a2 = kept1["summary"]["bytes_added"], R["snap2"]["summary"]["bytes_added"]
    rows = [
        ("snapshot", "snapshot (msg/s)", R["snap1"]["messages_per_s"], R["messages"] / R["consume"]["wall_s"],
         "consumer", "msg/s", ">=", 0.8),
        ("restore", "restore (msg/s)", R["restore"]["messages_per_s"], R["messages"] / R["produce"]["wall_s"],
         "producer", "msg/s", ">=", 0.8),
        ("added_by_2nd", "added by 2nd (MiB)", a2 / MiB, a1 / MiB, "1st snapshot", "MiB", "<=", 0.02),
    ]
    ratios = {}
    for key, head, c, ref, name, unit, op, target in rows:
        line, ratios[key] = ratio_line(w, head, c, ref, name, unit, op, target)
        L.append(line)

    def walls(recs):
        return " ".join("%.2f" % r["wall_s"] for r in recs)

    def spread(what, recs, ref, ref_name, mine):
        ref_recs, my_recs = [r[ref] for r in recs], [r[mine] for r in recs]
        return "%s rounds (s): %s %s | cairn %s | ratio %s" % (
            what, ref_name, walls(ref_recs), walls(my_recs),
            " ".join("%.2f" % (a["wall_s"] / b["wall_s"]) for a, b in zip(ref_recs, my_recs)))

    if nr > 1:
        L += [
            "",
            "msg/s above: messages / each side's median wall time over %d rounds%s;" % (
                nr, " (the lower middle one for an even count)" if nr % 2 == 0 else ""),
            "odd rounds ran the baseline first, even rounds cairn first. Per round (ratio = baseline wall / cairn wall):",
        ]
    else:
        L += ["", "one round per side (--rounds 1), the baseline first (ratio = baseline wall / cairn wall):"]
    L += [
        "  " + spread("snapshot", rounds["snapshot"], "consume", "consumer", "snap"),
        "  " + spread("restore", rounds["restore"], "produce", "producer", "restore"),
    ]
    if nr > 1:
        L.append("  median rounds: consumer %d, cairn snapshot %d, producer %d, cairn restore %d" % (
            rounds["median_consume"], rounds["median_snap"], rounds["median_produce"], rounds["median_restore"]))
    dropped = [r.get(side + "_page_cache_dropped") for r in rounds["restore"] for side in ("baseline", "cairn")]
    L.append("  before every restore run: %s, the repository read back in" % cache_note(dropped))
    mb = R["fill"]["bytes"] / MB
    L += [
        "",
        "%d records of 1 KiB (key k<i>, value 1024 pseudo-random chars) over %d partitions, %.0f MB of keys+values;"
        % (R["messages"], R["partitions"], mb),
        "  filled at %.0f msg/s; day 2 added %d records (1%%) at %.0f msg/s" % (
            R["fill"]["messages_per_s"], R["day2_messages"], R["fill2"]["messages_per_s"]),
        "%-16s %8s %8s %9s %8s %9s" % ("wall-clock", "s", "cpu s", "msg/s", "MB/s", "peak RSS"),
    ]
    if nr > 1:
        L[-1] += "   (first four rows: each one's median round)"
    for name, r, n in (("consumer", R["consume"], R["messages"]),
                       ("cairn snapshot 1", R["snap1"], R["messages"]),
                       ("idem. producer", R["produce"], R["messages"]),
                       ("cairn restore", R["restore"], R["messages"]),
                       ("cairn snapshot 2", R["snap2"], R["messages"] + R["day2_messages"])):
        L.append("%-16s %8.2f %8.2f %9.0f %8.1f %6.0f MiB" % (
            name, r["wall_s"], r["cpu_s"], n / r["wall_s"], n * R["fill"]["bytes"] / R["messages"] / MB / r["wall_s"],
            r["rss_kib"] / 1024))
    L += [
        "baselines' own clocks (client creation to last delivery / end of partition): consumer %.2f s,"
        " producer %.2f s" % (R["consume"]["seconds"], R["produce"]["seconds"]),
        "cairn snapshot 1%s: read %.1f MiB, added %.1f MiB (%d of %d chunks new); snapshot 2: read %.1f MiB,"
        " added %.3f MiB" % (
            " (round 1, the one kept)" if nr > 1 else "",
            kept1["summary"]["bytes_read"] / MiB, a1 / MiB, kept1["summary"]["chunks_new"],
            kept1["summary"]["chunks_total"], R["snap2"]["summary"]["bytes_read"] / MiB, a2 / MiB),
        "  (2nd adds %.2f%% of the 1st; its new records alone are %.2f%% of the records)" % (
            100.0 * a2 / a1 if a1 else float("inf"), 100.0 * R["day2_messages"] / R["messages"]),
        "restore verified%s: per-partition count and digest of (key, value, timestamp) equal the source's." % (
            " in all %d rounds" % nr if nr > 1 else ""),
        "",
    ] + KAFKA_FETCH_WAIT_NOTE.splitlines()
    L += [
        "",
        "Ratios: msg/s from wall-clock of the whole process (cairn: repository open, verification, etc. included);",
        "the reference rows use the same librdkafka settings as cairn (examples/kafka_baseline.rs).",
        "Brokers: %s, in memory, one process per broker: the source, and a fresh one for every producer" % (
            R.get("tansu_version") or "tansu"),
        "and every restore run, stopped right after it.",
    ]
    text = "\n".join(L)
    print(text)
    m = print_machine()
    out = {"command": "kafka", "messages": R["messages"], "partitions": R["partitions"],
           "machine": m,
           "versions": {"cairn": tool_version([cairn, "--version"]), "tansu": R.get("tansu_version")},
           "results": R, "cairn_vs_reference": ratios}
    path = os.path.join(work, "bench-kafka.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)
