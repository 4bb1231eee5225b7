#!/usr/bin/env bash
# Issue 29, item 4: what day 2 adds when a pgbench dump is kept as a FILE in a
# tree (not through a postgres source), cairn against restic in the same run.
# Day 1: pgbench -i -s SCALE, pg_dump -Fc -Z0 into TREE/bench.dump beside a copy of
# this repository's src/, then one snapshot by each tool. Day 2: pgbench -t TX, the
# dump taken again, one more snapshot each. Prints each day's growth of both
# repositories (du -sb) and cairn's own bytes_added. Bytes only, no timing.
#
#   CAIRN=target/release/cairn SCALE=20 TX=40000 scripts/bench_lib/dump_as_file.sh [WORKDIR]
# Needs root (the cluster runs as postgres), PostgreSQL 15 binaries, pgbench and restic.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
W=${1:-$(mktemp -d /tmp/cairn-dump-as-file.XXXXXX)}
rm -rf "$W"; mkdir -p "$W/tree"; chown postgres "$W"
B=/usr/lib/postgresql/15/bin
CAIRN=${CAIRN:-$ROOT/target/release/cairn}
SCALE=${SCALE:-20}; TX=${TX:-40000}; PORT=${PORT:-55432}
su postgres -c "$B/initdb -D $W/pg -A trust >/dev/null && $B/pg_ctl -D $W/pg -o '-p $PORT -k $W' -l $W/pg.log start >/dev/null"
trap "su postgres -c '$B/pg_ctl -D $W/pg stop -m fast' >/dev/null" EXIT
P="-h $W -p $PORT -U postgres"
$B/createdb $P bench
pgbench $P -i -s "$SCALE" -q bench 2>/dev/null
cp -r "$ROOT/src" "$W/tree/src"
export CAIRN_PASSWORD=bench RESTIC_PASSWORD=bench CAIRN_CACHE_DIR=$W/cache-cairn RESTIC_CACHE_DIR=$W/cache-restic
"$CAIRN" init -r "$W/cairn" >/dev/null
restic init -r "$W/restic" -q >/dev/null
echo "cairn: $("$CAIRN" --version); $(restic version | head -1); scale $SCALE, $TX transactions"
for day in 1 2; do
  if [ "$day" = 2 ]; then pgbench $P -n -t "$TX" bench >/dev/null 2>&1; fi
  $B/pg_dump $P -Fc -Z0 -f "$W/tree/bench.dump" bench
  sleep 3 # not racy: a file changed within 2 s of the walk is read again next time
  c0=$(du -sb "$W/cairn" | cut -f1)
  added=$("$CAIRN" snapshot -r "$W/cairn" "$W/tree" --json |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["bytes_added"])')
  c1=$(du -sb "$W/cairn" | cut -f1)
  r0=$(du -sb "$W/restic" | cut -f1)
  restic backup -r "$W/restic" "$W/tree" -q >/dev/null
  r1=$(du -sb "$W/restic" | cut -f1)
  echo "day $day: dump $(stat -c %s "$W/tree/bench.dump") B; cairn grew $((c1 - c0)) B (bytes_added $added); restic grew $((r1 - r0)) B; ratio $(python3 -c "print(round($((c1 - c0)) / $((r1 - r0)), 2))")"
done
