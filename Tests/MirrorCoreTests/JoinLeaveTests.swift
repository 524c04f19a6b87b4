// MirrorCoreTests — joining (a fresh store joins a populated peer and fills itself while serving) and leaving (a
// graceful stop that gives every write token back), Docs/PROTOCOL.md "Joining" and "Leaving".
// Owns: scripted two-core runs of both features with the harness's cross-node invariants after every event.
// Must never: reach into the core's internals; everything is observed through actions, states and status.

import MirrorCore
import XCTest

final class JoiningTests: XCTestCase {
    let file: UInt64 = 7
    var L: Location { .track(file, 0) }
    var M: Location { .track(file, 1) }
    var N: Location { .track(file, 2) }
    /// Version of the data the populated store held before the join.
    let oldVersion = Version(counter: 500, node: NodeID(2))

    /// A is a fresh store joining B, whose store holds `populated` (stamps) that A lacks.
    func joiningPair(_ populated: [Location: UInt64], bothJoining: Bool = false) -> Pair {
        let p = Pair(connect: false)
        p[.b].core = MirrorNode(config: p[.b].config, prediction: NoPrediction(),
                                recovered: RecoveredState(entries: [], clockReservation: 1_000, incarnation: 0,
                                                          joining: bothJoining))
        p[.b].durableReservation = 1_000
        p[.b].joining = bothJoining
        for (l, stamp) in populated { p[.b].store[l] = (stamp, oldVersion) }
        p[.a].core = MirrorNode(config: p[.a].config, prediction: NoPrediction(),
                                recovered: RecoveredState(entries: [], clockReservation: 0, incarnation: 0, joining: true))
        p[.a].joining = true
        p.connect()
        return p
    }

    func testAJoiningStoreServesReadsAtOnceByPullingTheData() {
        let p = joiningPair([L: 77, M: 78])
        XCTAssertTrue(p.core(.a).status.joining)
        XCTAssertEqual(p.state(.a, L).token, .moos, "a location the joining store never saw may be newer on the peer")
        XCTAssertEqual(p.state(.a, .inode(99)).token, .moos, "every unknown location, not only the peer's")
        XCTAssertEqual(p.core(.a).status.moosCount, 0, "the default costs no explicit state")
        XCTAssertEqual(p.read(.a, L), 77, "the read pulled the peer's data before it was served")
        XCTAssertEqual(p.state(.a, L).token, .none, "compared and in sync: local reads from now on")
        XCTAssertEqual(p.read(.a, L), 77)
        XCTAssertEqual(p.count(.a, "send pull"), 1, "a compared location is not pulled again")
        XCTAssertEqual(p.read(.a, M), 78)
        XCTAssertEqual(p.violations, [])
    }

    func testJoiningPullsAskForDataEvenWhenThePeerHoldsNothingUnsynced() {
        let p = joiningPair([L: 77])
        XCTAssertEqual(p.state(.b, L), LocationState(token: .none, outOfSync: false), "the peer holds no OOS for old data")
        _ = p.read(.a, L)
        XCTAssertEqual(p.count(.b, "send answer-data"), 1, "forced: the peer answers with data, never \"in sync\"")
        XCTAssertEqual(p.count(.b, "send answer-in-sync"), 0)
    }

    func testAPartialWriteWhileJoiningLandsThePeersDataFirst() {
        let p = joiningPair([L: 77])
        let id = p.request(.a, [AccessItem(L, .writePartial)])
        p.settle()
        XCTAssertEqual(p[.a].grantSnapshots[id]?[L], 77, "the partial write builds on the peer's data, not on nothing")
        p.apply(.a, id)
        p.settle()
        XCTAssertEqual(p.state(.a, L).token, .mos)
        XCTAssertEqual(p.violations, [])
    }

    func testAFullOverwriteWhileJoiningNeedsNoData() {
        let p = joiningPair([L: 77])
        let v = p.write(.a, [L], .writeFull)
        XCTAssertEqual(p.count(.b, "read \(L)"), 0, "a takeover: the peer's old data are not needed (hazard 6)")
        XCTAssertEqual(p.read(.b, L), v, "the peer pulls the new data")
        XCTAssertEqual(p.violations, [])
    }

