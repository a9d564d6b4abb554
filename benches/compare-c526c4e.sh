#!/usr/bin/env bash
# The single-instance unlimited drain (50,000 rows, `statusd run` as its own
# process, simulator at zero latency) of this checkout against commit
# c526c4e, the parent of the fair scheduler: both built with the
# `profiling` profile, run alternately N times (default 5); prints the
# median statuses/s and daemon CPU µs per status of each, and the change.
#   bash benches/compare-c526c4e.sh          # N=8 bash benches/compare-c526c4e.sh
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
base=${BASE_DIR:-/tmp/statusd-c526c4e}
N=${N:-5}
if [ ! -d "$base" ]; then
  git worktree add --detach "$base" c526c4e
  git -C "$base" apply "$here/benches/c526c4e-cpu.patch"
fi
(cd "$base" && cargo build --profile profiling -p statusd-bench)
cargo build --profile profiling -p statusd-bench
out=$(mktemp)
for _ in $(seq 1 "$N"); do
  (cd "$base" && BENCH_BASE_CPU=1 target/profiling/statusd-bench 2>&1 \
    | sed -nE 's/.*BASE c526c4e drain of [0-9]+, ([A-Za-z]+): ([0-9]+)\/s;  ([0-9]+) us/base \1 \2 \3/p') >> "$out"
  BENCH_SECTIONS=cpu target/profiling/statusd-bench 2>&1 \
    | sed -nE 's/.*drain of [0-9]+, ([A-Za-z]+):.*\(us\) ([0-9]+);  ([0-9]+) us/now \1 \2 \3/p' >> "$out"
done
python3 - "$out" <<'PY'
import statistics as st, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
for db in ["SQLite", "PostgreSQL"]:
    pick = lambda who, k: [int(r[k]) for r in rows if r[0] == who and r[1] == db]
    br, nr = st.median(pick("base", 2)), st.median(pick("now", 2))
    bc, nc = st.median(pick("base", 3)), st.median(pick("now", 3))
    print(f"{db}: statuses/s c526c4e {br:.0f}, this checkout {nr:.0f} ({(nr / br - 1) * 100:+.1f}%); "
          f"CPU us/status {bc:.0f} vs {nc:.0f} ({(nc / bc - 1) * 100:+.1f}%); runs {len(pick('base', 2))}")
    print(f"   each run, /s: c526c4e {pick('base', 2)}, this checkout {pick('now', 2)}")
PY
rm -f "$out"
