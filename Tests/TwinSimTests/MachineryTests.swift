// TwinSimTests/MachineryTests.swift: the simulator's own parts behave as the checks assume.
// Owns: tests of the PRNG, event queue, network, store durability model and history checker, without the core.
// Must never: depend on protocol behaviour; these must hold whatever MirrorCore does.

import MirrorCore
import Testing
@testable import TwinSim

@Suite struct RandomAndQueue {
    @Test func sameSeedSameStreamDifferentSeedDifferentStream() {
        var a = SimRandom(seed: 7), b = SimRandom(seed: 7), c = SimRandom(seed: 8)
        let xa = (0..<16).map { _ in a.next() }, xb = (0..<16).map { _ in b.next() }, xc = (0..<16).map { _ in c.next() }
        #expect(xa == xb)
        #expect(xa != xc)
    }

    @Test func rangesStayInsideTheirBounds() {
        var r = SimRandom(seed: 1)
        for _ in 0..<1_000 {
            let x = r.int(3...5)
            #expect((3...5).contains(x))
        }
        let never = r.chance(0)
        let always = r.chance(1)
        #expect(!never)
        #expect(always)
    }

    @Test func queuePopsByTimeThenByScheduleOrder() {
        var q = EventQueue<String>()
        q.schedule(atUs: 20, "late")
        q.schedule(atUs: 10, "first at 10")
        q.schedule(atUs: 10, "second at 10")
        q.schedule(atUs: 5, "early")
        var order: [String] = []
        while let e = q.pop() { order.append(e.payload) }
        #expect(order == ["early", "first at 10", "second at 10", "late"])
        #expect(q.nowUs == 20)
    }
}

@Suite struct NetworkModel {
    @Test func deliveryIsFifoPerDirectionDespiteJitter() {
        var net = SimNetwork(latencyMinUs: 100, latencyJitterUs: 50_000)
        var r = SimRandom(seed: 3)
        _ = net.connect(nowUs: 0)
        var last: SimTimeUs = 0
        for t in stride(from: UInt64(0), to: 10_000, by: 10) {
            let at = net.send(from: 0, nowUs: t, random: &r)!
            #expect(at >= last)
            #expect(at >= t + 100)
            last = at
        }
    }

    @Test func messagesOfAnOldEpochAreLost() {
        var net = SimNetwork(latencyMinUs: 100, latencyJitterUs: 0)
        var r = SimRandom(seed: 3)
        let first = net.connect(nowUs: 0)
        _ = net.send(from: 1, nowUs: 0, random: &r)
        net.disconnect(nowUs: 10, partitionUntilUs: 1_000)
        #expect(!net.canReconnect(nowUs: 500))
        #expect(net.send(from: 1, nowUs: 20, random: &r) == nil)
        #expect(net.canReconnect(nowUs: 1_000))
        let second = net.connect(nowUs: 1_000)
        #expect(second != first)
        let oldDelivered = net.deliverable(epoch: first)
        let newDelivered = net.deliverable(epoch: second)
        #expect(!oldDelivered)
        #expect(newDelivered)
    }
}

@Suite struct StoreDurability {
    var layout: SimLayout {
        var c = SwarmConfig.derive(seed: 0)
        c.fileCount = 1; c.tracksPerFile = 2; c.slotsPerTrack = 2; c.directoryCount = 1; c.spareInodesPerNode = 1
        return SimLayout(config: c)
    }
    func data(_ counter: UInt64, _ stamp: WriteStamp) -> LocationData {
        LocationData(version: Version(counter: counter, node: NodeID(1)), slots: [stamp, stamp])
    }

    @Test func aProcessKillKeepsEverythingWritten() {
        var s = SimStore(layout: layout, writebackUs: 1_000_000)
        var r = SimRandom(seed: 1)
        s.issueWrite(token: 1, location: 2, data(1, 11), sync: false, nowUs: 0)
        s.issuePersist(token: 2, PersistBatch(entries: [PersistEntry(.track(2, 0), .moos)], clockReservation: 9))
        let rolledBack = s.crash(.processKill, nowUs: 5, random: &r)
        #expect(rolledBack.isEmpty)
        #expect(s.visible[2] == data(1, 11))
        #expect(s.persisted.states[.track(2, 0)] == .moos)
        #expect(s.persisted.clockReservation == 9)
    }

    @Test func aPowerLossKeepsCompletedSyncWritesAndPersistsButMayDropTheRest() {
        var droppedSomething = false
        for seed in 0..<64 as Range<UInt64> {
            var s = SimStore(layout: layout, writebackUs: 1_000_000)
            var r = SimRandom(seed: seed)
            s.issueWrite(token: 1, location: 2, data(1, 11), sync: true, nowUs: 0)
            s.completeWrite(token: 1)
            s.issuePersist(token: 2, PersistBatch(entries: [PersistEntry(.track(2, 0), .moos)], clockReservation: nil))
            s.completePersist(upTo: 2, ids: { _ in nil })
            s.issueWrite(token: 3, location: 3, data(2, 22), sync: false, nowUs: 1, clientOp: 5)
            s.issuePersist(token: 4, PersistBatch(entries: [PersistEntry(.track(2, 1), .held)], clockReservation: nil))
            let rolledBack = s.crash(.powerLoss, nowUs: 10, random: &r)
            #expect(s.visible[2] == data(1, 11))
            #expect(s.persisted.states[.track(2, 0)] == .moos)
            if s.visible[3] != data(2, 22) {
                droppedSomething = true
                #expect(rolledBack == [5])
                #expect(s.visible[3] == .initial(slots: 2))
            }
        }
        #expect(droppedSomething, "some seed should drop the unsynced write")
    }

