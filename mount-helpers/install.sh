#!/usr/bin/env bash
# Installs twinfs system-wide: builds a release binary, puts it in /usr/local/bin and the mount(8) helper in
# /sbin, so `mount -t fuse.twinfs STORE MNT` and fstab lines (type fuse.twinfs) work. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product twinfs
install -m 0755 "$(swift build -c release --show-bin-path)/twinfs" /usr/local/bin/twinfs
install -m 0755 mount-helpers/mount.fuse.twinfs /sbin/mount.fuse.twinfs
echo "installed /usr/local/bin/twinfs and /sbin/mount.fuse.twinfs"
echo "fstab example:  /srv/twinfs-store  /mnt/twin  fuse.twinfs  allow_other,nofail  0  0"