    func testJoinCompletedEndsTheDefaultButKeepsWhatThePeerMayHold() {
        let p = joiningPair([L: 77, M: 78])
        XCTAssertEqual(p.read(.a, L), 77)
        // B writes M while A joins: A grants (B takes the token); B's push has not reached A, so A never compared M.
        let id = p.request(.b, [AccessItem(M, .writeFull)])
        p.settle()
        p.holdWire[Side.a.rawValue] = true
        let written = p.apply(.b, id)
        p.settle()
        XCTAssertEqual(p.state(.a, M).token, .moos)
        XCTAssertEqual(p.state(.b, M).token, .mos)
        p.feed(.a, .joinCompleted)
        p.settle()
        XCTAssertFalse(p.core(.a).status.joining)
        XCTAssertEqual(p[.a].batches.last?.joinCompleted, true, "the completion travels with a persist batch")
        XCTAssertFalse(p[.a].joining, "that batch is durable")
        XCTAssertEqual(p.state(.a, .inode(99)).token, .none, "unknown locations read as none again")
        XCTAssertEqual(p.state(.a, L).token, .none)
        XCTAssertEqual(p.state(.a, M).token, .moos, "B still holds M's token")
        XCTAssertEqual(p[.a].durable[M], .contested, "and a restart must not forget it (nor that it was never compared)")
        p.holdWire[Side.a.rawValue] = false
        p.settle()
        XCTAssertEqual(p.read(.a, M), written)
        XCTAssertEqual(p.violations, [])
    }

    func testARestartMidJoinNeverPullsOverThisNodesNewerWrite() {
        let p = joiningPair([L: 77, M: 78, N: 79])
        XCTAssertEqual(p.read(.a, L), 77)
        let theirs = p.write(.b, [N], .writeFull)          // A grants N to B during the join
        let id = p.request(.a, [AccessItem(M, .writePartial)])
        p.settle()
        p.holdWire[Side.b.rawValue] = true                 // A's push of M never reaches B
        let mine = p.apply(.a, id)
        p.settle()
        XCTAssertEqual(p[.a].durable[M], .held, "A's write is covered by its superset bit")
        p.crash(.a)                                        // kill -9 mid-join: the shell re-supplies joining
        p.holdWire[Side.b.rawValue] = false
        XCTAssertTrue(p.core(.a).status.joining)
        XCTAssertEqual(p.state(.a, N).token, .moos, "B may hold N's token: the joining default covers it")
        p.connect()
        p.settle()
        XCTAssertEqual(p.read(.a, M), mine, "A's own write is never pulled over")
        XCTAssertEqual(p.read(.b, M), mine)
        XCTAssertEqual(p.read(.a, L), 77, "a location settled before the crash is simply pulled again")
        XCTAssertEqual(p.read(.a, N), theirs)
        XCTAssertEqual(p.violations, [])
    }

    func testTwoFreshStoresJoiningEachOtherConvergeWithoutDeadlock() {
        let p = joiningPair([:], bothJoining: true)
        // Both partial-write L at once: crossing marks, both under the default MOOS, both asking for data.
        let a = p.request(.a, [AccessItem(L, .writePartial), AccessItem(.inode(file), .writePartial)])
        let b = p.request(.b, [AccessItem(L, .writePartial), AccessItem(.inode(file), .writePartial)])
        p.settle()
        XCTAssertTrue((p[.a].granted[a] != nil) != (p[.b].granted[b] != nil), "exactly one wins the tie-break first")
        let first: Side = p[.a].granted[a] != nil ? .a : .b
        p.apply(first, first == .a ? a : b)
        p.settle()
        let second = first.other
        XCTAssertNotNil(p[second].granted[second == .a ? a : b], "the loser is served once the winner is done")
        let last = p.apply(second, second == .a ? a : b)
        p.settle()
        // Each walks the tree (reads everything), then completes its join.
        for s in [Side.a, .b] {
            for l in [L, M, .inode(file)] { XCTAssertNotNil(p.read(s, l), "\(s) reads \(l)") }
            p.feed(s, .joinCompleted)
            p.settle()
        }
        XCTAssertEqual(p.read(.a, L), last)
        XCTAssertEqual(p.read(.b, L), last)
        p.tick(10)
        XCTAssertEqual(p.core(.a).status.oosCount + p.core(.b).status.oosCount, 0, "drained")
        XCTAssertEqual(p[.a].store[L]?.version, p[.b].store[L]?.version)
        XCTAssertFalse(p.core(.a).status.joining || p.core(.b).status.joining)
        XCTAssertEqual(p.violations, [])
    }

