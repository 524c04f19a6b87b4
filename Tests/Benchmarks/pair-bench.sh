#!/usr/bin/env bash
# Tests/Benchmarks/pair-bench.sh: the two-node benchmarks of issue 4. A local pair (mount-helpers/pair.sh) with
# twinfs-proxy between the nodes at each one-way delay of $DELAYS; everything is measured on node A (mnt-a),
# next to a plain directory and libfuse's passthrough_ll measured in the same run. It only gathers raw data
# (fio JSON, `twinfs status --json` before/after each step, timings) under $BENCH_DIR/results; the figures are
# derived by pair-report.py, which can be run again on the same results.
# Not part of `swift test`. Needs root (drops caches, mounts), fio, cc, libfuse3-dev, python3, ~5 GiB free.
#
#   sudo TWINFS_BIN=.build-bench/release/twinfs Tests/Benchmarks/pair-bench.sh
#   DELAYS="5" SKIP="jobs" ...                    # one delay; skip steps (jobs lat create seq local drain)
#
# Per delay D (ms each way), pair 1 through pair.sh --delay-ms D (no rate limit):
#   jobs    ../shared/bench/run_target.sh on plain dir, passthrough_ll, mnt-a (as run.sh runs it; report.py table)
#   (lat and create also run on the plain dir, passthrough_ll and an unpaired twinfs store, "solo")
#   lat     4 KiB writes on a freshly written $LAT_MIB MiB file (held tracks): without fsync, then with fsync each
#   create  $CREATE_FILES files of 4 KiB in 100 directories (counters: round trips per 1,000 creates)
#   seq     $BIG_MIB MiB sequential write on A (counters: marks per GiB), read it at once on B, wait until A's
#           OOS is 0, read it on B again (page cache dropped before each read)
#   local   mnt-a remounted with -o fsync=local, the lat step again
# and pair 2 (fresh stores) with pair.sh's proxies replaced by ones paced to $RATE_MBPS:
#   drain   the raw link measured through a third proxy (same delay and rate); A writes $BIG_MIB MiB, A's OOS polled
#           until 0; then a second file is written on A and read on B at once, and again after the drain.
# Environment: TWINFS_BIN (else built with --scratch-path .build-bench), BENCH_DIR (default /var/tmp/pair-bench),
# SHARED_BENCH, DELAYS ("0 5"), RATE_MBPS (400), BIG_MIB (1024), LAT_MIB (16), LAT_SECONDS (5),
# CREATE_FILES (10000), SKIP, TWINFS_PORT_A/B (7501/7502; pair.sh's proxies listen on +100).
# Never: unmount or kill anything it did not mount or start; it takes its pairs down (pair.sh down) on exit.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
SHARED_BENCH=${SHARED_BENCH:-$(cd "$ROOT/.." && pwd)/shared/bench}
BENCH_DIR=${BENCH_DIR:-/var/tmp/pair-bench}
DELAYS=${DELAYS:-"0 5"}
RATE_MBPS=${RATE_MBPS:-400}
BIG_MIB=${BIG_MIB:-1024}
LAT_MIB=${LAT_MIB:-16}
LAT_SECONDS=${LAT_SECONDS:-5}
CREATE_FILES=${CREATE_FILES:-10000}
SKIP=${SKIP:-}
export TWINFS_PORT_A=${TWINFS_PORT_A:-7501} TWINFS_PORT_B=${TWINFS_PORT_B:-7502}
EXAMPLES=/usr/share/doc/libfuse3-dev/examples

die() { echo "pair-bench: $*" >&2; exit 1; }
say() { echo "== $(date -u +%H:%M:%S) $*"; }
skipped() { [[ " $SKIP " == *" $1 "* ]]; }
[ "$(id -u)" = 0 ] || die "run as root (drops the page cache, mounts)"
[ -f "$SHARED_BENCH/run_target.sh" ] || die "no $SHARED_BENCH/run_target.sh (set SHARED_BENCH)"
for tool in fio cc pkg-config python3 fusermount3; do command -v $tool >/dev/null || die "$tool is missing"; done
if [ -e "$BENCH_DIR" ] && grep -q " $BENCH_DIR/" /proc/self/mountinfo; then die "$BENCH_DIR has mounts under it"; fi

