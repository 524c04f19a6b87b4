#!/usr/bin/env bash
# Tests/Benchmarks/run.sh: twinfs against a plain directory and libfuse's C passthrough_ll, in the same run,
# with ../shared/bench (fio job set + meta.py), then daemon memory with 100,000 files in the store. meta.py also
# runs against passthrough_ll with `-o default_permissions`, the option twinfs mounts with (issue 2 requires it):
# what that option alone costs the reference's metadata rates.
# Not part of `swift test`: a benchmark, not a timed test. Needs root (drops caches, mounts), fio, cc,
# libfuse3-dev, python3 and about 4 GiB free under $BENCH_DIR.
#
#   sudo Tests/Benchmarks/run.sh                  # build, run everything once, print the table
#   ROUNDS=2 Tests/Benchmarks/run.sh              # each target twice, interleaved; the table shows medians
#   SKIP=jobs Tests/Benchmarks/run.sh             # only the memory part; SKIP=rss skips the memory part
#
# Environment: SHARED_BENCH (default: ../shared/bench beside the checkout), BENCH_DIR (work directory, default
# /var/tmp/twinfs-bench), SWIFT_SCRATCH (swift build --scratch-path, default .build), TWINFS_BIN (use this
# binary instead of building), RSS_FILES (default 100000).
# Never: unmount or kill anything it did not mount or start itself; it unmounts its own mountpoints by path.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$(cd "$ROOT/.." && pwd)/shared/bench}
BENCH_DIR=${BENCH_DIR:-/var/tmp/twinfs-bench}
SWIFT_SCRATCH=${SWIFT_SCRATCH:-$ROOT/.build}
ROUNDS=${ROUNDS:-1}
SKIP=${SKIP:-}
RSS_FILES=${RSS_FILES:-100000}
EXAMPLES=/usr/share/doc/libfuse3-dev/examples

die() { echo "bench: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root (drops the page cache, mounts)"
[ -x "$SHARED_BENCH/run_target.sh" ] || [ -f "$SHARED_BENCH/run_target.sh" ] || die "no $SHARED_BENCH/run_target.sh (set SHARED_BENCH)"
for tool in fio cc pkg-config python3 fusermount3; do command -v $tool >/dev/null || die "$tool is missing (apt-get install fio gcc pkg-config python3 fuse3 libfuse3-dev)"; done
[ -f "$EXAMPLES/passthrough_ll.c" ] || die "no $EXAMPLES/passthrough_ll.c (apt-get install libfuse3-dev)"

if [ -e "$BENCH_DIR" ] && grep -q " $BENCH_DIR/" /proc/self/mountinfo; then die "$BENCH_DIR has mounts under it; unmount them first"; fi
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"/{bin,results}
RESULTS=$BENCH_DIR/results

# --- builds -------------------------------------------------------------------------------------------
echo "== building passthrough_ll (libfuse example, with the HAVE_* defines libfuse's own build sets)"
cc -O2 -Wall -DHAVE_FALLOCATE -DHAVE_POSIX_FALLOCATE -DHAVE_COPY_FILE_RANGE \
   -I"$EXAMPLES" "$EXAMPLES/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) -o "$BENCH_DIR/bin/passthrough_ll"
if [ -n "${TWINFS_BIN:-}" ]; then
  TWINFS=$TWINFS_BIN
else
  echo "== building twinfs (release)"
  (cd "$ROOT" && swift build -c release --product twinfs --scratch-path "$SWIFT_SCRATCH" 2>&1 | tail -n 3)
  TWINFS=$SWIFT_SCRATCH/release/twinfs
fi
[ -x "$TWINFS" ] || die "no twinfs binary at $TWINFS"
"$TWINFS" --help > /dev/null

# --- mounts ---------------------------------------------------------------------------------------------
PIDS=()
MOUNTS=()
cleanup() {
  for m in "${MOUNTS[@]:-}"; do [ -n "$m" ] && grep -q " $m " /proc/self/mountinfo && fusermount3 -u "$m" 2>/dev/null || true; done
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

mounted() { grep -q " $1 " /proc/self/mountinfo; }
wait_mounted() {  # passthrough_ll has no readiness signal: watch the mount table, bounded
  for _ in $(seq 1 500); do mounted "$1" && return 0; sleep 0.02; done
  die "$1 did not get mounted"
}

mount_passthrough() {  # NAME [OPTIONS]: mounts $BENCH_DIR/NAME-mnt over $BENCH_DIR/NAME-src; sets PT_PID
  mkdir -p "$BENCH_DIR/$1-src" "$BENCH_DIR/$1-mnt"
  "$BENCH_DIR/bin/passthrough_ll" -f -o source="$BENCH_DIR/$1-src${2:+,$2}" "$BENCH_DIR/$1-mnt" 2> "$BENCH_DIR/$1.log" &
  PT_PID=$!; PIDS+=("$PT_PID"); MOUNTS+=("$BENCH_DIR/$1-mnt")
  wait_mounted "$BENCH_DIR/$1-mnt"
}

# twinfs mount -f prints `twinfs: ready MNT` once live; wait for that line (bounded).
mount_twinfs() {  # STORE MNT
  mkdir -p "$2"
  "$TWINFS" mount "$1" "$2" -f > "$2.out" 2> "$2.log" &
  TW_PID=$!; PIDS+=("$TW_PID"); MOUNTS+=("$2")
  for _ in $(seq 1 1500); do
    grep -qx "twinfs: ready $2" "$2.out" 2>/dev/null && return 0
    kill -0 "$TW_PID" 2>/dev/null || { cat "$2.log" >&2; die "twinfs mount exited"; }
    sleep 0.02
  done
  die "twinfs did not become ready on $2"
}

unmount_and_wait() {  # MNT PID
  fusermount3 -u "$1"
  for _ in $(seq 1 1500); do kill -0 "$2" 2>/dev/null || return 0; sleep 0.02; done
  die "daemon $2 did not exit after unmounting $1"
}

# --- the job set, against all three targets in one run ---------------------------------------------------
if [[ " $SKIP " != *" jobs "* ]]; then
  mkdir -p "$BENCH_DIR/plain"
  mount_passthrough pt
  PT_PLAIN_PID=$PT_PID
  mount_passthrough ptdp default_permissions
  PT_DP_PID=$PT_PID
  "$TWINFS" init "$BENCH_DIR/store" --node bench > /dev/null
  mount_twinfs "$BENCH_DIR/store" "$BENCH_DIR/tw-mnt"
  echo "== kernel $(uname -r), $(nproc) cores, twinfs $(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo '?')"
  for round in $(seq 1 "$ROUNDS"); do
    for target in plain passthrough_ll twinfs; do
      case $target in
        plain) dir=$BENCH_DIR/plain ;;
        passthrough_ll) dir=$BENCH_DIR/pt-mnt ;;
        twinfs) dir=$BENCH_DIR/tw-mnt ;;
      esac
      echo "== round $round: $target ($dir)"
      bash "$SHARED_BENCH/run_target.sh" "$dir" "$RESULTS/$target.$round" | sed 's/^/   /'
    done
    echo "== round $round: passthrough_ll -o default_permissions, meta.py only ($BENCH_DIR/ptdp-mnt)"
    mkdir -p "$RESULTS/passthrough_ll_dp.$round"
    rc=0
    python3 "$SHARED_BENCH/meta.py" "$BENCH_DIR/ptdp-mnt" 10000 > "$RESULTS/passthrough_ll_dp.$round/meta.json" \
      2> "$RESULTS/passthrough_ll_dp.$round/meta.err" || rc=$?
    echo "   meta rc=$rc"
  done
  unmount_and_wait "$BENCH_DIR/pt-mnt" "$PT_PLAIN_PID"
  unmount_and_wait "$BENCH_DIR/ptdp-mnt" "$PT_DP_PID"
  unmount_and_wait "$BENCH_DIR/tw-mnt" "$TW_PID"
