"""`scripts/bench core`: cairn, restic and borg on the same two corpus generations
(init, first snapshot, second snapshot, restore), one tool after the other."""
import json
import os
import subprocess
import sys
import tempfile
import time

from bench_lib.common import (
    MB, MiB, TOOLS, BenchError, Borg, Cairn, Restic, build_cairn, du, fmt, log, make_corpora, place_corpus,
    print_machine, rm, tree_bytes, verdict, versions)

# (column key, heading, unit, target op, target value) for cairn/restic ratios.
COLUMNS = [
    ("snap1_mbps", "1st snapshot", "MB/s", ">=", 2.0),
    ("snap2_mbps", "2nd snapshot", "MB/s", None, None),
    ("added2_mib", "added by 2nd", "MiB", "<=", 0.5),
    ("restore_mbps", "restore", "MB/s", ">=", 1.5),
    ("rss_snap_mib", "peak RSS snap", "MiB", "<=", 1.0),
    ("rss_restore_mib", "peak RSS rest", "MiB", "<=", 1.0),
    ("repo0_mib", "repo after gen0", "MiB", "<=", 1.05),
    ("repo1_mib", "repo after gen1", "MiB", None, None),
]


def bench_tool(tool, staging0, staging1, corpus, work, keep):
    log("%s: init" % tool.name)
    rm(tool.repo)
    tool.init()
    r = {"tool": tool.name, "note": tool.note}

    place_corpus(staging0, corpus)
    size0 = tree_bytes(corpus)
    log("%s: snapshot gen 0 (%.0f MiB)" % (tool.name, size0 / MiB))
    wall, rss1, cpu1, _ = tool.snapshot(corpus, 1)
    repo0 = du(tool.repo)
    r.update(snap1_s=wall, snap1_mbps=size0 / MB / wall, snap1_cpu_s=cpu1, rss_snap1_kib=rss1,
             repo0_bytes=repo0, repo0_mib=repo0 / MiB)

    place_corpus(staging1, corpus)
    size1 = tree_bytes(corpus)
    log("%s: snapshot gen 1 (%.0f MiB)" % (tool.name, size1 / MiB))
    wall, rss2, cpu2, _ = tool.snapshot(corpus, 2)
    repo1 = du(tool.repo)
    r.update(snap2_s=wall, snap2_mbps=size1 / MB / wall, snap2_cpu_s=cpu2, rss_snap2_kib=rss2,
             repo1_bytes=repo1, repo1_mib=repo1 / MiB, added2_bytes=repo1 - repo0,
             added2_mib=(repo1 - repo0) / MiB, rss_snap_mib=max(rss1, rss2) / 1024)

    target = os.path.join(work, "restore-" + tool.name)
    rm(target)
    os.makedirs(target)
    log("%s: restore latest" % tool.name)
    wall, rss3, cpu3, _ = tool.restore(target)
    restored = os.path.join(target, corpus.lstrip("/"))
    if not os.path.isdir(restored):
        raise BenchError("%s restore: %s does not exist; restore target holds: %s" % (
            tool.name, restored, sorted(os.listdir(target))))
    rbytes = tree_bytes(restored)
    r.update(restore_s=wall, restore_mbps=rbytes / MB / wall, restore_cpu_s=cpu3,
             rss_restore_mib=rss3 / 1024, restored_bytes=rbytes)
    log("%s: verify restore against gen 1" % tool.name)
    d = subprocess.run(["diff", "-r", "-q", staging1, restored], stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True)
    if d.returncode != 0 or rbytes != size1:
        raise BenchError("%s restore differs from generation 1 (%d restored bytes, %d expected):\n%s" % (
            tool.name, rbytes, size1, d.stdout[-4000:]))
    r["restore_verified"] = True
    r["corpus_gen0_bytes"], r["corpus_gen1_bytes"] = size0, size1
    r["reported"] = tool.reported
    if not keep:
        rm(target)
    return r


