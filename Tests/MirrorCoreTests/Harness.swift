// MirrorCoreTests — two cores wired back to back by a tiny message pump, with in-memory stores and bitmap files.
// Owns: executing actions the way a shell must (ordered, durable on completion), scripted faults, and the
// cross-node invariants checked after every delivered event.
// Must never: make protocol decisions; it only carries out actions and reports what happened.

import MirrorCore
import XCTest

/// Which node of the pair.
enum Side: Int { case a = 0, b = 1
    var other: Side { self == .a ? .b : .a }
}

final class Rig {
    var core: MirrorNode
    let config: MirrorConfig
    var store: [Location: (stamp: UInt64, version: Version)] = [:]
    /// Bitmap file as of the last completed persist, and the ones issued but not yet durable.
    var durable: [Location: PersistedState] = [:]
    var durableReservation: UInt64 = 0
    var unpersisted: [(CompletionToken, PersistBatch)] = []
    var holdPersists = false
    var completions: [Event] = []
    /// A slow disk: completions of store writes wait here (the data are in the store already) until released.
    var holdStoreWrites = false
    var heldStoreWrites: [Event] = []
    var granted: [OperationID: [Stamp]] = [:]
    /// Store contents (stamps) at the moment each operation was granted: what a read returns.
    var grantSnapshots: [OperationID: [Location: UInt64]] = [:]
    var failed: [OperationID: OperationError] = [:]
    var flushed: Set<UInt64> = []
    var flushFailed: Set<UInt64> = []
    /// Every action, in order, as text (the tests read it to check ordering contracts).
    var actionLog: [String] = []
    var incarnation: UInt64 = 0
    /// The store is joining until a persist batch flagged `joinCompleted` is durable (what a shell records).
    var joining = false
    /// Sole (promoted) and adopting (demoted, rejoining), as the shell records them from durable batches.
    var sole = false
    var adopting = false
    /// Every persist batch issued, in order (tests read the join completion flag).
    var batches: [PersistBatch] = []

    init(config: MirrorConfig, prediction: any PredictionPolicy) {
        self.config = config
        self.core = MirrorNode(config: config, prediction: prediction)
    }
}

final class Pair {
    var rigs: [Rig]
    /// wire[i]: messages travelling towards node i, in order.
    var wire: [[Message]] = [[], []]
    var holdWire = [false, false]
    var connected = false
    var epoch: UInt64 = 0
    var now: Tick = 0
    var nextOp: UInt64 = 1
    var nextStamp: UInt64 = 1000
    var violations: [String] = []
    var checkCrossNode = true
    var touched: Set<Location> = []

    init(a: MirrorConfig? = nil, b: MirrorConfig? = nil,
         prediction: any PredictionPolicy = NoPrediction(), connect: Bool = true) {
        let ca = a ?? Pair.config(.a)
        let cb = b ?? Pair.config(.b)
        rigs = [Rig(config: ca, prediction: prediction), Rig(config: cb, prediction: prediction)]
        if connect { self.connect() }
    }

    static func config(_ s: Side, rules: ProtocolRules = .safe, pushDelayTicks: Tick = 0, prefetchTracks: Int = 0,
                       release: ReleasePolicy = ReleasePolicy(enabled: false), peerTimeoutTicks: Tick = 1_000) -> MirrorConfig {
        MirrorConfig(node: NodeID(UInt8(s.rawValue + 1)), peer: NodeID(UInt8(2 - s.rawValue)),
                     peerTimeoutTicks: peerTimeoutTicks, pushDelayTicks: pushDelayTicks,
                     prefetchTracks: prefetchTracks, release: release, rules: rules)
    }

    subscript(_ s: Side) -> Rig { rigs[s.rawValue] }
    func core(_ s: Side) -> MirrorNode { rigs[s.rawValue].core }
    func state(_ s: Side, _ l: Location) -> LocationState { core(s).state(of: l) }

    // MARK: driving

    var trace = false
    var traceLog: [String] = []

    func feed(_ s: Side, _ e: Event) {
        let r = rigs[s.rawValue]
        let actions = r.core.step(e)
        if trace {
            traceLog.append("\(s) <- \(e)")
            for a in actions { traceLog.append("    \(s) -> \(a)") }
            if traceLog.count > 200_000 { traceLog.removeFirst(100_000) }
        }
        for a in actions { execute(s, a) }
        for v in r.core.checkInvariants() { violations.append("\(s): \(v)") }
        if checkCrossNode { checkPair() }
    }

