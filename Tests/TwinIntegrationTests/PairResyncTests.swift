// G5, bounded resync, through real daemons: after a partition only what the bitmaps recorded is copied. A tree is
// populated and mirrored, the link is cut, one node changes a few MiB of it, the link heals, and the bytes the
// link carried for the resync (`peer.bytesSent`, every byte on the socket) and the locations pushed are compared
// with what changed. A resync that walked or re-sent the tree would cost the tree's size and fail here.
// Sizes: TWINFS_RESYNC_TREE_MIB (default 96) and TWINFS_RESYNC_CHANGED_MIB (default 8); the figures are printed
// (`resync: ...`) for Docs/PERFORMANCE.md.
import Foundation
import XCTest

final class PairResyncTests: PairTestCase {
    static func env(_ name: String, _ fallback: Int) -> Int {
        ProcessInfo.processInfo.environment[name].flatMap(Int.init) ?? fallback
    }

    func testAfterAPartitionOnlyTheChangedLocationsCrossTheLink() throws {
        try XCTSkipUnless(FileManager.default.isExecutableFile(atPath: ProxyTests.proxyBinary), "no \(ProxyTests.proxyBinary): build it")
        let treeMiB = Self.env("TWINFS_RESYNC_TREE_MIB", 96)
        let changedMiB = Self.env("TWINFS_RESYNC_CHANGED_MIB", 8)
        // Both stores hold the tree: on a disk without room for that the test would fail for the wrong reason.
        var fs = statvfs()
        if statvfs(scratch, &fs) == 0 {
            let freeMiB = Int((UInt64(fs.f_bavail) * UInt64(fs.f_frsize)) >> 20)
            guard freeMiB > 2 * treeMiB + 64 else {
                throw MountError(description: "the resync test needs \(2 * treeMiB + 64) MiB free under \(scratch); \(freeMiB) MiB are")
            }
        }
        let p = try startPair(delayMs: 0)
        let A = quote(p.a.mountpoint)
        let trackBytes = try status(p.a)["trackBytes"] as? Int ?? 65_536
        let started = Date()

        // The tree: 4 MiB files in 8 directories (written on A, mirrored to B), then the files that will change.
        let files = max(1, (treeMiB - changedMiB) / 4)
        shell(
            """
            set -e
            for d in $(seq 0 7); do mkdir \(A)/d$d; done
            for i in $(seq 1 \(files)); do head -c 4194304 /dev/urandom > \(A)/d$((i % 8))/f$i; done
            mkdir \(A)/work
            for i in $(seq 1 \(changedMiB)); do head -c 1048576 /dev/urandom > \(A)/work/w$i; done
            """)
        try waitDrained(p, timeoutSeconds: 120)
        let populated = Date().timeIntervalSince(started)
        let treeTracks = try status(p.a)["tracks"] as? Int ?? 0

        // A holds the work files' tokens when the link goes (it would give cold ones back while connected).
        try holdingTokens((1...changedMiB).map { p.a.mountpoint + "/work/w\($0)" }, trackBytes: trackBytes) {
            try cutLink(p)
        }

        // During the partition A rewrites every byte of the work files: changedMiB MiB changed, nowhere else.
        shell(
            """
            set -e
            for i in $(seq 1 \(changedMiB)); do head -c 1048576 /dev/urandom > $S/w$i; dd if=$S/w$i of=\(A)/work/w$i conv=notrunc status=none; done
            """)
        let changedBytes = changedMiB << 20
        let changedTracks = changedBytes / trackBytes
        let oosAtHeal = try mirror(p.a)["oos"] as? Int ?? -1
        XCTAssertGreaterThanOrEqual(oosAtHeal, changedTracks, "A recorded every changed track as out of sync")

        let sentBefore = try linkBytesSent(p.a), receivedBefore = try linkBytesSent(p.b)
        let pushesBefore = try counter(p.a, "pushesSent"), pullsBefore = try counter(p.b, "pullsSent")
        let answersBefore = try counter(p.a, "pullAnswersData") + counter(p.a, "pullAnswersInSync")
        let marksBefore = try counter(p.b, "marksSent")
        let healed = Date()
        try healLink(p)
        try waitDrained(p)
        let resyncSeconds = Date().timeIntervalSince(healed)
        let sent = try linkBytesSent(p.a) - sentBefore
        let peerSent = try linkBytesSent(p.b) - receivedBefore
        let pushes = try counter(p.a, "pushesSent") - pushesBefore
        let pulls = try counter(p.b, "pullsSent") - pullsBefore
        let answers = try counter(p.a, "pullAnswersData") + counter(p.a, "pullAnswersInSync") - answersBefore
        let marks = try counter(p.b, "marksSent") - marksBefore

        // B holds exactly A's data.
        for i in 1...changedMiB { shell("cmp $S/w\(i) \(quote(p.b.mountpoint))/work/w\(i)") }

        let ratio = Double(sent) / Double(changedBytes)
        print(String(format: "resync: tree %d MiB (%d tracks, populated in %.1f s), changed %d MiB (%d tracks) during the partition; after the heal A sent %d bytes (%.3fx the changed bytes), B sent %d; %d pushes, %d pulls by B; drained in %.2f s",
                     treeMiB, treeTracks, populated, changedMiB, changedTracks, sent, ratio, peerSent, pushes, pulls, resyncSeconds))
        // The bytes: the changed data plus framing (under 1%), the inode records and the handshake, nothing else.
        let allowanceBytes = 256 << 10
        XCTAssertLessThanOrEqual(sent, changedBytes + changedBytes / 10 + allowanceBytes,
                                 "the resync sent \(sent) bytes for \(changedBytes) changed (tree: \(treeMiB) MiB)")
        XCTAssertGreaterThanOrEqual(sent, changedBytes, "the changed data did cross the link")
        XCTAssertLessThanOrEqual(peerSent, allowanceBytes, "B sent only acknowledgements and heartbeats")
        // No scan: the locations pushed are the changed tracks and the work files' records, not the tree's.
        XCTAssertLessThanOrEqual(pushes, changedTracks + changedTracks / 10 + changedMiB + 8,
                                 "\(pushes) pushes for \(changedTracks) changed tracks (tree: \(treeTracks) tracks)")
        XCTAssertEqual(pulls, 0, "B pulled nothing: A's bitmaps said what to send")
        XCTAssertEqual(answers, 0, "and A compared nothing on request (no version walk)")
        XCTAssertEqual(marks, 0, "B asked for no tokens")
    }
}
