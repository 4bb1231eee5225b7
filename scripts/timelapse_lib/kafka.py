"""The plan's Kafka source: a Tansu broker the harness starts (DESIGN.md §6), topics the
harness fills every day and consumer groups whose offsets it commits, and the harness's
own account of what the topics held -- from its producer's delivery reports, never from
cairn -- so that a restore into a fresh broker can be compared record by record.

Tansu 0.6 keeps its log in memory here: its SQLite engine cannot list consumer groups
(it stores a group's detail as a JSON string and fails to read it back as a struct:
ListGroups answers a transport failure), and a broker on memory loses everything when it
stops. So the fault `broker-down` cuts the broker off instead: clients reach it through
a TCP proxy of the harness (the broker's advertised listener), which stops listening for
the night -- to cairn, a broker that is down. Its quirks (spec/kafka.md, "Differences of the test broker"): a fetch from the middle of a
batch returns nothing, so the producer sends one record per batch; consumers read to
partition EOF rather than trusting one watermark.

Uses Python's confluent-kafka (installed by scripts/setup), whose librdkafka is not the
one cairn bundles."""
import hashlib
import os
import socket
import subprocess
import threading
import time

from bench_lib.common import free_port, stop_process, wait_port

TANSU = os.path.expanduser("~/.cargo/bin/tansu")

# Topic -> partitions, and group -> the topic it consumes.
TOPICS = {"orders": 3, "audit": 1}
GROUPS = {"billing": "orders", "auditor": "audit"}


def client_module():
    """confluent_kafka, or a HarnessError-worthy message when it is missing."""
    try:
        import confluent_kafka  # noqa: F401
        return confluent_kafka
    except ImportError:
        raise RuntimeError("python module confluent_kafka is missing: run scripts/setup "
                           "(it installs confluent-kafka for the Kafka source of scripts/timelapse)")