def report(results, args, work):
    tools = [t for t in TOOLS if t in results]
    lines = []
    w = 22
    lines.append("%-*s" % (w, "") + "".join("%14s" % t for t in tools))
    for key, head, unit, _, _ in COLUMNS:
        lines.append("%-*s" % (w, "%s (%s)" % (head, unit)) + "".join(
            "%14s" % fmt(results[t][key], unit) for t in tools))
    ratios = {}
    if "cairn" in results and "restic" in results:
        lines.append("")
        lines.append("%-*s%14s%14s%8s" % (w, "cairn / restic", "ratio", "target", ""))
        for key, head, unit, op, target in COLUMNS:
            base = results["restic"][key]
            ratio = results["cairn"][key] / base if base else float("inf")
            v = verdict(ratio, op, target)
            ratios[key] = {"ratio": ratio, "target": None if op is None else "%s %.2f" % (op, target),
                           "result": v or None}
            lines.append("%-*s%14s%14s%8s" % (w, head, "%.2fx" % ratio,
                                             "" if op is None else "%s %.2fx" % (op, target), v))
    lines.append("")
    lines.append("corpus: make-corpus --size-mb %d, gen 0 %.1f MiB, gen 1 %.1f MiB (same path %s)" % (
        args.size_mb, results[tools[0]]["corpus_gen0_bytes"] / MiB,
        results[tools[0]]["corpus_gen1_bytes"] / MiB, os.path.join(work, "corpus")))
    lines.append("MB/s = 10^6 bytes of corpus per wall-clock second; repo sizes by du -sb (caches excluded);")
    lines.append("peak RSS by /usr/bin/time %M (snapshot: max of both snapshots). Steps run per tool in the")
    lines.append("same order (init, gen 0, gen 1, restore); page cache not dropped, the corpus is freshly")
    lines.append("copied (warm) before each snapshot. Restores verified byte-identical with diff -r.")
    for t in tools:
        lines.append("  %-7s %s" % (t, results[t]["note"]))
    text = "\n".join(lines)
    print(text)
    m = print_machine()
    out = {
        "command": "core",
        "size_mb": args.size_mb,
        "machine": m,
        "versions": versions(tools, results),
        "results": results,
        "cairn_vs_restic": ratios,
    }
    path = os.path.join(work, "bench-core.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)


def core(args):
    root = subprocess.run(["git", "-C", os.path.dirname(os.path.abspath(__file__)), "rev-parse",
                           "--show-toplevel"], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()
    make_corpus = os.path.join(root, "..", "shared", "bench", "make-corpus")
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    bad = [t for t in tools if t not in TOOLS]
    if bad or not tools:
        print("bench: unknown tool(s) %s; choose from %s" % (bad, ",".join(TOOLS)), file=sys.stderr)
        return 2
    if not os.access("/usr/bin/time", os.X_OK):
        print("bench: /usr/bin/time is missing (apt-get install time)", file=sys.stderr)
        return 1
    if not os.path.exists(make_corpus):
        print("bench: %s not found" % make_corpus, file=sys.stderr)
        return 1

    if args.workdir:
        work = os.path.abspath(args.workdir)
        os.makedirs(work, exist_ok=True)
    else:
        work = tempfile.mkdtemp(prefix="cairn-bench-", dir="/tmp")
    log("workdir %s" % work)

    cairn_bin = build_cairn(root) if "cairn" in tools else None
    for t, b in (("restic", "/usr/bin/restic"), ("borg", "/usr/bin/borg")):
        if t in tools and not os.access(b, os.X_OK):
            print("bench: %s not found at %s (apt-get install %s)" % (t, b, "borgbackup" if t == "borg" else t),
                  file=sys.stderr)
            return 1

    staging0 = os.path.join(work, "corpus-gen0")
    staging1 = os.path.join(work, "corpus-gen1")
    corpus = os.path.join(work, "corpus")
    scratch = [staging0, staging1, corpus] + [os.path.join(work, n) for n in (
        "repo-cairn", "repo-restic", "repo-borg", "cache-cairn", "cache-restic", "borg-base",
        "restore-cairn", "restore-restic", "restore-borg")]
    status = 0
    try:
        make_corpora(make_corpus, ((0, staging0), (1, staging1)), args.size_mb)
        results = {}
        for t in TOOLS:
            if t not in tools:
                continue
            tool = {"cairn": lambda: Cairn(work, cairn_bin), "restic": lambda: Restic(work),
                    "borg": lambda: Borg(work)}[t]()
            t0 = time.perf_counter()
            results[t] = bench_tool(tool, staging0, staging1, corpus, work, args.keep)
            results[t]["bin"] = tool.bin
            log("%s: done in %.0f s" % (t, time.perf_counter() - t0))
            if not args.keep:
                rm(tool.repo)
        report(results, args, work)
    except BenchError as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    except subprocess.CalledProcessError as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for p in scratch:
                rm(p)
            log("removed temporary data; results remain in %s" % work)
    return status
