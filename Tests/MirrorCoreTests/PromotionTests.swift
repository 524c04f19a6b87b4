// MirrorCoreTests — promotion (the survivor serves alone) and demotion (the old peer rejoins adopting the survivor's
// copy), Docs/PROTOCOL.md section 13.
// Owns: scripted two-core runs of promote, sole service, restart while sole, and the adopting rejoin, with the
// harness's cross-node invariants wherever they apply (not while both sides live apart).
// Must never: reach into the core's internals; everything is observed through actions, states, stores and status.

import MirrorCore
import XCTest

final class PromotionTests: XCTestCase {
    let file: UInt64 = 5
    var L: Location { .track(file, 0) }
    var M: Location { .track(file, 1) }
    var N: Location { .track(file, 2) }
    var R: Location { .inode(file) }

    /// A and B share L, M, N (written by B, replicated), then the link is cut. Cross-node checks are off from here:
    /// both sides will hold tokens the other does not know about.
    func partitionedPair() -> Pair {
        let p = Pair()
        for l in [L, M, N] { p.write(.b, [l], .writeFull) }
        p.tick(1)
        XCTAssertEqual(p.core(.b).status.oosCount, 0, "replicated before the cut")
        XCTAssertEqual(p.state(.a, L).token, .moos, "B holds the tokens, A must pull")
        p.checkCrossNode = false
        p.disconnect()
        return p
    }

    func sends(_ p: Pair, _ s: Side) -> Int { p[s].actionLog.filter { $0.hasPrefix("send") }.count }

    func testPromotionIsIgnoredWhileConnected() {
        let p = Pair()
        p.write(.b, [L], .writeFull)
        let actions = p.core(.a).step(.promoted)
        XCTAssertTrue(actions.isEmpty, "no actions: the peer still holds tokens the promotion would clear")
        XCTAssertFalse(p.core(.a).status.sole)
        XCTAssertEqual(p.state(.a, L).token, .moos)
        XCTAssertEqual(p.violations, [])
    }

    func testPromotionLossesListWhatThePeerMayHold() {
        let p = partitionedPair()
        let all = p.core(.a).promotionLosses(limit: 10)
        XCTAssertEqual(all.locations, [L, M, N])
        XCTAssertFalse(all.truncated)
        XCTAssertFalse(all.joiningIncomplete)
        let two = p.core(.a).promotionLosses(limit: 2)
        XCTAssertEqual(two.locations, [L, M])
        XCTAssertTrue(two.truncated)
        XCTAssertEqual(p.core(.b).promotionLosses(limit: 10).locations, [], "B holds every token: it loses nothing")
        let joining = MirrorNode(config: Pair.config(.a), prediction: NoPrediction(),
                                 recovered: RecoveredState(entries: [], clockReservation: 0, incarnation: 0, joining: true))
        XCTAssertTrue(joining.promotionLosses(limit: 10).joiningIncomplete, "unknown locations may be behind as well")
    }

    func testAPromotedNodeServesWaitingAndNewOperationsWithoutMessages() {
        let p = partitionedPair()
        let read = p.request(.a, [AccessItem(L, .read)])
        let write = p.request(.a, [AccessItem(M, .writePartial)])
        p.settle()
        XCTAssertNil(p[.a].granted[read], "under MOOS without a peer: waits (and would time out)")
        XCTAssertNil(p[.a].granted[write])
        p.feed(.a, .promoted)
        p.settle()
        XCTAssertTrue(p.core(.a).status.sole)
        let batch = p[.a].batches.first { $0.sole != nil }
        XCTAssertEqual(batch?.sole, true, "the promotion is recorded with a persist batch")
        XCTAssertEqual(batch?.entries.first { $0.location == L }?.state, PersistedState.none, "L's MOOS is lowered")
        XCTAssertTrue(p[.a].sole, "and that batch is durable")
        XCTAssertNotNil(p[.a].granted[read], "the waiting read is served from the local copy")
        XCTAssertNotNil(p[.a].granted[write], "the waiting write took the token as if B had granted it")
        XCTAssertEqual(p.state(.a, M).token, .mos)
        p.feed(.a, .operationFinished(read, unwritten: []))
        p.apply(.a, write)
        p.settle()
        XCTAssertEqual(p.core(.a).status.moosCount, 0)
        XCTAssertEqual(p.state(.a, M), LocationState(token: .mos, outOfSync: true), "kept for the next peer")

        let before = sends(p, .a)
        p.write(.a, [N], .writePartial)
        XCTAssertEqual(sends(p, .a), before, "a sole node's write needs no message")
        XCTAssertEqual(p.state(.a, N), LocationState(token: .mos, outOfSync: true))
        XCTAssertEqual(p[.a].durable[N], .held, "persisted like a writer's backlog")
        XCTAssertEqual(p.read(.a, L), p[.a].store[L]?.stamp)
        p.feed(.a, .flushRequested(FlushID(9), [N]))
        XCTAssertTrue(p[.a].flushed.contains(9), "a flush completes at once: durability is local only while sole")
        XCTAssertEqual(p.core(.a).checkInvariants(), [])
    }