    func execute(_ s: Side, _ a: Action) {
        let r = rigs[s.rawValue]
        switch a {
        case .send(let m):
            r.actionLog.append("send \(Pair.kind(m))")
            if connected { wire[s.other.rawValue].append(m) }
        case .storeRead(let t, let l):
            r.actionLog.append("read \(l)")
            let cur = r.store[l] ?? (0, .zero)
            r.completions.append(.storeReadDone(t, Payload(stamp: cur.stamp), cur.version))
        case .storeWrite(let t, let l, let p, let v, let onlyIfNewer, _):
            r.actionLog.append("write \(l) \(v)")
            let cur = r.store[l] ?? (0, .zero)
            if !onlyIfNewer || v > cur.version { r.store[l] = (p.stamp!, v) }
            let done = Event.storeWriteDone(t, stored: r.store[l]?.version ?? .zero)
            if r.holdStoreWrites { r.heldStoreWrites.append(done) } else { r.completions.append(done) }
        case .persist(let t, let batch):
            r.actionLog.append("persist \(batch.entries.map { "\($0.location)=\($0.state)" })")
            r.batches.append(batch)
            r.unpersisted.append((t, batch))
            if !r.holdPersists { completePersists(s) }
        case .invalidateCaches(let l):
            r.actionLog.append("invalidate \(l)")
        case .grant(let id, let stamps):
            r.actionLog.append("grant \(id)")
            r.granted[id] = stamps
            r.grantSnapshots[id] = r.store.mapValues(\.stamp)
        case .fail(let id, let e):
            r.actionLog.append("fail \(id)")
            r.failed[id] = e
        case .flushDone(let id): r.flushed.insert(id.raw)
        case .flushFailed(let id, _): r.flushFailed.insert(id.raw)
        case .wakeAt: break
        }
    }

    static func kind(_ m: Message) -> String {
        switch m {
        case .hello: return "hello"
        case .mark: return "mark"
        case .markReply: return "markReply"
        case .pull: return "pull"
        case .pullAnswer(let a): if case .inSync = a.content { return "answer-in-sync" } else { return "answer-data" }
        case .ack: return "ack"
        case .push: return "push"
        case .release: return "release"
        }
    }

    func completePersists(_ s: Side) {
        let r = rigs[s.rawValue]
        guard let last = r.unpersisted.last?.0 else { return }
        for (_, b) in r.unpersisted {
            for e in b.entries { r.durable[e.location] = e.state }
            if let c = b.clockReservation { r.durableReservation = c }
            if b.joinCompleted { r.joining = false; r.adopting = false }
            if let sole = b.sole { r.sole = sole }
        }
        r.unpersisted = []
        r.completions.append(.persistDone(last))
    }

    /// Ends `holdStoreWrites`: the held completions are delivered by the next settle, in issue order.
    func releaseStoreWrites(_ s: Side) {
        let r = rigs[s.rawValue]
        r.holdStoreWrites = false
        r.completions.append(contentsOf: r.heldStoreWrites)
        r.heldStoreWrites = []
    }

    /// Delivers completions and messages, alternating nodes, until nothing moves (bounded).
    func settle(maxEvents: Int = 10_000) {
        var n = 0
        while n < maxEvents {
            var moved = false
            for s in [Side.a, .b] {
                let r = rigs[s.rawValue]
                if !r.completions.isEmpty { feed(s, r.completions.removeFirst()); moved = true; n += 1 }
                if !holdWire[s.rawValue] && !wire[s.rawValue].isEmpty {
                    feed(s, .received(wire[s.rawValue].removeFirst())); moved = true; n += 1
                }
            }
            if !moved { return }
        }
        violations.append("did not settle within \(maxEvents) events (livelock)")
    }

    /// Delivers exactly one pending message to `s`.
    func deliverOne(to s: Side) {
        guard !wire[s.rawValue].isEmpty else { XCTFail("no message for \(s)"); return }
        feed(s, .received(wire[s.rawValue].removeFirst()))
    }

    func connect() {
        epoch += 1
        connected = true
        feed(.a, .connectionUp(epoch: epoch))
        feed(.b, .connectionUp(epoch: epoch))
        settle()
    }

    func disconnect() {
        connected = false
        wire = [[], []]
        feed(.a, .connectionDown)
        feed(.b, .connectionDown)
    }