    func testJoiningStateCostsNothingForUntouchedLocations() {
        let a = MirrorNode(config: Pair.config(.a), prediction: NoPrediction(),
                           recovered: RecoveredState(entries: [], clockReservation: 0, incarnation: 0, joining: true))
        for ino in 1...1_000 as ClosedRange<UInt64> { XCTAssertEqual(a.state(of: .track(ino, 5)).token, .moos) }
        XCTAssertEqual(a.bitmapBytes, 0)
        XCTAssertEqual(a.checkInvariants(), [])
    }
}

final class LeavingTests: XCTestCase {
    let file: UInt64 = 3
    func track(_ i: UInt64) -> Location { .track(file, i) }

    func testALeavingNodeGivesEveryTokenBackOnceInSync() {
        let p = Pair()  // release policy off: without leaving, A would keep its tokens for good
        for i in 0..<6 as Range<UInt64> { p.write(.a, [track(i)], .writePartial) }
        XCTAssertEqual(p.core(.a).status.mosCount, 6)
        XCTAssertEqual(p.core(.b).status.moosCount, 6)
        p.feed(.a, .leaveRequested)
        p.settle()
        XCTAssertTrue(p.core(.a).status.leaving)
        XCTAssertEqual(p.core(.a).status.mosCount, 0)
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.core(.b).status.moosCount, 0, "the peer can serve everything alone")
        for i in 0..<6 as Range<UInt64> { XCTAssertEqual(p.state(.b, track(i)).token, .none) }
        let pulls = p.count(.b, "send pull")
        for i in 0..<6 as Range<UInt64> { XCTAssertNotNil(p.read(.b, track(i))) }
        XCTAssertEqual(p.count(.b, "send pull"), pulls, "B's reads are local")
        XCTAssertEqual(p.violations, [])
    }

    func testALeaveWaitsForUnsyncedDataAndUnfinishedOperations() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000))
        p.write(.a, [track(0)], .writePartial)
        let busy = p.request(.a, [AccessItem(track(1), .writePartial)])
        p.settle()
        XCTAssertNotNil(p[.a].granted[busy])
        p.feed(.a, .leaveRequested)
        p.settle()
        XCTAssertEqual(p.core(.a).status.oosCount, 0, "leaving pushes at once, whatever the push delay")
        XCTAssertEqual(p.state(.a, track(1)).token, .mos, "a token in use stays until the operation is done")
        p.apply(.a, busy)
        p.settle()
        XCTAssertEqual(p.core(.a).status.mosCount, 0)
        XCTAssertEqual(p.core(.b).status.moosCount, 0)
        XCTAssertEqual(p.violations, [])
    }

    func testALeaveDuringPeerActivityStaysSafe() {
        let p = Pair(prediction: StandardPrediction())
        for i in 0..<4 as Range<UInt64> { p.write(.a, [track(i)], .writePartial) }
        // The peer works on the same file while A leaves: marks, pulls and writes cross the releases.
        let w = p.request(.b, [AccessItem(track(1), .writePartial), AccessItem(track(5), .writeFull)])
        let r = p.request(.b, [AccessItem(track(2), .read)])
        let predicted = p.core(.a).status.counters.locationsPredicted
        p.feed(.a, .leaveRequested)
        let aw = p.request(.a, [AccessItem(track(3), .writePartial)])
        p.settle()
        for (s, id) in [(Side.b, w), (.b, r), (.a, aw)] where p[s].granted[id] != nil { p.apply(s, id) }
        p.settle()
        for (s, id) in [(Side.b, w), (.b, r), (.a, aw)] where p[s].granted[id] != nil { p.apply(s, id) }
        p.settle()
        XCTAssertEqual(p.core(.a).status.mosCount, 0)
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.core(.b).status.moosCount, 0, "nothing of A's is left for B to wait on")
        XCTAssertEqual(p.core(.a).status.counters.locationsPredicted, predicted, "a leaving node predicts nothing")
        XCTAssertEqual(p.violations, [])
    }

    /// Sim seed 1346 (`--leave`): an answer hands A's token back, the answer dies with B's restart (B recovers its
    /// MOOS), and A's copy was still unsynced at the reconnect, so the release could not be re-sent then. When A
    /// later leaves, that release must still go, or B is left with MOOS nobody can clear.
    func testAnAnswerLostWithThePeersRestartIsReleasedWhenLeaving() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: 1_000))
        p.write(.a, [track(0)], .writePartial)
        XCTAssertEqual(p.state(.b, track(0)).token, .moos)
        p.holdWire[Side.b.rawValue] = true
        _ = p.request(.b, [AccessItem(track(0), .read)])
        p.settle()
        XCTAssertEqual(p.state(.a, track(0)).token, .none, "A answered B's pull: the token went with the answer")
        XCTAssertTrue(p.state(.a, track(0)).outOfSync, "A's copy is not on B yet")
        p.crash(.b)  // the answer is lost; B restarts with the MOOS it persisted
        p.holdWire[Side.b.rawValue] = false
        p.connect()
        XCTAssertEqual(p.state(.b, track(0)).token, .moos)
        p.feed(.a, .leaveRequested)
        p.settle()
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.core(.b).status.moosCount, 0, "B can serve everything alone once A has left")
        XCTAssertEqual(p.violations, [])
    }

    /// Sim seed 2601 (`--leave`): B granted A's mark and persisted MOOS, but the reply died with the connection; at
    /// the reconnect B's answer to a pull of A's was still being written into A's store. The mark must go again all
    /// the same: nothing else re-sends it, A (the lower id) refuses B's marks there while its own is pending, and once
    /// A has left, B keeps MOOS for a grant A never received.
    func testAMarkWhoseReplyDiedIsSentAgainWhileThePeersCopyIsLanding() {
        let p = Pair(b: Pair.config(.b, pushDelayTicks: 1_000))  // B's copy reaches A only by A's pull
        p.write(.b, [track(0)], .writePartial)
        p[.a].holdStoreWrites = true  // B's answer lands slowly on A
        let ar = p.request(.a, [AccessItem(track(0), .read)])
        p.settle()
        XCTAssertEqual(p[.a].heldStoreWrites.count, 1, "B's answer is being written on A")
        p[.b].holdPersists = true     // B's grant waits for its MOOS to be durable...
        let aw = p.request(.a, [AccessItem(track(0), .writeFull)])
        p.settle()
        XCTAssertEqual(p.state(.b, track(0)).token, .moos, "B granted A's mark")
        p.disconnect()                // ... and the reply is lost with the connection
        p[.b].holdPersists = false
        p.completePersists(.b)
        p.releaseStoreWrites(.a)      // still landing when the connection comes back
        p.connect()
        XCTAssertNotNil(p[.a].granted[ar])
        p.feed(.a, .operationFinished(ar, unwritten: []))
        p.settle()
        XCTAssertNotNil(p[.a].granted[aw], "A's mark went again and was granted")
        if p[.a].granted[aw] != nil { p.apply(.a, aw) }
        p.feed(.a, .leaveRequested)
        p.settle()
        XCTAssertEqual(p.core(.a).status.mosCount, 0)
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.core(.b).status.moosCount, 0, "B can serve everything alone once A has left")
        XCTAssertEqual(p.violations, [])
    }

    func testAReleaseLostWithTheConnectionIsSentAgain() {
        let p = Pair(a: Pair.config(.a, release: ReleasePolicy(enabled: true, coldAfterTicks: 100)))
        p.write(.a, [track(0)], .writePartial)
        p.feed(.a, .tick(100))
        p.feed(.a, .tick(200))  // cold now: released, the message on the wire
        XCTAssertEqual(p.state(.a, track(0)).token, .none)
        XCTAssertEqual(p.count(.a, "send release"), 1)
        p.disconnect()          // ... and lost
        XCTAssertEqual(p.state(.b, track(0)).token, .moos, "without the release B would pull this for good")
        p.connect()
        XCTAssertEqual(p.count(.a, "send release"), 2, "re-sent after the reconnect")
        XCTAssertEqual(p.state(.b, track(0)).token, .none)
        XCTAssertEqual(p.violations, [])
    }
}
