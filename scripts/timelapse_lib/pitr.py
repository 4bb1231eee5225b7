"""The plan's physical PostgreSQL source and point-in-time restore.

The production cluster archives its WAL with `cairn wal-push` (archive_command, run by
PostgreSQL as the `postgres` user into the repository, which is shared with that group:
README.md, "One repository, two users"). PostgreSQL's own clock follows the simulated
clock through libfaketime (LD_PRELOAD, an offset file rewritten with every clock move),
so commit times, base backups' start and stop times and the archive's `last_xact_time`
are simulated times, as they would be real times in production.

The harness writes marker rows (database `app`, table `markers`; not in the logical
source's digests) at known simulated
moments and records the digest of database `app` after each day's changes; a restore
to a moment T must hold exactly the markers committed before T and `app` as it was at
T. Moments within a minute of one of the harness's own commits are never chosen."""
import ctypes
import datetime
import os
import shutil
import subprocess

from bench_lib.postgres import Cluster, as_postgres, pg

from . import data

FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1"
MARGIN = datetime.timedelta(minutes=1)


class FaketimeShared:
    """The semaphore and shared memory libfaketime's processes share, made once for the
    whole run. Left to itself, the first process that loads libfaketime makes them (mode
    0600, its own user), names them in FAKETIME_SHARED for its children and removes them
    when it exits: here that first process is `runuser` (root) or `pg_ctl`, both gone
    long before the archiver execs `sh` for archive_command, whose libfaketime then stops
    with `sem_open failed` (No such file or directory, or Permission denied for
    `postgres`) and fails the command -- a WAL archive alert after a restart that the
    harness did not cause (a --days 60 run, day 50). Made here, readable by every user
    and named beforehand, they outlive every process; `remove()` at the end of the run."""

    def __init__(self):
        tag = "cairn_tl_%d" % os.getpid()
        self.sem = "/faketime_sem_" + tag
        self.shm = "/faketime_shm_" + tag
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.sem_open.restype = ctypes.c_void_p
        libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_uint]
        old = os.umask(0)
        try:
            if not libc.sem_open(self.sem.encode(), os.O_CREAT, 0o666, 1):
                raise OSError(ctypes.get_errno(), "sem_open %s" % self.sem)
            fd = os.open("/dev/shm" + self.shm, os.O_CREAT | os.O_RDWR, 0o666)
        finally:
            os.umask(old)
        os.ftruncate(fd, 8)  # libfaketime 0.9.10's struct ft_shared_s: one uint64
        os.close(fd)
        self.value = "%s %s" % (self.sem, self.shm)

    def remove(self):
        for p in ("/dev/shm/sem." + self.sem[1:], "/dev/shm" + self.shm):
            if os.path.exists(p):
                os.remove(p)


