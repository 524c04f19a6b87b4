// core-bench — throughput of the MirrorCore state machine, and its bitmap memory for a large volume.
// Owns: a minimal two-core pump (instant store, instant persistence, in-order wire) and timing around it.
// Must never: run under `swift test` or assert timings; it prints figures. Run: swift run -c release core-bench [--tib]

import Foundation
import MirrorCore

struct Work {
    var node: Int
    var event: Event
}

/// Two cores wired back to back; every asynchronous action completes immediately (FIFO), so the figure is the
/// core's own cost plus this pump's (small) bookkeeping.
final class Bench {
    let cores: [MirrorNode]
    var queue: [Work] = []
    var head = 0
    /// Versions per node, inode (< 16 here) and slot: a flat store so the pump adds no hashing of its own.
    var stores: [[[Version]]] = Array(repeating: Array(repeating: [], count: 16), count: 2)

    @inline(__always) func stored(_ n: Int, _ l: Location) -> Version {
        let a = stores[n][Int(l.ino)]
        return Int(l.slot) < a.count ? a[Int(l.slot)] : .zero
    }

    @inline(__always) func store(_ n: Int, _ l: Location, _ v: Version) {
        let i = Int(l.ino), k = Int(l.slot)
        if k >= stores[n][i].count { stores[n][i].append(contentsOf: repeatElement(.zero, count: k - stores[n][i].count + 1024)) }
        stores[n][i][k] = v
    }
    var events = 0
    var granted: [OperationID] = []
    var actions: [Action] = []
    let payload = Payload(stamp: 42)
    var nextOp: UInt64 = 1
    var rng: UInt64 = 0x9E37_79B9_7F4A_7C15

    func op(_ items: [AccessItem]) -> Event {
        defer { nextOp += 1 }
        return .operationRequested(OperationRequest(id: OperationID(nextOp), items: items))
    }

    func rnd(_ n: UInt64) -> UInt64 { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return rng % n }

    init(pushDelayTicks: Tick, prediction: @escaping () -> any PredictionPolicy) {
        cores = (0..<2).map { i in
            MirrorNode(config: MirrorConfig(node: NodeID(UInt8(i + 1)), peer: NodeID(UInt8(2 - i)),
                                            pushDelayTicks: pushDelayTicks, prefetchTracks: 4,
                                            release: ReleasePolicy(enabled: false)),
                       prediction: prediction())
        }
        actions.reserveCapacity(64)
        queue.reserveCapacity(1 << 16)
        feed(0, .connectionUp(epoch: 1))
        feed(1, .connectionUp(epoch: 1))
        drain()
    }

    func feed(_ n: Int, _ e: Event) {
        events += 1
        actions.removeAll(keepingCapacity: true)
        cores[n].step(e, into: &actions)
        for a in actions {
            switch a {
            case .send(let m): queue.append(Work(node: 1 - n, event: .received(m)))
            case .storeRead(let t, let l): queue.append(Work(node: n, event: .storeReadDone(t, payload, stored(n, l))))
            case .storeWrite(let t, let l, _, let v, let onlyIfNewer, _):
                if !onlyIfNewer || v > stored(n, l) { store(n, l, v) }
                queue.append(Work(node: n, event: .storeWriteDone(t, stored: stored(n, l))))
            case .persist(let t, _): queue.append(Work(node: n, event: .persistDone(t)))
            case .grant(let id, let stamps):
                for s in stamps { store(n, s.location, s.version) }
                queue.append(Work(node: n, event: .operationFinished(id, unwritten: [])))
            case .fail, .invalidateCaches, .flushDone, .flushFailed, .wakeAt: break
            }
        }
    }

    func drain() {
        while head < queue.count {
            let w = queue[head]
            head += 1
            feed(w.node, w.event)
            if head > 1 << 15 { queue.removeFirst(head); head = 0 }
        }
    }
}

/// CPU time of this thread: the machine is shared, so wall time alone would measure the neighbours too.
func threadCPUSeconds() -> Double {
    var ts = timespec()
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts)
    return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
}

func measure(_ name: String, _ body: (Bench) -> Void, _ bench: Bench) {
    let clock = ContinuousClock()
    let start = clock.now
    let cpuStart = threadCPUSeconds()
    body(bench)
    let cpu = threadCPUSeconds() - cpuStart
    let d = clock.now - start
    let secs = Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    let rate = Double(bench.events) / cpu
    let c = bench.cores[0].status.counters
    let figure = String(format: "%.2f", rate / 1e6)
    let time = String(format: "%.3f s CPU (%.3f s wall)", cpu, secs)
    print("\(name): \(bench.events) events in \(time) = \(figure) M events/s per core", terminator: "")
    print("  (node 1: marks \(c.marksSent), pushes \(c.pushesSent), round trips \(c.roundTrips))")
}

let args = CommandLine.arguments

// 1. Hot local writes: MOS held, no messages (Fig. 5A step 102-104), the background copy delayed.
let hot = Bench(pushDelayTicks: .max, prediction: { StandardPrediction() })
measure("local writes under MOS   ", { b in
    for i in 0..<2_000_000 as Range<UInt64> {
        b.feed(0, b.op([AccessItem(.track(1, i & 63), .writeFull)]))
        b.drain()
    }
}, hot)

// 2. Sequential writer with background copy: marks per window, push + ack per write.
let seq = Bench(pushDelayTicks: 0, prediction: { StandardPrediction() })
measure("sequential write + push  ", { b in
    for i in 0..<500_000 as Range<UInt64> {
        b.feed(0, b.op([AccessItem(.track(2, i), .writeFull)]))
        b.drain()
    }
}, seq)

// 3. Both nodes contending on 256 locations: reads, partial and full writes (marks, pulls, tie-breaks).
let mix = Bench(pushDelayTicks: 0, prediction: { StandardPrediction(initialWindowTracks: 2, maxWindowTracks: 8) })
measure("two nodes contending     ", { b in
    for _ in 0..<300_000 {
        for n in 0..<2 {
            let l = Location.track(3 + b.rnd(4), b.rnd(64))
            let acc: Access = [.read, .read, .writeFull, .writePartial][Int(b.rnd(4))]
            b.feed(n, b.op([AccessItem(l, acc)]))
        }
        b.drain()
    }
}, mix)

// 4. Memory: a large volume written once (all MOS + OOS, copy delayed), bytes of dense bitmaps per track.
let tracks: UInt64 = args.contains("--tib") ? 16 << 20 : 1 << 20
let big = Bench(pushDelayTicks: .max, prediction: { StandardPrediction(maxWindowTracks: 4096) })
measure("write \(tracks) tracks once ", { b in
    for i in 0..<tracks {
        b.feed(0, b.op([AccessItem(.track(9, i), .writeFull)]))
        b.drain()
    }
}, big)
let bytes = big.cores[0].bitmapBytes
let bitsPerTrack: Double = Double(bytes) * 8 / Double(tracks)
let mibPerTiB: Double = bitsPerTrack * Double(16 << 20) / 8 / 1_048_576
print("bitmaps for \(tracks) tracks: \(bytes) bytes = \(String(format: "%.2f", bitsPerTrack)) bits/track", terminator: "")
print(" -> \(String(format: "%.1f", mibPerTiB)) MiB per 1 TiB at 64 KiB tracks")