    func tick(_ t: Tick) {
        now = t
        feed(.a, .tick(t))
        feed(.b, .tick(t))
        settle()
    }

    /// kill -9: volatile state and unpersisted bits are lost; the store keeps what was written.
    func crash(_ s: Side) {
        let r = rigs[s.rawValue]
        r.unpersisted = []
        r.completions = []
        r.heldStoreWrites = []
        r.granted = [:]
        disconnect()
        r.incarnation += 1
        let entries = r.durable.filter { $0.value != .none }.map { PersistEntry($0.key, $0.value) }
            .sorted { $0.location < $1.location }
        feed(s, .restarted(RecoveredState(entries: entries, clockReservation: r.durableReservation,
                                          incarnation: r.incarnation, joining: r.joining, sole: r.sole,
                                          adopting: r.adopting)))
    }

    /// What the shell does to a node whose peer was promoted meanwhile (section 13): its mirror state is wiped and it
    /// restarts joining and adopting (the store's data and clock reservation stay).
    func demote(_ s: Side) {
        let r = rigs[s.rawValue]
        r.unpersisted = []
        r.completions = []
        r.heldStoreWrites = []
        r.granted = [:]
        r.durable = [:]
        r.joining = true
        r.adopting = true
        r.sole = false
        r.incarnation += 1
        feed(s, .restarted(RecoveredState(entries: [], clockReservation: r.durableReservation,
                                          incarnation: r.incarnation, joining: true, adopting: true)))
    }

    // MARK: operations

    @discardableResult
    func request(_ s: Side, _ items: [AccessItem], hint: PredictionHint = PredictionHint()) -> OperationID {
        let id = OperationID(nextOp)
        nextOp += 1
        for it in items { touched.insert(it.location) }
        feed(s, .operationRequested(OperationRequest(id: id, items: items, hint: hint)))
        return id
    }

    /// Applies a granted operation's writes to the store with their stamps and reports it finished.
    @discardableResult
    func apply(_ s: Side, _ id: OperationID, stamp: UInt64? = nil) -> UInt64 {
        let r = rigs[s.rawValue]
        let value = stamp ?? { nextStamp += 1; return nextStamp }()
        guard let stamps = r.granted[id] else { XCTFail("\(id) not granted on \(s)"); return value }
        for st in stamps { r.store[st.location] = (value, st.version) }
        r.granted[id] = nil
        feed(s, .operationFinished(id, unwritten: []))
        return value
    }

    /// A whole write: request, settle, apply, settle. Returns the stamp written.
    @discardableResult
    func write(_ s: Side, _ locs: [Location], _ access: Access = .writeFull, hint: PredictionHint = PredictionHint()) -> UInt64 {
        let id = request(s, locs.map { AccessItem($0, access) }, hint: hint)
        settle()
        guard self[s].granted[id] != nil else { XCTFail("write \(id) on \(s) not granted"); return 0 }
        let v = apply(s, id)
        settle()
        return v
    }

    /// A whole read: request, settle, read the store. nil if not granted (failed or waiting).
    func read(_ s: Side, _ l: Location) -> UInt64? {
        let id = request(s, [AccessItem(l, .read)])
        settle()
        guard self[s].granted[id] != nil else { return nil }
        let v = self[s].store[l]?.stamp ?? 0
        self[s].granted[id] = nil
        feed(s, .operationFinished(id, unwritten: []))
        settle()
        return v
    }

    func count(_ s: Side, _ action: String) -> Int { self[s].actionLog.filter { $0 == action }.count }

    // MARK: cross-node invariants (DESIGN hazard 1, PROTOCOL.md "Invariants")

    func checkPair() {
        var all = touched
        for r in rigs { all.formUnion(r.durable.keys); all.formUnion(r.store.keys) }
        for l in all {
            let a = state(.a, l), b = state(.b, l)
            if a.token == .mos && b.token == .mos { violations.append("both hold MOS for \(l)") }
            for (x, y) in [(Side.a, Side.b), (.b, .a)] where state(x, l).token == .mos {
                // `held` and `contested` both recover as MOOS (a restarted store may be behind), so all three count.
                // While joining, a location without an entry restores as MOOS (the joining default).
                let d = self[y].durable[l] ?? .none
                if d == .none && !self[y].joining { violations.append("\(x) holds MOS(\(l)) but \(y) has nothing durable") }
                if state(y, l).token != .moos { violations.append("\(x) holds MOS(\(l)) but \(y) is \(state(y, l))") }
            }
        }
    }
}