fi

# --- daemon memory with RSS_FILES files in the store -----------------------------------------------------
if [[ " $SKIP " != *" rss "* ]]; then
  echo "== daemon memory with $RSS_FILES files"
  STORE=$BENCH_DIR/rss-store MNT=$BENCH_DIR/rss-mnt
  "$TWINFS" init "$STORE" --node rss > /dev/null
  mount_twinfs "$STORE" "$MNT"
  rss() { awk '/^VmRSS/ {r=$2} /^VmHWM/ {h=$2} END {printf "{\"rss_kib\": %d, \"hwm_kib\": %d}", r, h}' "/proc/$1/status"; }
  python3 - "$MNT" "$RSS_FILES" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = b"x" * 100
for i in range(n):
    d = f"{root}/d{i // 1000:03d}"
    if i % 1000 == 0: os.mkdir(d)
    fd = os.open(f"{d}/f{i:06d}", os.O_CREAT | os.O_WRONLY, 0o644); os.write(fd, data); os.close(fd)
PY
  after_create=$(rss "$TW_PID")
  unmount_and_wait "$MNT" "$TW_PID"
  mount_twinfs "$STORE" "$MNT"
  after_mount=$(rss "$TW_PID")
  count=$(find "$MNT" -type f | wc -l)
  after_find=$(rss "$TW_PID")
  sync; echo 3 > /proc/sys/vm/drop_caches
  after_drop=$(rss "$TW_PID")
  unmount_and_wait "$MNT" "$TW_PID"
  status=$("$TWINFS" status "$STORE" --json 2>/dev/null || "$TWINFS" status "$STORE")
  printf '{"files": %d, "found": %d, "after_create": %s, "after_remount": %s, "after_find_stat_all": %s, "after_drop_caches": %s}\n' \
    "$RSS_FILES" "$count" "$after_create" "$after_mount" "$after_find" "$after_drop" > "$RESULTS/rss.json"
  printf '%s\n' "$status" > "$RESULTS/rss-status.txt"
fi

python3 "$HERE/report.py" "$RESULTS"
