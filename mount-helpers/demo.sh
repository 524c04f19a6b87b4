#!/usr/bin/env bash
# The main job on one machine: installs what is needed, builds twinfs (release), creates a store and mounts it.
# Usage: bash mount-helpers/demo.sh [DIR]   (default DIR=/tmp/twinfs-demo; stop with: fusermount3 -u DIR/mnt)
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-/tmp/twinfs-demo}
bash scripts/install-deps.sh
swift build -c release --product twinfs
BIN="$(swift build -c release --show-bin-path)/twinfs"
mkdir -p "$DIR/mnt"
if grep -q " $DIR/mnt " /proc/self/mountinfo; then
    echo "already mounted at $DIR/mnt (stop with: fusermount3 -u $DIR/mnt)"
    exit 0
fi
[ -e "$DIR/store/twinfs.conf" ] || "$BIN" init "$DIR/store" --node demo
"$BIN" mount "$DIR/store" "$DIR/mnt" -o allow_other
"$BIN" status "$DIR/store"
cat <<TXT

twinfs is mounted at $DIR/mnt (store: $DIR/store). Try:
  cp -a /usr/share/doc/fuse3 $DIR/mnt/ && ls -la $DIR/mnt/fuse3
  echo hello > $DIR/mnt/hello && cat $DIR/mnt/hello && df -h $DIR/mnt
  $BIN status $DIR/store
Stop it with:
  fusermount3 -u $DIR/mnt
TXT
