// MirrorCoreTests — one scripted scenario per DESIGN.md section 3 hazard (1-9).
// Owns: each hazard as a readable behaviour, and where a ProtocolRules switch exists, the same script with the rule
// off showing the bad outcome (so each test is known to be able to fail).
// Must never: pass vacuously; every test asserts an observable difference.

import MirrorCore
import XCTest

final class HazardTests: XCTestCase {
    let L = Location.track(7, 0)
    let slow: Tick = 1_000_000  // a push delay that keeps the background copy out of a script

    func rules(_ change: (inout ProtocolRules) -> Void) -> ProtocolRules {
        var r = ProtocolRules.safe
        change(&r)
        return r
    }

    // MARK: 1. Exclusive write permission

    func testConcurrentMarksAreOrderedByTieBreakAndTheLoserRetries() {
        let p = Pair()
        let a = p.request(.a, [AccessItem(L, .writeFull)])
        let b = p.request(.b, [AccessItem(L, .writeFull)])
        p.settle()
        XCTAssertNotNil(p[.a].granted[a], "node 1 wins the tie")
        XCTAssertNil(p[.b].granted[b], "node 2 waits")
        XCTAssertEqual(p.state(.b, L).token, .moos)
        p.apply(.a, a)
        p.settle()
        XCTAssertNotNil(p[.b].granted[b], "the loser retried and got the token once the winner finished")
        let last = p.apply(.b, b)
        p.settle()
        XCTAssertEqual(p.read(.a, L), last)
        XCTAssertEqual(p.violations, [])
    }

    func testWithoutTieBreakBothNodesWouldHoldTheToken() {
        let r = rules { $0.tieBreakConcurrentMarks = false }
        let p = Pair(a: Pair.config(.a, rules: r), b: Pair.config(.b, rules: r))
        p.request(.a, [AccessItem(L, .writeFull)])
        p.request(.b, [AccessItem(L, .writeFull)])
        p.settle()
        XCTAssertTrue(p.violations.contains { $0.contains("both hold MOS") }, "\(p.violations)")
    }

    // MARK: 2. Giving the token away when serving a pull

