"""The repository-size bound (issue 28, item 3; spec/timelapse.md, "Repository size").

The harness measures, with its own means and every night after the run, how much the
sources hold and how much of it is new -- compressed with zlib at level 1, a stand-in for
cairn's zstd level 3 -- and bounds the repository by

    B(d) = F * (L(d) + sum over the days after the oldest kept snapshot of P(day)
                + sum over the kept snapshots of U(s)) + M(kept)

L(d)  what the sources hold now: the cluster's data directory (without pg_wal), the files,
      the Kafka records (incompressible), the dump of database app;
P(day) what a night found changed since the night before and later snapshots share: the
      data directory's files whose content changed (whole files, plus a tar header each),
      changed files of the tree, new Kafka records and the 64-record block re-stored per
      partition, and the WAL segments archived since (kept from the oldest kept base
      backup on);
U(s)  what only snapshot s holds: the WAL segments archived during its night's run (the
      base backup's own WAL is in its tar, cut by content, not shared with the archive's
      fixed chunks), and the dump of app (a day's changes touch most of it);
M     1 MiB, plus 64 KiB per kept snapshot (manifests, node lists, index entries, proofs).

F = 1.5: zstd level 3 compresses these data at least as well as zlib level 1, and every
stored chunk costs about 150 bytes of pack header and index line besides its data -- at
most 8% at cairn's 2 KiB minimum chunk; a change re-stores the whole content-defined
chunk around it, which the whole changed files counted in P already cover for the data
directory. The rest of F is margin for what the model leaves out (repacking leftovers
between prune runs). A repository above B(d) holds something retention should have let
go, or stores what it already had again."""
import hashlib
import os
import zlib

F = 1.5
M_BASE = 1 << 20
M_PER_SNAPSHOT = 64 << 10
TAR_HEADER = 512


def zsize(b):
    return len(zlib.compress(b, 1))


class FileSet:
    """Files below a root, each remembered by its sha1 with its compressed size, so that a
    night compresses only what changed."""

    def __init__(self, root, skip=()):
        self.root = root
        self.skip = set(skip)
        self.seen = {}      # rel -> sha1
        self.sizes = {}     # sha1 -> compressed size

    def measure(self):
        """(compressed size of all, compressed size of the changed or new, changed count)."""
        now = {}
        total = changed = n = 0
        for d, dirs, files in os.walk(self.root):
            rel_d = os.path.relpath(d, self.root)
            dirs[:] = [x for x in dirs if os.path.normpath(os.path.join(rel_d, x)) not in self.skip]
            for f in files:
                rel = os.path.normpath(os.path.join(rel_d, f))
                if rel in self.skip:
                    continue
                p = os.path.join(d, f)
                if os.path.islink(p):
                    continue
                try:
                    with open(p, "rb") as fh:
                        b = fh.read()
                except OSError:
                    continue  # removed meanwhile
                h = hashlib.sha1(b).hexdigest()
                if h not in self.sizes:
                    self.sizes[h] = zsize(b)
                now[rel] = h
                total += self.sizes[h]
                if self.seen.get(rel) != h:
                    changed += self.sizes[h] + TAR_HEADER
                    n += 1
        self.seen = now
        return total, changed, n


class Bound:
    def __init__(self, pg_data, tree_root, wal_log):
        self.data = FileSet(pg_data, skip=("pg_wal", "postmaster.pid", "postmaster.opts", "pg_stat_tmp",
                                           "log", "pg_replslot"))
        self.tree = FileSet(tree_root)
        self.pg_wal = os.path.join(pg_data, "pg_wal")
        self.wal_log = wal_log
        self.wal_lines = 0
        self.wal_sizes = {}   # segment -> compressed size
        self.kafka_bytes = 0
        self.persist = {}     # day -> P(day)
        self.unique = {}      # day -> U of that night's snapshot
        self.live = 0

    def archived_since(self):
        """Segments the archive_command logged since the last call, and their compressed
        sizes (from pg_wal; a full segment's 16 MiB when PostgreSQL recycled it already)."""
        try:
            with open(self.wal_log) as f:
                lines = f.readlines()
        except OSError:
            return 0
        new = lines[self.wal_lines:]
        self.wal_lines = len(lines)
        total = 0
        for line in new:
            name = os.path.basename(line.strip().partition("  ")[2])
            if name in self.wal_sizes:
                continue  # archived again after a failure: stored once
            try:
                with open(os.path.join(self.pg_wal, name), "rb") as f:
                    self.wal_sizes[name] = zsize(f.read())
            except OSError:
                self.wal_sizes[name] = 16 << 20
            total += self.wal_sizes[name]
        return total

    def before_night(self):
        """WAL archived during the day (by the harness's own switches) belongs to the day."""
        self.pending = self.archived_since()

    def after_night(self, d, app_text, kafka_log):
        """Measure what the night's snapshot saw (the run is over; the sources have not
        changed since it began)."""
        wal_night = self.archived_since()
        data_all, data_new, _ = self.data.measure()
        tree_all, tree_new, _ = self.tree.measure()
        recs = [r for rs in kafka_log.values() for r in rs]
        kbytes = sum(len(r[2] or b"") + len(r[3] or b"") + sum(len(k) + len(v or b"") for k, v in r[4]) + 30
                     for r in recs)
        avg = kbytes / max(1, len(recs))
        k_new = max(0, kbytes - self.kafka_bytes) + int(len(kafka_log) * 64 * avg)
        self.kafka_bytes = kbytes
        app = zsize(app_text)
        self.live = data_all + tree_all + kbytes + app
        self.persist[d] = data_new + tree_new + k_new + getattr(self, "pending", 0) + wal_night
        self.unique[d] = wal_night + app
        self.pending = 0

    def bound(self, oldest_day, kept_days):
        """B(d) for the kept snapshots (their days), the oldest of them on oldest_day."""
        p = sum(v for day, v in self.persist.items() if day > oldest_day)
        u = sum(self.unique.get(day, 0) for day in kept_days)
        return int(F * (self.live + p + u) + M_BASE + M_PER_SNAPSHOT * len(kept_days))
