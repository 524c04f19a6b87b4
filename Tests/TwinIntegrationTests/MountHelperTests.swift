// `mount -t fuse.twinfs STORE MNT -o ...` and an fstab line of type fuse.twinfs, through
// mount-helpers/mount.fuse.twinfs, run by the real mount(8). Hermetic: inside a private mount namespace
// whose /usr/sbin (= /sbin) is a scratch directory holding only this checkout's helper, so nothing is
// installed on the machine. Also `-o debug`. Never: write to the real /sbin or /etc/fstab.
import Foundation
import XCTest

final class MountHelperTests: MountingTestCase {
    /// mount-helpers/ of this checkout, found from this source file's path.
    private var helper: String {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("mount-helpers/mount.fuse.twinfs").path
    }

    func testMountTypeFuseTwinfsAndAnFstabLineWork() throws {
        XCTAssertTrue(FileManager.default.isExecutableFile(atPath: helper), "mount helper at \(helper)")
        let store = try initStore()
        let mnt = makeDir("mnt")
        let sbin = makeDir("sbin")
        XCTAssertSucceeds(Commands.run(["/bin/cp", helper, sbin + "/mount.fuse.twinfs"]))
        // The helper daemonizes; after an unmount the daemon releases the store's lock (STORE/lock, flock)
        // a moment later, so the script waits for that before mounting again.
        let script = """
        set -Eeuo pipefail
        trap 'echo "script failed at: $BASH_COMMAND (exit $?)" >&2' ERR
        trap 'grep -q " $M " /proc/self/mountinfo && fusermount3 -u "$M" || true' EXIT
        wait_released() { for _ in $(seq 1 500); do flock -n -x "$S/lock" true 2>/dev/null && return 0; sleep 0.02; done; echo "lock still held" >&2; return 1; }
        mount --bind "$SBIN" /usr/sbin
        printf '%s %s fuse.twinfs defaults,allow_other,nofail 0 0\\n' "$S" "$M" > "$SCRATCH/fstab"
        mount -T "$SCRATCH/fstab" "$M"
        grep " $M " /proc/self/mountinfo | grep -q ' - fuse.twinfs '
        grep " $M " /proc/self/mountinfo | grep -q 'allow_other'
        echo via-fstab > "$M/f"
        fusermount3 -u "$M"
        wait_released
        mount -t fuse.twinfs "$S" "$M" -o allow_other,noatime
        [ "$(cat "$M/f")" = via-fstab ]
        echo via-mount-t >> "$M/f"
        fusermount3 -u "$M"
        wait_released
        """
        let r = Commands.run([
            "/usr/bin/unshare", "--mount", "--propagation", "private", "/usr/bin/env",
            "S=\(store)", "M=\(mnt)", "SBIN=\(sbin)", "SCRATCH=\(scratch)", "TWINFS=\(Commands.twinfsBinary)",
            "/bin/bash", "-c", script,
        ], timeoutSeconds: 120)
        XCTAssertSucceeds(r, "mount(8) with the twinfs helper")
        XCTAssertFalse(MountTable.isMounted(mnt), "the namespace's mount never showed up here")
        let m = try mount(store, at: "check")
        XCTAssertEqual(String(decoding: try Sys.readAll(m.mountpoint + "/f"), as: UTF8.self), "via-fstab\nvia-mount-t\n")
    }

    func testDebugOptionLogsRequestsAndStillSignalsReadiness() throws {
        let m = try freshMount(options: ["allow_other", "debug"])
        _ = try? Sys.stat(m.mountpoint + "/no-such-file")
        try Sys.writeFile(m.mountpoint + "/f", [1])
        XCTAssertEqual(m.unmount()?.status, 0)
        let log = m.daemonLog()
        XCTAssertTrue(log.contains("LOOKUP") || log.lowercased().contains("lookup"), "-o debug logs requests:\n\(log.prefix(3000))")
    }
}
