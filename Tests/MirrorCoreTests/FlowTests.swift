// MirrorCoreTests — the patent's flows (Fig. 4 read, Fig. 5A write, Fig. 5B partial write) between two cores.
// Owns: behaviour-level tests of the normal paths, plus reconnect, timeout, flush and memory.
// Must never: depend on timing; everything is driven by explicit events.

import MirrorCore
import XCTest

final class FlowTests: XCTestCase {
    let L = Location.track(7, 0)

    // Fig. 5A: a write elsewhere costs one mark; the peer records MOOS durably before answering.
    func testWriteWithoutTokenMarksThePeerOnceThenWritesLocally() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000_000))
        p.write(.a, [L])
        XCTAssertEqual(p.count(.a, "send mark"), 1)
        XCTAssertEqual(p.state(.a, L), LocationState(token: .mos, outOfSync: true))
        XCTAssertEqual(p.state(.b, L).token, .moos)
        XCTAssertEqual(p[.b].durable[L], .moos, "MOOS is durable on the peer")
        // Fig. 5A step 102-104: MOS set, so the next write needs no message at all.
        let sentBefore = p[.a].actionLog.filter { $0.hasPrefix("send") }.count
        p.write(.a, [L])
        XCTAssertEqual(p[.a].actionLog.filter { $0.hasPrefix("send") }.count, sentBefore)
        XCTAssertEqual(p.violations, [])
    }

    // Fig. 4: B reads a track A wrote; B holds MOOS so it pulls; A answers with data; bits clear on both sides.
    func testReadUnderMOOSPullsDataAndClearsBitsOnBothSides() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000_000))
        let v = p.write(.a, [L])
        XCTAssertEqual(p.read(.b, L), v)
        XCTAssertEqual(p.count(.b, "send pull"), 1)
        XCTAssertEqual(p.count(.a, "send answer-data"), 1)
        XCTAssertEqual(p.state(.a, L), LocationState(token: .none, outOfSync: false), "A gave MOS up and got the ack")
        XCTAssertEqual(p.state(.b, L), LocationState(token: .none, outOfSync: false))
        // Now both copies are equal: reads on either node are local.
        XCTAssertEqual(p.read(.a, L), v)
        XCTAssertEqual(p.read(.b, L), v)
        XCTAssertEqual(p.count(.b, "send pull"), 1)
        XCTAssertEqual(p.violations, [])
    }

    // Fig. 4 step 90: the background copy already delivered the data, so the answer is "in sync" without data.
    func testPullAfterBackgroundCopyIsAnsweredInSync() {
        let p = Pair()
        let v = p.write(.a, [L])
        XCTAssertEqual(p.count(.a, "send push"), 1)
        XCTAssertFalse(p.state(.a, L).outOfSync, "the push was acknowledged")
        XCTAssertEqual(p.read(.b, L), v)
        XCTAssertEqual(p.count(.a, "send answer-in-sync"), 1)
        XCTAssertEqual(p.count(.a, "send answer-data"), 0)
        XCTAssertEqual(p.violations, [])
    }

    // Fig. 5B: a partial write under MOOS needs the peer's data before it can apply.
    func testPartialWriteUnderMOOSFetchesThePeersDataWithTheGrant() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000_000))
        let v = p.write(.a, [L])
        let id = p.request(.b, [AccessItem(L, .writePartial)])
        p.settle()
        XCTAssertNotNil(p[.b].granted[id])
        XCTAssertEqual(p[.b].store[L]?.stamp, v, "A's unsynced data landed on B before the grant")
        p.apply(.b, id)
        p.settle()
        XCTAssertEqual(p.state(.a, L).token, .moos)
        XCTAssertFalse(p.state(.a, L).outOfSync, "B acknowledged A's data")
        XCTAssertEqual(p.violations, [])
    }

    // A multi-location write (tracks plus inode record) costs one mark for all of them.
    func testMultiLocationWriteCostsOneRoundTrip() {
        let p = Pair()
        p.write(.a, [.inode(7), .track(7, 0), .track(7, 1), .track(7, 2)], .writePartial)
        XCTAssertEqual(p.count(.a, "send mark"), 1)
        XCTAssertEqual(p.core(.a).status.counters.roundTrips, 1)
        XCTAssertEqual(p.violations, [])
    }

    // Reconnect: a mark lost with the connection is re-sent after the handshake and the write completes.
    func testMarkLostWithTheConnectionIsResentAfterReconnect() {
        let p = Pair()
        p.holdWire[1] = true
        let id = p.request(.a, [AccessItem(L, .writeFull)])
        p.settle()
        p.disconnect()
        p.holdWire[1] = false
        XCTAssertNil(p[.a].granted[id])
        p.connect()
        XCTAssertNotNil(p[.a].granted[id])
        XCTAssertEqual(p.count(.a, "send mark"), 2)
        XCTAssertEqual(p.violations, [])
    }

    // G4: without the peer, an operation that needs it fails with a timeout; it never returns stale data.
    func testReadUnderMOOSFailsAfterPeerTimeoutWhileDisconnected() {
        let p = Pair()
        p.write(.a, [L])
        p.write(.a, [L])  // A keeps MOS; B holds MOOS
        p.disconnect()
        let id = p.request(.b, [AccessItem(L, .read)])
        p.settle()
        XCTAssertNil(p[.b].granted[id])
        p.tick(500)
        XCTAssertNil(p[.b].failed[id])
        p.tick(1_000)
        XCTAssertEqual(p[.b].failed[id], .peerTimeout)
        // Locations B can prove current are still served during the partition.
        XCTAssertNotNil(p.read(.b, .track(8, 0)))
        XCTAssertEqual(p.violations, [])
    }

    // fsync=mirror: a flush completes only after the peer acknowledged a durable copy of every written version.
    func testFlushCompletesOnlyAfterTheDurableAck() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000_000))
        p.write(.a, [L])
        XCTAssertTrue(p.state(.a, L).outOfSync)
        p.feed(.a, .flushRequested(FlushID(1), [L, .track(7, 5)]))
        XCTAssertFalse(p[.a].flushed.contains(1))
        p.settle()
        XCTAssertTrue(p[.a].flushed.contains(1))
        XCTAssertEqual(p[.b].store[L]?.stamp, p[.a].store[L]?.stamp)
        XCTAssertFalse(p.state(.a, L).outOfSync)
        // Nothing out of sync: done at once.
        p.feed(.a, .flushRequested(FlushID(2), [L]))
        XCTAssertTrue(p[.a].flushed.contains(2))
    }

    // Two nodes writing the same track in turn converge: both end with the last write and drained bitmaps.
    func testAlternatingWritersConvergeAndBitmapsDrain() {
        let p = Pair()
        var last: UInt64 = 0
        for i in 0..<10 { last = p.write(i % 2 == 0 ? .a : .b, [L], i % 3 == 0 ? .writePartial : .writeFull) }
        XCTAssertEqual(p.read(.a, L), last)
        XCTAssertEqual(p.read(.b, L), last)
        XCTAssertEqual(p.core(.a).status.oosCount + p.core(.b).status.oosCount, 0)
        XCTAssertEqual(p.violations, [])
    }

    // Memory (issue 3): the bulk costs at most 2 bits per track, whichever token its OOS tracks share: 4M tracks
    // restored as contested (MOOS + OOS) or written under MOS and not yet pushed (MOS + OOS) cost 1 MiB.
    func testBitmapsCostAtMostTwoBitsPerTrack() {
        let tracks: UInt64 = 1 << 22
        let restored = MirrorNode(config: Pair.config(.a))
        let entries = (0..<tracks).map { PersistEntry(.track(1, $0), .contested) }
        _ = restored.step(.restarted(RecoveredState(entries: entries, clockReservation: 10, incarnation: 1)))
        XCTAssertEqual(restored.status.oosCount, Int(tracks))
        XCTAssertEqual(restored.status.moosCount, Int(tracks))
        XCTAssertLessThanOrEqual(restored.bitmapBytes, Int(tracks) * 2 / 8)
        XCTAssertEqual(restored.checkInvariants(), [])

        // A writer whose peer is gone: every track MOS + OOS (one mark, then local writes).
        let p = Pair(a: Pair.config(.a, pushDelayTicks: .max))
        let written: UInt64 = 1 << 16
        p.write(.a, (0..<written).map { .track(7, $0) })
        p.disconnect()
        XCTAssertEqual(p.core(.a).status.mosCount, Int(written))
        XCTAssertEqual(p.core(.a).status.oosCount, Int(written))
        XCTAssertLessThanOrEqual(p.core(.a).bitmapBytes, Int(written) * 2 / 8)
        XCTAssertEqual(p.core(.a).checkInvariants(), [])
    }

    // OOS tracks whose token differs from the rest of their inode live in a small exception table; when they become
    // the majority the inode's bulk token flips, and every state reads back as it was set.
    func testMixedOutOfSyncTokensReadBackExactly() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: .max))
        let n: UInt64 = 512
        p.write(.a, (0..<n).map { .track(3, $0) })  // MOS + OOS on A, MOOS on B
        // B takes every other track back with a full overwrite: A keeps OOS (contested) under MOOS for those.
        let taken = (0..<n).filter { $0 % 2 == 0 }
        p.write(.b, taken.map { .track(3, $0) })
        for t in 0..<n {
            let s = p.state(.a, .track(3, t))
            XCTAssertEqual(s.token, t % 2 == 0 ? .moos : .mos, "track \(t)")
        }
        XCTAssertEqual(p.core(.a).checkInvariants(), [])
        XCTAssertEqual(p.violations, [])
    }

    // Frames are bounded: a read of many MOOS locations pulls them in messages of at most `maxMarkItems` each.
    func testALargePullIsSplitIntoBoundedMessages() {
        let locations = (0..<600 as Range<UInt64>).map { Location.track(4, $0) }
        let core = MirrorNode(config: MirrorConfig(node: NodeID(1), peer: NodeID(2), maxMarkItems: 256),
                              prediction: NoPrediction(),
                              recovered: RecoveredState(entries: locations.map { PersistEntry($0, .moos) },
                                                        clockReservation: 1 << 16, incarnation: 1))
        _ = core.step(.connectionUp(epoch: 1))
        let actions = core.step(.operationRequested(OperationRequest(id: OperationID(1),
                                                                     items: locations.map { AccessItem($0, .read) })))
        let pulls = actions.compactMap { a -> Pull? in if case .send(.pull(let p)) = a { return p } else { return nil } }
        XCTAssertEqual(pulls.map(\.locations.count), [256, 256, 88])
        XCTAssertEqual(pulls.flatMap(\.locations), locations, "every location once, in order")
        XCTAssertEqual(Set(pulls.map(\.id)).count, 3, "each message has its own pull id")
    }
}
