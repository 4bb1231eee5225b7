"""The faults of a run and when they happen: a schedule drawn from the seed, so the same
seed injects the same faults on the same days.

Each kind, what the harness does, and what it must produce (spec/timelapse.md):

- pg-down:      PostgreSQL is stopped for the night's run, started after it. The run saves
                a snapshot with `db` failed and `etc` complete; alerts `backup-failed: db`,
                and at 03:00 (25 h after db's last copy) `missed backup: db`.
- smtp-down:    the SMTP server is down from before the night's run until noon, and
                PostgreSQL down for the run: the `backup failed: db` and `missed backup: db`
                alerts are delivered after the server returns.
- no-run-night: the daemon is stopped (SIGTERM) for a whole day and night, then started
                again; its start-up check alerts `missed backup` for both sources.
- sigkill:      the daemon is killed (SIGKILL) at a random moment of the night's run and
                started again: `cairn check` is clean, the next night works; when the
                killed run saved nothing, 03:00 brings `missed backup` for both sources.
- broker-down:  the Kafka broker is stopped for the night's run and started after it: the
                snapshot holds `kafka` failed and the other sources complete; alerts
                `backup failed: kafka`, and at 03:00 `missed backup: kafka`.
- quota-low:    the plan's quota is lowered (SIGHUP) so the repository fills 85% of it:
                `storage high` arrives; the next day, after the night, the quota is given
                back, and no storage alert comes after.
- slow-source:  a session holds a lock the logical dump waits for until 20 s after 02:00:
                `slow backup` (expected-duration 15s); the night's snapshot is complete.
- disk-full:    the repository's filesystem (a tmpfs) is filled before the night but for
                0, 256 KiB or 2 MiB: no snapshot is saved complete, a failed backup is
                alerted (the run's, or each source's it could not store), then `missed
                backup` for every source without a copy; once space is back `cairn check`
                is clean, the last snapshot restores, archiving catches up and the next
                night works.
- s3-kill:      (--repo s3 only) the S3 server (s3s-fs) is killed 0-1 s after 02:00,
                during the run, and started again after it: a failed backup is alerted
                (unless the run had stored everything), missed backup for the sources
                without a copy, `cairn check` is clean, the next night works.
- plan-change:  the plan gets other retention rules and the daemon SIGHUP: the retention
                is applied again at once and the model follows the new rules.
- flip-byte:    one byte of a random pack file is flipped: a restore test must find a
                damaged snapshot within 7 days and mark it; retention keeps a good one;
                archived WAL it damaged must be named by `cairn check`.
"""

KINDS = ("pg-down", "smtp-down", "no-run-night", "sigkill", "plan-change", "flip-byte", "broker-down",
         "quota-low", "slow-source", "disk-full", "s3-kill")

# Days after a fault's day that belong to it (no other fault starts in them).
SPAN = {"pg-down": 2, "smtp-down": 2, "no-run-night": 3, "sigkill": 2, "plan-change": 2, "flip-byte": 8,
        "broker-down": 2, "quota-low": 3, "slow-source": 2, "disk-full": 2, "s3-kill": 2}

FIRST_DAY = 10  # some history first


def schedule(days, rng, without=()):
    """{day: kind}. The kinds come round in a shuffled order, one after another, so every kind
    is injected when the run is long enough (a 60-day run gets each once), spread evenly
    over the run; a fault never starts within the span of the previous one, and a flip-byte
    needs its 8 days before the run ends."""
    out = {}
    if days <= FIRST_DAY + 4:
        return out
    rounds = max(1, (days - FIRST_DAY) // 60)  # every kind about every 60 days
    n = rounds * max(1, len([x for x in KINDS if x not in without]))
    gap = (days - FIRST_DAY) / n
    kinds = []
    for _ in range(rounds):
        k = [x for x in KINDS if x not in without]
        rng.shuffle(k)
        kinds += k
    day = FIRST_DAY
    for i, kind in enumerate(kinds):
        start = max(day, int(FIRST_DAY + i * gap))
        if start + SPAN[kind] >= days:
            # Too late for this kind: try the others at this place.
            for j in range(i + 1, len(kinds)):
                if start + SPAN[kinds[j]] < days:
                    kinds[i], kinds[j] = kinds[j], kinds[i]
                    kind = kinds[i]
                    break
            else:
                continue
        out[start] = kind
        day = start + SPAN[kind]
    return out


def parse(text):
    """`DAY:KIND,...` (days from 0) as {day: kind}."""
    out = {}
    for part in text.split(","):
        day, _, kind = part.strip().partition(":")
        if kind not in KINDS or not day.isdigit():
            raise ValueError("--faults: %r is not DAY:KIND with KIND one of %s" % (part, ", ".join(KINDS)))
        out[int(day)] = kind
    return out
