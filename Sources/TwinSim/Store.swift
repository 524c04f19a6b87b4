// TwinSim/Store.swift: one node's simulated disk.
// Owns: the visible contents of every location (what a read of the backing store returns now), which writes would
// survive a power loss, the node's persisted protocol image (2-bit states and clock reservation), and the I/O still in
// flight.
// Must never: make a write survive less than its contract promises (a completed `sync` write, a completed persist, and
// after a process kill everything written), nor more than a seed-chosen amount beyond that: that boundary is exactly
// the durability contract the core is checked against.

import MirrorCore

/// The content of one location: its version and one stamp per slot.
public struct LocationData: Equatable, Sendable, CustomStringConvertible {
    public var version: Version
    public var slots: [WriteStamp]
    public init(version: Version, slots: [WriteStamp]) { self.version = version; self.slots = slots }
    public static func initial(slots: Int) -> LocationData { LocationData(version: .zero, slots: Array(repeating: 0, count: slots)) }
    public var description: String { "\(version)\(slots)" }

    /// Slots travel as 8 little-endian bytes each, so the core carries opaque bytes as it would in a real node.
    public var payload: Payload {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(slots.count * 8)
        for s in slots { for i in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: s >> (8 * UInt64(i)))) } }
        return Payload(bytes)
    }

    public init?(payload: Payload, version: Version, slots expected: Int) {
        guard payload.bytes.count == expected * 8 else { return nil }
        var slots: [WriteStamp] = []
        for k in 0..<expected {
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(payload.bytes[8 * k + i]) << (8 * UInt64(i)) }
            slots.append(v)
        }
        self.init(version: version, slots: slots)
    }
}

/// What a node finds in its bitmap table after a restart.
public struct PersistedImage: Equatable, Sendable {
    public var states: [Location: PersistedState] = [:]
    public var clockReservation: UInt64 = 0
    /// A joining store (the shell's durable flag): set at creation, cleared with the batch that completes the join.
    public var joining = false
    /// Promoted and no peer since (`PersistBatch.sole`), and demoted and rejoining (cleared with the join).
    public var sole = false
    public var adopting = false
    public init() {}
    public mutating func apply(_ batch: PersistBatch) {
        for e in batch.entries { states[e.location] = e.state == PersistedState.none ? nil : e.state }
        if let r = batch.clockReservation { clockReservation = r }
        if batch.joinCompleted { joining = false; adopting = false }
        if let s = batch.sole { sole = s }
    }
    /// A restart from this image starts with MOOS at `l`: see `moos`; while joining also every location without an
    /// entry (the joining default).
    public func restoresMOOS(_ l: Location) -> Bool { states[l] != nil || joining }
    /// Locations where a restart from this image starts with MOOS: `moos` and `contested`, and also `held`, which
    /// recovery turns into MOOS (the store may have lost unsynced writes the peer holds, so it pulls first).
    public var moos: Set<Location> {
        Set(states.compactMap { $0.value != .none ? $0.key : nil })
    }
}

public struct SimStore: Sendable {
    struct DataWrite {
        let location: Int
        let data: LocationData
        let issuedUs: SimTimeUs
        let sync: Bool
        var completed: Bool
        /// The client operation whose write this is (nil for data that came from the peer).
        let clientOp: Int?
    }

    public private(set) var visible: [LocationData]
    /// Per location: content certain to survive a power loss.
    public private(set) var durable: [LocationData]
    /// Data writes not yet certain to survive a power loss, in issue order, by token (client writes get private tokens).
    private var unhardened: [(token: UInt64, write: DataWrite)] = []
    public private(set) var persisted = PersistedImage()
    /// Persist batches issued but not yet reported durable, in token order, with the issue sequence number.
    private var persistInFlight: [(token: UInt64, batch: PersistBatch, sequence: UInt64)] = []
    /// Issue order across data writes and persists (a batch's `hardenFirst` covers data written before it).
    private var nextSequence: UInt64 = 0
    private var writeSequence: [UInt64: UInt64] = [:]
    /// The operating system writes dirty pages back after this long even without a sync.
    public let writebackUs: SimTimeUs

    public init(layout: SimLayout, writebackUs: SimTimeUs) {
        let initial = (0..<layout.locationCount).map { LocationData.initial(slots: layout.slotCounts[$0]) }
        visible = initial
        durable = initial
        self.writebackUs = writebackUs
    }

    /// Joining runs: a populated store holds `data` at `location` before the run (durable), with this clock
    /// reservation covering its versions; a joining store starts with the joining flag set.
    public mutating func prepare(populate: [(Int, LocationData)], clockReservation: UInt64, joining: Bool) {
        for (l, d) in populate { visible[l] = d; durable[l] = d }
        persisted.clockReservation = clockReservation
        persisted.joining = joining
    }

    /// What the shell does to a demoted node's store (PROTOCOL.md section 13): the mirror state is wiped and the store
    /// rejoins, adopting the peer's copy; the data and the clock reservation stay.
    public mutating func demote() {
        precondition(persistInFlight.isEmpty, "demote a stopped node")
        persisted.states = [:]
        persisted.joining = true
        persisted.adopting = true
        persisted.sole = false
    }

