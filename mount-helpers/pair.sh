#!/usr/bin/env bash
# A local pair on this machine: two stores, two daemons mirroring each other over loopback TCP, two mountpoints.
#   bash mount-helpers/pair.sh up [DIR] [--delay-ms N]   build if needed, create (first time) and mount the pair
#   bash mount-helpers/pair.sh down [DIR]                unmount both (stores are kept; `up` mounts them again)
#   bash mount-helpers/pair.sh status [DIR]              both nodes' `twinfs status`
# DIR defaults to /tmp/twinfs-pair. --delay-ms puts twinfs-proxy between the nodes (N ms each way: a WAN link).
# TWINFS_BIN / TWINFS_PROXY_BIN use prebuilt binaries (tests do); otherwise a release build is made.
set -euo pipefail
cd "$(dirname "$0")/.."
CMD=${1:-up}
shift || true
DIR=/tmp/twinfs-pair
DELAY=
while [ $# -gt 0 ]; do
    case "$1" in
    --delay-ms) DELAY=$2; shift 2 ;;
    -*) echo "pair.sh: unknown option $1" >&2; exit 2 ;;
    *) DIR=$1; shift ;;
    esac
done
PORT_A=${TWINFS_PORT_A:-7301}
PORT_B=${TWINFS_PORT_B:-7302}

binaries() {
    if [ -n "${TWINFS_BIN:-}" ]; then
        BIN=$TWINFS_BIN
        PROXY=${TWINFS_PROXY_BIN:-$(dirname "$TWINFS_BIN")/twinfs-proxy}
        return
    fi
    bash scripts/install-deps.sh
    swift build -c release --product twinfs >&2
    swift build -c release --product twinfs-proxy >&2
    BIN="$(swift build -c release --show-bin-path)/twinfs"
    PROXY="$(swift build -c release --show-bin-path)/twinfs-proxy"
}

# True if PATH is a twinfs mountpoint now (field 5 of mountinfo; the type follows " - ").
mounted() { awk -v m="$1" '$5 == m && / - fuse\.twinfs /' /proc/self/mountinfo | grep -q .; }

# Starts a proxy LISTEN_PORT -> TARGET_PORT and waits for its ready line; records its pid for `down`.
start_proxy() {
    local listen=$1 target=$2 name=$3
    "$PROXY" --listen "127.0.0.1:$listen" --target "127.0.0.1:$target" --delay-ms "$DELAY" >"$DIR/$name.out" 2>&1 &
    echo $! >"$DIR/$name.pid"
    for _ in $(seq 100); do
        grep -q "ready" "$DIR/$name.out" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "pair.sh: $name did not start: $(cat "$DIR/$name.out")" >&2
    exit 1
}

up() {
    binaries
    mkdir -p "$DIR/mnt-a" "$DIR/mnt-b"
    if [ ! -e "$DIR/secret" ]; then
        head -c 32 /dev/urandom >"$DIR/secret.tmp"
        chmod 600 "$DIR/secret.tmp"
        mv "$DIR/secret.tmp" "$DIR/secret"
    fi
    local peer_a=$PORT_B peer_b=$PORT_A
    if [ -n "$DELAY" ]; then
        # Each node dials its peer through a proxy: A -> proxy-ab -> B, B -> proxy-ba -> A.
        peer_a=$((PORT_B + 100))
        peer_b=$((PORT_A + 100))
    fi
    [ -e "$DIR/a/twinfs.conf" ] || "$BIN" init "$DIR/a" --node alpha --node-id 1 \
        --listen "127.0.0.1:$PORT_A" --peer "127.0.0.1:$peer_a" --secret-file "$DIR/secret" >/dev/null
    [ -e "$DIR/b/twinfs.conf" ] || "$BIN" init "$DIR/b" --node beta --node-id 2 \
        --listen "127.0.0.1:$PORT_B" --peer "127.0.0.1:$peer_b" --secret-file "$DIR/secret" >/dev/null
    if [ -n "$DELAY" ]; then
        start_proxy "$peer_a" "$PORT_B" proxy-ab
        start_proxy "$peer_b" "$PORT_A" proxy-ba
    fi
    mounted "$DIR/mnt-a" || "$BIN" mount "$DIR/a" "$DIR/mnt-a" -o allow_other
    mounted "$DIR/mnt-b" || "$BIN" mount "$DIR/b" "$DIR/mnt-b" -o allow_other
    # Ready when both report the peer connected (a few seconds at most on loopback).
    for _ in $(seq 200); do
        if "$BIN" status "$DIR/a" --json | grep -q '"connected":true' && "$BIN" status "$DIR/b" --json | grep -q '"connected":true'; then
            break
        fi
        sleep 0.05
    done
    "$BIN" status "$DIR/a" | grep -E '^(node|peer):'
    "$BIN" status "$DIR/b" | grep -E '^(node|peer):'
    cat <<TXT

A mirrored pair is up: node alpha at $DIR/mnt-a, node beta at $DIR/mnt-b (stores $DIR/a, $DIR/b).
Try:
  echo hello > $DIR/mnt-a/greeting && cat $DIR/mnt-b/greeting
  cp -a /usr/share/doc/fuse3 $DIR/mnt-b/ && diff -r /usr/share/doc/fuse3 $DIR/mnt-a/fuse3 && echo same
  mv $DIR/mnt-b/greeting $DIR/mnt-a/renamed && ls $DIR/mnt-b
  $BIN status $DIR/mnt-a          # peer, bitmaps (OOS / MOOS / MOS), marks, pulls, pushes
Stop it with:
  bash mount-helpers/pair.sh down $DIR
TXT
}

down() {
    for m in "$DIR/mnt-a" "$DIR/mnt-b"; do
        if mounted "$m"; then fusermount3 -u "$m"; fi
    done
    for p in proxy-ab proxy-ba; do
        if [ -e "$DIR/$p.pid" ]; then
            kill "$(cat "$DIR/$p.pid")" 2>/dev/null || true
            rm -f "$DIR/$p.pid"
        fi
    done
    echo "pair.sh: unmounted $DIR/mnt-a and $DIR/mnt-b (stores kept in $DIR)"
}

case "$CMD" in
up) up ;;
down) down ;;
status)
    binaries
    "$BIN" status "$DIR/a"
    echo
    "$BIN" status "$DIR/b"
    ;;
*) echo "usage: pair.sh up|down|status [DIR] [--delay-ms N]" >&2; exit 2 ;;
esac