    func testASoleWriteWaitsForItsSupersetBitToBeDurable() {
        let p = partitionedPair()
        p.feed(.a, .promoted)
        p.settle()
        p[.a].holdPersists = true
        let id = p.request(.a, [AccessItem(N, .writePartial)])
        p.settle()
        XCTAssertNil(p[.a].granted[id], "the `held` bit must be durable before the write (hazard 7)")
        XCTAssertTrue(p[.a].unpersisted.contains { $0.1.entries.contains(PersistEntry(N, .held)) }, "issued, not durable")
        p[.a].holdPersists = false
        p.completePersists(.a)
        p.settle()
        XCTAssertNotNil(p[.a].granted[id])
    }

    func testPromotionGrantsAreHeldUntilTheSoleBatchIsDurable() {
        let p = partitionedPair()
        let read = p.request(.a, [AccessItem(L, .read)])
        p[.a].holdPersists = true
        p.feed(.a, .promoted)
        p.settle()
        XCTAssertNil(p[.a].granted[read], "a restart before the batch is durable would come back with B's MOOS")
        p[.a].holdPersists = false
        p.completePersists(.a)
        p.settle()
        XCTAssertNotNil(p[.a].granted[read])
    }

    func testARestartWhileSoleKeepsServingAloneAndKeepsItsBacklog() {
        let p = partitionedPair()
        p.feed(.a, .promoted)
        p.settle()
        let mine = p.write(.a, [M], .writePartial)
        p.crash(.a)
        XCTAssertTrue(p[.a].sole)
        XCTAssertTrue(p.core(.a).status.sole)
        XCTAssertEqual(p.state(.a, M), LocationState(token: .mos, outOfSync: true),
                       "OOS under an explicit MOS: nobody else can hold the token, and no comparison is needed")
        XCTAssertFalse(p.core(.a).comparesBeforeServing(M))
        XCTAssertEqual(p.state(.a, L).token, .none, "B's MOOS stays given up")
        let before = sends(p, .a)
        XCTAssertEqual(p.read(.a, M), mine)
        p.write(.a, [L], .writePartial)
        XCTAssertEqual(sends(p, .a), before, "still no messages after the restart")
        XCTAssertEqual(p.core(.a).checkInvariants(), [])
    }

    func testAPromotionEndsAJoin() {
        let a = MirrorNode(config: Pair.config(.a), prediction: NoPrediction(),
                           recovered: RecoveredState(entries: [], clockReservation: 0, incarnation: 0, joining: true))
        let actions = a.step(.promoted)
        let batches = actions.compactMap { if case .persist(_, let b) = $0 { return b } else { return nil } }
        XCTAssertEqual(batches.count, 1)
        XCTAssertEqual(batches.first?.sole, true)
        XCTAssertEqual(batches.first?.joinCompleted, true, "the shell records the end of the join with it")
        XCTAssertFalse(a.status.joining)
        XCTAssertEqual(a.state(of: .track(99, 3)).token, .none, "unknown locations read as none")
    }

    func testThePromotionMakesItsOwnHeldCopiesDurableFirst() {
        let p = Pair()
        p.write(.a, [L], .writePartial)
        p.tick(1)
        XCTAssertEqual(p.state(.a, L), LocationState(token: .mos, outOfSync: false), "acknowledged, still held")
        p.checkCrossNode = false
        p.disconnect()
        p.feed(.a, .promoted)
        let batch = p[.a].batches.first { $0.sole == true }
        XCTAssertEqual(batch?.hardenFirst.contains(L), true,
                       "B's copy may be the only durable one, and a demoted B no longer offers it")
    }

    // MARK: demotion and reconnection

    /// Partition; B writes L and M many times (its versions climb above A's), A is promoted and writes L once, B is
    /// demoted (mirror state wiped, joining and adopting), and the link comes back.
    func promotedAndDemoted(connect: Bool = true) -> (Pair, mine: UInt64, stale: [Location: Version]) {
        let p = partitionedPair()
        for _ in 0..<20 { p.write(.b, [L, M], .writeFull) }   // never reach A: B's lost writes
        p.feed(.a, .promoted)
        p.settle()
        let mine = p.write(.a, [L], .writePartial)
        let stale = [L: p[.b].store[L]!.version, M: p[.b].store[M]!.version]
        XCTAssertGreaterThan(stale[L]!, p[.a].store[L]!.version, "B's stale copy carries the higher version")
        XCTAssertGreaterThan(stale[M]!, p[.a].store[M]!.version)
        p.demote(.b)
        XCTAssertTrue(p.core(.b).status.adopting)
        XCTAssertTrue(p.core(.b).status.joining)
        p.checkCrossNode = true  // B reads MOOS everywhere now: the pair invariants hold again
        if connect { p.connect() }
        return (p, mine, stale)
    }

