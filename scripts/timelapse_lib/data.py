"""What the plan backs up, and how the harness changes it and fingerprints it: a tree of
configuration files edited every day, and a PostgreSQL database that runs a few
transactions every day. The digests are computed here, by the harness, never by cairn,
so a restore can be compared with what the source held at backup time."""
import hashlib
import os
import shutil
import stat
import subprocess

from bench_lib.postgres import pg

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike "
         "november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


# --- files ---------------------------------------------------------------------

def tree_digest(root):
    """sha256 over the sorted relative paths of `root` with, per entry, its kind, permission
    bits and content (a symlink: its target). Ownership and times are left out."""
    h = hashlib.sha256()
    entries = []
    for d, dirs, files in os.walk(root):
        for n in dirs + files:
            p = os.path.join(d, n)
            entries.append(os.path.relpath(p, root))
    for rel in sorted(entries):
        p = os.path.join(root, rel)
        st = os.lstat(p)
        h.update(rel.encode() + b"\0")
        if stat.S_ISLNK(st.st_mode):
            h.update(b"L" + os.readlink(p).encode() + b"\0")
        elif stat.S_ISDIR(st.st_mode):
            h.update(b"D%o\0" % stat.S_IMODE(st.st_mode))
        else:
            with open(p, "rb") as f:
                h.update(b"F%o\0" % stat.S_IMODE(st.st_mode) + hashlib.sha256(f.read()).digest())
    return h.hexdigest()


class ConfigTree:
    """A small /etc-like tree: a few dozen text files in subdirectories, a symlink, and one
    256 KiB binary file (so something is chunked in several pieces)."""

    def __init__(self, root, rng):
        self.root = root
        self.rng = rng
        self.serial = 0

    def line(self):
        return "%s = %s %d\n" % (self.rng.choice(WORDS), self.rng.choice(WORDS), self.rng.randrange(10 ** 6))

    def create(self):
        os.makedirs(self.root)
        for d in ("app", "nginx/sites", "cron.d", "ssl"):
            os.makedirs(os.path.join(self.root, d))
        for i in range(12):
            self.write("app/service-%02d.conf" % i, "".join(self.line() for _ in range(self.rng.randrange(5, 60))))
        for i in range(8):
            self.write("nginx/sites/site-%02d.conf" % i, "".join(self.line() for _ in range(20)))
        for i in range(4):
            self.write("cron.d/job-%d" % i, "0 %d * * * root /usr/bin/true\n" % i, mode=0o644)
        self.write("ssl/server.key", "".join(self.line() for _ in range(30)), mode=0o600)
        self.write("hosts", "127.0.0.1 localhost\n")
        with open(os.path.join(self.root, "blob.bin"), "wb") as f:
            f.write(self.rng.randbytes(256 * 1024))
        os.symlink("app/service-00.conf", os.path.join(self.root, "current.conf"))

    def write(self, rel, text, mode=0o640):
        p = os.path.join(self.root, rel)
        with open(p, "w") as f:
            f.write(text)
        os.chmod(p, mode)

    def files(self):
        out = []
        for d, _, files in os.walk(self.root):
            for n in files:
                p = os.path.join(d, n)
                if not os.path.islink(p) and n != "blob.bin":
                    out.append(os.path.relpath(p, self.root))
        return sorted(out)

    def mutate(self, day):
        """A day's edits: one to three files changed, sometimes one added or removed, now and
        then a few bytes of the binary file."""
        files = self.files()
        for rel in self.rng.sample(files, self.rng.randint(1, 3)):
            p = os.path.join(self.root, rel)
            with open(p) as f:
                lines = f.readlines()
            if lines and self.rng.random() < 0.6:
                lines[self.rng.randrange(len(lines))] = self.line()
            else:
                lines.append("# day %d\n" % day)
                lines.append(self.line())
            with open(p, "w") as f:
                f.writelines(lines)
        r = self.rng.random()
        if r < 0.25:
            self.serial += 1
            self.write("app/added-%d-%d.conf" % (day, self.serial), "".join(self.line() for _ in range(10)))
        elif r < 0.35:
            added = [f for f in files if "/added-" in f]
            if added:
                os.remove(os.path.join(self.root, self.rng.choice(added)))
        if self.rng.random() < 0.1:
            with open(os.path.join(self.root, "blob.bin"), "r+b") as f:
                f.seek(self.rng.randrange(256 * 1024 - 64))
                f.write(self.rng.randbytes(64))

    def digest(self):
        return tree_digest(self.root)


# --- PostgreSQL ------------------------------------------------------------------

