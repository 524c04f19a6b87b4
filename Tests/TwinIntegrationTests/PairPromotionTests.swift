// Losing a node, through real daemons (issue 5, DESIGN G4 and G6): the operator promotes the survivor, which then
// serves everything alone; the old peer that comes back gives way by itself, keeps its unreplicated changes under
// /.twinfs/conflicts (on both nodes), and adopts the survivor's data. Both nodes promoted (split brain) refuse each
// other until `twinfs resolve` names the winner.
import Foundation
import XCTest

final class PairPromotionTests: PairTestCase {
    func promotion(_ m: TwinMount) throws -> [String: Any] { try status(m)["promotion"] as? [String: Any] ?? [:] }

    /// The files under /.twinfs/conflicts of a mountpoint (relative paths), sorted.
    func conflictFiles(_ mnt: String) -> [String] {
        let r = shell("cd \(quote(mnt)) && { find .twinfs/conflicts -type f ! -name .manifest.json 2>/dev/null || true; } | sort")
        return r.stdout.split(separator: "\n").map(String.init)
    }

    func testAPromotedSurvivorServesAloneAndTheReturningPeerKeepsItsChangesAsConflicts() throws {
        var p = try startPair(delayMs: 0, options: ["allow_other", "peer_timeout=2"])
        let A = quote(p.a.mountpoint), B = quote(p.b.mountpoint)
        shell(
            """
            set -e
            echo shared-1 > \(A)/shared
            mkdir \(B)/bdir
            echo b-1 > \(B)/bfile
            cat \(A)/bfile >/dev/null
            echo b-2 > \(B)/bfile
            """)
        try cutLink(p)
        // B keeps writing what it holds; A cannot see it.
        shell("set -e; echo b-3-unreplicated > \(B)/bfile; echo b-new > \(B)/bdir/bnew")
        let stale = Commands.sh("cat \(A)/bfile")
        XCTAssertNotEqual(stale.status, 0, "before the promotion A refuses its stale copy: \(stale)")

        // The operator promotes A: it lists what it may have lost, then serves everything alone.
        let promoted = Commands.twinfs(["promote", p.a.mountpoint, "--json"])
        XCTAssertSucceeds(promoted)
        let report = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(promoted.stdout.utf8)) as? [String: Any])
        let lost = report["lost"] as? [String] ?? []
        XCTAssertTrue(lost.contains("/bfile"), "the lost change is reported by path: \(report)")
        XCTAssertFalse(lost.contains("/shared"), "what B never changed is not reported: \(report)")
        XCTAssertLessThanOrEqual(lost.count, 3, "only what B changed: \(report)")
        XCTAssertEqual(try promotion(p.a)["sole"] as? Bool, true)
        shell(
            """
            set -e
            case "$(cat \(A)/bfile)" in ""|b-1|b-2) ;; *) exit 1;; esac
            echo shared-2-promoted > \(A)/shared
            echo a-after > \(A)/anew
            echo a-wins > \(A)/bfile
            """)
        XCTAssertEqual(try promotion(p.a)["count"] as? Int, 1)
        // A restart keeps the promotion: A still serves alone, its own changes included.
        _ = p.a.unmount()
        p.a = try mount(p.storeA, at: "mnt-a", options: ["allow_other", "peer_timeout=2"])
        XCTAssertEqual(try promotion(p.a)["sole"] as? Bool, true)
        shell("set -e; test \"$(cat \(A)/bfile)\" = a-wins; test \"$(cat \(A)/shared)\" = shared-2-promoted")

        // B comes back: it gives way by itself, keeps its own changes, and adopts A's data.
        try healLink(p)
        try waitUntil("B gave way to A's promotion") { (try promotion(p.b)["peerSeen"] as? Int) == 1 }
        try waitConnected(p.b)
        shell(
            """
            set -e
            test "$(cat \(B)/shared)" = shared-2-promoted
            test "$(cat \(B)/anew)" = a-after
            test "$(cat \(B)/bfile)" = a-wins
            test ! -e \(B)/bdir/bnew
            """)
        XCTAssertEqual(try promotion(p.a)["sole"] as? Bool, false, "A stopped serving alone once B gave way")
        try waitUntil("B's changes are kept under /.twinfs/conflicts on both nodes") {
            conflictFiles(p.a.mountpoint).count >= 2 && conflictFiles(p.b.mountpoint).count >= 2
        }
        let kept = conflictFiles(p.a.mountpoint)
        XCTAssertEqual(kept, conflictFiles(p.b.mountpoint))
        let keptBfile = try XCTUnwrap(kept.first { $0.hasSuffix("/bfile") }, "\(kept)")
        let keptBnew = try XCTUnwrap(kept.first { $0.hasSuffix("/bdir/bnew") }, "\(kept)")
        XCTAssertFalse(kept.contains { $0.hasSuffix("/shared") }, "what B did not change is not a conflict: \(kept)")
        XCTAssertTrue(keptBfile.contains("beta"), "the conflict names the node that lost: \(keptBfile)")
        shell(
            """
            set -e
            test "$(cat \(A)/\(keptBfile))" = b-3-unreplicated
            test "$(cat \(A)/\(keptBnew))" = b-new
            """)
        try waitDrained(p)
        shell("diff -r \(A) \(B)")
        let listed = Commands.twinfs(["status", p.b.mountpoint])
        XCTAssertTrue(listed.stdout.contains("bfile"), "status lists the conflicts: \(listed)")
    }

    func testBothNodesPromotedRefuseEachOtherUntilResolveNamesTheWinner() throws {
        let p = try startPair(delayMs: 0, options: ["allow_other", "peer_timeout=2"])
        let A = quote(p.a.mountpoint), B = quote(p.b.mountpoint)
        shell("set -e; echo base > \(A)/f; cat \(B)/f >/dev/null")
        // Promotion is for a node whose peer is gone; resolve is for a split brain. Neither applies yet.
        let early = Commands.twinfs(["promote", p.a.mountpoint])
        XCTAssertFalse(early.ok, "\(early)")
        XCTAssertTrue(early.stderr.contains("peer is connected"), "\(early)")
        let noSplit = Commands.twinfs(["resolve", p.a.mountpoint, "--keep", "alpha"])
        XCTAssertFalse(noSplit.ok, "\(noSplit)")
        XCTAssertTrue(noSplit.stderr.contains("no split brain"), "\(noSplit)")
        XCTAssertEqual(try promotion(p.a)["count"] as? Int, 0)
        try cutLink(p)
        XCTAssertSucceeds(Commands.twinfs(["promote", p.a.mountpoint]))
        XCTAssertSucceeds(Commands.twinfs(["promote", p.b.mountpoint]))
        shell("set -e; echo from-a > \(A)/f; echo from-b > \(B)/f")

        // The link returns, but neither node mirrors: both say why.
        healProxies()
        for m in [p.a, p.b] {
            // The link keeps redialling, and each attempt is connected for the moment its handshake is judged:
            // wait for a status that shows the refusal settled.
            try waitUntil("\(m.store) reports the split brain, not connected, and why") {
                let peer = try peer(m)
                return (try promotion(m)["splitBrain"] as? Bool) == true && peer["connected"] as? Bool == false
                    && (peer["lastRejection"] as? String ?? "").contains("split brain")
            }
        }
        XCTAssertEqual(shell("cat \(A)/f").stdout, "from-a\n", "each side still serves its own data")
        XCTAssertEqual(shell("cat \(B)/f").stdout, "from-b\n")

        // A typo does not make a node give way.
        let typo = Commands.twinfs(["resolve", p.b.mountpoint, "--keep", "alpah"])
        XCTAssertFalse(typo.ok, "\(typo)")

        // The operator keeps A (run on B's store, naming A by its index): B gives way, its change is kept.
        XCTAssertSucceeds(Commands.twinfs(["resolve", p.b.mountpoint, "--keep", "1"]))
        try waitConnected(p.a)
        try waitConnected(p.b)
        XCTAssertEqual(shell("cat \(B)/f").stdout, "from-a\n")
        try waitUntil("B's version is kept under /.twinfs/conflicts") {
            conflictFiles(p.a.mountpoint).contains { $0.hasSuffix("/f") }
        }
        let kept = try XCTUnwrap(conflictFiles(p.a.mountpoint).first { $0.hasSuffix("/f") })
        XCTAssertEqual(shell("cat \(A)/\(kept)").stdout, "from-b\n")
        try waitDrained(p)
        shell("diff -r \(A) \(B)")
    }

}