if [ -z "${TWINFS_BIN:-}" ]; then
  say "building twinfs and twinfs-proxy (release, .build-bench)"
  for p in twinfs twinfs-proxy; do
    (cd "$ROOT" && swift build -c release --scratch-path .build-bench --product $p 2>&1 | tail -n 1)
  done
  TWINFS_BIN=$ROOT/.build-bench/release/twinfs
fi
export TWINFS_BIN
TWINFS=$TWINFS_BIN
PROXY=${TWINFS_PROXY_BIN:-$(dirname "$TWINFS")/twinfs-proxy}
[ -x "$TWINFS" ] && [ -x "$PROXY" ] || die "no twinfs / twinfs-proxy at $TWINFS"

rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"/{bin,results}
RESULTS=$BENCH_DIR/results
cc -O2 -Wall -DHAVE_FALLOCATE -DHAVE_POSIX_FALLOCATE -DHAVE_COPY_FILE_RANGE \
   -I"$EXAMPLES" "$EXAMPLES/passthrough_ll.c" $(pkg-config --cflags --libs fuse3) -o "$BENCH_DIR/bin/passthrough_ll"

# --- what this script started, undone on exit ---------------------------------------------------------------
PAIRS=()
PIDS=()
PT_MNT=$BENCH_DIR/pt-mnt
SOLO_MNT=$BENCH_DIR/solo-mnt
cleanup() {
  grep -q " $SOLO_MNT " /proc/self/mountinfo && fusermount3 -u "$SOLO_MNT" 2>/dev/null || true
  for d in "${PAIRS[@]:-}"; do [ -n "$d" ] && bash "$ROOT/mount-helpers/pair.sh" down "$d" >/dev/null 2>&1 || true; done
  grep -q " $PT_MNT " /proc/self/mountinfo && fusermount3 -u "$PT_MNT" 2>/dev/null || true
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT

mount_passthrough() {
  mkdir -p "$BENCH_DIR/pt-src" "$PT_MNT"
  "$BENCH_DIR/bin/passthrough_ll" -f -o source="$BENCH_DIR/pt-src" "$PT_MNT" 2> "$BENCH_DIR/pt.log" &
  PIDS+=("$!")
  for _ in $(seq 1 500); do grep -q " $PT_MNT " /proc/self/mountinfo && return 0; sleep 0.02; done
  die "$PT_MNT did not get mounted"
}

status() { "$TWINFS" status "$1" --json; }  # STORE|MNT
wait_connected() {  # DIR: both nodes report the peer connected (bounded)
  for _ in $(seq 1 600); do
    if status "$1/a" | grep -q '"connected":true' && status "$1/b" | grep -q '"connected":true'; then return 0; fi
    sleep 0.05
  done
  die "pair $1 did not connect"
}
wait_drained() {  # DIR: A's OOS reaches 0 (bounded: 10 min); prints the seconds it took
  python3 - "$TWINFS" "$1/a" <<'PY'
import json, subprocess, sys, time
t0 = time.monotonic()
while time.monotonic() - t0 < 600:
    s = json.loads(subprocess.run([sys.argv[1], "status", sys.argv[2], "--json"], capture_output=True, text=True).stdout)
    if s["mirror"]["oos"] == 0 and s["mirror"]["inFlightPushes"] == 0:
        print(f"{time.monotonic() - t0:.3f}"); sys.exit(0)
    time.sleep(0.05)
sys.exit("A's OOS did not drain in 600 s")
PY
}
drop_caches() { echo 3 > /proc/sys/vm/drop_caches; }  # no sync: a syncfs on twinfs would wait for the peer

# Runs CMD with A's status taken before and after; OUT.before.json, OUT.after.json, OUT.seconds.
measured() {  # OUT STATUS_PATH|- CMD...
  local out=$1 st=$2; shift 2
  [ "$st" = - ] || status "$st" > "$out.before.json"
  local t0 t1
  t0=$(date +%s.%N)
  "$@"
  t1=$(date +%s.%N)
  [ "$st" = - ] || status "$st" > "$out.after.json"
  python3 -c "print(f'{$t1 - $t0:.6f}')" > "$out.seconds"
}

cat > "$BENCH_DIR/lat.fio" <<'FIO'
# 4 KiB write latency on a file written just before (its tracks held by this node), psync QD1, buffered.
[global]
directory=${TARGET}
filename=lat.dat
ioengine=psync
iodepth=1
size=${LAT_MIB}m
percentile_list=50:99:99.9
[fill]
rw=write
bs=1m
[w4k]
rw=randwrite
bs=4k
time_based=1
runtime=${LAT_SECONDS}
[w4k_fsync]
rw=randwrite
bs=4k
fsync=1
time_based=1
runtime=${LAT_SECONDS}
FIO
export LAT_MIB LAT_SECONDS

lat_step() {  # DIR OUT STATUS_PATH|-
  mkdir -p "$2"
  rm -f "$1/lat.dat"
  for sec in fill w4k w4k_fsync; do
    measured "$2/$sec" "$3" env TARGET="$1" fio "$BENCH_DIR/lat.fio" --section=$sec --output-format=json --output="$2/$sec.json"
  done
  rm -f "$1/lat.dat"
}

create_files() {  # DIR N: N files of 4 KiB in 100 directories
  python3 - "$1" "$2" <<'PY'
import os, sys
root, n = sys.argv[1], int(sys.argv[2])
data = os.urandom(4096)
for d in range(100): os.mkdir(f"{root}/c{d:02d}")
for i in range(n):
    fd = os.open(f"{root}/c{i % 100:02d}/f{i:06d}", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    os.write(fd, data); os.close(fd)
PY
}
create_step() {  # DIR OUT STATUS_PATH|-
  mkdir -p "$1/create"
  measured "$2" "$3" create_files "$1/create" "$CREATE_FILES"
  rm -rf "$1/create"
}

# Sequential write of BIG_MIB MiB with fio (1 MiB blocks of non-zero data: zero blocks travel as holes).
seq_write() {  # DIR NAME OUT
  fio --name=seq --directory="$1" --filename="$2" --rw=write --bs=1m --size="${BIG_MIB}m" --ioengine=psync \
      --output-format=json --output="$3.json" >/dev/null
}
read_file() {  # FILE OUT: cold read with the page cache dropped first
  drop_caches
  measured "$2" - dd if="$1" of=/dev/null bs=1M status=none
}

# Replaces pair.sh's two proxies of DIR by ones paced to RATE_MBPS (pid files kept, so `pair.sh down` stops them).
pace_proxies() {  # DIR DELAY
  local name listen target
  for name in proxy-ab proxy-ba; do
    if [ $name = proxy-ab ]; then listen=$((TWINFS_PORT_B + 100)) target=$TWINFS_PORT_B
    else listen=$((TWINFS_PORT_A + 100)) target=$TWINFS_PORT_A; fi
    kill "$(cat "$1/$name.pid")"
    for _ in $(seq 1 100); do kill -0 "$(cat "$1/$name.pid")" 2>/dev/null || break; sleep 0.05; done
    "$PROXY" --listen "127.0.0.1:$listen" --target "127.0.0.1:$target" --delay-ms "$2" --rate-mbps "$RATE_MBPS" \
      > "$1/$name.out" 2>&1 &
    echo $! > "$1/$name.pid"
    PIDS+=("$!")
    for _ in $(seq 1 100); do grep -q ready "$1/$name.out" && break; sleep 0.05; done
  done
  wait_connected "$1"
}

# The raw link: 256 MiB through one more proxy with the same delay and rate, into a local sink.
measure_link() {  # DELAY OUT
  python3 - "$PROXY" "$1" "$RATE_MBPS" > "$2" <<'PY'
import json, socket, subprocess, sys, threading, time
proxy, delay, rate = sys.argv[1], sys.argv[2], sys.argv[3]
total = 256 << 20
sink = socket.socket(); sink.bind(("127.0.0.1", 0)); sink.listen(1)
p = subprocess.Popen([proxy, "--listen", "127.0.0.1:0", "--target", f"127.0.0.1:{sink.getsockname()[1]}",
                      "--delay-ms", delay, "--rate-mbps", rate], stdout=subprocess.PIPE, text=True)
try:
    port = int(p.stdout.readline().split()[-1])
    done = {}
    def receive():
        c, _ = sink.accept(); got = 0
        while got < total:
            b = c.recv(1 << 20)
            if not b: break
            got += len(b)
        done["t"] = time.monotonic(); done["bytes"] = got
    t = threading.Thread(target=receive); t.start()
    s = socket.create_connection(("127.0.0.1", port)); chunk = b"\x5a" * (1 << 20)
    t0 = time.monotonic()
    for _ in range(total >> 20): s.sendall(chunk)
    t.join(); s.close()
    print(json.dumps({"bytes": done["bytes"], "seconds": done["t"] - t0, "rate_mbps": float(rate), "delay_ms": int(delay)}))
finally:
    p.terminate(); p.wait()
PY
}

echo "== kernel $(uname -r), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg), twinfs $(cd "$ROOT" && git rev-parse --short HEAD)"
printf '{"delays": "%s", "rate_mbps": %s, "big_mib": %s, "lat_mib": %s, "lat_seconds": %s, "create_files": %s, "commit": "%s", "started": "%s"}\n' \
  "$DELAYS" "$RATE_MBPS" "$BIG_MIB" "$LAT_MIB" "$LAT_SECONDS" "$CREATE_FILES" "$(cd "$ROOT" && git rev-parse --short HEAD)" \
  "$(date -u +%FT%TZ)" > "$RESULTS/run.json"
mkdir -p "$BENCH_DIR/plain"
mount_passthrough
# An unpaired twinfs store as one more reference: what the pair adds over twinfs itself.
"$TWINFS" init "$BENCH_DIR/solo" --node solo > /dev/null
mkdir -p "$SOLO_MNT"
"$TWINFS" mount "$BENCH_DIR/solo" "$SOLO_MNT"

for D in $DELAYS; do
  R=$RESULTS/d$D
  P=$BENCH_DIR/d$D
  mkdir -p "$R"/{jobs,jobs-status,lat,create,seq,drain}
  say "delay $D ms: pair up ($P)"
  PAIRS+=("$P")
  bash "$ROOT/mount-helpers/pair.sh" up "$P" --delay-ms "$D" > "$R/pair-up.log" 2>&1
  wait_connected "$P"
  A=$P/mnt-a B=$P/mnt-b
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)" > "$R/load-start"

  if ! skipped jobs; then
    for target in plain passthrough_ll twinfs; do
      case $target in plain) dir=$BENCH_DIR/plain st=- ;; passthrough_ll) dir=$PT_MNT st=- ;; twinfs) dir=$A st=$A ;; esac
      say "delay $D ms: job set on $target"
      measured "$R/jobs-status/$target" "$st" bash "$SHARED_BENCH/run_target.sh" "$dir" "$R/jobs/$target.1" | sed 's/^/   /'
    done
  fi
  if ! skipped lat; then
    say "delay $D ms: 4 KiB write latency"
    lat_step "$BENCH_DIR/plain" "$R/lat/plain" -
    lat_step "$PT_MNT" "$R/lat/passthrough_ll" -
    lat_step "$SOLO_MNT" "$R/lat/twinfs-solo" -
    lat_step "$A" "$R/lat/twinfs" "$A"
  fi
  if ! skipped create; then
    say "delay $D ms: creating $CREATE_FILES files"
    create_step "$BENCH_DIR/plain" "$R/create/plain" -
    create_step "$PT_MNT" "$R/create/passthrough_ll" -
    create_step "$SOLO_MNT" "$R/create/twinfs-solo" -
    create_step "$A" "$R/create/twinfs" "$A"
  fi
  if ! skipped seq; then
    say "delay $D ms: $BIG_MIB MiB sequential write on A, read on B before and after the drain"
    measured "$R/seq/write" "$A" seq_write "$A" big1 "$R/seq/write"
    status "$P/b" > "$R/seq/b-before-read.json"
    read_file "$B/big1" "$R/seq/read-b-before"
    status "$A" > "$R/seq/a-after-read.json"
    wait_drained "$P" > "$R/seq/drain.seconds"
    status "$A" > "$R/seq/a-drained.json"
    read_file "$B/big1" "$R/seq/read-b-after"
    read_file "$A/big1" "$R/seq/read-a"
    rm -f "$A/big1"
  fi
  if ! skipped local; then
    say "delay $D ms: mnt-a remounted with -o fsync=local, 4 KiB write latency again"
    fusermount3 -u "$A"
    # The old daemon lets go of the store's lock once it has closed the store; then mount once (mount itself
    # also waits up to 10 s for that lock). A failed remount is recorded and the run goes on.
    for _ in $(seq 1 300); do flock -n "$P/a/lock" true && break; sleep 0.05; done
    if "$TWINFS" mount "$P/a" "$A" -o allow_other,fsync=local 2> "$R/remount.err"; then
      wait_connected "$P"
      lat_step "$A" "$R/lat/twinfs-local" "$A"
    else
      echo "pair-bench: remount of $P/a with fsync=local failed: $(cat "$R/remount.err")" | tee "$R/remount.failed" >&2
    fi
  fi
  bash "$ROOT/mount-helpers/pair.sh" down "$P" > /dev/null

  if ! skipped drain; then
    P2=$BENCH_DIR/d$D-paced
    say "delay $D ms, link paced to $RATE_MBPS Mbit/s: drain of $BIG_MIB MiB ($P2)"
    PAIRS+=("$P2")
    bash "$ROOT/mount-helpers/pair.sh" up "$P2" --delay-ms "$D" > "$R/pair2-up.log" 2>&1
    pace_proxies "$P2" "$D"
    measure_link "$D" "$R/drain/link.json"
    A=$P2/mnt-a B=$P2/mnt-b
    status "$A" > "$R/drain/a-start.json"
    t0=$(date +%s.%N)
    measured "$R/drain/write" "$A" seq_write "$A" big1 "$R/drain/write"
    wait_drained "$P2" > "$R/drain/drain-after-write.seconds"
    t1=$(date +%s.%N)
    status "$A" > "$R/drain/a-drained.json"
    python3 -c "print(f'{$t1 - $t0:.6f}')" > "$R/drain/total.seconds"
    measured "$R/drain/write2" "$A" seq_write "$A" big2 "$R/drain/write2"
    read_file "$B/big2" "$R/drain/read-b-before"
    wait_drained "$P2" > /dev/null
    read_file "$B/big2" "$R/drain/read-b-after"
    bash "$ROOT/mount-helpers/pair.sh" down "$P2" > /dev/null
  fi
  echo "load $(cut -d' ' -f1-3 /proc/loadavg)" > "$R/load-end"
done

for D in $DELAYS; do
  if [ -d "$RESULTS/d$D/jobs/twinfs.1" ]; then
    echo; echo "== the job set at $D ms one way (report.py; ratio = twinfs on A / passthrough_ll)"
    python3 "$HERE/report.py" "$RESULTS/d$D/jobs"
  fi
done
python3 "$HERE/pair-report.py" "$RESULTS"
