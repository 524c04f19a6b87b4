// G4, useful during a partition, through real daemons: the link between the nodes is cut by the proxy (SIGUSR1).
// Each node keeps reading what it holds current and writing what it holds the token for; a read of what the peer
// changed last and a write to what the peer holds wait for `peer_timeout`, show in `twinfs status` while they
// wait, then fail with EIO and never return stale data. After the heal (SIGUSR2) the pair converges by itself.
import Foundation
import XCTest

final class PairPartitionTests: PairTestCase {
    func testDuringAPartitionEachNodeServesWhatItHoldsAndTheRestFailsWithEIOThenThePairConverges() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: ProxyTests.proxyBinary), "no \(ProxyTests.proxyBinary): build it")
        let p = try startPair(delayMs: 0, options: ["allow_other", "peer_timeout=2"])
        let A = quote(p.a.mountpoint), B = quote(p.b.mountpoint)
        // Who holds what when the link goes: `a/peerfile` was changed last by B (A's copy is stale), the root is
        // current on both (B read it last), and each node has just written its own file (its tokens are fresh: a
        // node gives cold tokens back only while connected).
        shell(
            """
            set -e
            mkdir \(A)/a \(A)/b
            echo P1 > \(A)/a/peerfile
            echo P2 > \(B)/a/peerfile
            ls \(B) >/dev/null
            echo A1 > \(A)/a/mine
            echo B1 > \(B)/b/mine
            """)
        try cutLink(p)

        // Each node serves and changes what it holds.
        shell(
            """
            set -e
            test "$(cat \(A)/a/mine)" = A1 && echo A2 >> \(A)/a/mine && test "$(cat \(A)/a/mine)" = "$(printf 'A1\\nA2')"
            test "$(cat \(B)/b/mine)" = B1 && echo B2 >> \(B)/b/mine && test "$(cat \(B)/b/mine)" = "$(printf 'B1\\nB2')"
            """)

        // A read of what the peer changed last waits, shows in status while it waits, and fails with EIO.
        let read = try BackgroundCommand("cat \(A)/a/peerfile")
        var seenBlocked: [String: Any] = [:]
        var seenText: CommandResult?
        try waitUntil("A's status shows the blocked read", timeoutSeconds: 10) {
            let s = try status(p.a)
            let blocked = (s["mirror"] as? [String: Any])?["blocked"] as? [String: Any] ?? [:]
            if (blocked["operations"] as? Int ?? 0) >= 1 && (blocked["oldestMs"] as? Int ?? 0) > 0 {
                seenBlocked = s
                seenText = Commands.twinfs(["status", p.a.mountpoint])
                return true
            }
            return false
        }
        let r = read.finish()
        XCTAssertNotEqual(r.status, 0, "the stale copy is not served: \(r)")
        XCTAssertEqual(r.stdout, "", "no data at all, never the stale P1: \(r)")
        XCTAssertTrue(r.stderr.contains("Input/output error"), "EIO: \(r)")
        XCTAssertGreaterThanOrEqual(r.seconds, 1.5, "it waited for the peer first")
        XCTAssertLessThan(r.seconds, 20, "and not much longer than peer_timeout")

        // What status showed during the wait: the partition, its age and cause, what waits, what is left to copy.
        let seenPeer = seenBlocked["peer"] as? [String: Any] ?? [:]
        let seenMirror = seenBlocked["mirror"] as? [String: Any] ?? [:]
        XCTAssertEqual(seenPeer["connected"] as? Bool, false)
        XCTAssertGreaterThan(seenPeer["disconnectedForMs"] as? Int ?? -1, 0, "how long the partition lasts: \(seenPeer)")
        XCTAssertFalse((seenPeer["lastError"] as? String ?? "").isEmpty, "why the link is down: \(seenPeer)")
        XCTAssertGreaterThan(seenMirror["oos"] as? Int ?? 0, 0, "A2 waits to be copied: \(seenMirror)")
        XCTAssertGreaterThan(seenMirror["oosBytesUpperBound"] as? Int ?? 0, 0)
        let text = seenText?.stdout ?? ""
        print("status of A while its read waited:\n\(text)")
        XCTAssertTrue(text.contains("NOT CONNECTED for"), text)
        XCTAssertTrue(text.contains("blocked:") && text.contains("operations waiting (oldest"), text)

        // A write to a file the peer holds waits and fails with EIO too, on either node; nothing changes.
        let write = try BackgroundCommand("echo X >> \(B)/a/peerfile")
        let w = write.finish()
        XCTAssertNotEqual(w.status, 0, "B cannot write under a directory A holds: \(w)")
        XCTAssertTrue(w.stderr.contains("Input/output error"), "EIO: \(w)")
        XCTAssertGreaterThanOrEqual(w.seconds, 1.5, "it waited for the peer first")
        let w2 = try BackgroundCommand("echo X >> \(A)/b/mine").finish()
        XCTAssertNotEqual(w2.status, 0, "A cannot write B's file: \(w2)")
        XCTAssertTrue(w2.stderr.contains("Input/output error"), "EIO: \(w2)")
        // Nothing is left waiting once they failed.
        try waitUntil("no blocked operation left on A") {
            ((try mirror(p.a)["blocked"] as? [String: Any])?["operations"] as? Int) == 0
        }

        // Heal: the pair converges with no operator action.
        try healLink(p)
        shell(
            """
            set -e
            test "$(cat \(B)/a/mine)" = "$(printf 'A1\\nA2')"
            test "$(cat \(A)/b/mine)" = "$(printf 'B1\\nB2')"
            test "$(cat \(A)/a/peerfile)" = P2
            """)
        try waitDrained(p)
        shell("diff -r \(A) \(B)")
        for m in [p.a, p.b] {
            let s = try mirror(m)
            XCTAssertEqual(s["oos"] as? Int, 0)
            XCTAssertEqual((s["blocked"] as? [String: Any])?["operations"] as? Int, 0)
            XCTAssertEqual(s["stalledStoreActions"] as? Int, 0)
            let errors = s["errors"] as? [String: Any] ?? [:]
            XCTAssertEqual(errors["store"] as? Int, 0, "no store errors on \(m.store): \(s["lastError"] ?? "")")
            XCTAssertNil(try peer(m)["disconnectedForMs"], "connected again")
        }
    }
}
