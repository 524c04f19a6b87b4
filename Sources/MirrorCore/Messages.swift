// MirrorCore — the messages two cores exchange (see Docs/PROTOCOL.md "Messages").
// Owns: message shapes only. Framing, encoding and authentication belong to the transport shell.
// Must never: carry anything the receiver cannot verify against its own state (every reply names its location).

/// A message between the two cores of a pair. The transport delivers them in order while a connection lasts and
/// drops everything in flight when it ends; the core re-sends what is still pending after the next handshake.
public enum Message: Hashable, Sendable {
    /// First message on every connection, both directions.
    case hello(Hello)
    /// "Set MOOS for these locations and give me the write token (MOS)". Fig. 5A step 110, plus predicted locations.
    case mark(Mark)
    /// Answer to a mark: granted locations (MOOS durable, caches invalidated) and refused ones (tie-break lost).
    /// One mark can be answered by several replies with the same id (locations held by a running operation later).
    case markReply(MarkReply)
    /// "I hold MOOS here and want to read: send the data or say in sync, and stop writing it". Fig. 4 step 86.
    case pull(Pull)
    /// Answer to a pull (or an unsolicited prefetched answer, Fig. 4 after step 92). The sender gave up MOS.
    case pullAnswer(PullAnswer)
    /// "I now durably hold `version` (or newer) of this location": acknowledges data from a pull answer, a push or a
    /// mark reply. The receiver clears OOS only if that is still the version it holds (hazard 2).
    case ack(Receipt)
    /// Background copy of an out-of-sync location (Fig. 5A "asynchronous background process").
    case push(Push)
    /// "I gave up MOS here (cold and in sync): clear your MOOS". DESIGN hazard 9.
    case release(Release)
}

public struct Hello: Hashable, Sendable {
    public var node: NodeID
    /// The transport's connection counter; both ends of one connection see the same epoch.
    public var epoch: UInt64
    /// Bumped by the shell at every restart of the node (persisted), so the peer can report it.
    public var incarnation: UInt64
    /// Sender's Lamport counter.
    public var clock: UInt64
    public init(node: NodeID, epoch: UInt64, incarnation: UInt64, clock: UInt64) {
        self.node = node; self.epoch = epoch; self.incarnation = incarnation; self.clock = clock
    }
}

public struct MarkItem: Hashable, Sendable {
    public var location: Location
    /// Set for a partial write where the sender holds MOOS (Fig. 5B): the peer must send its unsynced data with the
    /// grant. Clear for full overwrites (Fig. 5B step 120, hazard 6) and predicted locations.
    public var needData: Bool
    /// Set for locations added by prediction (statistics; handled like the others).
    public var predicted: Bool
    /// With `needData`: send the data even without OOS (the sender's own copy may be behind, e.g. after a restart).
    public var forceData: Bool
    public init(location: Location, needData: Bool, predicted: Bool, forceData: Bool = false) {
        self.location = location; self.needData = needData; self.predicted = predicted; self.forceData = forceData
    }
}

public struct Mark: Hashable, Sendable {
    /// Unique per sender and incarnation; a re-sent mark keeps its id (idempotent).
    public var id: UInt64
    public var items: [MarkItem]
    public var clock: UInt64
    public init(id: UInt64, items: [MarkItem], clock: UInt64) { self.id = id; self.items = items; self.clock = clock }
}

public struct MarkGrant: Hashable, Sendable {
    public var location: Location
    /// The granter's unsynced data, present only when the item asked for data and the granter held OOS.
    public var data: Payload?
    /// The version of `data` (nil when no data).
    public var version: Version?
    public init(location: Location, data: Payload? = nil, version: Version? = nil) {
        self.location = location; self.data = data; self.version = version
    }
}

public struct MarkReply: Hashable, Sendable {
    public var id: UInt64
    public var granted: [MarkGrant]
    /// Locations the replier would not grant: it won the tie-break with its own concurrent mark. The sender now
    /// holds MOOS for them (the replier's mark reached it) and retries through the pull path.
    public var refused: [Location]
    /// Replier's Lamport counter: the marker's next versions are stamped above everything the replier wrote.
    public var clock: UInt64
    public init(id: UInt64, granted: [MarkGrant], refused: [Location], clock: UInt64) {
        self.id = id; self.granted = granted; self.refused = refused; self.clock = clock
    }
}

public struct Pull: Hashable, Sendable {
    public var locations: [Location]
    /// Echoed in the answers: an answer clears MOOS only if it answers the puller's latest pull for the location.
    public var id: UInt64
    /// Answer with data even if the answerer holds no OOS: the puller's own copy may be behind the answerer's (it
    /// restarted and its store may have lost unsynced writes, or it handed the token over with data pending).
    public var forceData: Bool
    public init(locations: [Location], id: UInt64 = 0, forceData: Bool = false) {
        self.locations = locations; self.id = id; self.forceData = forceData
    }
}

public enum PullContent: Hashable, Sendable {
    /// The answerer holds no unsynced data for the location (OOS clear, and its OOS knowledge survived). No ack.
    case inSync
    /// The answerer's data; acknowledged with `.ack` once durable at the receiver.
    case data(Payload, Version)
}

public struct PullAnswer: Hashable, Sendable {
    public var location: Location
    public var content: PullContent
    /// Set for answers nobody asked for (nearby OOS tracks sent along with a requested one).
    public var prefetched: Bool
    public var clock: UInt64
    /// The `Pull.id` answered (0 for prefetched answers).
    public var pullID: UInt64
    public init(location: Location, content: PullContent, prefetched: Bool, clock: UInt64, pullID: UInt64 = 0) {
        self.location = location; self.content = content; self.prefetched = prefetched; self.clock = clock
        self.pullID = pullID
    }
}

public struct Receipt: Hashable, Sendable {
    public var location: Location
    /// The exact version received (which may have been ignored because the receiver already held a newer one).
    public var version: Version
    /// The receiver's store reported the data durable (fsync=mirror), not merely applied.
    public var durable: Bool
    public init(location: Location, version: Version, durable: Bool) {
        self.location = location; self.version = version; self.durable = durable
    }
}

public struct Push: Hashable, Sendable {
    public var location: Location
    public var payload: Payload
    public var version: Version
    /// Ask the receiver to make the data durable before acknowledging (a flush waits on it).
    public var durable: Bool
    public init(location: Location, payload: Payload, version: Version, durable: Bool) {
        self.location = location; self.payload = payload; self.version = version; self.durable = durable
    }
}

public struct Release: Hashable, Sendable {
    public var locations: [Location]
    public init(locations: [Location]) { self.locations = locations }
}
