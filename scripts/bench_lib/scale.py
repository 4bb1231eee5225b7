"""`scripts/bench scale`: cairn and restic on a tree of many small files (issue 29): three
days of snapshots and a restore, a growth series of snapshots, and the cost of one
cheap command, in one run, every timed comparison alternating which tool goes first."""
import json
import os
import random
import subprocess
import sys
import time

from bench_lib.common import (
    MB, MiB, BenchError, build_cairn, du, fmt, log, make_workdir, median_round, need, print_machine, repo_root,
    restic_summary, rm, run, settle_page_cache, tool_version, verdict)

PASSWORD = "bench"
FILES_PER_DIR = 40
SEGMENT = 16 * MiB
# Sizes: log-normal around a median of 1.5 KB (sigma 1.5, mean ~4.6 KB), capped at 8 MiB, as in a
# source tree or /usr: most files are a few KB, a long tail reaches megabytes. Plus a few large
# files (an archive, a database file, a log), whatever --files is.
MEDIAN_SIZE = 1500
SIGMA = 1.5
CAP = 8 * MiB
LARGE = ((96 * MiB, "text"), (48 * MiB, "binary"), (24 * MiB, "mixed"))
BINARY_SHARE = 0.25  # files of random bytes (compiled code, images, compressed data)
# Text: random bytes mapped onto a skewed alphabet (spaces, common letters, punctuation), so that
# every file is unique (no dedup across files, as in a real tree) but compresses like text does.
_ALPHABET = (b" " * 40 + b"e" * 14 + b"t" * 10 + b"a" * 9 + b"o" * 9 + b"i" * 8 + b"n" * 8 + b"s" * 7
             + b"r" * 7 + b"h" * 6 + b"l" * 5 + b"d" * 4 + b"c" * 4 + b"u" * 3 + b"m" * 3 + b"\n" * 8
             + b"_" * 4 + b"(){};=.,:\"'/-*#<>" * 2 + b"pfgywbvk0123456789" * 3 + b"\t" * 6)
TEXT_TABLE = bytes.maketrans(bytes(range(256)), (_ALPHABET * 2)[:256])


# --- the tree ---------------------------------------------------------------

def content(rng, size, kind):
    if kind == "binary":
        return rng.randbytes(size)
    if kind == "mixed":
        half = size // 2
        return rng.randbytes(half).translate(TEXT_TABLE) + rng.randbytes(size - half)
    return rng.randbytes(size).translate(TEXT_TABLE)


def draw_size(rng):
    return max(0, min(CAP, int(rng.lognormvariate(0, SIGMA) * MEDIAN_SIZE)))