def faketime_env(offset_file, shared):
    """The environment that makes a process read the simulated clock: libfaketime with an
    offset (seconds ahead of the real clock) re-read at every call; the monotonic clock
    stays real, as cairn's durations and PostgreSQL's latches need.

    Tried here (libfaketime 0.9.10, PostgreSQL 15): with FAKETIME_NO_CACHE the postmaster's
    children started after recovery (walwriter, the launchers, autovacuum workers) read the
    real clock; FAKETIME_CACHE_DURATION=1 fakes them all but lags a clock move by up to a
    second, and =0 never follows the file. So NO_CACHE, and the production cluster runs
    without autovacuum (every commit comes from a client backend)."""
    if not os.path.exists(FAKETIME_LIB):
        raise RuntimeError("%s is missing: run scripts/setup (it installs Debian's libfaketime for "
                           "the PostgreSQL clock of scripts/timelapse)" % FAKETIME_LIB)
    return {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME_TIMESTAMP_FILE": offset_file, "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1", "FAKETIME_SHARED": shared.value}


class FakeClockCluster(Cluster):
    """A bench_lib cluster whose server runs on the simulated clock (libfaketime)."""

    def __init__(self, work, name, fake_env, initdb_args=()):
        super().__init__(work, name)
        self.fake_env = fake_env
        self.initdb_args = list(initdb_args)

    def pg_ctl_run(self, argv):
        if os.path.basename(argv[0]) == "initdb":
            argv = list(argv) + self.initdb_args
        env = dict(os.environ, **self.fake_env) if os.path.basename(argv[0]) == "pg_ctl" else None
        p = subprocess.run(as_postgres(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
        if p.returncode != 0:
            raise RuntimeError("cluster %s: %s failed:\n%s" % (self.name, os.path.basename(argv[0]), p.stdout[-3000:]))


    def launch(self, wait=True):
        """pg_ctl start, then the archiver's statistics reset: libfaketime leaves some of the
        postmaster's children on the real clock, the archiver among them at times, so a
        failure it recorded in simulated time before a restart would stay "newer" than every
        success recorded in real time after it (the daemon's wal-archive check compares the
        two, which in production come from one clock)."""
        super().launch(wait)
        self.psql("postgres", "SELECT pg_stat_reset_shared('archiver')")


def postgres_dir(path):
    """An empty directory the postgres user owns."""
    os.makedirs(path, exist_ok=True)
    shutil.chown(path, "postgres", "postgres")
    os.chmod(path, 0o700)
    return path


def share_with_postgres(repo, password_file):
    """README.md, "One repository, two users": the repository's group is postgres, group
    members may write, new files take the group, and a group-readable config turns cairn's
    group mode on; the password file is readable by the group."""
    if repo:  # not an object store's
        subprocess.run(["chgrp", "-R", "postgres", repo], check=True)
        subprocess.run(["chmod", "-R", "g+rwX", repo], check=True)
        subprocess.run(["find", repo, "-type", "d", "-exec", "chmod", "g+s", "{}", "+"], check=True)
        os.chmod(os.path.join(repo, "config"), 0o640)
    shutil.chown(password_file, group="postgres")
    os.chmod(password_file, 0o640)


class Events:
    """The harness's own commits on the production cluster, each (first, last) simulated
    moment around it, and what `ops.markers` and `app` held after it."""

    def __init__(self):
        self.commits = []     # (start, end) of every commit the harness made
        self.markers = []     # (n, start, end)
        self.app = []         # (end, digest of app) after each change of app

    def quiet(self, t):
        """Whether t is at least MARGIN away from every commit of the harness."""
        return all(not (s - MARGIN <= t <= e + MARGIN) for s, e in self.commits)

    def markers_before(self, t):
        return [n for n, s, e in self.markers if e < t]

    def app_at(self, t):
        before = [dg for e, dg in self.app if e < t]
        return before[-1] if before else None


class Markers:
    """Database `app`, table `markers(n, at, committed)`: one row per marker, `at` the
    simulated time the harness meant."""

    def __init__(self, cluster, clock, events):
        self.cluster = cluster
        self.clock = clock
        self.events = events
        self.n = 0

    def create(self):
        data.psql(self.cluster.port, "app", "CREATE TABLE markers (n int PRIMARY KEY, at timestamptz NOT NULL, "
                                            "committed timestamptz NOT NULL DEFAULT clock_timestamp())")

    def write(self, at):
        """Move the clock to `at` and commit one marker there."""
        self.clock.set(at)
        self.n += 1
        start = self.clock.now()
        data.psql(self.cluster.port, "app", "INSERT INTO markers (n, at) VALUES (%d, '%s')" % (
            self.n, at.isoformat()))
        end = self.clock.now()
        self.events.commits.append((start, end))
        self.events.markers.append((self.n, start, end))


def restored_markers(port):
    out = data.psql(port, "app", "SELECT n FROM markers ORDER BY n")
    return [int(x) for x in out.split()]


def stop_restored(pgdata):
    subprocess.run(["runuser", "-u", "postgres", "--", pg("pg_ctl"), "-D", pgdata, "-m", "immediate", "-w",
                    "stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def rmtree(p):
    shutil.rmtree(p, ignore_errors=True)