    func testAPromotedNodeReconnectingToAnAdoptingPeerConvergesToItsData() {
        let (p, mine, _) = promotedAndDemoted()
        XCTAssertFalse(p.core(.a).status.sole, "sole ends at the first connection")
        XCTAssertFalse(p[.a].sole, "recorded by a durable batch")
        XCTAssertEqual(p[.a].batches.last { $0.sole != nil }?.sole, false)
        let aStore = p[.a].store
        // B's walk reads everything, then completes the join.
        for l in [R, L, M, N] { XCTAssertNotNil(p.read(.b, l), "B reads \(l)") }
        p.feed(.b, .joinCompleted)
        p.settle()
        XCTAssertFalse(p.core(.b).status.joining)
        XCTAssertFalse(p.core(.b).status.adopting)
        XCTAssertFalse(p[.b].adopting, "ended with the join, durably")
        p.tick(10)
        XCTAssertEqual(p[.b].store[L]?.stamp, mine, "A's write survives although B's stale version was higher")
        for l in [L, M, N] {
            XCTAssertEqual(p[.b].store[l]?.stamp, p[.a].store[l]?.stamp, "\(l) converged")
            XCTAssertEqual(p[.b].store[l]?.version, p[.a].store[l]?.version)
            XCTAssertEqual(p[.a].store[l]?.stamp, aStore[l]?.stamp, "A's copy of \(l) was never overwritten")
        }
        XCTAssertEqual(p.core(.a).status.oosCount, 0, "A's backlog drained to B")
        XCTAssertEqual(p.violations, [])
        // Ordinary mirroring from here on, both ways.
        let next = p.write(.b, [M], .writePartial)
        XCTAssertEqual(p.read(.a, M), next)
        XCTAssertEqual(p.violations, [])
    }

    func testAConnectionWhileSoleIsUsedOnlyOnceTheEndOfSoleIsDurable() {
        let (p, mine, _) = promotedAndDemoted(connect: false)
        p[.a].holdPersists = true
        let before = sends(p, .a)
        p.connect()
        XCTAssertFalse(p.core(.a).status.sole)
        XCTAssertEqual(p[.a].unpersisted.last?.1.sole, false, "the end of sole mode is being persisted")
        XCTAssertEqual(sends(p, .a), before, "nothing reaches B before it is durable: a restart still sole would trust"
                       + " copies B may by then hold newer")
        XCTAssertFalse(p.core(.a).status.connected)
        p[.a].holdPersists = false
        p.completePersists(.a)
        p.settle()
        XCTAssertTrue(p.core(.a).status.connected)
        XCTAssertGreaterThan(sends(p, .a), before)
        p.tick(5)
        XCTAssertEqual(p[.b].store[L]?.stamp, mine, "B's messages of meanwhile were kept and answered")
        XCTAssertEqual(p.core(.a).status.oosCount, 0)
        XCTAssertEqual(p.violations, [])
    }

    func testTheDemotedNodesStaleDataNeverReachThePromotedNode() {
        let (p, mine, stale) = promotedAndDemoted(connect: false)
        // A's push of L never reaches B, and A restarts: A's L comes back contested, so A compares it with B's
        // (forced pull), where B's stale copy of higher version waits.
        p.holdWire[Side.b.rawValue] = true
        p.connect()
        p.crash(.a)
        p.holdWire[Side.b.rawValue] = false
        XCTAssertTrue(p.core(.a).comparesBeforeServing(L))
        p.connect()
        p.tick(5)
        XCTAssertEqual(p[.a].store[L]?.stamp, mine, "B answered with version zero: A kept its copy")
        for l in [R, L, M, N] { _ = p.read(.b, l) }
        p.feed(.b, .joinCompleted)
        p.settle()
        p.tick(10)
        for (l, v) in stale {
            XCTAssertFalse(p[.a].actionLog.contains("write \(l) \(v)"), "B's stale \(l) was never written on A")
            XCTAssertNotEqual(p[.a].store[l]?.version, v)
        }
        XCTAssertEqual(p.violations, [])
    }

