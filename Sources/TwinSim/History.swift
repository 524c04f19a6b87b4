// TwinSim/History.swift: what the simulated clients asked for and what they got back.
// Owns: the record of every client operation (invocation and completion times, values written and read).
// Must never: look inside a node: the history is what an outside observer of the two mountpoints could see.

/// A register the checker reasons about: one slot of one location. Tracks and directory records have several slots
/// so that a partial write (some slots) can be told apart from a full write (all slots).
public struct RegisterKey: Hashable, Comparable, CustomStringConvertible, Sendable {
    public let location: Int
    public let slot: Int
    public init(location: Int, slot: Int) { self.location = location; self.slot = slot }
    public static func < (a: RegisterKey, b: RegisterKey) -> Bool {
        (a.location, a.slot) < (b.location, b.slot)
    }
    public var description: String { "L\(location).\(slot)" }
}

/// Every write stamps a unique value; 0 is the initial content of every register.
public typealias WriteStamp = UInt64

public enum OpOutcome: Equatable, Sendable {
    case pending
    case ok
    /// The operation returned an error (for example a peer timeout): it may or may not have taken effect.
    case failed(String)
    /// The node crashed while the operation was in flight: it may or may not have taken effect.
    case lostInCrash
}

public struct OpRecord: Sendable {
    public let id: Int
    public let node: Int
    public let label: String
    public let invokeUs: SimTimeUs
    public var completeUs: SimTimeUs?
    public var outcome: OpOutcome = .pending
    /// Registers this operation writes and the stamp it writes to each.
    public let writes: [RegisterKey: WriteStamp]
    /// Registers this operation reads; filled in on successful completion.
    public var reads: [RegisterKey: WriteStamp] = [:]
    public let readKeys: [RegisterKey]

    /// Time after which the operation certainly had no more effect; nil when it may still take effect at any time
    /// (failed or lost writes are treated as concurrent with everything after their invocation).
    public var effectEndUs: SimTimeUs? {
        outcome == .ok ? completeUs : nil
    }
    /// Registers where a power loss left this completed write nowhere (it was never synced on either node), which the
    /// durability contract allows: there it may be absent from then on, so it no longer makes older values stale for
    /// reads that end after the loss; if its value is read, the usual ordering rules still apply to it.
    public var rolledBack: [RegisterKey: SimTimeUs] = [:]
    /// Registers where a completed fsync (fsync=mirror) covered this write: no crash of any kind may lose it.
    public var synced: Set<RegisterKey> = []
    /// Promotion runs: an operation of the demoted node invoked after the promotion ran in a world the promotion gave
    /// up (its reads are not checked; its writes are forgiven as expected losses, PROTOCOL.md section 13).
    public var readsUnchecked = false
}

public struct History: Sendable {
    public private(set) var ops: [OpRecord] = []

    public init() {}

    @discardableResult
    public mutating func invoke(node: Int, label: String, atUs: SimTimeUs,
                                writes: [RegisterKey: WriteStamp], readKeys: [RegisterKey]) -> Int {
        let id = ops.count
        ops.append(OpRecord(id: id, node: node, label: label, invokeUs: atUs, writes: writes, readKeys: readKeys))
        return id
    }

    public mutating func complete(_ id: Int, atUs: SimTimeUs, outcome: OpOutcome, reads: [RegisterKey: WriteStamp] = [:]) {
        precondition(ops[id].outcome == .pending, "operation \(id) completed twice")
        ops[id].completeUs = atUs
        ops[id].outcome = outcome
        ops[id].reads = reads
    }

    /// The earliest forgiveness counts (a power loss, then a promotion, may both give the same value up).
    public mutating func forgive(_ id: Int, _ key: RegisterKey, atUs: SimTimeUs) {
        ops[id].rolledBack[key] = min(ops[id].rolledBack[key] ?? atUs, atUs)
    }

    public mutating func markSynced(_ id: Int, _ key: RegisterKey) { ops[id].synced.insert(key) }

    public mutating func uncheckReads(_ id: Int) { ops[id].readsUnchecked = true }

    public func op(_ id: Int) -> OpRecord { ops[id] }
    public var pendingIDs: [Int] { ops.filter { $0.outcome == .pending }.map(\.id) }
}
