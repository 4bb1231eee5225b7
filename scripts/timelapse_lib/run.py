"""One time-lapse run: set up the world, drive the simulated clock through N nights, inject
the seeded faults, and check the invariants after every day (spec/timelapse.md)."""
import datetime
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import traceback
from zoneinfo import ZoneInfo

from bench_lib.common import free_port
from bench_lib.postgres import PG_BIN, Cluster

from . import bound, data, faults, kafka, model, pitr
from .env import (UTC, Daemon, HarnessError, S3Server, SimClock, Smtp, find_cairn, log, rfc3339,
                  wait_for)

TZ_NAME = "Europe/Berlin"
START = datetime.date(2027, 1, 1)
PLAN_NAME = "timelapse"
MISSION_RULES = {"daily": 30, "weekly": 8, "monthly": 12}
# The plan's storage quota (its use is measured against it: spec/plan.md, "Alerts"), far
# above what a run of a year stores; the fault `quota-low` lowers it for a day.
QUOTA = "4GiB"
# The schedule's expected-duration: a night takes 2-5 s here; the fault `slow-source`
# holds a lock that pg_dump waits for SLOW_HOLD seconds (real time: a run's duration is
# measured by the monotonic clock, spec/logging.md, "Simulated time").
EXPECTED_DURATION = "15s"
# The repository's tmpfs: a year of this plan stores ~40 MiB (spec/timelapse.md).
REPO_FS_MIB = 256
# --repo s3: the bucket on the s3s-fs server.
S3_BUCKET = "timelapse"
SLOW_HOLD = 20
# The rules a plan change switches between (the mission's first).
RULESETS = [MISSION_RULES,
            {"daily": 7, "weekly": 4, "monthly": 3},
            {"last": 3, "daily": 14, "weekly": 6, "monthly": 24},
            {"daily": 45, "weekly": 12, "monthly": 6, "yearly": 2}]
# etc: files; db: database `app`, logical; cluster: the same cluster, physical (base
# backups, WAL archived by wal-push); kafka: two topics and their consumer groups on Tansu.
SOURCES = ("etc", "db", "cluster", "kafka")
# What a nightly run is called in alerts about the run itself.
TRIGGER = "schedule nightly"
# The sources each fault makes fail for its night.
FAILS = {"pg-down": ("db", "cluster"), "smtp-down": ("db", "cluster"), "broker-down": ("kafka",)}


class Failure(Exception):
    pass


PHASES = {}


def rm_file(p):
    if os.path.lexists(p):
        os.remove(p)


def timed(name):
    """Wall time spent in a method, summed per name (printed at the end)."""
    def wrap(f):
        def inner(*a, **kw):
            t0 = time.time()
            try:
                return f(*a, **kw)
            finally:
                PHASES[name] = PHASES.get(name, 0.0) + time.time() - t0
        return inner
    return wrap


def needed_wal(name):
    """An archived WAL file that a damaged copy of cuts point-in-time ranges: a segment, a
    partial segment or a timeline history file; not a backup history file (`….backup`),
    which recovery never reads."""
    hexa = lambda x, n: len(x) == n and all(c in "0123456789ABCDEF" for c in x)
    base = name[:-len(".partial")] if name.endswith(".partial") else name
    return hexa(base, 24) or (name.endswith(".history") and hexa(name[:-8], 8))


def parse_time(s):
    # RFC 3339 with up to nanoseconds; fromisoformat takes microseconds.
    s = s.replace("Z", "+00:00")
    if "." in s:
        head, rest = s.split(".", 1)
        frac = rest[:len(rest) - len(rest.lstrip("0123456789"))]
        tz = rest[len(frac):]
        s = "%s.%s%s" % (head, frac[:6].ljust(6, "0"), tz)
    return datetime.datetime.fromisoformat(s)


