"""`scripts/bench s3`: cairn and restic snapshotting and restoring one corpus through
a local s3s-fs server, with the S3 requests each of them makes."""
import json
import os
import re
import subprocess
import sys
import time

from bench_lib.common import (
    MB, MiB, BenchError, Cairn, Restic, build_cairn, cache_note, du, fmt, free_port, log, make_corpora,
    make_workdir, median_round, need, print_machine, repo_root, rm, settle_page_cache, tool_version, tree_bytes,
    verdict, versions, wait_port)

S3S_FS = os.path.expanduser("~/.cargo/bin/s3s-fs")


def request_counts(log_path, offset):
    """S3 operations s3s-fs logged since byte `offset`: ({op: count}, new offset)."""
    time.sleep(0.3)
    with open(log_path, "rb") as f:
        f.seek(offset)
        data = f.read().decode("utf-8", "replace")
        end = f.tell()
    counts = {}
    for op in re.findall(r"resolved route, op: ([A-Za-z0-9]+)", data):
        counts[op] = counts.get(op, 0) + 1
    return counts, end


def s3(args):
    root = repo_root()
    make_corpus = os.path.join(root, "..", "shared", "bench", "make-corpus")
    if args.rounds < 1:
        print("bench: s3 needs --rounds >= 1 (got %d)" % args.rounds, file=sys.stderr)
        return 2
    if not need(["/usr/bin/time", "/usr/bin/restic", S3S_FS]):
        return 1
    if not os.path.exists(make_corpus):
        print("bench: %s not found" % make_corpus, file=sys.stderr)
        return 1
    cairn_bin = build_cairn(root)
    work = make_workdir(args, "cairn-bench-s3-")
    corpus = os.path.join(work, "corpus")
    s3root = os.path.join(work, "s3")
    slog = os.path.join(work, "s3s-fs.log")
    scratch = [corpus, s3root, slog] + [os.path.join(work, n) for n in (
        "cache-cairn", "cache-restic", "restore-cairn", "restore-restic")]
    port = free_port()
    key, secret = "cairnbench", "cairnbenchsecret"
    server = None
    status = 0
    try:
        make_corpora(make_corpus, ((0, corpus),), args.size_mb)
        size = tree_bytes(corpus)
        rm(s3root)
        os.makedirs(os.path.join(s3root, "bucket"))
        log("s3s-fs on 127.0.0.1:%d (requests logged to %s)" % (port, slog))
        with open(slog, "wb") as lf:
            server = subprocess.Popen([S3S_FS, "--host", "127.0.0.1", "--port", str(port), "--access-key", key,
                                       "--secret-key", secret, s3root], stdout=lf, stderr=subprocess.STDOUT,
                                      env=dict(os.environ, RUST_LOG="s3s::ops=debug,s3s_fs=info"))
        wait_port(port, server)
        offset = 0
        results, tools = {}, {}
        for name in ("cairn", "restic"):
            if name == "cairn":
                tool = Cairn(work, cairn_bin)
                tool.repo = "s3://bucket/cairn"
                tool.env.update(AWS_ENDPOINT_URL="http://127.0.0.1:%d" % port, AWS_ACCESS_KEY_ID=key,
                                AWS_SECRET_ACCESS_KEY=secret, AWS_REGION="us-east-1")
            else:
                tool = Restic(work)
                tool.repo = "s3:http://127.0.0.1:%d/bucket/restic" % port
                tool.env.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret)
            for v in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION") + (
                    ("AWS_ENDPOINT_URL", "AWS_REGION") if name == "restic" else ()):
                tool.env.pop(v, None)
            r = {"tool": name, "note": tool.note, "repo": tool.repo, "requests": {}}
            log("%s: init %s" % (name, tool.repo))
            tool.init()
            r["requests"]["init"], offset = request_counts(slog, offset)
            settled = settle_page_cache(corpus)
            log("%s: snapshot (%.0f MiB, round 1 of %d)" % (name, size / MiB, args.rounds))
            wall, rss, cpu, _ = tool.snapshot(corpus, 1)
            r["snapshot_rounds"] = [{"round": 1, "snap_s": wall, "snap_cpu_s": cpu, "rss_snap_mib": rss / 1024,
                                     "page_cache_dropped": settled}]
            r["stored_bytes"] = du(os.path.join(s3root, "bucket", name))
            r["requests"]["snapshot"], offset = request_counts(slog, offset)
            r["reported"] = tool.reported
            r["bin"] = tool.bin
            r["restore_rounds"] = []
            results[name] = r
            tools[name] = tool

        # More snapshot rounds, alternating which tool goes first (restic first in even rounds), each
        # into a fresh prefix that is removed afterwards, so that nothing deduplicates against an
        # earlier round. Round 1's repositories above are the ones kept for the restores.
        for i in range(2, args.rounds + 1):
            for name in (("cairn", "restic") if i % 2 == 1 else ("restic", "cairn")):
                tool, r = tools[name], results[name]
                kept = tool.repo
                prefix = "%s-round-%d" % (name, i)
                tool.repo = kept.replace("/bucket/%s" % name, "/bucket/%s" % prefix)
                try:
                    tool.init()
                    settled = settle_page_cache(corpus)
                    log("%s: snapshot (%.0f MiB, round %d of %d, fresh prefix)" % (name, size / MiB, i, args.rounds))
                    wall, rss, cpu, _ = tool.snapshot(corpus, i)
                finally:
                    tool.repo = kept
                    rm(os.path.join(s3root, "bucket", prefix))
                    _, offset = request_counts(slog, offset)
                r["snapshot_rounds"].append({"round": i, "snap_s": wall, "snap_cpu_s": cpu,
                                             "rss_snap_mib": rss / 1024, "page_cache_dropped": settled})
        for name, r in results.items():
            runs = r["snapshot_rounds"]
            m = runs[median_round(runs, "snap_s")]
            r.update(snap_s=m["snap_s"], snap_mbps=size / MB / m["snap_s"], snap_cpu_s=m["snap_cpu_s"],
                     rss_snap_mib=m["rss_snap_mib"], snap_median_round=m["round"])

        # Restores in alternating rounds (cairn first in odd rounds); each into a fresh directory,
        # all kept until the end so that no restore runs on a file system busy freeing the last one.
        for i in range(1, args.rounds + 1):
            for name in (("cairn", "restic") if i % 2 == 1 else ("restic", "cairn")):
                tool, r = tools[name], results[name]
                target = os.path.join(work, "restore-%s-%d" % (name, i))
                scratch.append(target)
                rm(target)
                os.makedirs(target)
                settled = settle_page_cache(os.path.join(s3root, "bucket", name))
                log("%s: restore latest (round %d of %d)" % (name, i, args.rounds))
                wall, rss, cpu, _ = tool.restore(target)
                requests, offset = request_counts(slog, offset)
                restored = os.path.join(target, corpus.lstrip("/"))
                if not os.path.isdir(restored):
                    raise BenchError("%s restore: %s does not exist" % (name, restored))
                rbytes = tree_bytes(restored)
                d = subprocess.run(["diff", "-r", "-q", corpus, restored], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
                if d.returncode != 0 or rbytes != size:
                    raise BenchError("%s restore differs from the corpus (%d bytes restored, %d expected):\n%s" % (
                        name, rbytes, size, d.stdout[-4000:]))
                r["restore_rounds"].append({"round": i, "restore_s": wall, "restore_cpu_s": cpu,
                                            "page_cache_dropped": settled,
                                            "rss_restore_mib": rss / 1024, "restored_bytes": rbytes,
                                            "requests": requests})
        for name, r in results.items():
            runs = r["restore_rounds"]
            m = runs[median_round(runs, "restore_s")]
            r.update(restore_s=m["restore_s"], restore_mbps=m["restored_bytes"] / MB / m["restore_s"],
                     restore_cpu_s=m["restore_cpu_s"], rss_restore_mib=m["rss_restore_mib"],
                     restored_bytes=m["restored_bytes"], restore_median_round=m["round"],
                     restore_verified=True)
            r["requests"]["restore"] = runs[0]["requests"]
        s3_report(results, size, args, work, port)
    except (BenchError, subprocess.CalledProcessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        if server is not None and server.poll() is None:
            server.terminate()
            try:
                server.wait(10)
            except subprocess.TimeoutExpired:
                server.kill()
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for p in scratch:
                rm(p)
            log("removed corpus, bucket and restores; results remain in %s" % work)
    return status


def s3_report(results, size, args, work, port):
    w = 22
    c, r = results["cairn"], results["restic"]
    L = ["%-*s%14s%14s%10s%10s%6s" % (w, "", "cairn", "restic", "ratio", "target", "")]
    ratios = {}
    for key, head, unit, op, target in (("snap_mbps", "snapshot (MB/s)", "MB/s", ">=", 1.5),
                                        ("restore_mbps", "restore (MB/s)", "MB/s", ">=", 1.5),
                                        ("stored_bytes", "stored (MiB)", "MiB", None, None),
                                        ("rss_snap_mib", "peak RSS snap (MiB)", "MiB", None, None),
                                        ("rss_restore_mib", "peak RSS rest (MiB)", "MiB", None, None)):
        cv, rv = c[key], r[key]
        if key == "stored_bytes":
            cv, rv = cv / MiB, rv / MiB
        ratio = cv / rv if rv else float("inf")
        v = verdict(ratio, op, target)
        ratios[key] = {"cairn": cv, "restic": rv, "ratio": ratio,
                       "target": None if op is None else "%s %.2f" % (op, target), "result": v or None}
        L.append("%-*s%14s%14s%10s%10s%6s" % (w, head, fmt(cv, unit), fmt(rv, unit), "%.2fx" % ratio,
                                              "" if op is None else "%s %.2fx" % (op, target), v))
    L.append("")
    for kind, key, head, warm in (
            ("snapshot_rounds", "snap_s", "snapshot rounds (s), alternating which tool goes first, rounds after "
             "the first into a fresh prefix each;", "corpus read in"),
            ("restore_rounds", "restore_s", "restore rounds (s), alternating which tool goes first;",
             "the tool's objects read back in")):
        dropped = [x.get("page_cache_dropped") for t in ("cairn", "restic") for x in results[t][kind]]
        L.append(head)
        L.append("  MB/s above from each tool's median; before each: %s, %s:" % (cache_note(dropped), warm))
        for t in ("cairn", "restic"):
            L.append("  %-7s %s" % (t, " ".join("%.2f" % x[key] for x in results[t][kind])))
    L.append("")
    L.append("S3 requests (s3s-fs log, by operation; snapshot and restore: round 1):")
    for step in ("init", "snapshot", "restore"):
        for t in ("cairn", "restic"):
            counts = results[t]["requests"][step]
            L.append("  %-8s %-7s %5d  %s" % (step, t, sum(counts.values()),
                                               " ".join("%s=%d" % kv for kv in sorted(counts.items()))))
    L.append("")
    L.append("corpus: make-corpus --size-mb %d generation 0, %.1f MiB; %s on 127.0.0.1:%d (local disk)" % (
        args.size_mb, size / MiB, tool_version([S3S_FS, "--version"]) or "s3s-fs", port))
    L.append("MB/s = 10^6 corpus bytes per wall-clock second of the whole command; stored = du -sb of the")
    L.append("tool's prefix in the bucket directory. Restores verified byte-identical with diff -r.")
    text = "\n".join(L)
    print(text)
    m = print_machine()
    out = {"command": "s3", "size_mb": args.size_mb, "corpus_bytes": size,
           "machine": m,
           "versions": versions(["cairn", "restic"], results), "results": results, "cairn_vs_restic": ratios}
    path = os.path.join(work, "bench-s3.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)
