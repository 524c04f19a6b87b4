#!/usr/bin/env bash
# Installs the Debian packages twinfs builds and tests with (root). Used by .ci/run and the demo.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    libfuse3-dev fuse3 libsqlite3-dev pkg-config gcc libc6-dev \
    fio attr acl rsync git tar diffutils coreutils util-linux procps python3 e2fsprogs >/dev/null
# /dev/fuse must exist for real mounts; load the module where it is missing.
[ -e /dev/fuse ] || modprobe fuse 2>/dev/null || true
# Loop devices for the tests that mount an ext4 image (WALWriteOutTests); load the module where it is missing.
[ -e /dev/loop-control ] || modprobe loop 2>/dev/null || true