    /// The register holds `stamp` now or may hold it after a power loss (durable, or any write not yet hardened).
    public func mayHold(location: Int, slot: Int, _ stamp: WriteStamp) -> Bool {
        visible[location].slots[slot] == stamp || durable[location].slots[slot] == stamp
            || unhardened.contains { $0.write.location == location && $0.write.data.slots[slot] == stamp }
    }

    public mutating func addLocation(slots: Int) {
        visible.append(.initial(slots: slots))
        durable.append(.initial(slots: slots))
    }

    /// Image a restart would find if the process were killed now (the kernel keeps what was written).
    public var persistedAfterKill: PersistedImage {
        var image = persisted
        for (_, b, _) in persistInFlight { image.apply(b) }
        return image
    }

    public var hasIOInFlight: Bool {
        !persistInFlight.isEmpty || unhardened.contains { !$0.write.completed }
    }

    /// A write reaches the page cache at once (later reads see it).
    public mutating func issueWrite(token: UInt64, location: Int, _ data: LocationData, sync: Bool, nowUs: SimTimeUs,
                                    clientOp: Int? = nil) {
        visible[location] = data
        writeSequence[token] = nextSequence
        nextSequence += 1
        unhardened.append((token, DataWrite(location: location, data: data, issuedUs: nowUs, sync: sync,
                                            completed: clientOp != nil, clientOp: clientOp)))
    }

    /// The write's completion: a sync write is now durable, and so is everything written before it to that location.
    public mutating func completeWrite(token: UInt64) {
        guard let i = unhardened.firstIndex(where: { $0.token == token }) else { return }
        unhardened[i].write.completed = true
        if unhardened[i].write.sync {
            harden(location: unhardened[i].write.location, through: writeSequence[token] ?? 0)
        }
    }

    /// fsync(2) of one location by the shell: everything written to it so far becomes durable.
    public mutating func sync(location: Int) {
        harden(location: location, through: nextSequence)
    }

    /// fsync of one location: every write to it issued up to `sequence` becomes durable.
    private mutating func harden(location: Int, through sequence: UInt64) {
        var keep: [(token: UInt64, write: DataWrite)] = []
        for entry in unhardened {
            if entry.write.location == location && (writeSequence[entry.token] ?? 0) <= sequence {
                durable[location] = entry.write.data
                writeSequence[entry.token] = nil
            } else {
                keep.append(entry)
            }
        }
        unhardened = keep
    }

    /// A batch becomes durable only after the data of its `hardenFirst` locations written before it (the shell
    /// syncs them first): dropping the superset bit must never outlive a local copy that a power loss can undo.
    private mutating func applyDurably(_ batch: PersistBatch, sequence: UInt64, ids: (Location) -> Int?) {
        for l in batch.hardenFirst { if let id = ids(l) { harden(location: id, through: sequence) } }
        persisted.apply(batch)
    }

    public mutating func harden(location: Int) {
        var keep: [(token: UInt64, write: DataWrite)] = []
        for (t, w) in unhardened { if w.location == location { durable[location] = w.data } else { keep.append((t, w)) } }
        unhardened = keep
    }

    public mutating func issuePersist(token: UInt64, _ batch: PersistBatch) {
        persistInFlight.append((token, batch, nextSequence))
        nextSequence += 1
    }

    /// Every persist with a token up to and including `token` is durable (the core's contract for `persistDone`).
    public mutating func completePersist(upTo token: UInt64, ids: (Location) -> Int?) {
        while let first = persistInFlight.first, first.token <= token {
            applyDurably(first.batch, sequence: first.sequence, ids: ids)
            persistInFlight.removeFirst()
        }
    }

    public enum CrashKind: String, Sendable {
        /// kill -9: the kernel keeps everything the process wrote; the process's memory is gone.
        case processKill = "kill"
        /// Power loss: durable content survives, plus a seed-chosen prefix of each location's unsynced writes and of
        /// the persists in flight.
        case powerLoss = "power-loss"
    }

    /// Applies a crash. Returns the client operations whose completed writes vanished (allowed: they were not synced).
    public mutating func crash(_ kind: CrashKind, nowUs: SimTimeUs, random: inout SimRandom,
                               ids: (Location) -> Int? = { _ in nil }) -> Set<Int> {
        var rolledBack: Set<Int> = []
        switch kind {
        case .processKill:
            for (_, b, _) in persistInFlight { persisted.apply(b) }
            for (_, w) in unhardened { durable[w.location] = w.data }
        case .powerLoss:
            let keepPersists = persistInFlight.isEmpty ? 0 : random.int(0...persistInFlight.count)
            for (_, b, sequence) in persistInFlight[..<keepPersists] { applyDurably(b, sequence: sequence, ids: ids) }
            // Per location, writes survive in order up to a random cut; written-back ones always survive.
            var cutReached: Set<Int> = []
            for (_, w) in unhardened {
                let writtenBack = w.issuedUs + writebackUs <= nowUs
                if !cutReached.contains(w.location) && (writtenBack || random.chance(0.5)) {
                    durable[w.location] = w.data
                } else {
                    cutReached.insert(w.location)
                    if let op = w.clientOp, w.completed { rolledBack.insert(op) }
                }
            }
        }
        unhardened.removeAll()
        writeSequence.removeAll()
        persistInFlight.removeAll()
        visible = durable
        return rolledBack
    }
}