class Timelapse:
    def __init__(self, args, root):
        self.args = args
        self.root = root
        self.days = args.days
        self.seed = args.seed
        self.tz = ZoneInfo(TZ_NAME)
        self.rng_data = random.Random("%s-data" % args.seed)
        self.rng_fault = random.Random("%s-faults" % args.seed)
        self.rng_sample = random.Random("%s-sample" % args.seed)
        self.rng_kafka = random.Random("%s-kafka" % args.seed)
        self.failures = []
        self.notes = []
        self.rules = dict(MISSION_RULES)
        self.quota = QUOTA
        self.quota_back = None  # the day the fault quota-low gives the quota back
        self.locker = None      # the fault slow-source's psql holding its lock
        self.all = {}        # id -> model.Snap, every snapshot the plan made
        self.digests = {}    # id -> {source: digest}, what each source held at backup time
        self.kafka_sums = {}  # id -> kafka.summary() at backup time (for telling what differs)
        self.pitr_checks = []  # (day, target, markers) of every point-in-time restore checked
        self.wal_damaged = None  # the flip that damaged archived WAL: day, segments, pack
        self.model = {}      # id -> model.Snap, what the model says the repository keeps
        self.reasons = {}
        self.retention_pending = False
        self.damaged = {}    # id -> why: snapshots the harness found damaged (flip-byte)
        self.source_errors = {}  # id -> source -> its errors, as /snapshots gives them
        self.flip = None     # the open flip-byte fault: day, pack, deadline, found, damaged, remedied
        self.expected = {}   # alert label -> last day it may still arrive (must arrive)
        self.allowed = {}    # alert label -> last day it may arrive (may arrive)
        self.day_alerts = []
        self.restart_next = False
        self.rows = []
        self.rss = []        # (day, daemon start number, VmRSS KiB) at the end of each day
        self.fault_count = 0
        self.restore_checks = 0
        self.restore_tests = {"passed": 0, "failed": 0, "skipped": 0}
        self.procs = []

    # --- setup ---------------------------------------------------------------

    @timed('setup')
    def setup(self):
        a = self.args
        if a.work:
            self.work = os.path.abspath(a.work)
            if os.path.exists(self.work) and os.listdir(self.work):
                raise HarnessError("--work %s is not empty" % self.work)
            os.makedirs(self.work, exist_ok=True)
        else:
            self.work = tempfile.mkdtemp(prefix="cairn-timelapse-", dir="/tmp")
        os.chmod(self.work, 0o755)  # the postgres user must reach its data directories
        log("work directory %s" % self.work)
        self.bin = find_cairn(self.root)
        w = self.work
        # The repository on a filesystem of its own, small enough to fill (fault disk-full):
        # a tmpfs of REPO_FS_MIB.
        self.repo_fs = os.path.join(w, "repo-fs")
        os.makedirs(self.repo_fs)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%dm,mode=0755" % REPO_FS_MIB, "timelapse-repo",
                        self.repo_fs], check=True)
        self.mounted = True
        self.filler = os.path.join(self.repo_fs, "filler")
        if a.repo == "s3":
            # An s3s-fs server keeps the bucket in a directory of that filesystem: the
            # repository's files are its objects (the harness flips bytes and sums sizes there).
            self.s3 = S3Server(w, os.path.join(self.repo_fs, "s3"))
            self.s3.start()
            self.repo = "s3://%s/repo" % S3_BUCKET
            self.repo_dir = os.path.join(self.s3.dir, S3_BUCKET, "repo")
        else:
            self.s3 = None
            self.repo = os.path.join(self.repo_fs, "repo")
            self.repo_dir = self.repo
        self.password = os.path.join(w, "password")
        with open(self.password, "w") as f:
            f.write("timelapse-%s\n" % self.seed)
        self.clock = SimClock(os.path.join(w, "clock"), self.at(0) - datetime.timedelta(hours=1),
                              offset_path=os.path.join(w, "faketime"))
        base = {k: v for k, v in os.environ.items() if not k.startswith("CAIRN_")}
        base.update(TZ=TZ_NAME, CAIRN_TEST_CLOCK=self.clock.path, CAIRN_PG_BIN=PG_BIN)
        if self.s3:
            base.update(self.s3.env())
        self.env = base
        # The harness's own commands: another cache than the daemon's.
        self.cli_env = dict(base, CAIRN_PLAN=os.path.join(w, "plan.kdl"),
                            CAIRN_CACHE_DIR=os.path.join(w, "cache-cli"))

        # The repository first: the production cluster archives its WAL into it from the
        # start. PostgreSQL's archive_command runs as `postgres`, the daemon as root: the
        # repository is shared with the postgres group (README.md, "One repository, two
        # users"), and so is the password file.
        self.cli(["init", "-r", self.repo, "--password-file", self.password, "--kdf-work-factor", "10", "-q"],
                 plan=False)
        pitr.share_with_postgres(None if self.s3 else self.repo, self.password)
        self.pg_cache = {n: pitr.postgres_dir(os.path.join(w, "cache-" + n)) for n in ("walpush", "pitr")}
        self.pitr_dir = pitr.postgres_dir(os.path.join(w, "pitr"))
        self.wal_log = os.path.join(self.pitr_dir, "archived.sha256")

        self.faketime_shared = pitr.FaketimeShared()
        self.prod = pitr.FakeClockCluster(w, "prod", pitr.faketime_env(self.clock.offset_path, self.faketime_shared))
        self.scratch = Cluster(w, "scratch")
        # The daemon's test environment (`verify { postgres-scratch }`), as a deployment
        # would give it: one server for every Sunday's test, holding what the last left.
        self.verify_pg = Cluster(w, "verify")
        # autovacuum off: libfaketime (FAKETIME_NO_CACHE) leaves the processes the postmaster
        # starts after recovery on the real clock -- the autovacuum workers among them, whose
        # ANALYZE commits then carried real times into the WAL and cut every point-in-time
        # range short. The harness runs VACUUM ANALYZE itself with the day's changes.
        self.prod.start(conf=["archive_mode = on", "archive_command = '%s'" % self.archive_command(),
                              "autovacuum = off"])
        self.scratch.start()
        self.verify_pg.start()
        self.smtp = Smtp(w)
        self.smtp.start()
        self.broker = kafka.Tansu(w, "prod", proxied=True)
        self.broker.start()
        # The daemon's restore tests restore Kafka sources into this broker (verify { kafka-scratch }).
        self.kafka_scratch = kafka.Tansu(w, "scratch")
        self.kafka_scratch.start()

        self.tree = data.ConfigTree(os.path.join(w, "etc"), self.rng_data)
        self.tree.create()
        self.events = pitr.Events()
        self.db = data.Database(self.prod, self.rng_data)
        t0 = self.clock.now()
        self.db.create()
        self.markers = pitr.Markers(self.prod, self.clock, self.events)
        self.markers.create()
        self.kafka = kafka.KafkaData(self.broker, self.rng_kafka)
        self.kafka.create(self.ms(self.clock.now()))
        self.note_digests(t0)

        self.bound = bound.Bound(self.prod.data, self.tree.root, self.wal_log)
        self.bound_failed = -100  # the last day the bound was reported exceeded
        # The verify's check that the broker holds what the harness's account says.
        bad = self.kafka.check_broker()
        if bad:
            raise HarnessError("the Kafka broker does not hold what the harness produced: %s" % bad)
        tok = json.loads(self.cli(["plan", "token", "timelapse", "--json"], plan=False))
        self.token, self.token_hash = tok["token"], tok["hash"]
        self.write_plan()
        self.cli(["plan", "check", self.plan_path], plan=False)
        if a.faults:
            self.faults = faults.parse(a.faults)
            if "s3-kill" in self.faults.values() and not self.s3:
                raise HarnessError("--faults: s3-kill needs --repo s3")
        else:
            without = [k for k in (a.without or "").split(",") if k]
            # s3-kill needs the S3 server; disk-full is left to the local repository (on
            # s3s-fs a full disk fails PUTs, which cairn retries for up to 120 s each).
            without += ["disk-full"] if self.s3 else ["s3-kill"]
            self.faults = {} if a.no_faults else faults.schedule(self.days, self.rng_fault, without)
        log("faults: %s" % (", ".join("day %d %s" % (d, k) for d, k in sorted(self.faults.items())) or "none"))
        self.daemon = Daemon(self.bin, self.plan_path, os.path.join(w, "state"), self.env,
                             os.path.join(w, "serve.log"), self.token)
        self.start_daemon(self.at(0) - datetime.timedelta(minutes=1))

    def archive_command(self):
        """wal-push as PostgreSQL runs it: as `postgres`, on the simulated clock (cairn's
        own, not libfaketime's), with a cache of its own. First the segment's sha256 goes
        to a log of the harness, so that a segment fetched back can be compared."""
        aws = " ".join("%s=%s" % kv for kv in self.s3.env().items()) if self.s3 else ""
        # Without libfaketime: cairn reads the simulated clock from its own file.
        return ('env -u LD_PRELOAD -u FAKETIME_TIMESTAMP_FILE -u FAKETIME_SHARED sh -c "sha256sum %%p >> %s && '
                'CAIRN_TEST_CLOCK=%s TZ=%s %s %s wal-push -q -r %s --password-file %s --cache-dir %s %%p"' % (
                    self.wal_log, self.clock.path, TZ_NAME, aws, self.bin, self.repo, self.password,
                    self.pg_cache["walpush"]))

    def ms(self, t):
        return int(t.timestamp() * 1000)

    def note_digests(self, t0):
        """What the sources hold now (after the day's changes, which began at t0)."""
        app = self.db.digest()
        self.events.commits.append((t0, self.clock.now()))
        self.events.app.append((self.clock.now(), data.db_digest(self.prod.port, tables_only=True)))
        self.kafka_now = self.kafka.summary()
        self.digest_now = {"etc": self.tree.digest(), "db": app, "cluster": app,
                           "kafka": kafka.digest_of(self.kafka_now)}

    @property
    def plan_path(self):
        return os.path.join(self.work, "plan.kdl")

    def write_plan(self):
        w = self.work
        retention = "\n".join("    keep-%s %d" % (r, self.rules[r]) for r in model.RULES if r in self.rules)
        text = """// Written by scripts/timelapse: the mission's plan, on throwaway servers.
name "%(name)s"
repository "%(repo)s" {
    password-file "%(password)s"
    cache-dir "%(cache)s"
}
source "etc" kind="files" {
    path "%(etc)s"
}
source "db" kind="postgres" {
    url "postgres://postgres@127.0.0.1:%(pgport)d/postgres"
    database "app"
}
source "cluster" kind="postgres" {
    url "postgres://postgres@127.0.0.1:%(pgport)d/postgres"
    physical #true
}
source "kafka" kind="kafka" {
    brokers "%(kbrokers)s"
    // One retry, not the default three: a broker-down night then takes ~21 s, not ~47 s,
    // and still goes through the retry with its backoff.
    retries 1
}
schedule "nightly" {
    cron "0 2 * * *"
    timezone "%(tz)s"
    tag "nightly"
    expected-duration "%(expected)s"
}
retention {
%(retention)s
}
alerts {
    email {
        smtp "127.0.0.1" port=%(smtp)d security="plain"
        from "cairn@timelapse.test"
        to "oncall@timelapse.test"
    }
    missed-backup "25h"
    storage-warning "80%%"
    quota "%(quota)s"
    repeat-every "6h"
}
verify {
    cron "0 4 * * 0"
    postgres-scratch "postgres://postgres@127.0.0.1:%(vpgport)d/postgres"
    kafka-scratch "127.0.0.1:%(kscratch)d"
}
api {
    listen "127.0.0.1:8420"
    token "timelapse" hash="%(hash)s"
}
""" % dict(name=PLAN_NAME, repo=self.repo, password=self.password, cache=os.path.join(w, "cache-daemon"),
           etc=self.tree.root, pgport=self.prod.port, kbrokers=self.broker.brokers(), kscratch=self.kafka_scratch.port,
           vpgport=self.verify_pg.port,
           tz=TZ_NAME, retention=retention, expected=EXPECTED_DURATION, quota=self.quota, smtp=self.smtp.port,
           hash=self.token_hash)
        tmp = self.plan_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, self.plan_path)

    def cli(self, argv, plan=True, check=True, timeout=600):
        p = subprocess.run([self.bin] + argv, env=self.cli_env if plan else self.env,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise Failure("cairn %s: exit %d\n%s" % (" ".join(argv), p.returncode, p.stderr[-3000:]))
        return p.stdout if check else p

    def cleanup(self):
        for what in (lambda: self.daemon.stop(), lambda: self.s3 and self.s3.stop(), lambda: self.smtp.stop(), lambda: self.prod.stop(),
                     lambda: self.scratch.stop(), lambda: self.verify_pg.stop(), lambda: self.kafka.close(), lambda: self.broker.stop(),
                     lambda: self.kafka_scratch.stop(),
                     lambda: getattr(self, "faketime_shared", None) and self.faketime_shared.remove()):
            try:
                what()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                log("cleanup: %s" % e)
        if not self.args.keep and not self.failures:
            if getattr(self, "mounted", False):
                subprocess.run(["umount", self.repo_fs])
            shutil.rmtree(self.work, ignore_errors=True)
        else:
            log("kept %s (serve.log, mail/, plan.kdl, repo-fs/repo/)%s" % (
                self.work, "; the repository is on a tmpfs: `umount %s` when done" % self.repo_fs
                if getattr(self, "mounted", False) else ""))

    # --- time ----------------------------------------------------------------

    def date(self, d):
        return START + datetime.timedelta(days=d)

    def at(self, d, hour=2, minute=0, second=0):
        """Day d's local time (Europe/Berlin) in UTC."""
        local = datetime.datetime.combine(self.date(d), datetime.time(hour, minute, second), tzinfo=self.tz)
        return local.astimezone(UTC)

    def fail(self, d, text):
        self.failures.append((d, text))
        log("FAIL day %d: %s" % (d, text))

    # --- the daemon ----------------------------------------------------------

    def start_daemon(self, clock_at):
        """Start the daemon with the clock at `clock_at` and wait until it publishes its
        schedule (its start-up checks have run by then)."""
        self.clock.set(clock_at)
        self.daemon.start()
        wait_for("the daemon's schedule", 60,
                 lambda: (self.daemon.status().get("schedules") or [{}])[0].get("next_run"))

    def diagnose(self):
        """What the daemon was doing when it stopped answering the harness's expectations: its
        status and its threads' stacks (gdb), saved in the work directory."""
        out = os.path.join(self.work, "daemon-stacks.txt")
        try:
            st = json.dumps(self.daemon.status())[:1500]
        except Exception as e:  # noqa: BLE001
            st = "no status (%s)" % e
        if shutil.which("gdb") and self.daemon.alive():
            with open(out, "w") as f:
                subprocess.run(["gdb", "-p", str(self.daemon.proc.pid), "-batch", "-ex", "thread apply all bt"],
                               stdout=f, stderr=subprocess.STDOUT, timeout=120)
            return "status %s; thread stacks in %s" % (st, out)
        return "status %s" % st

    def runs(self):
        return self.daemon.status().get("runs", 0)

    def wait_idle_after(self, runs_before, timeout=300):
        def done():
            s = self.daemon.status()
            return s if s.get("runs", 0) > runs_before and not s.get("running") else None
        return wait_for("the night's run", timeout, done)

    def plan_snapshots(self):
        return [s for s in self.daemon.snapshots() if s.get("plan") == PLAN_NAME]

    def statuses(self, s):
        return {x["name"]: x["status"] for x in s.get("sources", [])}

    # --- alerts --------------------------------------------------------------

    def expect(self, label, until):
        self.expected[label] = until

    def allow(self, label, until):
        self.allowed[label] = max(until, self.allowed.get(label, until))

    def take_mails(self, d):
        for m in self.smtp.new_mails():
            label = m.label()
            self.day_alerts.append(label)
            if label in self.expected:
                del self.expected[label]
                # Repeats are fine until the next day's night (repeat-every is 6 h of simulated
                # time, and the day's changes move the clock on to 21:00).
                self.allow(label, d + 1)
            elif self.allowed.get(label, -1) >= d:
                pass
            else:
                self.fail(d, "unexpected alert: %r" % m.subject)

    def wait_mails(self, d, labels, timeout=30):
        """Wait until the expected alerts `labels` arrived."""
        t0 = time.time()
        while True:
            self.take_mails(d)
            if not any(lb in self.expected for lb in labels):
                return
            if time.time() - t0 > timeout:
                for lb in labels:
                    if lb in self.expected:
                        self.fail(d, "expected alert %s did not arrive within %d s" % (lb, timeout))
                        del self.expected[lb]
                return
            time.sleep(0.1)

    @timed('end_of_day_alerts')
    def end_of_day_alerts(self, d):
        self.take_mails(d)
        for lb, until in list(self.expected.items()):
            if until <= d:
                self.wait_mails(d, [lb], timeout=10)

    # --- one day -------------------------------------------------------------

    def run_day(self, d):
        self.day_alerts = []
        kind = self.faults.get(d)
        faults_today = []
        if kind:
            faults_today.append(kind)
            self.fault_count += 1
        if self.restart_next:
            # The night after a night without a daemon: start it before 02:00; its start-up
            # check finds both sources older than missed-backup.
            self.restart_next = False
            for src in SOURCES:
                self.expect("missed-backup:%s" % src, d)
            self.start_daemon(self.at(d) - datetime.timedelta(minutes=1))
            self.wait_mails(d, ["missed-backup:%s" % s for s in SOURCES])
        fails = FAILS.get(kind, ())
        if kind == "no-run-night":
            self.daemon.stop()
            self.restart_next = True
            made = []
        else:
            if kind in ("pg-down", "smtp-down"):
                self.prod.stop()
            if kind == "broker-down":
                self.broker.cut()
                # cairn tries twice (the plan's `retries 1`), each waiting 10 s for the broker
                # (spec/kafka.md): the run takes ~21 s, longer than expected-duration.
                self.allow("slow-backup", d)
            for src in fails:
                self.expect("backup-failed:%s" % src, d)
            if kind == "smtp-down":
                self.smtp.stop()
                # Raised while the server is down: the daemon keeps it and sends it when the
                # server is back (spec/plan.md, "Rate limiting"), so it is still expected.
            timer = (SLOW_HOLD, self.slow_source_lock(d)) if kind == "slow-source" else None
            if kind == "s3-kill":
                timer = (self.rng_fault.uniform(0.0, 1.0), self.s3.kill)
            if kind in ("disk-full", "s3-kill"):
                if kind == "disk-full":
                    self.fill_disk(d)
                # The run fails: it saves no snapshot (backup-failed, key run, subject the
                # trigger: spec/plan.md "The daemon"), or one without the sources it could
                # not store (backup-failed for each); PostgreSQL's archive_command fails
                # meanwhile (wal-archive may be alerted) and the base backup may wait for it;
                # with the S3 server gone, the daemon's checks cannot open the repository.
                # A snapshot that fits in what is left still leaves prune no room (retention).
                for lb in ["backup-failed:%s" % x for x in (TRIGGER, "repository", "retention") + SOURCES] + \
                        ["wal-archive:cluster", "slow-backup"]:
                    self.allow(lb, d)
            self.bound.before_night()
            made = self.night(d, kill=(kind == "sigkill"), timer=timer)
            if kind in ("disk-full", "s3-kill"):
                self.storage_fault_after(d, kind, made)
            if kind == "slow-source":
                self.wait_mails(d, ["slow-backup"])
            if fails:
                if kind in ("pg-down", "smtp-down"):
                    self.prod.launch()
                if kind == "broker-down":
                    self.broker.mend()
                self.check_failed(d, made, fails)
                # 25 h after the sources' last copy: missed backup.
                for src in fails:
                    self.expect("missed-backup:%s" % src, d)
                self.clock.set(self.at(d, 3, 0, 30))
                if kind == "smtp-down":
                    time.sleep(2.5)  # checks run (every 1 s) and fail to send
                    self.take_mails(d)
                else:
                    self.wait_mails(d, ["missed-backup:%s" % src for src in fails])
        if made:
            self.bound.after_night(d, data.app_text(self.prod.port), self.kafka.log)
        self.check_new_after_flip(d, made)
        self.update_model(d, made)
        if self.date(d).weekday() == 6 and self.daemon.alive():
            self.verify(d)
        if kind == "smtp-down":
            # Noon: the server is back, and the next check delivers the alert.
            self.clock.set(self.at(d, 12))
            self.smtp.start()
            held = ["restore-test-failed"] if "restore-test-failed" in self.expected else []
            self.wait_mails(d, ["%s:%s" % (k, src) for src in fails for k in ("missed-backup", "backup-failed")] + held)
        if self.date(d).weekday() == 6 and d > 0:
            self.sample_restore(d)
            self.pitr_check(d)
            bad = self.kafka.check_broker()
            if bad:
                self.fail(d, "the Kafka broker does not hold what the harness produced (the harness's "
                             "account is what restores are compared with): %s" % bad)
        if kind == "plan-change":
            self.plan_change(d)
        self.quota_restore(d)
        if kind == "quota-low":
            self.quota_low(d)
        if kind == "flip-byte":
            self.flip_byte(d)
        self.flip_deadline(d)
        self.wal_damage_later(d)
        self.day_changes(d)
        self.end_of_day_alerts(d)
        rss = self.daemon.rss_kib() if self.daemon.alive() else None
        if rss:
            self.rss.append((d, self.daemon.starts, rss))
        self.row(d, made, faults_today)

    @timed('day_changes')
    def day_changes(self, d):
        """The day's changes, after the night's backup: markers at 13:00, 17:00 and 21:00,
        the files, database `app` and the Kafka topics at 15:00 (simulated time, which
        PostgreSQL reads too)."""
        self.markers.write(self.at(d, 13))
        self.clock.set(self.at(d, 15))
        t0 = self.clock.now()
        self.tree.mutate(d)
        self.db.mutate(d, rfc3339(self.at(d, 9)))
        if d % 7 == 3:
            data.psql(self.prod.port, "app", "VACUUM ANALYZE")
        self.kafka.mutate(d, self.ms(self.clock.now()))
        self.note_digests(t0)
        self.markers.write(self.at(d, 17))
        self.markers.write(self.at(d, 21))

    @timed('night')
    def night(self, d, kill=False, timer=None):
        """Set the clock to 02:00 and wait for the scheduled run; returns the new snapshots."""
        st = self.daemon.status()
        runs_before = st.get("runs", 0)
        before = {s["id"] for s in self.plan_snapshots()}
        at = self.at(d)
        nxt = (st.get("schedules") or [{}])[0].get("next_run")
        if nxt and parse_time(nxt) != at:
            self.fail(d, "the daemon schedules the night's run at %s, not at %s (02:00 %s, or the first moment "
                         "after it on a change to summer time)" % (nxt, rfc3339(at), TZ_NAME))
        self.clock.set(at)
        if timer:
            # What a fault does during the night's run: after a delay (real seconds from 02:00).
            timer = threading.Timer(*timer)
            timer.start()
        if kill:
            delay = self.rng_fault.uniform(0.0, 0.5)
            time.sleep(delay)
            st = self.daemon.status()
            finished = st.get("runs", 0) > runs_before
            self.daemon.kill()
            log("day %d: SIGKILL %.2f s after 02:00 (%s)" % (d, delay, "after the run" if finished else
                                                              "run going on" if st.get("running") else "before the run"))
            self.start_daemon(at + datetime.timedelta(minutes=1))
            p = self.cli(["check"], check=False)
            if p.returncode != 0 and not self.only_known_wal_damage(p.stdout):
                self.fail(d, "cairn check after SIGKILL: exit %d\n%s%s" % (p.returncode, p.stdout[-1500:],
                                                                          p.stderr[-1500:]))
            self.retention_pending = True
        else:
            try:
                self.wait_idle_after(runs_before)
            except HarnessError as e:
                raise HarnessError("%s; %s" % (e, self.diagnose()))
        if timer:
            timer.join()
        if self.faults.get(d) == "s3-kill":
            self.s3.start()  # before the daemon is asked for its snapshots
        new = [s for s in self.plan_snapshots() if s["id"] not in before]
        made = []
        for s in new:
            sid = s["id"]
            t = parse_time(s["time"])
            st = self.statuses(s)
            self.source_errors[sid] = {x["name"]: " ".join(x.get("errors") or []) for x in s.get("sources", [])}
            self.all[sid] = model.Snap(sid, t, st)
            self.digests[sid] = {n: self.digest_now[n] for n in SOURCES if st.get(n) == "complete"}
            if st.get("kafka") == "complete":
                self.kafka_sums[sid] = self.kafka_now
            made.append(sid)
            if not (at <= t < at + datetime.timedelta(minutes=5)):
                self.fail(d, "snapshot %s has time %s, not the night's 02:00 (%s)" % (sid[:8], t, at))
        if kill:
            if not made:
                for src in SOURCES:
                    self.expect("missed-backup:%s" % src, d)
                self.clock.set(self.at(d, 3, 0, 30))
                self.wait_mails(d, ["missed-backup:%s" % s for s in SOURCES])
        elif len(made) != 1 and self.faults.get(d) not in ("disk-full", "s3-kill"):
            self.fail(d, "the night's run made %d snapshots, not 1" % len(made))
        for sid in made:
            st = self.all[sid].sources
            if not kill and d not in self.faults_with("disk-full", "s3-kill", *FAILS) and \
                    any(st.get(n) != "complete" for n in SOURCES) and not self.spoiled_by_flip(d, sid):
                self.fail(d, "snapshot %s is not complete: %s" % (sid[:8], st))
        return made

    def spoiled_by_flip(self, d, sid):
        """Whether every source of `sid` that failed failed on reading back the pack an open
        flip damaged. A source that checks what it stored (Kafka reads its partitions back,
        spec/kafka.md) reuses the damaged chunks by deduplication and fails, alerting, until
        the damage is dealt with (found by `--days 400 --seed 1`, days 225-226); the daemon's
        data check then repairs the pack and the next backup stores the data again."""
        f = self.flip
        if not f or f.get("remedied") is not None:
            return False
        pack = os.path.basename(f["pack"])
        errs = self.source_errors.get(sid, {})
        failed = [n for n in SOURCES if self.all[sid].sources.get(n) != "complete"]
        if not all(pack in errs.get(n, "") and "read back from the repository" in errs.get(n, "") for n in failed):
            return False
        for n in failed:
            self.allow("backup-failed:%s" % n, d)
            self.allow("missed-backup:%s" % n, f["deadline"] + 2)
        self.notes.append("day %d: %s failed reading back pack %s, damaged by the flip of day %d" % (
            d, " and ".join(failed), pack[:8], f["day"]))
        return True

    def faults_with(self, *kinds):
        return {d for d, k in self.faults.items() if k in kinds}

    def check_failed(self, d, made, fails):
        for sid in made:
            st = self.all[sid].sources
            want = {n: "failed" if n in fails else "complete" for n in SOURCES}
            if st != want:
                self.fail(d, "with %s down, snapshot %s should hold %s: %s" % (
                    " and ".join(fails), sid[:8], want, st))

    # --- retention -----------------------------------------------------------

    @timed('update_model')
    def update_model(self, d, made):
        """Add the night's snapshots to the model, let the model decide, compare with the
        repository."""
        if not self.daemon.alive():
            return  # a night without the daemon
        actual = self.plan_snapshots()
        self.mark_corrupted()
        for sid in made:
            self.model[sid] = self.all[sid]
        kept, self.reasons = model.decide(list(self.model.values()), self.rules, self.tz)
        if self.retention_pending and not made:
            # The killed run saved nothing: retention did not run either, nothing to compare.
            return self.compare(d, actual, set(self.model), strict=False)
        self.model = {i: s for i, s in self.model.items() if i in kept}
        self.retention_pending = False
        if made or d == 0:
            self.compare(d, actual, kept)

    def compare(self, d, actual, kept, strict=True):
        ids = {s["id"] for s in actual}
        if ids == set(kept):
            return True
        extra, missing = sorted(ids - set(kept)), sorted(set(kept) - ids)
        if strict:
            def show(ii):
                return ", ".join("%s %s" % (i[:8], self.all[i].time.astimezone(self.tz).strftime("%Y-%m-%d %a %H:%M")
                                            if i in self.all else "?") for i in ii)
            self.fail(d, "retention differs from the model (%s): kept but not by the model: [%s]; "
                         "the model keeps but the repository has not: [%s]" % (model.rules_text(self.rules),
                                                                                show(extra), show(missing)))
        # Follow the repository from here, so one difference is reported once.
        self.model = {i: self.all[i] for i in ids if i in self.all}
        return False

    def mark_corrupted(self):
        """Snapshots whose newest proof failed, as /status lists them."""
        for p in self.daemon.status().get("proofs") or []:
            short = p.get("snapshot", "")
            for sid, s in self.all.items():
                if sid.startswith(short) and short:
                    s.corrupted = not p.get("passed", True)

    @timed('plan_change')
    def plan_change(self, d):
        choices = [r for r in RULESETS if r != self.rules]
        self.rules = dict(self.rng_fault.choice(choices))
        self.reload_plan()
        kept, self.reasons = model.decide(list(self.model.values()), self.rules, self.tz)
        try:
            wait_for("retention under the new rules", 30,
                     lambda: {s["id"] for s in self.plan_snapshots()} == kept, interval=0.2)
        except HarnessError:
            pass
        self.compare(d, self.plan_snapshots(), kept)
        self.model = {i: s for i, s in self.model.items() if i in kept}
        log("day %d: plan changed to %s" % (d, model.rules_text(self.rules)))

    def reload_plan(self):
        n = self.daemon.log_count("plan reloaded")
        self.write_plan()
        self.daemon.signal(signal.SIGHUP)
        wait_for("the daemon to reload the plan", 30, lambda: self.daemon.log_count("plan reloaded") > n)

    def quota_low(self, d):
        """Fault quota-low: the plan's quota lowered so that the repository fills 83% of
        it (above storage-warning 80%, below the 95% where critical-free's relief would
        remove snapshots; a night adds a few percent): `storage high` must arrive now, may come again until the quota
        is given back after the next night, and never after."""
        size = self.repo_size(daemon_view=True)
        self.quota = "%dB" % int(size / 0.83)
        self.reload_plan()
        self.expect("storage-high:storage", d)
        self.allow("storage-high:storage", d + 1)
        self.wait_mails(d, ["storage-high:storage"])
        self.quota_back = d + 1
        log("day %d: quota lowered to %s (the repository holds %d bytes)" % (d, self.quota, size))

    def quota_restore(self, d):
        if self.quota_back is not None and d >= self.quota_back:
            self.quota_back = None
            self.quota = QUOTA
            self.reload_plan()
            log("day %d: quota back to %s" % (d, self.quota))

    def fill_disk(self, d):
        """Fault disk-full: a file takes the free space of the repository's filesystem before
        the night but for 0, 256 KiB or 2 MiB (chosen by the seed: a run that cannot take
        its lock, one that fails within its first packs, one that fails later)."""
        left = self.rng_fault.choice([0, 256 << 10, 2 << 20])
        self.fill_left = left
        st = os.statvfs(self.repo_fs)
        free = st.f_bavail * st.f_frsize
        with open(self.filler, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, max(4096, free - left))
        st = os.statvfs(self.repo_fs)
        log("day %d: the repository's filesystem filled (%d bytes taken, %d left)" % (
            d, free, st.f_bavail * st.f_frsize))

    def storage_fault_after(self, d, kind, made):
        """After the night on a full disk (disk-full) or with the S3 server killed during the
        run (s3-kill): a failed backup is alerted and no snapshot is saved as if complete
        (unless the server died after the run had stored everything); once the storage is
        back, `cairn check` finds nothing damaged, the newest snapshot made before still
        restores, PostgreSQL's archiving, which failed meanwhile, catches up, and each source
        without a copy is alerted missed 25 h after its last one."""
        what = {"disk-full": "with the repository's disk full", "s3-kill": "with the S3 server killed"}[kind]
        complete = [sid for sid in made if all(v == "complete" for v in self.all[sid].sources.values())]
        if kind == "disk-full" and complete:
            if not self.fill_left:
                self.fail(d, "%s, snapshot %s was saved complete" % (what, complete[0][:8]))
            else:
                # The night's change fit in what the fill left (found by `--days 400 --seed 1`,
                # day 361); the final restores prove the snapshot like every other.
                self.notes.append("day %d: the night's snapshot fit in the %d bytes the full disk left" % (
                    d, self.fill_left))
        if not complete:
            try:
                wait_for("a backup-failed alert", 30, lambda: self.take_mails(d) or any(
                    a.startswith("backup-failed:") for a in self.day_alerts), interval=0.1)
            except HarnessError:
                self.fail(d, "the night %s alerted no failed backup (alerts: %s)" % (
                    what, ", ".join(self.day_alerts) or "none"))
        else:
            self.notes.append("day %d: the S3 server was killed after the run had stored its snapshot" % d)
        if kind == "disk-full":
            os.remove(self.filler)
        p = self.cli(["check"], check=False)
        if p.returncode != 0 and not self.only_known_wal_damage(p.stdout):
            self.fail(d, "cairn check %s: exit %d\n%s%s" % (
                what.replace("with", "after"), p.returncode, p.stdout[-1500:], p.stderr[-1500:]))
        older = [i for i in sorted(self.model, key=lambda i: self.all[i].time) if i not in made and
                 i not in self.damaged and not self.all[i].corrupted]
        if older:
            bad = self.restore_check(d, older[-1])
            if bad:
                self.fail(d, "%s, snapshot %s (made before) does not restore: %s" % (what, older[-1][:8], bad))
        # The archiver retries the segment it failed on when woken by a new one.
        self.wait_archived(d)
        failed = [n for n in SOURCES if not any(self.all[sid].sources.get(n) == "complete" for sid in made)]
        for src in failed:
            self.expect("missed-backup:%s" % src, d)
        self.clock.set(self.at(d, 3, 0, 30))
        self.wait_mails(d, ["missed-backup:%s" % src for src in failed])

    def wait_archived(self, d, timeout=120):
        """Switch WAL (a no-op when nothing was written since the last switch) and wait
        until PostgreSQL reports nothing waiting to be archived and no failure newer than
        its last success."""
        self.prod.psql("postgres", "SELECT pg_switch_wal()")
        sql = ("SELECT (SELECT count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready') = 0 AND "
               "coalesce(last_archived_time >= last_failed_time, last_failed_time IS NULL) FROM pg_stat_archiver")
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.prod.psql("postgres", sql) == "t":
                return
            time.sleep(0.2)
        self.fail(d, "PostgreSQL's WAL archiving did not catch up within %d s: %s" % (timeout, self.prod.psql(
            "postgres", "SELECT * FROM pg_stat_archiver")))

    def slow_source_lock(self, d):
        """Fault slow-source: before the night, a session takes an ACCESS EXCLUSIVE lock on
        app.accounts, which the logical dump must wait for; released SLOW_HOLD seconds
        after 02:00 (a thread), so the run takes longer than expected-duration."""
        self.locker = subprocess.Popen(
            [os.path.join(PG_BIN, "psql"), "-X", "-A", "-t", "-q", "-h", "127.0.0.1", "-p", str(self.prod.port),
             "-U", "postgres", "-d", "app"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self.locker.stdin.write("BEGIN;\nLOCK TABLE accounts IN ACCESS EXCLUSIVE MODE;\nSELECT 'locked';\n")
        self.locker.stdin.flush()
        line = self.locker.stdout.readline().strip()
        if line != "locked":
            raise HarnessError("slow-source: the lock was not taken: %r" % line)
        self.expect("slow-backup", d)

        def release(p=self.locker):
            p.stdin.write("ROLLBACK;\n")
            p.stdin.close()
            p.wait(30)
        return release

    # --- restore tests -------------------------------------------------------

    @timed('verify')
    def verify(self, d):
        """Sunday 04:00: the daemon's own restore test."""
        st = self.daemon.status()
        before = st.get("restore_tests") or {}
        total = sum(before.get(k, 0) for k in ("passed", "failed", "skipped"))
        self.clock.set(self.at(d, 4))

        def done():
            s = self.daemon.status()
            rt = s.get("restore_tests") or {}
            return s if sum(rt.get(k, 0) for k in ("passed", "failed", "skipped")) > total and \
                not s.get("running") else None
        s = wait_for("the Sunday restore test", 300, done)
        last = s.get("last_restore_test") or {}
        outcome, short = last.get("outcome"), last.get("snapshot") or ""
        self.restore_tests[outcome] = self.restore_tests.get(outcome, 0) + 1
        sid = next((i for i in self.all if short and i.startswith(short)), None)
        if outcome == "passed":
            if sid in self.damaged:
                self.fail(d, "the restore test passed snapshot %s, which the harness found damaged (%s)"
                          % (short, self.damaged[sid]))
        elif outcome == "failed":
            detail = last.get("detail") or ""
            wal = self.wal_damaged
            if wal and any(n in detail for n in wal["segments"]) and "archived WAL cannot be read back" in detail:
                # The data check names the damaged WAL and fails the test
                # (spec/plan.md "Restore tests"); the snapshot is not blamed.
                if not wal.get("found"):
                    wal["found"] = d
                    log("day %d: the restore test named the damaged WAL %s" % (d, ", ".join(wal["segments"])))
            elif sid not in self.damaged:
                self.fail(d, "the restore test failed snapshot %s, which the harness did not damage: %s"
                          % (short, detail))
            elif self.flip and not self.flip.get("found"):
                self.flip["found"] = d
                log("day %d: the restore test found the flipped byte in snapshot %s" % (d, short))
            self.expect("restore-test-failed", d)
            if self.smtp.proc is not None:
                # With the server down (smtp-down on a Sunday) the alert comes at noon,
                # when the server is back (run_day).
                self.wait_mails(d, ["restore-test-failed"])
        else:
            self.fail(d, "the restore test was %s: %s" % (outcome, last.get("detail")))

    @timed('restore_check')
    def restore_check(self, d, sid, sources=("etc", "db", "kafka"), brokers=False):
        """Restore snapshot `sid` with `cairn restore` and compare each source with the digest
        recorded at backup time. Returns None when equal, else what differs. Kafka: the
        record streams restored as files (`--target`) and parsed here; with `brokers`, also
        restored into a fresh broker and read back with the group offsets (slower)."""
        self.restore_checks += 1
        problems = []
        want = self.digests.get(sid, {})
        if "etc" in sources and "etc" in want:
            target = os.path.join(self.work, "restore-check")
            data.rmtree(target)
            p = self.cli(["restore", sid, "--source", "etc", "--target", target, "-q"], check=False)
            if p.returncode != 0:
                problems.append("etc: restore exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
            else:
                got = data.restore_dir_digest(target, self.tree.root)
                if got != want["etc"]:
                    problems.append("etc: digest %s, recorded %s" % (got[:12], want["etc"][:12]))
            data.rmtree(target)
        if "db" in sources and "db" in want:
            p = self.cli(["restore", sid, "--source", "db", "--to", self.scratch.url(), "--clean", "-q"],
                         check=False)
            if p.returncode != 0:
                problems.append("db: restore exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
            else:
                got = data.db_digest(self.scratch.port)
                if got != want["db"]:
                    problems.append("db: digest %s, recorded %s" % (got[:12], want["db"][:12]))
        if "kafka" in sources and "kafka" in want:
            target = os.path.join(self.work, "restore-check")
            data.rmtree(target)
            p = self.cli(["restore", sid, "--source", "kafka", "--target", target, "-q"], check=False)
            if p.returncode != 0:
                problems.append("kafka: restore exit %d: %s" % (p.returncode, p.stderr.strip()[-300:]))
            else:
                rec = {k: v for k, v in self.kafka_sums.get(sid, {}).items() if not k.startswith("group ")}
                try:
                    got = kafka.streams_summary(target)
                except (ValueError, OSError) as e:
                    got = {"unreadable": str(e)}
                if got != rec:
                    problems.append("kafka (record streams): %s" % kafka.differences(rec, got))
            data.rmtree(target)
            if brokers:
                bad = self.kafka_restore_check(sid)
                if bad:
                    problems.append("kafka (into a broker): %s" % bad)
        return "; ".join(problems) or None

    @timed('kafka_restore_check')
    def kafka_restore_check(self, sid):
        """Restore the snapshot's Kafka source into a fresh broker and read it back: every
        partition's records (offsets, timestamps, keys, values, headers) and every group's
        committed offsets must equal what the harness recorded at backup time."""
        b = kafka.Tansu(self.work, "restore-check")
        try:
            b.start()
            p = self.cli(["restore", sid, "--source", "kafka", "--to-brokers", b.brokers(), "-q"], check=False)
            if p.returncode != 0:
                return "restore exit %d: %s" % (p.returncode, p.stderr.strip()[-300:])
            got = kafka.summary(kafka.read_all(b.brokers()), kafka.committed(b.brokers()))
        except RuntimeError as e:
            return str(e)
        finally:
            b.stop()
        want = self.kafka_sums.get(sid)
        if kafka.digest_of(got) != self.digests[sid]["kafka"]:
            return kafka.differences(want or {}, got)
        return None

    def pg_cli(self, argv, timeout=600):
        """cairn as the postgres user (a point-in-time restore: the restored cluster's
        restore_command runs as postgres with the cache and key file given here)."""
        env = {k: v for k, v in self.env.items() if k != "CAIRN_PLAN"}
        env["HOME"] = self.pitr_dir
        return subprocess.run([self.bin] + argv + ["-r", self.repo, "--password-file", self.password,
                                                   "--cache-dir", self.pg_cache["pitr"]],
                              env=env, user="postgres", group="postgres", cwd=self.pitr_dir,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout)

    def pitr_window(self):
        """The kept window of source `cluster`, as the harness knows it: from a little after
        the oldest kept snapshot holding a complete copy (its base backup ended then) to the
        last marker committed before the newest one (a base backup ends only once the WAL it
        needs is archived, so the archive reaches every commit before it)."""
        times = sorted(self.all[i].time for i in self.model
                       if self.all[i].sources.get("cluster") == "complete" and i not in self.damaged)
        if self.wal_damaged:
            # Recovery from a base backup made before the flip would cross the damaged WAL.
            times = [t for t in times if t > self.at(self.wal_damaged["day"] + 1) - datetime.timedelta(hours=1)]
        if not times:
            return None
        lo = times[0] + datetime.timedelta(minutes=5)
        ends = [e for _, _, e in self.events.markers if e < times[-1]]
        if not ends or ends[-1] <= lo:
            return None
        return lo, ends[-1]

    @timed('pitr_check')
    def pitr_check(self, d, why="weekly"):
        """A point-in-time restore of `cluster` to a moment of the kept window chosen by the
        seed (`cairn restore --at T --pgdata DIR --start-port P`, as postgres): the restored
        cluster holds exactly the markers committed before T, and database `app` as it was
        at T."""
        win = self.pitr_window()
        if not win:
            return
        lo, hi = win
        for _ in range(200):
            t = lo + (hi - lo) * self.rng_sample.random()
            t = t.replace(microsecond=0)
            if lo <= t <= hi and self.events.quiet(t):
                break
        else:
            self.notes.append("day %d: no quiet moment in the kept window for a point-in-time restore" % d)
            return
        want_markers = self.events.markers_before(t)
        want_app = self.events.app_at(t)
        target = os.path.join(self.pitr_dir, "restored")
        pitr.rmtree(target)
        port = free_port()
        t0 = time.time()
        p = self.pg_cli(["restore", "--at", rfc3339(t), "--source", "cluster", "--pgdata", target,
                         "--start-port", str(port), "--json", "-q"])
        where = "%s point-in-time restore to %s (%s local; kept window %s .. %s)" % (
            why, rfc3339(t), t.astimezone(self.tz).strftime("%Y-%m-%d %H:%M:%S"), rfc3339(lo), rfc3339(hi))
        try:
            if p.returncode != 0:
                self.fail(d, "%s: cairn restore exit %d: %s" % (where, p.returncode, p.stderr.strip()[-1500:]))
                return
            try:
                rep = json.loads(p.stdout)
            except ValueError:
                rep = {}
            reached = rep.get("reached")
            if reached and parse_time(reached) > t:
                self.fail(d, "%s: the report says it reached %s, after the target" % (where, reached))
            got_markers = pitr.restored_markers(port)
            got_app = data.db_digest(port, tables_only=True)
            if got_markers != want_markers:
                missing = sorted(set(want_markers) - set(got_markers))
                extra = sorted(set(got_markers) - set(want_markers))
                self.fail(d, "%s: the restored cluster holds %d markers (last %s), the harness committed %d "
                             "before the target (last %s); missing %s, extra %s" % (
                                 where, len(got_markers), got_markers[-1:] or "none", len(want_markers),
                                 want_markers[-1:] or "none", missing[:5], extra[:5]))
            elif got_app != want_app:
                self.fail(d, "%s: the tables of database app differ from what they held at the target" % where)
            self.pitr_checks.append((d, t, len(want_markers), time.time() - t0))
        finally:
            pitr.stop_restored(target)
            pitr.rmtree(target)

    @timed('sample_restore')
    def sample_restore(self, d):
        """Weekly: one kept snapshot, chosen by the seed, restores to its recorded digests."""
        cands = sorted(i for i in self.model if i not in self.damaged and not self.all[i].corrupted)
        if not cands:
            return
        sid = self.rng_sample.choice(cands)
        # Into a fresh broker (started for it: ~3 s) every fourth week and in the first
        # weeks; the record streams, restored as files, every week.
        bad = self.restore_check(d, sid, brokers=d < 28 or (d // 7) % 4 == 0)
        if bad:
            self.fail(d, "the weekly sample, snapshot %s (%s), does not restore to what was backed up: %s"
                      % (sid[:8], self.all[sid].time.astimezone(self.tz).date(), bad))

    # --- flip-byte -----------------------------------------------------------

    @timed('flip_byte')
    def flip_byte(self, d):
        packs = []
        for root, _, files in os.walk(os.path.join(self.repo_dir, "data")):
            for n in files:
                p = os.path.join(root, n)
                packs.append((os.stat(p).st_mtime, p))
        if not packs:
            self.fail(d, "no pack files to damage")
            return
        packs.sort()
        mtime, pack = self.rng_fault.choice(packs)
        size = os.path.getsize(pack)
        off = self.rng_fault.randrange(size)
        with open(pack, "r+b") as f:
            f.seek(off)
            b = f.read(1)
            f.seek(off)
            f.write(bytes([b[0] ^ (1 << self.rng_fault.randrange(8))]))
        rel = os.path.relpath(pack, self.repo_dir)
        # Which kept snapshots it damaged, found by restoring each (not by asking cairn).
        damaged = {}
        for sid in sorted(self.model, key=lambda i: self.all[i].time):
            bad = self.restore_check(d, sid)
            if bad:
                damaged[sid] = bad
        self.damaged.update(damaged)
        log("day %d: flipped byte %d of %s (%d bytes): %d of %d kept snapshots damaged" % (
            d, off, rel, size, len(damaged), len(self.model)))
        if damaged:
            # The sources with an undamaged copy kept now: retention must still keep one when
            # the damage is dealt with.
            good = {src for src in SOURCES for i in self.model
                    if i not in damaged and self.all[i].sources.get(src) == "complete"}
            self.flip = {"day": d, "pack": rel, "deadline": d + 7, "found": None, "damaged": set(damaged),
                         "later": 0, "good": good}
            self.allow("restore-test-failed", d + 7)
            # Prune reads the node lists of the snapshots it keeps: one in the damaged frame
            # stops it, and the daemon alerts a failed retention until the remedy.
            self.allow("backup-failed:retention", d + 7)
        else:
            self.notes.append("day %d: the flipped byte in %s damaged no kept snapshot" % (d, rel))
        self.wal_damage(d, rel, mtime)

    def wal_damage(self, d, rel, mtime):
        """Which archived WAL files recovery reads (segments, timeline history files) the flip
        damaged, fetched with wal-fetch and compared with the sha256 recorded by the
        archive_command before it pushed. The files looked at: those whose entry was written
        within seconds of the flipped pack (wal-push stores each file in a pack of its own),
        and those `cairn check --read-data` names (a pack that prune or repair rewrote holds
        older ones: found by `--days 400 --seed 1`, day 387). Each must be named, and each
        named must really be damaged. A damaged one cuts the restorable range of the base
        backups before it (spec/postgres.md, "Continuity"); a backup history file
        (`….backup`) is not one of them, since recovery never reads it."""
        want = {}
        try:
            with open(self.wal_log) as f:
                for line in f:
                    h, _, path = line.strip().partition("  ")
                    want[os.path.basename(path)] = h
        except OSError:
            return
        wal_dir = os.path.join(self.repo_dir, "wal")
        cands = set()
        for n in os.listdir(wal_dir):
            name = n.rsplit(".", 1)[0]
            if needed_wal(name) and name in want and n != name and \
                    abs(os.stat(os.path.join(wal_dir, n)).st_mtime - mtime) < 5:
                cands.add(name)
        p = self.cli(["check", "--read-data", "--json"], check=False)
        try:
            named = set(json.loads(p.stdout).get("damaged_wal") or [])
        except ValueError:
            self.fail(d, "cairn check --read-data --json printed no report (exit %d): %s" % (
                p.returncode, p.stderr.strip()[-300:]))
            return
        log("day %d: WAL files stored within 5 s of the flipped pack: %s; named by cairn check: %s" % (
            d, ", ".join(sorted(cands)) or "none", ", ".join(sorted(named)) or "none"))
        bad = []
        out = os.path.join(self.work, "wal-check")
        for name in sorted(cands | named):
            rm_file(out)
            p = self.cli(["wal-fetch", name, out, "-q"], check=False)
            got = None
            if p.returncode == 0:
                with open(out, "rb") as f:
                    got = hashlib.sha256(f.read()).hexdigest()
            if got != want.get(name):
                bad.append(name)
        rm_file(out)
        if set(bad) != named:
            self.fail(d, "the flipped byte in %s damaged archived WAL file(s) [%s] (wal-fetch does not give back "
                         "what was archived), and cairn check --read-data names [%s]" % (
                             rel, ", ".join(bad), ", ".join(sorted(named))))
        if not bad:
            return
        self.wal_damaged = {"day": d, "segments": bad, "pack": rel}
        log("day %d: the flipped byte in %s damaged archived WAL file(s) %s" % (d, rel, ", ".join(bad)))

    def wal_damage_later(self, d):
        """A week after a flip that damaged WAL (the daemon's data check has run): `cairn
        check` must still name the segments while a kept base backup needs them."""
        w = self.wal_damaged
        if not w or w.get("checked") or d < w["day"] + 7:
            return
        w["checked"] = d
        p = self.cli(["check"], check=False)
        text = p.stdout + p.stderr
        missing = [n for n in w["segments"] if n not in text]
        if missing:
            self.fail(d, "archived WAL segment(s) %s, damaged by the flip of day %d, are named by no cairn check "
                         "a week later (exit %d: %s); wal-fetch of them %s" % (
                             ", ".join(missing), w["day"], p.returncode, " | ".join(text.strip().splitlines()[-2:]),
                             "; ".join(self.fetch_state(n) for n in missing)))

    def only_known_wal_damage(self, out):
        """Whether every error `cairn check` printed is about the archived WAL a flip
        damaged: a lost segment stays a gap while a kept base backup's range crosses it."""
        w = self.wal_damaged
        errors = [l for l in out.splitlines() if l.startswith("error:")]
        return bool(w) and bool(errors) and all(any(n in l for n in w["segments"]) for l in errors)

    def fetch_state(self, name):
        p = self.cli(["wal-fetch", name, os.path.join(self.work, "wal-check"), "-q"], check=False)
        rm_file(os.path.join(self.work, "wal-check"))
        return "%s: %s" % (name, "exit 0" if p.returncode == 0 else p.stderr.strip().splitlines()[-1][:200])

    def check_new_after_flip(self, d, made):
        """While a flipped byte is in the repository, each new snapshot is restored too: one
        that reuses a damaged chunk (deduplication) is damaged as well."""
        f = self.flip
        if not f:
            return
        for sid in made:
            if f.get("remedied") is not None:
                bad = self.restore_check(d, sid)
                if bad:
                    self.fail(d, "after the damaged snapshots were forgotten and pruned (day %d), the next "
                                 "snapshot %s still does not restore: %s" % (f["remedied"], sid[:8], bad))
                continue
            bad = self.restore_check(d, sid)
            if bad:
                self.damaged[sid] = "made after the flip of day %d: %s" % (f["day"], bad)
                f["damaged"].add(sid)
                f["later"] += 1
        if f.get("remedied") is not None and made:
            self.flip = None  # the next night's snapshot was checked: closed

    def flip_deadline(self, d):
        """The day a restore test found the damage (or the 7th day): the operator's remedy that
        `cairn check --read-data` hints at — forget the damaged snapshots, prune — after
        checking that cairn names exactly the snapshots the harness found damaged and that a
        good copy of every source is kept."""
        f = self.flip
        if not f or f.get("remedied") is not None or (not f["found"] and d < f["deadline"]):
            return
        if not f["found"]:
            if not f["damaged"] & set(self.model):
                # Retention let every damaged snapshot go before a restore test came (found by
                # `--days 400 --seed 1`, day 185): the damage no longer touches anything kept.
                self.notes.append("day %d: the snapshots the flip of day %d damaged all left through "
                                  "retention before a restore test" % (d, f["day"]))
                f["remedied"] = d
                return
            self.fail(d, "the byte flipped on day %d in %s was not found by a restore test within 7 days "
                         "(%d kept snapshots damaged; the daemon's weekly test restores one random snapshot)"
                      % (f["day"], f["pack"], len(f["damaged"] & set(self.model))))
        present = {s["id"] for s in self.plan_snapshots()}
        bad = sorted(f["damaged"] & present)
        for src in SOURCES:
            good = [i for i in present if i not in self.damaged and self.all.get(i) and
                    self.all[i].sources.get(src) == "complete"]
            if good:
                continue
            if src in f["good"]:
                self.fail(d, "retention removed the last undamaged copy of %s after the flip of day %d"
                          % (src, f["day"]))
            else:
                self.notes.append("day %d: the flip of day %d damaged every kept copy of %s (a chunk every "
                                  "snapshot shares): no good copy was left to keep" % (d, f["day"], src))
        p = self.cli(["check", "--read-data"], check=False)
        named = set()
        for line in (p.stdout + p.stderr).splitlines():
            if line.startswith("damaged: snapshot "):
                named.add(line.split()[2])
        want = {i[:8] for i in bad}
        if p.returncode == 0 or named != want:
            self.fail(d, "cairn check --read-data (exit %d) names damaged snapshots [%s], the harness found [%s]"
                      % (p.returncode, " ".join(sorted(named)), " ".join(sorted(want))))
        if bad:
            self.cli(["forget"] + bad + ["-q"])
            self.cli(["prune", "-q"])
        for i in bad:
            self.model.pop(i, None)
        _, self.reasons = model.decide(list(self.model.values()), self.rules, self.tz)
        if os.path.exists(os.path.join(self.repo_dir, f["pack"])):
            # Its other frames are still used and prune did not find it worth repacking.
            self.notes.append("day %d: pack %s, damaged on day %d, stays after the forget and prune (its damaged "
                              "frame is no longer used)" % (d, f["pack"], f["day"]))
        f["remedied"] = d
        # With the newest snapshots forgotten, the newest complete copy may be older than
        # missed-backup until the next night.
        for src in SOURCES:
            self.allow("missed-backup:%s" % src, d + 1)
        log("day %d: forgot %d damaged snapshot(s) (%d of them made after the flip) and pruned" % (
            d, len(bad), f["later"]))
        if f["later"]:
            self.notes.append("day %d: %d snapshot(s) made after the flip of day %d reused its damaged chunk "
                              "(deduplication) and were damaged too, until the damaged snapshots were forgotten"
                              % (d, f["later"], f["day"]))

    # --- the table -----------------------------------------------------------

    def repo_size(self, daemon_view=False):
        """Bytes of the repository's files; `daemon_view`: those the daemon counts (not
        tmp/, where interrupted writes leave files)."""
        total = 0
        for root, dirs, files in os.walk(self.repo_dir):
            if daemon_view and root == self.repo_dir and "tmp" in dirs:
                dirs.remove("tmp")
            for n in files:
                try:
                    total += os.lstat(os.path.join(root, n)).st_size
                except FileNotFoundError:
                    pass
        return total

    def row(self, d, made, faults_today):
        cats = model.categories(self.reasons)
        kept = len(self.model)
        size = self.repo_size(daemon_view=True)
        limit = self.size_bound()
        r = {"day": d + 1, "date": self.date(d).isoformat(), "runs": len(made), "kept": kept,
             "daily": cats.get("daily", 0), "weekly": cats.get("weekly", 0), "monthly": cats.get("monthly", 0),
             "repo_mib": size / (1 << 20), "bound_mib": limit / (1 << 20) if limit else None,
             "alerts": sorted(set(self.day_alerts)), "faults": faults_today}
        self.rows.append(r)
        if limit and size > limit and d - self.bound_failed >= 30:
            self.bound_failed = d
            self.fail(d, "the repository holds %d bytes, more than its bound %d (spec/timelapse.md, \"Repository "
                         "size\"; reported at most every 30 days)" % (size, limit))
        print("%4d  %s %s  %4d  %4d  %3d/%2d/%2d  %8.2f  %8s  %-40s %s" % (
            r["day"], r["date"], self.date(d).strftime("%a"), r["runs"], r["kept"], r["daily"], r["weekly"],
            r["monthly"], r["repo_mib"], "%.2f" % r["bound_mib"] if limit else "-",
            ",".join(r["alerts"]) or "-", ",".join(faults_today) or "-"), flush=True)

    def size_bound(self):
        """B(d) of spec/timelapse.md for the snapshots the model keeps (None before the first
        night was measured)."""
        if not self.bound.persist or not self.model:
            return None
        days = sorted((self.all[i].time.astimezone(self.tz).date() - START).days for i in self.model)
        return self.bound.bound(days[0], days)

    # --- the end -------------------------------------------------------------

    @timed('final')
    def final(self):
        d = self.days
        if not self.daemon.alive():
            self.start_daemon(self.at(d) - datetime.timedelta(minutes=1))
        self.take_mails(d - 1)
        for lb in list(self.expected):
            self.fail(d, "expected alert %s never arrived" % lb)
        self.compare(d, self.plan_snapshots(), set(self.model))
        # Every rule keeps at least one snapshot (for each source it keeps any).
        cats = model.categories(self.reasons)
        for rule in self.rules:
            if not cats.get(rule):
                self.fail(d, "no snapshot is kept by keep-%s" % rule)
        t0 = time.time()
        checked = 0
        kept = [i for i in sorted(self.model, key=lambda i: self.all[i].time)
                if not self.all[i].corrupted and i not in self.damaged]
        # Into a broker (records and group offsets): the oldest, the newest and two more.
        into_brokers = set(kept[:1] + kept[-1:] + self.rng_sample.sample(kept, min(2, len(kept))))
        for sid in kept:
            s = self.all[sid]
            bad = self.restore_check(d, sid, brokers=sid in into_brokers)
            checked += 1
            if bad:
                after = self.flip and s.time > self.at(self.flip["day"])
                self.fail(d, "kept snapshot %s (%s) does not restore to what was backed up: %s%s" % (
                    sid[:8], s.time.astimezone(self.tz).date(), bad,
                    " (made after the byte flip of day %d)" % self.flip["day"] if after else ""))
        log("final: %d kept snapshots restored and compared in %.0f s" % (checked, time.time() - t0))
        self.pitr_check(d, "final")
        p = self.cli(["check"], check=False)
        if p.returncode != 0 and not self.only_known_wal_damage(p.stdout):
            self.fail(d, "final cairn check: exit %d\n%s%s" % (p.returncode, p.stdout[-1500:], p.stderr[-1500:]))
        self.check_rss(d)
        if self.daemon.dropped:
            self.notes.append("the daemon's API closed %d request(s) without an answer (asked again): %s"
                              % (len(self.daemon.dropped), "; ".join(self.daemon.dropped[:3])))

    def check_rss(self, d):
        """The daemon's memory does not grow with the days: at the end it is within 20% of what
        it was after 30 days (the same process; restarts start the count again)."""
        if not self.rss:
            return
        start = self.rss[-1][1]
        mine = [(day, kib) for day, n, kib in self.rss if n == start]
        first_day = mine[0][0]
        at30 = next((kib for day, kib in mine if day >= first_day + 29), None)
        end = mine[-1][1]
        peak = max(kib for _, _, kib in self.rss)
        self.rss_note = "daemon RSS: %d KiB at the end (its process ran days %d-%d), %s after its 30th day, " \
                        "peak %d KiB over the run" % (end, first_day + 1, mine[-1][0] + 1,
                                                     "%d KiB" % at30 if at30 else "not measured", peak)
        if at30 and end > at30 * 1.2:
            self.fail(d, "the daemon's memory grew: %d KiB at the end, %d KiB after 30 days (more than 20%%)"
                      % (end, at30))


def main(args, root):
    t0 = time.time()
    tl = Timelapse(args, root)
    try:
        tl.setup()
        print("%4s  %-14s  %4s  %4s  %9s  %8s  %8s  %-40s %s" % ("day", "date", "runs", "kept", "d/w/m", "repo MiB",
                                                                  "bound",
                                                             "alerts", "faults"), flush=True)
        for d in range(args.days):
            tl.run_day(d)
        tl.final()
    except (HarnessError, Failure) as e:
        tl.failures.append(("-", "harness stopped: %s" % e))
        log("harness stopped: %s" % e)
    except Exception as e:  # noqa: BLE001 - reported as a failure, the servers still stopped
        tl.failures.append(("-", "harness stopped: %s: %s" % (type(e).__name__, e)))
        log("harness stopped:\n%s" % traceback.format_exc())
    finally:
        tl.cleanup()
    wall = time.time() - t0
    for n in tl.notes:
        print("note: %s" % n)
    if getattr(tl, "rss_note", None):
        print(tl.rss_note)
    print("wall time by phase: %s" % ", ".join("%s %.0f s" % kv for kv in sorted(PHASES.items(), key=lambda kv: -kv[1])))
    if tl.pitr_checks:
        print("point-in-time restores checked: %d (%.1f s each on average; the last to %s with %d markers)" % (
            len(tl.pitr_checks), sum(x[3] for x in tl.pitr_checks) / len(tl.pitr_checks),
            rfc3339(tl.pitr_checks[-1][1]), tl.pitr_checks[-1][2]))
    print("restore checks by the harness: %d; daemon restore tests: %s; wall time %.0f s" % (
        tl.restore_checks, ", ".join("%s %d" % kv for kv in sorted(tl.restore_tests.items())), wall))
    if tl.failures:
        for d, text in tl.failures:
            print("FAILED (day %s): %s" % (d, text))
        print("%d days, %d faults, %d invariant failure(s)" % (len(tl.rows), tl.fault_count, len(tl.failures)))
        return 1
    print("%d days, %d faults, all invariants held" % (len(tl.rows), tl.fault_count))
    return 0
