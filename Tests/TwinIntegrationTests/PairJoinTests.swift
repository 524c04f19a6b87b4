// A node replaced by a brand-new store joins its populated peer: it serves at once by pulling, fills itself in the
// background with progress in `twinfs status`, and never reuses an inode number its predecessor left on the peer.
// A node that stops cleanly hands its tokens and data over first, so its peer then serves everything alone.
import Foundation
import XCTest

final class PairJoinTests: PairTestCase {
    func testABrandNewStoreJoiningAPopulatedPeerServesAtOnceAndFillsItself() throws {
        var p = try startPair()
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            mkdir -p $A/d1/d2 && for i in $(seq 30); do head -c $((i * 37000)) /dev/urandom > $A/d1/d2/f$i; done
            ln -s d1/d2/f3 $A/link && setfattr -n user.k -v v $A/d1
            echo from-b > $B/old-b-file
            """)
        try waitDrained(p)
        XCTAssertEqual(p.b.unmount()?.status, 0)
        // B's machine is replaced: a new, empty store with the pair's settings.
        let conf = try String(contentsOfFile: p.storeB + "/twinfs.conf", encoding: .utf8)
        let peerLine = conf.split(separator: "\n").first { $0.hasPrefix("peer") }!.split(separator: "=")[1].trimmingCharacters(in: .whitespaces)
        Commands.run(["/bin/rm", "-rf", p.storeB])
        XCTAssertSucceeds(Commands.twinfs([
            "init", p.storeB, "--node", "beta-new", "--node-id", "2", "--listen", "127.0.0.1:\(portB)", "--peer", peerLine,
            "--secret-file", path("pair-secret"),
        ]))
        p.b = try mount(p.storeB, at: "mnt-b")
        try waitConnected(p.b)
        // Served at once, by pulling.
        shell(
            """
            A=\(quote(p.a.mountpoint)); B=\(quote(p.b.mountpoint))
            set -e
            cmp $A/d1/d2/f17 $B/d1/d2/f17
            test "$(cat $B/old-b-file)" = from-b && test "$(readlink $B/link)" = d1/d2/f3
            test "$(getfattr --only-values -n user.k $B/d1)" = v
            echo new > $B/new-file && test "$(cat $A/new-file)" = new && test "$(cat $A/old-b-file)" = from-b
            test "$(stat -c %i $B/new-file)" != "$(stat -c %i $A/old-b-file)"
            """)
        // Filled in the background, with progress shown, then no longer joining.
        try waitUntil("B finished joining") {
            let join = try status(p.b)["joining"] as? [String: Any]
            return join?["active"] as? Bool == false && join?["walkDone"] as? Bool == true
        }
        let join = try status(p.b)["joining"] as? [String: Any] ?? [:]
        XCTAssertGreaterThanOrEqual(join["files"] as? Int ?? 0, 31, "the walk read every file: \(join)")
        try waitDrained(p)
        let a = try status(p.a), b = try status(p.b)
        XCTAssertEqual(a["dataBytes"] as? Int, b["dataBytes"] as? Int, "both stores hold the same data")
        XCTAssertEqual(a["inodes"] as? Int, b["inodes"] as? Int, "and the same inodes")
    }

    func testANodeThatStopsCleanlyLeavesItsPeerReadingEverythingAlone() throws {
        let p = try startPair(options: ["allow_other", "peer_timeout=2"])
        shell("mkdir \(quote(p.b.mountpoint))/fromb && for i in $(seq 20); do echo $i > \(quote(p.b.mountpoint))/fromb/f$i; done")
        XCTAssertGreaterThan((try mirror(p.b)["mos"] as? Int) ?? 0, 0, "B holds tokens of what it wrote")
        XCTAssertEqual(p.b.unmount()?.status, 0)
        XCTAssertTrue(p.b.daemonLog().contains("left cleanly"), p.b.daemonLog())
        let started = Date()
        shell(
            """
            A=\(quote(p.a.mountpoint))
            set -e
            for i in $(seq 20); do test "$(cat $A/fromb/f$i)" = $i; done
            ls -la $A/fromb >/dev/null
            """)
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5, "nothing waited for the departed peer")
    }
}