    func testANodeAnsweringAPullStopsWritingWithoutANewMark() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow))
        let v1 = p.write(.a, [L])
        XCTAssertEqual(p.read(.b, L), v1)
        XCTAssertEqual(p.state(.a, L).token, .none, "answering gave MOS up")
        let v2 = p.write(.a, [L])
        XCTAssertEqual(p.count(.a, "send mark"), 2, "the second write had to mark again")
        XCTAssertEqual(p.read(.b, L), v2)
        XCTAssertEqual(p.violations, [])
    }

    func testKeepingTheTokenAfterAnsweringLetsThePeerReadStaleData() {
        let r = rules { $0.giveUpTokenOnPull = false }
        let p = Pair(a: Pair.config(.a, rules: r, pushDelayTicks: slow))
        let v1 = p.write(.a, [L])
        XCTAssertEqual(p.read(.b, L), v1)
        let v2 = p.write(.a, [L])
        XCTAssertNotEqual(p.read(.b, L), v2, "B misses A's acknowledged write")
    }

    func testALateAckDoesNotClearTheNewerOutOfSyncVersion() {
        let p = Pair()
        p.write(.a, [L])                     // MOS, pushed, acked
        p.holdWire[Side.a.rawValue] = true   // B's acks towards A are held
        let id1 = p.request(.a, [AccessItem(L, .writeFull)]); p.settle(); p.apply(.a, id1); p.settle()
        let id2 = p.request(.a, [AccessItem(L, .writeFull)]); p.settle(); let v2 = p.apply(.a, id2); p.settle()
        p.holdWire[Side.a.rawValue] = false
        p.deliverOne(to: .a)                 // the ack for the first version
        XCTAssertTrue(p.state(.a, L).outOfSync, "the newer write is still unacknowledged")
        p.settle()
        XCTAssertFalse(p.state(.a, L).outOfSync)
        XCTAssertEqual(p[.b].store[L]?.stamp, v2)
        XCTAssertGreaterThan(p.core(.a).status.counters.staleAcksIgnored, 0)
        XCTAssertEqual(p.violations, [])
    }

    func testBelievingAStaleAckLosesTheNewerWrite() {
        let r = rules { $0.ignoreStaleAcks = false }
        let p = Pair(a: Pair.config(.a, rules: r))
        p.write(.a, [L])
        p.holdWire[Side.a.rawValue] = true
        let id1 = p.request(.a, [AccessItem(L, .writeFull)]); p.settle(); p.apply(.a, id1); p.settle()
        let id2 = p.request(.a, [AccessItem(L, .writeFull)]); p.settle(); let v2 = p.apply(.a, id2); p.settle()
        p.holdWire[Side.a.rawValue] = false
        p.settle()
        XCTAssertNotEqual(p.read(.b, L), v2, "B reads the older version")
    }

    // MARK: 3. Lost answers: "in sync" only with knowledge

    func testAfterACrashPullsForTheRecoveredSupersetAreAnsweredWithData() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow))
        let v = p.write(.a, [L])
        p.crash(.a)
        XCTAssertEqual(p.state(.a, L), LocationState(token: .moos, outOfSync: true),
                       "OOS := persisted superset; MOS is never trusted after a crash, and the copy is verified first")
        p.connect()
        XCTAssertEqual(p.read(.b, L), v)
        XCTAssertEqual(p.count(.a, "send answer-data"), 1)
        XCTAssertEqual(p.violations, [])
    }

    func testAnsweringInSyncWithoutKnowledgeServesStaleData() {
        let r = rules { $0.answerInSyncOnlyIfKnown = false }
        let p = Pair(a: Pair.config(.a, rules: r, pushDelayTicks: slow))
        let v = p.write(.a, [L])
        p.crash(.a)
        p.connect()
        XCTAssertNotEqual(p.read(.b, L), v)
    }

    // MARK: 4. Stale pushes

    /// A restarted node compares its recovered superset with the peer: the peer's older copy arrives and must not
    /// overwrite the newer write this node had acknowledged before the crash.
    func staleArrivalScript(_ r: ProtocolRules) -> (Pair, UInt64) {
        let p = Pair(a: Pair.config(.a, rules: r, pushDelayTicks: slow))
        let v1 = p.write(.a, [L])
        p.crash(.a)
        p.connect()
        p.tick(slow)
        return (p, v1)
    }

    func testAnOlderCopyNeverOverwritesANewerWrite() {
        let (p, v1) = staleArrivalScript(.safe)
        XCTAssertGreaterThan(p.core(.b).status.counters.pullAnswersData, 0, "B's older copy did travel to A")
        XCTAssertEqual(p.read(.a, L), v1)
        XCTAssertEqual(p.read(.b, L), v1)
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.violations, [])
    }

    func testApplyingStaleCopiesLosesTheNewerWrite() {
        let (p, v1) = staleArrivalScript(rules { $0.ignoreStalePushes = false })
        XCTAssertNotEqual(p.read(.a, L), v1)
    }

    /// After a takeover, the old token holder's unsynced copy is older than the new writer's: it is resolved by the
    /// background comparison without ever replacing the newer write.
    func testATakeoverLeftoverIsResolvedInFavourOfTheNewerWrite() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow), b: Pair.config(.b, pushDelayTicks: slow))
        p.write(.a, [L])
        let v3 = p.write(.b, [L], .writeFull)
        p.tick(slow)
        XCTAssertEqual(p.read(.b, L), v3)
        XCTAssertEqual(p.read(.a, L), v3)
        XCTAssertEqual(p.core(.a).status.oosCount + p.core(.b).status.oosCount, 0)
        XCTAssertEqual(p.violations, [])
    }

    // MARK: 5. Multi-location operations

    func testTwoNodesContendingForTheSameSetBothComplete() {
        let p = Pair()
        let set = [Location.inode(3), .track(3, 0), .track(3, 1), .inode(9)]
        let a = p.request(.a, set.map { AccessItem($0, .writePartial) })
        let b = p.request(.b, set.reversed().map { AccessItem($0, .writePartial) })
        p.settle()
        XCTAssertNotNil(p[.a].granted[a])
        XCTAssertNil(p[.b].granted[b])
        p.apply(.a, a)
        p.settle()
        XCTAssertNotNil(p[.b].granted[b], "no deadlock: B acquires the whole set after A")
        let vb = p.apply(.b, b)
        p.settle()
        for l in set { XCTAssertEqual(p.read(.a, l), vb) }
        XCTAssertEqual(p.violations, [])
    }

    func testANodeWaitingOnThePeerStillAnswersIt() {
        let p = Pair()
        let L1 = Location.track(1, 0), L2 = Location.track(2, 0)
        let v2 = p.write(.b, [L2])                          // B holds L2
        let op1 = p.request(.a, [AccessItem(L1, .writeFull)]); p.settle()
        XCTAssertNotNil(p[.a].granted[op1])                 // A is busy writing L1
        let op2 = p.request(.b, [AccessItem(L1, .writeFull)]); p.settle()
        XCTAssertNil(p[.b].granted[op2], "B waits for A's L1")
        XCTAssertEqual(p.read(.a, L2), v2, "B answered A's pull while its own operation waited")
        p.apply(.a, op1); p.settle()
        XCTAssertNotNil(p[.b].granted[op2])
        XCTAssertEqual(p.violations, [])
    }

    // MARK: 6. Full-track overwrite

    func testAFullTrackOverwriteTakesTheTokenWithoutPullingData() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow))
        p.write(.a, [L])
        let writesBefore = p[.b].actionLog.filter { $0.hasPrefix("write") }.count
        let id = p.request(.b, [AccessItem(L, .writeFull)])
        p.settle()
        XCTAssertNotNil(p[.b].granted[id])
        XCTAssertEqual(p.count(.b, "send pull"), 0)
        XCTAssertEqual(p[.b].actionLog.filter { $0.hasPrefix("write") }.count, writesBefore, "no old data landed")
        let v = p.apply(.b, id)
        p.settle()
        XCTAssertEqual(p.read(.a, L), v)
        XCTAssertEqual(p.violations, [])
    }

    // MARK: 7. Crash persistence

    func testAMarkIsAcknowledgedOnlyOnceMOOSIsDurable() {
        let p = Pair()
        p[.b].holdPersists = true
        let id = p.request(.a, [AccessItem(L, .writeFull)])
        p.settle()
        XCTAssertNil(p[.a].granted[id], "B has not persisted MOOS yet")
        p[.b].holdPersists = false
        p.completePersists(.b)
        p.settle()
        XCTAssertNotNil(p[.a].granted[id])
        XCTAssertEqual(p.violations, [])
    }

    func testAcknowledgingBeforeMOOSIsDurableLosesItInACrash() {
        let r = rules { $0.persistMOOSBeforeAck = false }
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow), b: Pair.config(.b, rules: r))
        p.checkCrossNode = false
        p[.b].holdPersists = true
        let v = p.write(.a, [L])
        p.crash(.b)
        p[.b].holdPersists = false
        p.connect()
        XCTAssertNotEqual(p.read(.b, L), v, "B forgot MOOS and served its stale copy")
    }

    func testTheSupersetIsDurableBeforeAWriteUnderANewToken() {
        let p = Pair()
        p[.a].holdPersists = true
        let id = p.request(.a, [AccessItem(L, .writeFull)])
        p.settle()
        XCTAssertNil(p[.a].granted[id], "the mark was acknowledged but A's superset is not durable")
        p[.a].holdPersists = false
        p.completePersists(.a)
        p.settle()
        XCTAssertNotNil(p[.a].granted[id])
        XCTAssertEqual(p[.a].durable[L], .held)
    }

    func testWritingBeforeTheSupersetIsDurableForgetsTheWriteInACrash() {
        let r = rules { $0.persistSupersetBeforeWrite = false }
        let p = Pair(a: Pair.config(.a, rules: r, pushDelayTicks: slow))
        p.write(.a, [.track(99, 0)])  // the clock reservation is durable; only the superset is missing below
        p[.a].holdPersists = true
        let v = p.write(.a, [L])
        p.crash(.a)
        p.connect()
        XCTAssertNotEqual(p.read(.b, L), v, "A answered in sync for a write it had acknowledged")
    }

    // MARK: 8. Kernel caches

    func testCachesAreInvalidatedBeforeTheMarkIsAcknowledged() {
        let p = Pair()
        p.write(.a, [L])
        let log = p[.b].actionLog
        guard let inv = log.firstIndex(of: "invalidate \(L)"), let ack = log.firstIndex(of: "send markReply") else {
            return XCTFail("B must invalidate and reply: \(log)")
        }
        XCTAssertLessThan(inv, ack)
    }

    func testWithoutTheRuleNoInvalidationHappens() {
        let r = rules { $0.invalidateBeforeAck = false }
        let p = Pair(b: Pair.config(.b, rules: r))
        p.write(.a, [L])
        XCTAssertFalse(p[.b].actionLog.contains("invalidate \(L)"))
    }

    // MARK: 9. Prediction, prefetch, release

    func testSequentialWritesPayAMarkPerWindowNotPerTrack() {
        let p = Pair(prediction: StandardPrediction(initialWindowTracks: 4, maxWindowTracks: 64))
        for t in 0..<128 as Range<UInt64> { p.write(.a, [.track(5, t)]) }
        let marks = p.count(.a, "send mark")
        XCTAssertLessThanOrEqual(marks, 6, "window grows 4, 8, 16, 32, 64, 64")
        XCTAssertGreaterThan(marks, 1)
        XCTAssertEqual(p.violations, [])
    }

    func testNoPredictionPaysAMarkPerTrack() {
        let p = Pair(prediction: NoPrediction())
        for t in 0..<16 as Range<UInt64> { p.write(.a, [.track(5, t)]) }
        XCTAssertEqual(p.count(.a, "send mark"), 16)
    }

    func testASmallFileAndTheNextInodesAreMarkedWhole() {
        let p = Pair(prediction: StandardPrediction(smallFileTracks: 8))
        p.write(.a, [.inode(40), .track(40, 0)], hint: PredictionHint(fileTrackCount: 4, nextInodes: [41, 42]))
        for t in 1..<4 as Range<UInt64> { p.write(.a, [.track(40, t)]) }
        p.write(.a, [.inode(41)])
        p.write(.a, [.inode(42)])
        XCTAssertEqual(p.count(.a, "send mark"), 1)
    }

    func testAPullAnswerCarriesNearbyOutOfSyncTracks() {
        let p = Pair(a: Pair.config(.a, pushDelayTicks: slow, prefetchTracks: 4))
        var v: [UInt64] = []
        for t in 0..<8 as Range<UInt64> { v.append(p.write(.a, [.track(6, t)])) }
        for t in 0..<5 { XCTAssertEqual(p.read(.b, .track(6, UInt64(t))), v[t]) }
        XCTAssertEqual(p.count(.b, "send pull"), 1, "tracks 1-4 came with the answer for track 0")
        XCTAssertEqual(p.read(.b, .track(6, 5)), v[5])
        XCTAssertEqual(p.count(.b, "send pull"), 2)
        XCTAssertEqual(p.violations, [])
    }

    func testColdInSyncTokensAreReleasedSoPeerReadsBecomeLocal() {
        let rel = ReleasePolicy(enabled: true, coldAfterTicks: 100)
        let p = Pair(a: Pair.config(.a, release: rel))
        let v = p.write(.a, [L])
        XCTAssertEqual(p.state(.b, L).token, .moos)
        p.tick(60); p.tick(120); p.tick(180)
        XCTAssertEqual(p.state(.a, L).token, .none)
        XCTAssertEqual(p.state(.b, L).token, .none)
        XCTAssertEqual(p.read(.b, L), v)
        XCTAssertEqual(p.count(.b, "send pull"), 0)
        XCTAssertEqual(p.violations, [])
    }
}