    func testAnAdoptingNodeAnswersForItsOwnStaleCopiesWithVersionZero() {
        let (p, _, _) = promotedAndDemoted()
        p.holdWire = [true, true]
        p.feed(.b, .received(.pull(Pull(locations: [M], id: 77, forceData: true))))
        p.settle()
        guard case .pullAnswer(let a)? = p.wire[Side.a.rawValue].last else { return XCTFail("no answer") }
        XCTAssertEqual(a.content, .data(Payload([]), .zero), "the peer's onlyIfNewer keeps its own copy")
        p.feed(.b, .received(.mark(Mark(id: 5, items: [MarkItem(location: N, needData: true, predicted: false,
                                                                     forceData: true)], clock: 0))))
        p.settle()
        guard case .markReply(let r)? = p.wire[Side.a.rawValue].last else { return XCTFail("no reply") }
        XCTAssertEqual(r.granted, [MarkGrant(location: N, data: Payload([]), version: .zero)], "B's own write of N")
    }

    func testAnAdoptingNodesWriteFetchesThePeersCopyFirst() {
        let (p, mine, _) = promotedAndDemoted()
        XCTAssertEqual(p[.b].store[L]?.stamp, mine, "A's backlog (L) was pushed over B's stale copy")
        let pulls = p.count(.b, "send pull")
        let id = p.request(.b, [AccessItem(M, .writeFull)])
        p.settle()
        XCTAssertGreaterThan(p.count(.b, "send pull"), pulls, "even a full overwrite compares first")
        XCTAssertEqual(p[.b].grantSnapshots[id]?[M], p[.a].store[M]?.stamp,
                       "B's stale copy was replaced by A's before the write")
        let written = p.apply(.b, id)
        p.settle()
        XCTAssertEqual(p.read(.a, M), written)
        // A restart of B now restores L from its superset bit: its newer write is trusted, never pulled over.
        p.crash(.b)
        p.connect()
        for l in [R, L, M, N] { _ = p.read(.b, l) }
        XCTAssertEqual(p.read(.b, M), written)
        XCTAssertEqual(p.read(.a, M), written)
        XCTAssertEqual(p.violations, [])
    }

    func testAnAdoptedCopyStaysTrustedAcrossARestartOfTheAdoptingNode() {
        let (p, _, _) = promotedAndDemoted()
        let theirs = p[.a].store[M]!
        XCTAssertNotNil(p.read(.b, M))
        XCTAssertEqual(p[.b].store[M]?.version, theirs.version, "adopted")
        XCTAssertEqual(p[.b].durable[M], .moos, "persisted, so that a restart does not distrust it again")
        p.crash(.b)
        XCTAssertTrue(p.core(.b).status.adopting)
        XCTAssertFalse(p.core(.b).comparesBeforeServing(M), "still trusted: A may since have lost its own copy")
        XCTAssertTrue(p.core(.b).comparesBeforeServing(N), "never adopted: still untrusted")
        p.connect()
        p.holdWire = [true, true]
        p.feed(.b, .received(.pull(Pull(locations: [M], id: 91, forceData: true))))
        p.settle()
        guard case .pullAnswer(let a)? = p.wire[Side.a.rawValue].last else { return XCTFail("no answer") }
        XCTAssertEqual(a.content, .data(Payload(stamp: theirs.stamp), theirs.version), "answered with the adopted data")
        p.holdWire = [false, false]
        p.wire = [[], []]
        p.disconnect()
        p.connect()
        for l in [R, L, M, N] { _ = p.read(.b, l) }
        p.feed(.b, .joinCompleted)
        p.settle()
        XCTAssertFalse(p.core(.b).status.adopting)
        XCTAssertNil(p[.b].durable[M].flatMap { $0 == PersistedState.none ? nil : $0 }, "lowered with the adoption's end")
        XCTAssertEqual(p.violations, [])
    }

    func testJoinCompletionWhileAdoptingWaitsForLocationsNeverCompared() {
        let (p, _, _) = promotedAndDemoted()
        // A writes N after the reconnect: B grants (explicit MOOS on a copy B never compared); A's push is held.
        let id = p.request(.a, [AccessItem(N, .writePartial)])
        p.settle()
        p.holdWire[Side.b.rawValue] = true
        let theirs = p.apply(.a, id)
        p.settle()
        XCTAssertTrue(p.core(.b).comparesBeforeServing(N))
        p.feed(.b, .joinCompleted)
        p.settle()
        XCTAssertTrue(p.core(.b).status.joining, "N would otherwise be compared by versions against a stale copy")
        XCTAssertTrue(p.core(.b).status.adopting)
        p.holdWire[Side.b.rawValue] = false
        p.settle()
        p.tick(20)
        XCTAssertFalse(p.core(.b).status.joining, "completed once N's copy landed")
        XCTAssertFalse(p[.b].joining)
        XCTAssertEqual(p.read(.b, N), theirs)
        XCTAssertEqual(p.violations, [])
    }
}
