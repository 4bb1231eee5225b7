"""An independent model of a plan's retention, written from spec/retention.md (never from
src/retention/): which of a plan's snapshots the rules keep, decided per source.

The rules, as the spec documents them:
- per source S, the candidates are the snapshots that stored S (S complete or
  incomplete); corrupted snapshots are set aside and always kept;
- walking the candidates newest first, a count rule (`keep-daily N`, ...) keeps a
  snapshot when it has a count left, the snapshot's period differs from that of the last
  snapshot the rule kept, and the snapshot stands for its period (the period's newest
  complete candidate, else its newest); each keep uses one count;
- when a rule reaches the oldest candidate with a count left it keeps it too;
- S's newest complete copy is always kept;
- a snapshot is kept when any source's rules keep it.
Periods are calendar days, ISO weeks, months and years in the plan's time zone."""

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")


def period(rule, t, tz, sid):
    lt = t.astimezone(tz)
    if rule == "last":
        return sid
    if rule == "hourly":
        # A repeated wall-clock hour is one hour.
        return (lt.year, lt.month, lt.day, lt.hour)
    if rule == "daily":
        return (lt.year, lt.month, lt.day)
    if rule == "weekly":
        return tuple(lt.isocalendar()[:2])
    if rule == "monthly":
        return (lt.year, lt.month)
    if rule == "yearly":
        return (lt.year,)
    raise ValueError(rule)


class Snap:
    """What the harness knows of one snapshot: id, time, each source's status
    (`complete`, `incomplete`, `failed`), and whether a restore test marked it corrupted."""

    def __init__(self, sid, time, sources, corrupted=False):
        self.id = sid
        self.time = time
        self.sources = dict(sources)
        self.corrupted = corrupted

    def __repr__(self):
        return "Snap(%s %s %s%s)" % (self.id[:8], self.time.isoformat(), self.sources,
                                     " corrupted" if self.corrupted else "")


def decide(snaps, rules, tz):
    """The ids kept, and for each kept id the reasons ("daily 3/30 for db")."""
    reasons = {}
    for s in snaps:
        if s.corrupted:
            reasons.setdefault(s.id, []).append("corrupted")
    names = sorted({n for s in snaps for n, st in s.sources.items() if st in ("complete", "incomplete")})
    for name in names:
        cands = [s for s in snaps if not s.corrupted and s.sources.get(name) in ("complete", "incomplete")]
        # Newest first; equal times by id.
        cands.sort(key=lambda s: s.id)
        cands.sort(key=lambda s: s.time, reverse=True)
        for rule in RULES:
            n = rules.get(rule)
            if n is None:
                continue
            # The snapshot that stands for each period: its newest complete, else its newest.
            stands = {}
            for s in cands:
                p = period(rule, s.time, tz, s.id)
                cur = stands.get(p)
                if cur is None or (cur.sources[name] != "complete" and s.sources[name] == "complete"):
                    stands[p] = s
            left = n  # -1: unlimited
            last = None
            used = 0
            for i, s in enumerate(cands):
                if left == 0:
                    break
                p = period(rule, s.time, tz, s.id)
                oldest = i == len(cands) - 1
                if (p != last and stands[p] is s) or oldest:
                    used += 1
                    last = p
                    if left > 0:
                        left -= 1
                    reasons.setdefault(s.id, []).append("%s%s %d/%s for %s" % (
                        "oldest " if oldest else "", rule, used, "unlimited" if n < 0 else n, name))
        for s in cands:
            if s.sources[name] == "complete":
                reasons.setdefault(s.id, []).append("newest complete copy of %s" % name)
                break
    return set(reasons), reasons


def categories(reasons):
    """How many kept snapshots each rule keeps (for any source), for the table."""
    out = {}
    for rs in reasons.values():
        rules = set()
        for r in rs:
            w = r.split()
            rules.add(w[1] if w[0] == "oldest" else w[0])
        for rule in rules:
            out[rule] = out.get(rule, 0) + 1
    return out


def rules_text(rules):
    return " ".join("keep-%s %s" % (r, "unlimited" if rules[r] < 0 else rules[r]) for r in RULES if r in rules)