DIGEST_SQL = """
SELECT 'accounts', count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) FROM accounts t
UNION ALL
SELECT 'events', count(*), md5(coalesce(string_agg(t::text, E'\\n' ORDER BY id), '')) FROM events t
UNION ALL
SELECT 'events_id_seq', 0, (SELECT last_value || ':' || is_called FROM events_id_seq)
"""


def psql(port, db, sql, stdin=None):
    env = dict(os.environ, PGTZ="UTC", PGDATESTYLE="ISO")
    p = subprocess.run([pg("psql"), "-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                        "-p", str(port), "-U", "postgres", "-d", db] + (["-c", sql] if sql else ["-f", "-"]),
                       input=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError("psql on port %d/%s failed: %s" % (port, db, p.stderr[-2000:]))
    return p.stdout


def app_text(port):
    """Database app's rows as COPY writes them (for the size bound)."""
    return psql(port, "app", "COPY accounts TO STDOUT; COPY events TO STDOUT; COPY markers TO STDOUT").encode()


def db_digest(port, db="app", tables_only=False):
    """sha256 of a deterministic dump of every table, ordered by key, and the sequence.
    `tables_only` leaves the sequence out: a point-in-time restore gets a sequence's value
    from WAL, where nextval() logs 32 values ahead, so after recovery it may stand up to
    32 higher than at the target (PostgreSQL's documented behaviour, not a lost change)."""
    sql = DIGEST_SQL.rsplit("UNION ALL", 1)[0] if tables_only else DIGEST_SQL
    return hashlib.sha256(psql(port, db, sql).encode()).hexdigest()


class Database:
    """Database `app` on the plan's cluster: accounts and an event log. The SQL is made
    here from the seeded generator, so a seed always writes the same rows."""

    def __init__(self, cluster, rng):
        self.cluster = cluster
        self.rng = rng
        self.accounts = 0

    def create(self):
        self.cluster.psql("postgres", "CREATE DATABASE app")
        sql = ["CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance bigint NOT NULL,"
               " note text);",
               "CREATE TABLE events (id bigserial PRIMARY KEY, at timestamptz NOT NULL, account int"
               " REFERENCES accounts(id), kind text NOT NULL, amount bigint, payload jsonb);",
               "CREATE INDEX events_at ON events(at);",
               "BEGIN;"]
        for _ in range(200):
            sql.append(self.new_account())
        sql.append("COMMIT;")
        psql(self.cluster.port, "app", None, stdin="\n".join(sql) + "\n")

    def new_account(self):
        self.accounts += 1
        return "INSERT INTO accounts VALUES (%d, '%s-%d', %d, NULL);" % (
            self.accounts, self.rng.choice(WORDS), self.accounts, self.rng.randrange(10 ** 6))

    def mutate(self, day, when):
        """A day's transactions: transfers with their events, new accounts, notes, and the
        removal of old events."""
        sql = []
        for _ in range(self.rng.randint(3, 8)):
            sql.append("BEGIN;")
            for _ in range(self.rng.randint(1, 6)):
                a, b = self.rng.randrange(1, self.accounts + 1), self.rng.randrange(1, self.accounts + 1)
                amt = self.rng.randrange(1, 5000)
                sql.append("UPDATE accounts SET balance = balance - %d WHERE id = %d;" % (amt, a))
                sql.append("UPDATE accounts SET balance = balance + %d WHERE id = %d;" % (amt, b))
                sql.append("INSERT INTO events (at, account, kind, amount, payload) VALUES "
                           "('%s', %d, 'transfer', %d, '{\"to\": %d, \"day\": %d}');" % (when, a, amt, b, day))
            sql.append("COMMIT;")
        if self.rng.random() < 0.5:
            sql += ["BEGIN;", self.new_account(), "COMMIT;"]
        if self.rng.random() < 0.3:
            sql.append("UPDATE accounts SET note = '%s' WHERE id = %d;" % (
                self.rng.choice(WORDS), self.rng.randrange(1, self.accounts + 1)))
        if day % 7 == 0:
            sql.append("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT %d);" %
                       self.rng.randint(5, 30))
        psql(self.cluster.port, "app", None, stdin="\n".join(sql) + "\n")

    def digest(self):
        return db_digest(self.cluster.port)


def restore_dir_digest(target, source_path):
    """The digest of a files source restored with `cairn restore --target TARGET`: the tree
    is found below TARGET at the source's absolute path."""
    p = os.path.join(target, source_path.lstrip("/"))
    if not os.path.isdir(p):
        raise RuntimeError("the restore holds no %s" % p)
    return tree_digest(p)


def rmtree(p):
    if os.path.lexists(p):
        shutil.rmtree(p)
