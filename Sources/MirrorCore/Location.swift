// MirrorCore — identities shared by the protocol: nodes, locations, versions, payloads, ids.
// Owns: the value types every other file and every shell speaks in, and the global location order.
// Must never: import Foundation, touch I/O, a clock, threads or randomness (the core is a pure state machine).

/// A node of the pair. Small integer; the lower id wins a mark tie-break (DESIGN hazard 1).
public struct NodeID: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt8
    public init(_ raw: UInt8) { self.raw = raw }
    public static func < (a: NodeID, b: NodeID) -> Bool { a.raw < b.raw }
    public var description: String { "n\(raw)" }
}

/// A unit the protocol keeps consistent: the metadata record of an inode, or one track (fixed-size block) of it.
///
/// One global total order (inode number first, then the record before its tracks, then track index) is used to
/// acquire the locations of a multi-location operation, so two nodes never deadlock (DESIGN hazard 5).
public struct Location: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var ino: UInt64
    /// 0 is the inode record; `trackIndex + 1` is a track. Kept private to the encoding so the order is one compare.
    public var slot: UInt64

    @inlinable public init(ino: UInt64, slot: UInt64) { self.ino = ino; self.slot = slot }
    /// The metadata record (attributes, directory entries, symlink target) of `ino`.
    @inlinable public static func inode(_ ino: UInt64) -> Location { Location(ino: ino, slot: 0) }
    /// Track `index` (0-based) of the data of `ino`.
    @inlinable public static func track(_ ino: UInt64, _ index: UInt64) -> Location { Location(ino: ino, slot: index &+ 1) }

    @inlinable public var isInodeRecord: Bool { slot == 0 }
    /// The track index, or nil for the inode record.
    @inlinable public var trackIndex: UInt64? { slot == 0 ? nil : slot - 1 }

    @inlinable public static func < (a: Location, b: Location) -> Bool {
        a.ino != b.ino ? a.ino < b.ino : a.slot < b.slot
    }
    /// One combine instead of two: locations are hashed on every protocol step.
    @inlinable public func hash(into h: inout Hasher) { h.combine(ino &* 0x9E37_79B9_7F4A_7C15 ^ slot) }
    public var description: String { slot == 0 ? "i\(ino)" : "t\(ino).\(slot - 1)" }
}

/// A version stamped on every write and stored with the data (DESIGN hazard 4): a Lamport counter with the writing
/// node as tie-break. Received data are applied only if their version is newer than the stored one.
public struct Version: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var counter: UInt64
    public var node: NodeID
    public init(counter: UInt64, node: NodeID) { self.counter = counter; self.node = node }
    /// The version of a location nobody has written yet (initial contents). Older than every stamped version.
    public static let zero = Version(counter: 0, node: NodeID(0))
    @inlinable public static func < (a: Version, b: Version) -> Bool {
        a.counter != b.counter ? a.counter < b.counter : a.node < b.node
    }
    public var description: String { "v\(counter)@\(node.raw)" }
}

/// Data travelling between nodes. The core never looks inside; the real node carries bytes, the simulator a stamp.
public struct Payload: Hashable, Sendable {
    public var bytes: [UInt8]
    public init(_ bytes: [UInt8]) { self.bytes = bytes }
    /// A cheap payload for simulators and tests: the 8 little-endian bytes of `stamp`.
    public init(stamp: UInt64) {
        var b = [UInt8](repeating: 0, count: 8)
        for i in 0..<8 { b[i] = UInt8(truncatingIfNeeded: stamp >> (8 * UInt64(i))) }
        self.bytes = b
    }
    /// The stamp of a payload built with `init(stamp:)`, nil if it is not 8 bytes long.
    public var stamp: UInt64? {
        guard bytes.count == 8 else { return nil }
        var v: UInt64 = 0
        for i in 0..<8 { v |= UInt64(bytes[i]) << (8 * UInt64(i)) }
        return v
    }
}

/// Logical time, passed in by the caller (the core has no clock). The unit is the shell's choice (the node uses ms).
public typealias Tick = UInt64

/// Identifies a local operation; chosen by the caller, unique among live operations of one node.
public struct OperationID: Hashable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public var description: String { "op\(raw)" }
}

/// Identifies a flush request; chosen by the caller.
public struct FlushID: Hashable, Sendable {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
}

/// Echoed by the shell when an asynchronous action (persist, store read, store write) completes.
public struct CompletionToken: Hashable, Comparable, Sendable, CustomStringConvertible {
    public var raw: UInt64
    public init(_ raw: UInt64) { self.raw = raw }
    public static func < (a: CompletionToken, b: CompletionToken) -> Bool { a.raw < b.raw }
    public var description: String { "#\(raw)" }
}
