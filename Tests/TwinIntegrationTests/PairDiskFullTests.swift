// A full disk under one node of a pair, through real daemons: node A's store lives on a small tmpfs. A writer on A
// gets ENOSPC; nothing in either store is harmed (both daemons keep running, earlier files read back on both
// nodes); the peer's writes that A cannot store yet wait (status shows them stalled) instead of being lost or
// wedging their locations; once space is freed, mirroring resumes and the pair converges with no operator action.
import Foundation
import XCTest

final class PairDiskFullTests: PairTestCase {
    func testAFullNodeRefusesWritesKeepsItsFilesAndCatchesUpOnceSpaceIsFreed() throws {
        let disk = makeDir("disk")
        XCTAssertSucceeds(Commands.run(["/bin/mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", disk]))
        var p: Pair?
        defer {
            // The daemons hold the store open: they go first, then the small disk.
            _ = p?.a.unmount()
            _ = p?.b.unmount()
            Commands.run(["/bin/umount", disk])
        }
        p = try startPair(options: ["allow_other", "peer_timeout=5"], storeA: disk + "/store")
        guard let p else { return }
        let A = quote(p.a.mountpoint), B = quote(p.b.mountpoint)
        shell(
            """
            set -e
            echo precious > \(A)/keep
            mkdir \(B)/fromB && head -c 3000000 /dev/urandom > $S/early && cp $S/early \(B)/fromB/early
            cmp $S/early \(A)/fromB/early
            """)
        try waitDrained(p)

        // A writer on A runs the disk full: ENOSPC for it, on A.
        let fill = Commands.sh("dd if=/dev/urandom of=\(A)/big bs=1M count=100")
        XCTAssertFalse(fill.ok, "100 MiB cannot fit on a 64 MiB disk\n\(fill)")
        XCTAssertTrue(fill.stderr.contains("No space left on device"), "the writer gets ENOSPC\n\(fill)")
        let create = Commands.sh("head -c 20000000 /dev/urandom > \(A)/more")
        XCTAssertTrue(create.stderr.contains("No space left on device"), "so does the next one\n\(create)")

        // B keeps writing; what A cannot store yet waits on B's side (out of sync) and in A's retry queue.
        shell("head -c 16000000 /dev/urandom > $S/late && cp $S/late \(B)/fromB/late")
        do {
            try waitUntil("A's status shows the peer's writes stalled on its full disk") {
                (try mirror(p.a)["stalledStoreActions"] as? Int ?? 0) > 0
            }
        } catch {
            XCTFail("\(error)\nA: \(p.a.daemonLog())\nB: \(p.b.daemonLog())\n\(Commands.twinfs(["status", p.a.mountpoint]))")
            throw error
        }
        let full = try mirror(p.a)
        XCTAssertTrue((full["lastError"] as? String ?? "").contains("failed"), "the cause is reported: \(full)")
        let text = Commands.twinfs(["status", p.a.mountpoint])
        XCTAssertTrue(text.stdout.contains("stalled:"), "\(text)")

        // Nothing is harmed: both daemons run, every earlier file reads back on both nodes.
        XCTAssertTrue(p.a.isRunning && p.b.isRunning, "a full disk stops no daemon")
        shell(
            """
            set -e
            test "$(cat \(A)/keep)" = precious && test "$(cat \(B)/keep)" = precious
            cmp $S/early \(A)/fromB/early && cmp $S/early \(B)/fromB/early
            cmp $S/late \(B)/fromB/late
            """)

        // Space comes back (the partial file goes): the stalled writes land and the pair converges by itself.
        shell("rm \(A)/big; rm -f \(A)/more")
        try waitUntil("A stored everything it had stalled", timeoutSeconds: 60) {
            (try mirror(p.a)["stalledStoreActions"] as? Int) == 0
        }
        try waitDrained(p)
        shell(
            """
            set -e
            cmp $S/late \(A)/fromB/late
            diff -r \(A) \(B)
            echo after > \(A)/after && test "$(cat \(B)/after)" = after
            """)
        for m in [p.a, p.b] {
            let s = try mirror(m)
            XCTAssertEqual(s["oos"] as? Int, 0, "\(m.store) has nothing left to copy")
            XCTAssertEqual((s["errors"] as? [String: Any])?["unstampedWrites"] as? Int, 0)
        }
        XCTAssertEqual((try mirror(p.b)["errors"] as? [String: Any])?["store"] as? Int, 0, "B's disk was never the problem")
        // The store of the full node passes its own checks after a clean stop and mounts again.
        XCTAssertEqual(p.a.unmount()?.status, 0, p.a.daemonLog())
        XCTAssertSucceeds(Commands.twinfs(["status", p.storeA]))
    }
}
