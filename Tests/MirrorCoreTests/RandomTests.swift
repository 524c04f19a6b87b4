// MirrorCoreTests — a small seeded random walk over the pair: contending operations, disconnects, crashes with
// unpersisted bits, held persists. Not the simulator (TwinSim owns that); a fast net under the unit tests.
// Owns: a per-location single-copy check at grant time, no-deadlock while connected, and convergence after healing.
// Must never: use unseeded randomness; a failure names its seed.

import Foundation
import MirrorCore
import XCTest

struct SplitMix {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
    mutating func chance(_ percent: Int) -> Bool { below(100) < percent }
}

final class RandomTests: XCTestCase {
    /// Environment: MIRRORCORE_WALK_SEEDS="A-B" (default 1-200), MIRRORCORE_WALK_STEPS (default 120),
    /// MIRRORCORE_TRACE_SEED=N prints that seed's full event/action trace.
    let env = ProcessInfo.processInfo.environment
    var traceSeed: UInt64 { UInt64(env["MIRRORCORE_TRACE_SEED"] ?? "") ?? 0 }
    var seeds: ClosedRange<UInt64> {
        let parts = (env["MIRRORCORE_WALK_SEEDS"] ?? "").split(separator: "-").compactMap { UInt64($0) }
        return parts.count == 2 ? parts[0]...parts[1] : 1...200
    }
    var steps: Int { Int(env["MIRRORCORE_WALK_STEPS"] ?? "") ?? 120 }

    let locations: [Location] = [.inode(1), .track(1, 0), .track(1, 1), .track(1, 2), .track(1, 3),
                                 .inode(2), .track(2, 0), .track(2, 1)]

    func testRandomWalksKeepSingleCopyConsistency() {
        for seed in seeds {
            if let failure = walk(seed: seed, steps: steps) {
                XCTFail("seed \(seed): \(failure)")
                return
            }
        }
    }

    /// Returns a description of the first problem, nil when the walk was sound.
    func walk(seed: UInt64, steps: Int) -> String? {
        var rng = SplitMix(state: seed)
        let timeout: Tick = 1_000
        func cfg(_ s: Side) -> MirrorConfig {
            Pair.config(s, pushDelayTicks: [0, 0, 50, 5_000][rng.below(4)], prefetchTracks: rng.below(3),
                        release: ReleasePolicy(enabled: rng.chance(50), coldAfterTicks: 100), peerTimeoutTicks: timeout)
        }
        let prediction: any PredictionPolicy = rng.chance(50)
            ? StandardPrediction(initialWindowTracks: 2, maxWindowTracks: 4, smallFileTracks: 2, nextInodeCount: 1)
            : NoPrediction()
        let p = Pair(a: cfg(.a), b: cfg(.b), prediction: prediction)
        p.trace = traceSeed == seed
        defer { if p.trace { print(p.traceLog.joined(separator: "\n")) } }
        var model: [Location: UInt64] = [:]
        var problem: String?
        var now: Tick = 0

        func randomItems() -> [AccessItem] {
            var items: [AccessItem] = []
            for _ in 0..<(1 + rng.below(3)) {
                let acc: Access = [.read, .read, .writeFull, .writePartial][rng.below(4)]
                items.append(AccessItem(locations[rng.below(locations.count)], acc))
            }
            return items
        }
        func checkReads(_ s: Side, _ id: OperationID, _ items: [AccessItem]) {
            for it in items where it.access == .read && !items.contains(where: { $0.location == it.location && $0.access.isWrite }) {
                let got = p[s].grantSnapshots[id]?[it.location] ?? 0
                let want = model[it.location] ?? 0
                if got != want && problem == nil {
                    problem = "\(s) \(id) read \(it.location) = \(got), latest completed write \(want)"
                }
            }
        }

        for _ in 0..<steps where problem == nil {
            switch rng.below(12) {
            case 0...6:
                // One operation per node, requested together so they contend.
                var live: [(Side, OperationID, [AccessItem])] = []
                for s in [Side.a, .b] where rng.chance(80) {
                    let items = randomItems()
                    live.append((s, p.request(s, items), items))
                }
                var rounds = 0
                while !live.isEmpty && problem == nil {
                    p.settle()
                    rounds += 1
                    var progressed = false
                    // Reads are checked against the writes completed before their grant (none complete during settle).
                    for (s, id, items) in live where p[s].granted[id] != nil { checkReads(s, id, items) }
                    for (i, (s, id, items)) in live.enumerated().reversed() {
                        if p[s].granted[id] != nil {
                            let v = p.apply(s, id)
                            for it in items where it.access.isWrite { model[it.location] = v }
                            live.remove(at: i)
                            progressed = true
                        } else if p[s].failed[id] != nil {
                            live.remove(at: i)
                            progressed = true
                        }
                    }
                    if !progressed {
                        if p.connected && rounds > 3 {
                            problem = "operations stuck while connected: \(live.map { "\($0.0) \($0.1)" })"
                        } else {
                            now += timeout
                            p.tick(now)
                        }
                    }
                }
            case 7:
                now += Tick(1 + rng.below(200))
                p.tick(now)
            case 8:
                if p.connected { p.disconnect() } else { p.connect() }
            case 9:
                let s: Side = rng.chance(50) ? .a : .b
                p[s].holdPersists = rng.chance(50)
                p.crash(s)
                p[s].holdPersists = false
                if rng.chance(70) { p.connect() }
            case 10:
                let s: Side = rng.chance(50) ? .a : .b
                p[s].holdPersists.toggle()
                if !p[s].holdPersists { p.completePersists(s); p.settle() }
            default:
                if !p.connected { p.connect() }
            }
            if let v = p.violations.first, problem == nil { problem = v }
        }
        if let problem { return problem }
        // Healing: connected, persists flowing, time passing: both copies converge.
        for s in [Side.a, .b] { p[s].holdPersists = false; p.completePersists(s) }
        if !p.connected { p.connect() }
        for _ in 0..<4 { now += 10_000; p.tick(now) }
        for l in locations {
            let a = p[.a].store[l]?.version ?? .zero, b = p[.b].store[l]?.version ?? .zero
            if a != b { return "after healing \(l) differs: a \(a) b \(b)" }
            for s in [Side.a, .b] where p.read(s, l) != (model[l] ?? 0) {
                return "after healing \(s) reads \(l) != \(model[l] ?? 0)"
            }
        }
        if p.core(.a).status.oosCount + p.core(.b).status.oosCount != 0 { return "OOS did not drain" }
        return p.violations.first
    }
}