class Proxy:
    """A TCP proxy from a port of its own to `target_port`, which can stop listening (and
    drop its connections) and listen again on the same port."""

    def __init__(self, target_port):
        self.port = free_port()
        self.target = target_port
        self.lsock = None
        self.conns = []
        self.lock = threading.Lock()

    def up(self):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", self.port))
        s.listen(64)
        self.lsock = s
        threading.Thread(target=self.accept, args=(s,), daemon=True).start()

    def accept(self, s):
        while True:
            try:
                c, _ = s.accept()
            except OSError:
                return  # closed: down
            try:
                t = socket.create_connection(("127.0.0.1", self.target), timeout=10)
                t.settimeout(None)
            except OSError:
                c.close()
                continue
            with self.lock:
                self.conns += [c, t]
            for a, b in ((c, t), (t, c)):
                threading.Thread(target=self.pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def pipe(a, b):
        try:
            while True:
                buf = a.recv(65536)
                if not buf:
                    break
                b.sendall(buf)
        except OSError:
            pass
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def down(self):
        if self.lsock is not None:
            self.lsock.close()
            self.lsock = None
        with self.lock:
            conns, self.conns = self.conns, []
        for x in conns:
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            x.close()


class Tansu:
    """A Tansu broker (storage in memory), its log in DIR/broker.log. With `proxied`, its
    clients reach it through a Proxy (its advertised listener), which `cut()` closes and
    `mend()` opens again."""

    def __init__(self, work, name, proxied=False):
        self.name = name
        self.dir = os.path.join(work, "kafka-" + name)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        self.proxy = Proxy(self.port) if proxied else None
        self.proc = None

    def brokers(self):
        return "127.0.0.1:%d" % (self.proxy.port if self.proxy else self.port)

    def start(self):
        if not os.access(TANSU, os.X_OK):
            raise RuntimeError("%s is missing: run scripts/setup (it installs tansu 0.6.0)" % TANSU)
        url = "tcp://127.0.0.1:%d" % self.port
        advertised = "tcp://%s" % self.brokers()
        with open(os.path.join(self.dir, "broker.log"), "ab") as lf:
            self.proc = subprocess.Popen([TANSU, "broker", "--listener-url", url, "--advertised-listener-url",
                                          advertised, "--storage-engine", "memory://tansu/"],
                                         cwd=self.dir, stdout=lf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL)
        wait_port(self.port, self.proc, timeout=30)
        if self.proxy:
            self.proxy.up()

    def cut(self):
        """The broker unreachable: nothing listens at its advertised address."""
        self.proxy.down()

    def mend(self):
        self.proxy.up()

    def stop(self):
        if self.proxy:
            self.proxy.down()
        stop_process(self.proc)
        self.proc = None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None


def config(brokers, **extra):
    # log_level 0: the run's own clients stay quiet while the broker is cut off (broker-down);
    # their failures surface as exceptions where the harness needs the broker.
    c = {"bootstrap.servers": brokers, "log_level": 0, "socket.timeout.ms": 10000}
    c.update(extra)
    return c


def create_topics(brokers, topics=TOPICS):
    ck = client_module()
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient(config(brokers))
    fs = admin.create_topics([NewTopic(t, num_partitions=n, replication_factor=1) for t, n in topics.items()],
                             operation_timeout=10, request_timeout=15)
    for t, f in fs.items():
        try:
            f.result(30)
        except ck.KafkaException as e:
            raise RuntimeError("creating topic %s on %s: %s" % (t, brokers, e))


def record_key(r):
    """What a record is, for the digests: offset, timestamp (ms), key, value, headers."""
    off, ts, key, value, headers = r
    return repr((off, ts, key, value, tuple(headers)))


def partition_digest(records):
    h = hashlib.sha256()
    for r in records:
        h.update(record_key(r).encode() + b"\n")
    return "%d:%s" % (len(records), h.hexdigest()[:16])


def summary(log, groups):
    """{'orders/0': 'N:digest', ..., 'group billing': {'orders/0': offset, ...}}: what the
    topics and groups held, small enough to keep per snapshot."""
    out = {"%s/%d" % tp: partition_digest(recs) for tp, recs in sorted(log.items())}
    for g, offs in sorted(groups.items()):
        out["group " + g] = {"%s/%d" % tp: o for tp, o in sorted(offs.items())}
    return out


def digest_of(summ):
    return hashlib.sha256(repr(sorted(summ.items())).encode()).hexdigest()


def differences(want, got):
    """What differs between two summaries, as a short text."""
    out = []
    for k in sorted(set(want) | set(got)):
        if want.get(k) != got.get(k):
            out.append("%s: %s, recorded %s" % (k, got.get(k), want.get(k)))
    return "; ".join(out[:6]) + (" (and %d more)" % (len(out) - 6) if len(out) > 6 else "")


def parse_stream(path):
    """A partition's record stream as `cairn restore --target` writes it (the node
    `kafka/<topic>/<partition>`, format in spec/kafka.md, "Record stream"), parsed here
    from that description: [(offset, ts, key, value, headers)]."""
    import struct
    with open(path, "rb") as f:
        buf = f.read()
    out = []
    pos = 0

    def take_bytes(p):
        (n,) = struct.unpack_from("<i", buf, p)
        p += 4
        if n < 0:
            return None, p
        return buf[p:p + n], p + n

    while pos < len(buf):
        (length,) = struct.unpack_from("<I", buf, pos)
        end = pos + 4 + length
        p = pos + 4
        off, ts, _tstype = struct.unpack_from("<qqB", buf, p)
        p += 17
        key, p = take_bytes(p)
        value, p = take_bytes(p)
        (nh,) = struct.unpack_from("<I", buf, p)
        p += 4
        headers = []
        for _ in range(nh):
            name, p = take_bytes(p)
            hv, p = take_bytes(p)
            headers.append((name.decode(), hv))
        if p != end:
            raise ValueError("%s: record at byte %d is %d bytes long, its fields %d" % (path, pos, length, p - pos - 4))
        out.append((off, ts, key, value, headers))
        pos = end
    return out


def streams_summary(root, topics=TOPICS):
    """The partitions' digests (as in summary()) of the record streams restored below root."""
    log = {}
    for t, n in topics.items():
        for p in range(n):
            path = os.path.join(root, "kafka", t, str(p))
            log[(t, p)] = parse_stream(path) if os.path.exists(path) else []
    return {"%s/%d" % tp: partition_digest(recs) for tp, recs in sorted(log.items())}


def read_all(brokers, topics=TOPICS, timeout=60):
    """Every record of every partition of `topics`, read from the log start to partition EOF:
    {(topic, partition): [(offset, ts, key, value, headers)]}."""
    ck = client_module()
    c = ck.Consumer(config(brokers, **{"group.id": "timelapse-reader", "enable.auto.commit": False,
                                       "enable.partition.eof": True, "auto.offset.reset": "earliest",
                                       "fetch.wait.max.ms": 10}))
    try:
        tps = [ck.TopicPartition(t, p, ck.OFFSET_BEGINNING) for t, n in topics.items() for p in range(n)]
        c.assign(tps)
        out = {(t, p): [] for t, n in topics.items() for p in range(n)}
        eof = set()
        t0 = time.time()
        while len(eof) < len(tps):
            if time.time() - t0 > timeout:
                raise RuntimeError("reading %s from %s timed out (EOF on %s)" % (
                    ", ".join(topics), brokers, sorted(eof)))
            m = c.poll(0.2)
            if m is None:
                continue
            tp = (m.topic(), m.partition())
            if m.error():
                if m.error().code() == ck.KafkaError._PARTITION_EOF:
                    eof.add(tp)
                    continue
                raise RuntimeError("reading %s/%d from %s: %s" % (tp[0], tp[1], brokers, m.error()))
            eof.discard(tp)
            out[tp].append((m.offset(), m.timestamp()[1], m.key(), m.value(),
                            [(k, v) for k, v in (m.headers() or [])]))
        return out
    finally:
        c.close()


def committed(brokers, groups=GROUPS, topics=TOPICS):
    """{group: {(topic, partition): offset}} as the broker reports them (no commit: left out)."""
    ck = client_module()
    out = {}
    for g, t in groups.items():
        c = ck.Consumer(config(brokers, **{"group.id": g, "enable.auto.commit": False}))
        try:
            res = c.committed([ck.TopicPartition(t, p) for p in range(topics[t])], timeout=15)
        finally:
            c.close()
        offs = {(x.topic, x.partition): x.offset for x in res if x.offset >= 0}
        if offs:
            out[g] = offs
    return out


class KafkaData:
    """The topics' contents as the harness produced them. Each day: a few records per
    partition (keys, null keys and values, headers, the simulated time as timestamp), and
    each group commits an offset a little behind the end of its partitions, as consumers
    that keep up but lag a bit would."""

    def __init__(self, broker, rng):
        self.broker = broker
        self.rng = rng
        self.producer = None
        self.committers = {}
        self.log = {(t, p): [] for t, n in TOPICS.items() for p in range(n)}
        self.groups = {}
        self.serial = 0
        self.bytes_produced = 0

    def create(self, when_ms):
        create_topics(self.broker.brokers())
        self.produce(-1, when_ms, 20)
        self.commit()

    def produce(self, day, when_ms, n):
        ck = client_module()
        if self.producer is None:
            # One for the run: the broker keeps its state (a night cut off reconnects it).
            self.producer = ck.Producer(config(self.broker.brokers(), **{
                "enable.idempotence": True, "acks": "all", "linger.ms": 0, "batch.num.messages": 1,
                "message.timeout.ms": 30000}))
        p = self.producer
        errors = []
        delivered = []

        def done(sent):
            # A delivery report has the offset but not the headers: what was sent is kept.
            def cb(err, msg):
                if err is not None:
                    errors.append(str(err))
                else:
                    delivered.append((msg.topic(), msg.partition(), msg.offset(), msg.timestamp()[1]) + sent)
            return cb

        for i in range(n):
            topic = self.rng.choice(sorted(TOPICS))
            part = self.rng.randrange(TOPICS[topic])
            self.serial += 1
            key = None if self.rng.random() < 0.1 else ("k-%d" % self.rng.randrange(50)).encode()
            if self.rng.random() < 0.05:
                value = None  # a tombstone
            else:
                value = ("day %d #%d " % (day, self.serial)).encode() + self.rng.randbytes(self.rng.randrange(8, 400))
            headers = [("trace", ("%016x" % self.rng.getrandbits(64)).encode())] if self.rng.random() < 0.5 else []
            if headers and self.rng.random() < 0.2:
                headers.append(("empty", None))
            kw = {"partition": part, "timestamp": when_ms + i, "on_delivery": done((key, value, headers))}
            if key is not None:
                kw["key"] = key
            if value is not None:
                kw["value"] = value
            if headers:
                kw["headers"] = headers
            p.produce(topic, **kw)
            p.poll(0)
        if p.flush(30) != 0:
            raise RuntimeError("producing to %s: not delivered within 30 s" % self.broker.brokers())
        if errors:
            raise RuntimeError("producing to %s: %s" % (self.broker.brokers(), "; ".join(errors[:3])))
        # The offsets are the broker's (delivery reports), in offset order per partition.
        for topic, part, off, ts, key, value, headers in sorted(delivered, key=lambda m: m[:3]):
            self.log[(topic, part)].append((off, ts, key, value, list(headers)))
            self.bytes_produced += len(key or b"") + len(value or b"") + sum(
                len(k) + len(v or b"") for k, v in headers)
        for tp, recs in self.log.items():
            offs = [r[0] for r in recs]
            if offs != sorted(offs) or len(set(offs)) != len(offs):
                raise RuntimeError("the broker gave %s/%d offsets out of order: %s" % (tp[0], tp[1], offs[-10:]))

    def commit(self):
        """Each group commits, per partition of its topic, an offset between its last commit
        and the end (sometimes exactly the end)."""
        ck = client_module()
        for g, t in GROUPS.items():
            offs = {}
            for p in range(TOPICS[t]):
                recs = self.log[(t, p)]
                end = recs[-1][0] + 1 if recs else 0
                last = self.groups.get(g, {}).get((t, p), 0)
                lo = min(last, end)
                offs[(t, p)] = end if self.rng.random() < 0.3 else self.rng.randint(lo, end)
            c = self.committers.get(g)
            if c is None:
                c = self.committers[g] = ck.Consumer(config(self.broker.brokers(), **{
                    "group.id": g, "enable.auto.commit": False}))
            c.commit(offsets=[ck.TopicPartition(tt, pp, o) for (tt, pp), o in offs.items()], asynchronous=False)
            self.groups[g] = offs

    def close(self):
        for c in self.committers.values():
            c.close()
        self.committers = {}
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None

    def mutate(self, day, when_ms):
        self.produce(day, when_ms, self.rng.randint(4, 16))
        self.commit()

    def summary(self):
        return summary(self.log, self.groups)

    def check_broker(self):
        """What the broker holds equals the harness's account (records and group offsets);
        returns None or what differs."""
        got = summary(read_all(self.broker.brokers()), committed(self.broker.brokers()))
        want = self.summary()
        return None if got == want else differences(want, got)