    @Test func writesOlderThanTheWritebackDelaySurviveAPowerLoss() {
        var s = SimStore(layout: layout, writebackUs: 100)
        var r = SimRandom(seed: 1)
        s.issueWrite(token: 1, location: 2, data(1, 11), sync: false, nowUs: 0)
        _ = s.crash(.powerLoss, nowUs: 100, random: &r)
        #expect(s.visible[2] == data(1, 11))
    }

    @Test func aBatchThatDropsTheSupersetFirstHardensTheLocationsData() {
        for seed in 0..<16 as Range<UInt64> {
            var s = SimStore(layout: layout, writebackUs: 1_000_000)
            var r = SimRandom(seed: seed)
            s.issueWrite(token: 1, location: 2, data(1, 11), sync: false, nowUs: 0, clientOp: 1)
            s.issuePersist(token: 2, PersistBatch(entries: [PersistEntry(.track(2, 0), .none)], clockReservation: nil,
                                                  hardenFirst: [.track(2, 0)]))
            s.completePersist(upTo: 2, ids: { $0 == .track(2, 0) ? 2 : nil })
            _ = s.crash(.powerLoss, nowUs: 10, random: &r)
            #expect(s.visible[2] == data(1, 11), "seed \(seed): the batch is durable, so the data it covers must be")
        }
    }

    @Test func payloadRoundTripsThroughBytes() {
        let d = LocationData(version: Version(counter: 3, node: NodeID(2)), slots: [1, 1 << 40, 0])
        #expect(LocationData(payload: d.payload, version: d.version, slots: 3) == d)
        #expect(LocationData(payload: d.payload, version: d.version, slots: 2) == nil)
    }
}

@Suite struct CheckerCanFail {
    let k = RegisterKey(location: 0, slot: 0)

    func history(_ build: (inout History) -> Void) -> History {
        var h = History()
        build(&h)
        return h
    }

    @Test func aReadAfterACompletedWriteMustSeeIt() {
        let h = history { h in
            let w = h.invoke(node: 0, label: "w", atUs: 0, writes: [k: 1], readKeys: [])
            h.complete(w, atUs: 10, outcome: .ok)
            let r = h.invoke(node: 1, label: "r", atUs: 20, writes: [:], readKeys: [k])
            h.complete(r, atUs: 30, outcome: .ok, reads: [k: 0])
        }
        let v = HistoryChecker.check(h)
        #expect(v.map(\.kind) == [.staleRead])
    }

    @Test func aReadConcurrentWithAWriteMaySeeEitherValue() {
        for seen in [WriteStamp(0), 1] {
            let h = history { h in
                let w = h.invoke(node: 0, label: "w", atUs: 0, writes: [k: 1], readKeys: [])
                let r = h.invoke(node: 1, label: "r", atUs: 5, writes: [:], readKeys: [k])
                h.complete(r, atUs: 8, outcome: .ok, reads: [k: seen])
                h.complete(w, atUs: 10, outcome: .ok)
            }
            #expect(HistoryChecker.check(h).isEmpty)
        }
    }

    @Test func anOlderValueIsStaleOnceANewerWriteCompletedBeforeTheRead() {
        let h = history { h in
            let w1 = h.invoke(node: 0, label: "w1", atUs: 0, writes: [k: 1], readKeys: [])
            h.complete(w1, atUs: 10, outcome: .ok)
            let w2 = h.invoke(node: 0, label: "w2", atUs: 20, writes: [k: 2], readKeys: [])
            h.complete(w2, atUs: 30, outcome: .ok)
            let r = h.invoke(node: 1, label: "r", atUs: 40, writes: [:], readKeys: [k])
            h.complete(r, atUs: 50, outcome: .ok, reads: [k: 1])
        }
        #expect(HistoryChecker.check(h).map(\.kind) == [.staleRead])
    }

    @Test func aValueFromTheFutureOrFromNowhereIsImpossible() {
        let h = history { h in
            let r = h.invoke(node: 1, label: "r", atUs: 0, writes: [:], readKeys: [k])
            h.complete(r, atUs: 5, outcome: .ok, reads: [k: 1])
            let w = h.invoke(node: 0, label: "w", atUs: 10, writes: [k: 1], readKeys: [])
            h.complete(w, atUs: 20, outcome: .ok)
            let r2 = h.invoke(node: 1, label: "r2", atUs: 30, writes: [:], readKeys: [k])
            h.complete(r2, atUs: 35, outcome: .ok, reads: [k: 99])
        }
        #expect(HistoryChecker.check(h).map(\.kind) == [.impossibleRead, .impossibleRead])
    }

    @Test func finalContentsOlderThanACompletedWriteAreALostWrite() {
        let h = history { h in
            let w = h.invoke(node: 0, label: "w", atUs: 0, writes: [k: 1], readKeys: [])
            h.complete(w, atUs: 10, outcome: .ok)
        }
        #expect(HistoryChecker.check(h, finalValues: [[k: 0]], finalTimeUs: 100).map(\.kind) == [.lostWrite])
        #expect(HistoryChecker.check(h, finalValues: [[k: 1]], finalTimeUs: 100).isEmpty)
    }

    @Test func aWriteWhoseOutcomeIsUnknownMayOrMayNotHaveHappened() {
        for final in [WriteStamp(0), 1] {
            let h = history { h in
                let w = h.invoke(node: 0, label: "w", atUs: 0, writes: [k: 1], readKeys: [])
                h.complete(w, atUs: 10, outcome: .lostInCrash)
            }
            #expect(HistoryChecker.check(h, finalValues: [[k: final]], finalTimeUs: 100).isEmpty)
        }
    }
}