def file_path(i):
    d = i // FILES_PER_DIR
    return os.path.join("%03d" % (d // 100), "%02d" % (d % 100), "f%07d.%s" % (i, "ctxhsoa"[i % 7]))


def write_file(path, data):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def make_tree(tree, files, seed):
    """Write `files` small files plus LARGE into `tree`, deterministically from `seed`.
    Returns (bytes, number of files)."""
    rm(tree)
    os.makedirs(tree)
    rng = random.Random(seed)
    t0 = time.perf_counter()
    total = 0
    made = set()
    for i in range(files):
        p = os.path.join(tree, file_path(i))
        d = os.path.dirname(p)
        if d not in made:
            os.makedirs(d, exist_ok=True)
            made.add(d)
        size = draw_size(rng)
        kind = "binary" if rng.random() < BINARY_SHARE else "text"
        write_file(p, content(rng, size, kind))
        total += size
    os.makedirs(os.path.join(tree, "large"))
    for n, (size, kind) in enumerate(LARGE):
        write_file(os.path.join(tree, "large", "big%d.%s" % (n, kind)), content(rng, size, kind))
        total += size
    log("tree: %d files + %d large, %.0f MiB, written in %.0f s" % (
        files, len(LARGE), total / MiB, time.perf_counter() - t0))
    return total, files + len(LARGE)


def edit_files(tree, files, rng, n):
    """Change `n` of the small files in place (64 bytes overwritten at a random place, a line
    appended), as edits do. Returns [(path, old bytes)] to undo it."""
    undo = []
    for i in rng.sample(range(files), n):
        p = os.path.join(tree, file_path(i))
        with open(p, "rb") as f:
            old = f.read()
        at = rng.randrange(max(1, len(old)))
        new = old[:at] + content(rng, 64, "text") + old[at + 64:] + b"changed\n"
        write_file(p, new)
        undo.append((p, old))
    return undo


def day2_change(tree, files, seed):
    """0.1% of the files changed, 0.05% added (in a new directory). Returns the undo record."""
    rng = random.Random("%s/day2" % seed)
    undo = edit_files(tree, files, rng, max(1, files // 1000))
    new_dir = os.path.join(tree, "new")
    os.makedirs(new_dir, exist_ok=True)
    added = max(1, files // 2000)
    for k in range(added):
        write_file(os.path.join(new_dir, "n%06d.c" % k), content(rng, draw_size(rng), "text"))
    return {"edited": undo, "new_dir": new_dir, "changed": len(undo), "added": added}


def undo_change(change):
    for p, old in change["edited"]:
        write_file(p, old)
    rm(change["new_dir"])


def count_tree(path):
    n = total = 0
    for root, _, names in os.walk(path):
        for f in names:
            n += 1
            total += os.lstat(os.path.join(root, f)).st_size
    return n, total


# --- the tools --------------------------------------------------------------

class ScaleTool:
    """One tool's commands on one repository, each run under /usr/bin/time by common.run:
    (wall s, peak RSS KiB, CPU s, stdout)."""
    name = ""

    def __init__(self, work, tag):
        self.work = work
        self.repo = os.path.join(work, "repo-%s-%s" % (self.name, tag))
        self.cache = os.path.join(work, "cache-%s-%s" % (self.name, tag))
        self.env = dict(os.environ)

    def fresh(self):
        """A new repository, then one `snapshots` untimed, so that the first timed command does
        not pay the key derivation that the cold per-command runs measure: cairn's `init` has
        filled its key cache itself since 07da211, the binary of the recorded figures did not."""
        rm(self.repo)
        rm(self.cache)
        r = self.init()
        self.snapshots()
        return r

    def c(self, *argv, **kw):
        """The tool's command argv[0] on this repository, with the rest of argv."""
        return run([self.bin] + list(argv[:1]) + ["-r", self.repo] + list(argv[1:]), env=self.env, **kw)

    def snapshot_ids(self):
        snaps = json.loads(self.c("snapshots", "--json", "-q")[3])
        return [s["id"] for s in sorted(snaps, key=lambda s: s["time"])]

    def snapshots(self):
        return self.c("snapshots", "-q")

    def check(self):
        return self.c("check", "-q")

    def forget(self, sid):
        return self.c("forget", sid, "-q")

    def prune(self):
        return self.c("prune", "-q")

    def restore(self, target):
        return self.c("restore", "latest", "--target", target, "-q")

    def remove(self):
        rm(self.repo)
        rm(self.cache)


class CairnTool(ScaleTool):
    name = "cairn"

    def __init__(self, work, tag, binary, password_file):
        super().__init__(work, tag)
        self.bin = binary
        for v in ("CAIRN_PASSWORD", "CAIRN_REPOSITORY", "CAIRN_NO_KEY_CACHE", "CAIRN_IDENTITY_FILE", "CAIRN_PLAN"):
            self.env.pop(v, None)
        # A password file, so that the unlocked-key cache is used (spec/repository.md §9).
        self.env.update(CAIRN_PASSWORD_FILE=password_file, CAIRN_CACHE_DIR=self.cache)

    def init(self):
        return self.c("init", "-q")  # the default KDF work factor

    def snapshot(self, tree):
        r = self.c("snapshot", tree, "--json", "-q")
        try:
            j = json.loads(r[3])
        except ValueError as e:
            raise BenchError("cairn snapshot printed no JSON summary (%s): %r" % (e, r[3][-2000:]))
        return r, {"bytes_added": j.get("bytes_added"), "bytes_read": j.get("bytes_read"),
                   "files_unchanged": j.get("files_unchanged"), "files": j.get("files")}

    def stats(self):
        return self.c("stats", "-q")

    def push_segment(self, path):
        return self.c("wal-push", path, "-q")

    def forget_key_cache(self):
        self.c("key", "forget-cache", "-q")


class ResticTool(ScaleTool):
    name = "restic"

    def __init__(self, work, tag, password_file):
        super().__init__(work, tag)
        self.bin = "/usr/bin/restic"
        for v in ("RESTIC_PASSWORD", "RESTIC_REPOSITORY", "RESTIC_PASSWORD_COMMAND"):
            self.env.pop(v, None)
        self.env.update(RESTIC_PASSWORD_FILE=password_file, RESTIC_CACHE_DIR=self.cache)

    def init(self):
        return self.c("init")

    def snapshot(self, tree):
        r = self.c("backup", tree, "--json", "-q")
        summary = restic_summary(r[3])
        return r, {"bytes_added": summary.get("data_added"), "bytes_read": None,
                   "files_unchanged": summary.get("files_unmodified"),
                   "files": summary.get("total_files_processed")}

    def stats(self):
        # one snapshot: restic's default mode walks every snapshot's trees, `latest` only one
        return self.c("stats", "latest", "-q")

    def push_segment(self, path):
        return self.c("backup", "--stdin", "--stdin-filename", os.path.basename(path), "-q", stdin_path=path)

    def forget_key_cache(self):
        pass  # restic keeps no unlocked key: every command derives it


def rec(r, **extra):
    wall, rss, cpu, _ = r
    d = {"wall_s": wall, "rss_kib": rss, "cpu_s": cpu}
    d.update(extra)
    return d


def order(tools, i):
    """Alternate which tool goes first: cairn first when i is even."""
    return tools if i % 2 == 0 else tools[::-1]


def median_of(records):
    return records[median_round(records)] if records else None


# --- part 1: three days and a restore ---------------------------------------

def restore_and_verify(tool, tree, work, size, nfiles):
    target = os.path.join(work, "restore-" + tool.name)
    rm(target)
    os.makedirs(target)
    dropped = settle_page_cache(tool.repo)
    r = tool.restore(target)
    restored = os.path.join(target, tree.lstrip("/"))
    n, total = count_tree(restored) if os.path.isdir(restored) else (0, 0)
    if (n, total) != (nfiles, size):
        raise BenchError("%s restore: %d files, %d bytes in %s; the tree has %d files, %d bytes" % (
            tool.name, n, total, restored, nfiles, size))
    d = subprocess.run(["diff", "-r", "-q", tree, restored], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       text=True)
    if d.returncode != 0:
        raise BenchError("%s restore differs from the tree:\n%s" % (tool.name, d.stdout[-4000:]))
    rm(target)
    return rec(r, mbps=size / MB / r[0], cache_dropped=dropped)


def days(tools, tree, work, files, seed, rounds, size1, nfiles1):
    """Per round, in fresh repositories: day 1, the day-2 change, day 2, day 3, restore; each
    step for both tools before the next, the first tool alternating by round."""
    out = {t.name: {"day1": [], "day2": [], "day3": [], "restore": []} for t in tools}
    for i in range(rounds):
        settle_page_cache(tree)  # the tree in the page cache for both tools, as after a restore it is not
        for t in order(tools, i):
            log("round %d: %s init" % (i + 1, t.name))
            t.fresh()
        for t in order(tools, i):
            log("round %d: %s day 1" % (i + 1, t.name))
            r, rep = t.snapshot(tree)
            out[t.name]["day1"].append(rec(r, mbps=size1 / MB / r[0], repo_bytes=du(t.repo), reported=rep))
        change = day2_change(tree, files, seed)
        nfiles2, size2 = count_tree(tree)
        time.sleep(2.5)  # past cairn's 2 s racy-file window: a nightly snapshot's files are older
        for day in ("day2", "day3"):
            for t in order(tools, i):
                log("round %d: %s %s" % (i + 1, t.name, day.replace("day", "day ")))
                r, rep = t.snapshot(tree)
                out[t.name][day].append(rec(r, mbps=size2 / MB / r[0], repo_bytes=du(t.repo), reported=rep))
        for t in order(tools, i):
            log("round %d: %s restore" % (i + 1, t.name))
            out[t.name]["restore"].append(restore_and_verify(t, tree, work, size2, nfiles2))
        undo_change(change)
        for t in tools:
            t.remove()
        out["changed"], out["added"] = change["changed"], change["added"]
    return out


# --- part 2: the growth series ----------------------------------------------

def series(tools, tree, work, files, seed, points, rounds):
    """Snapshots of the same small change (0.01% of the files edited) into fresh repositories
    until each point; at each point snapshots/check (median of `rounds`), restore, then one more
    snapshot, a forget of the oldest and a prune (so the count stays at the point)."""
    rng = random.Random("%s/series" % seed)
    per_step = max(1, files // 10000)
    out = {t.name: [] for t in tools}
    for t in tools:
        t.fresh()
    count, step = 0, 0

    def one_step():
        nonlocal step
        edit_files(tree, files, rng, per_step)
        last = {}
        for t in order(tools, step):
            r, rep = t.snapshot(tree)
            last[t.name] = rec(r, reported=rep)
        step += 1
        return last

    size, nfiles = None, None
    for p in points:
        log("series: %d snapshots" % p)
        last = None
        while count < p:
            last = one_step()
            count += 1
        nfiles, size = count_tree(tree)
        point = {t.name: {"count": p, "snapshot": last[t.name] if last else None} for t in tools}
        for cmd in ("snapshots", "check"):
            runs = {t.name: [] for t in tools}
            for i in range(rounds):
                for t in order(tools, i):
                    runs[t.name].append(rec(getattr(t, cmd)()))
            for t in tools:
                point[t.name][cmd] = median_of(runs[t.name])
                point[t.name][cmd + "_rounds"] = runs[t.name]
        for t in order(tools, step):
            point[t.name]["restore"] = restore_and_verify(t, tree, work, size, nfiles)
        one_step()
        for t in order(tools, step):
            oldest = t.snapshot_ids()[0]
            point[t.name]["forget"] = rec(t.forget(oldest))
            point[t.name]["prune"] = rec(t.prune())
            point[t.name]["repo_bytes"] = du(t.repo)
        for t in tools:
            out[t.name].append(point[t.name])
    return out, per_step


# --- part 3: one command's cost ---------------------------------------------

def write_segment(path, rng):
    """A 16 MiB file like a WAL segment: records (text-like) and a zeroed tail."""
    used = SEGMENT * 3 // 4
    write_file(path, content(rng, used, "mixed") + bytes(SEGMENT - used))


def per_command(tools, work, seed, rounds):
    """snapshots, stats and a 16 MiB segment pushed (cairn wal-push; restic backup --stdin), cold
    (page cache dropped, key cache empty) then warm, on the series' repositories."""
    rng = random.Random("%s/wal" % seed)
    wal_dir = os.path.join(work, "wal")
    os.makedirs(wal_dir, exist_ok=True)
    out = {t.name: {} for t in tools}
    seg = [0]

    def segment():
        seg[0] += 1
        p = os.path.join(wal_dir, "0000000100000000000000%02X" % seg[0])
        write_segment(p, rng)
        return p

    for cmd in ("snapshots", "stats", "wal-push"):
        runs = {t.name: {"cold": [], "warm": []} for t in tools}
        for i in range(rounds):
            for t in order(tools, i):
                t.forget_key_cache()
                path = segment() if cmd == "wal-push" else None
                dropped = settle_page_cache(*([path] if path else []))
                for state in ("cold", "warm"):
                    if cmd == "wal-push":
                        if state == "warm":
                            path = segment()
                        r = t.push_segment(path)
                    else:
                        r = getattr(t, cmd)()
                    runs[t.name][state].append(rec(r, cache_dropped=dropped if state == "cold" else None))
        for t in tools:
            for state in ("cold", "warm"):
                out[t.name]["%s_%s" % (cmd, state)] = median_of(runs[t.name][state])
                out[t.name]["%s_%s_rounds" % (cmd, state)] = runs[t.name][state]
    return out


# --- the report ---------------------------------------------------------------

def ratio_row(rows, verdicts, head, c, r, unit, op=None, target=None):
    ratio = c / r if r else float("inf")
    v = verdict(ratio, op, target)
    rows.append("%-34s%12s%12s%9s%10s  %s" % (head, fmt(c, unit), fmt(r, unit), "%.2fx" % ratio,
                                             "" if op is None else "%s %.2fx" % (op, target), v))
    if op:
        verdicts.append({"target": head, "cairn": c, "restic": r, "ratio": ratio,
                         "target_ratio": "%s %.2f" % (op, target), "result": v})


def flat_row(rows, verdicts, head, first, last, n0, n1):
    ratio = last / first if first else float("inf")
    v = verdict(ratio, "<=", 1.2)
    rows.append("%-34s%12s%12s%9s%10s  %s" % (head, "%.1f" % (first / 1024), "%.1f" % (last / 1024),
                                             "%.2fx" % ratio, "<= 1.20x", v))
    verdicts.append({"target": head, "first_kib": first, "last_kib": last, "snapshots": [n0, n1],
                     "ratio": ratio, "target_ratio": "<= 1.20", "result": v})


def report(args, res, work, bins):
    lines, verdicts = [], []
    d = res["days"]
    C, R = d["cairn"], d["restic"]
    med = {t: {k: median_of(d[t][k]) for k in ("day1", "day2", "day3", "restore")} for t in ("cairn", "restic")}
    hdr = "%-34s%12s%12s%9s%10s" % ("", "cairn", "restic", "ratio", "target")
    lines.append("== three days (median of %d rounds; tree %d files, %.0f MiB; day 2: %d files changed, %d added)" % (
        args.rounds, res["tree_files"], res["tree_bytes"] / MiB, d["changed"], d["added"]))
    lines.append(hdr)
    mc, mr = med["cairn"], med["restic"]
    ratio_row(lines, verdicts, "day 1 snapshot (MB/s)", mc["day1"]["mbps"], mr["day1"]["mbps"], "MB/s", ">=", 2.0)
    ratio_row(lines, verdicts, "day 2 snapshot (s)", mc["day2"]["wall_s"], mr["day2"]["wall_s"], "s", "<=", 1.0)
    ratio_row(lines, verdicts, "day 3 snapshot (s)", mc["day3"]["wall_s"], mr["day3"]["wall_s"], "s", "<=", 1.0)
    ratio_row(lines, verdicts, "restore (MB/s)", mc["restore"]["mbps"], mr["restore"]["mbps"], "MB/s", ">=", 1.5)
    for k in ("day1", "day2", "day3", "restore"):
        ratio_row(lines, [], "%s CPU (s)" % k.replace("day", "day "), mc[k]["cpu_s"], mr[k]["cpu_s"], "s")
    snap_rss = {t: max(x["rss_kib"] for k in ("day1", "day2", "day3") for x in d[t][k]) / 1024
                for t in ("cairn", "restic")}
    ratio_row(lines, verdicts, "peak RSS snapshot (MiB)", snap_rss["cairn"], snap_rss["restic"], "MiB", "<=", 1.0)
    rest_rss = {t: max(x["rss_kib"] for x in d[t]["restore"]) / 1024 for t in ("cairn", "restic")}
    ratio_row(lines, verdicts, "peak RSS restore (MiB)", rest_rss["cairn"], rest_rss["restic"], "MiB", "<=", 1.0)
    for k in ("day1", "day2", "day3"):
        ratio_row(lines, [], "  peak RSS %s (MiB)" % k.replace("day", "day "), mc[k]["rss_kib"] / 1024,
                  mr[k]["rss_kib"] / 1024, "MiB")
    for k in ("day1", "day2", "day3"):
        ca = C[k][median_round(C[k])]["reported"]["bytes_added"] or 0
        ra = R[k][median_round(R[k])]["reported"]["bytes_added"] or 0
        ratio_row(lines, [], "added %s, own JSON (MiB)" % k.replace("day", "day "), ca / MiB, ra / MiB, "MiB")
    for k in ("day1", "day3"):
        ratio_row(lines, [], "repository after %s (MiB)" % k.replace("day", "day "),
                  mc[k]["repo_bytes"] / MiB, mr[k]["repo_bytes"] / MiB, "MiB")
    un = mc["day3"]["reported"]["files_unchanged"], mr["day3"]["reported"]["files_unchanged"]
    lines.append("files taken unread from the parent on day 3: cairn %s, restic %s" % un)
    for k in ("day1", "day2", "day3", "restore"):
        lines.append("  %-8s rounds (s): cairn %s | restic %s" % (k, " ".join("%.2f" % x["wall_s"] for x in C[k]),
                                                                " ".join("%.2f" % x["wall_s"] for x in R[k])))

    s = res["series"]
    pts = [p["count"] for p in s["cairn"]]
    lines.append("")
    lines.append("== growth series (each step edits %d files; snapshots, check: median of %d rounds; the rest once)"
                 % (res["series_per_step"], args.rounds))
    lines.append("%-10s%-8s%28s%28s%28s%28s%28s" % ("snapshots", "tool", "snapshot s/MiB", "snapshots s/MiB",
                                                   "check s/MiB", "prune s/MiB", "restore s/MiB"))
    for i, n in enumerate(pts):
        for t in ("cairn", "restic"):
            p = s[t][i]
            cells = []
            for k in ("snapshot", "snapshots", "check", "prune", "restore"):
                x = p.get(k)
                cells.append("%28s" % ("-" if not x else "%.2f / %.0f" % (x["wall_s"], x["rss_kib"] / 1024)))
            lines.append("%-10d%-8s%s" % (n, t, "".join(cells)))
    lines.append("")
    lines.append(hdr)
    for k in ("check", "prune"):
        rss = {t: max(p[k]["rss_kib"] for p in s[t]) / 1024 for t in ("cairn", "restic")}
        ratio_row(lines, verdicts, "peak RSS %s (MiB)" % k, rss["cairn"], rss["restic"], "MiB", "<=", 1.0)
    lines.append("%-34s%12s%12s%9s%10s" % ("cairn peak RSS, flat", "first MiB", "last MiB", "ratio", "target"))
    for k in ("snapshot", "restore", "check", "prune"):
        xs = [p for p in s["cairn"] if p.get(k)]
        if len(xs) >= 2:
            flat_row(lines, verdicts, "%s RSS %d -> %d snapshots" % (k, xs[0]["count"], xs[-1]["count"]),
                     xs[0][k]["rss_kib"], xs[-1][k]["rss_kib"], xs[0]["count"], xs[-1]["count"])

    pc = res["per_command"]
    lines.append("")
    lines.append("== one command (median of %d rounds; cold: page cache dropped, cairn's key cache emptied)"
                 % args.rounds)
    lines.append("%-34s%12s%12s%9s%10s" % ("CPU s (wall s)", "cairn", "restic", "ratio", "target"))
    for cmd in ("snapshots", "stats", "wal-push"):
        for state in ("cold", "warm"):
            k = "%s_%s" % (cmd, state)
            c, r = pc["cairn"][k], pc["restic"][k]
            ratio_row(lines, verdicts, "%s %s CPU (s)" % (cmd, state), c["cpu_s"], r["cpu_s"], "s", "<=", 1.0)
            lines.append("%-34s%12s%12s" % ("    wall (s), peak RSS (MiB)", "%.2f %.0f" % (c["wall_s"], c["rss_kib"] / 1024),
                                            "%.2f %.0f" % (r["wall_s"], r["rss_kib"] / 1024)))
    lines.append("")
    lines.append("cairn: its default KDF (scrypt, work factor 18) behind its unlocked-key cache (a password file),")
    lines.append("filled by one untimed `snapshots` after each init (restic runs one too);")
    lines.append("restic: its own default key derivation (scrypt, calibrated at init), paid by every command.")
    lines.append("restic's wal-push equivalent is `backup --stdin` of the same 16 MiB file; its stats is")
    lines.append("`stats latest` (its default mode over one snapshot). `added`: cairn's bytes_added (stored bytes),")
    lines.append("restic 0.14's data_added (bytes before compression). Snapshots read a page-cache-warm tree;")
    lines.append("restores start with the page cache dropped (root) and the repository read back in, and")
    lines.append("are verified (file count, bytes, diff -r). MB/s = 10^6 bytes of the tree per wall second.")
    passed = sum(1 for v in verdicts if v["result"] == "PASS")
    lines.append("targets: %d PASS, %d FAIL" % (passed, len(verdicts) - passed))
    print("\n".join(lines))
    m = print_machine()
    out = {"command": "scale", "files": args.files, "seed": args.seed, "series": pts, "rounds": args.rounds,
           "machine": m, "versions": {"cairn": tool_version([bins["cairn"], "--version"]),
                                      "restic": tool_version(["/usr/bin/restic", "version"])},
           "medians": med, "targets": verdicts, "results": res}
    path = os.path.join(work, "bench-scale.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    print("\nJSON: %s" % path)


def parse_series(text):
    try:
        pts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        pts = []
    return pts if pts and pts[0] >= 1 else None


def scale(args):
    pts = parse_series(args.series)
    if pts is None:
        print("bench: --series wants snapshot counts like 1,10,50,100 (got %r)" % args.series, file=sys.stderr)
        return 2
    if args.files < 100 or args.rounds < 1:
        print("bench: scale needs --files >= 100 and --rounds >= 1", file=sys.stderr)
        return 2
    if not need(["/usr/bin/time", "/usr/bin/restic"]):
        print("bench: install them with scripts/setup bench", file=sys.stderr)
        return 1
    root = repo_root()
    cairn_bin = build_cairn(root)
    work = make_workdir(args, "cairn-bench-scale-")
    tree = os.path.join(work, "tree")
    pw = os.path.join(work, "password")
    with open(os.open(pw, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write(PASSWORD + "\n")
    os.chmod(pw, 0o600)
    status = 0
    tools = []
    try:
        size, nfiles = make_tree(tree, args.files, args.seed)
        time.sleep(2.5)  # older than cairn's racy-file window by the first snapshot
        res = {"tree_files": nfiles, "tree_bytes": size}
        t0 = time.perf_counter()
        tools = [CairnTool(work, "days", cairn_bin, pw), ResticTool(work, "days", pw)]
        res["days"] = days(tools, tree, work, args.files, args.seed, args.rounds, size, nfiles)
        log("three days took %.0f s" % (time.perf_counter() - t0))
        t0 = time.perf_counter()
        tools = [CairnTool(work, "series", cairn_bin, pw), ResticTool(work, "series", pw)]
        res["series"], res["series_per_step"] = series(tools, tree, work, args.files, args.seed, pts, args.rounds)
        log("series took %.0f s" % (time.perf_counter() - t0))
        t0 = time.perf_counter()
        res["per_command"] = per_command(tools, work, args.seed, args.rounds)
        log("per-command costs took %.0f s" % (time.perf_counter() - t0))
        with open(os.path.join(work, "bench-scale-raw.json"), "w") as f:
            json.dump(res, f, indent=2)  # the figures, even if the report below fails
        report(args, res, work, {"cairn": cairn_bin})
    except (BenchError, subprocess.CalledProcessError) as e:
        print("bench: FAILED: %s" % e, file=sys.stderr)
        status = 1
    finally:
        if args.keep:
            log("--keep: leaving everything in %s" % work)
        else:
            for t in tools:
                t.remove()
            for n in ("tree", "wal", "password", "restore-cairn", "restore-restic"):
                rm(os.path.join(work, n))
            log("removed temporary data; results remain in %s" % work)
    return status
