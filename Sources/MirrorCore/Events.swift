// MirrorCore — the events a shell feeds the core and the actions the core asks the shell to perform.
// Owns: the shell contract (Docs/PROTOCOL.md "API" and "Ordering contract").
// Must never: describe how an action is executed; the shell (TwinNode, TwinSim) owns that.

/// How a local operation uses a location.
public enum Access: UInt8, Hashable, Sendable, Comparable {
    /// Reads the data: needs MOOS clear (else pull, Fig. 4).
    case read = 0
    /// Overwrites the whole location: needs MOS, not the old data (Fig. 5B step 120, hazard 6).
    case writeFull = 1
    /// Changes part of the location: needs MOS and, under MOOS, the peer's data first (Fig. 5B).
    case writePartial = 2
    public static func < (a: Access, b: Access) -> Bool { a.rawValue < b.rawValue }
    public var isWrite: Bool { self != .read }
}

public struct AccessItem: Hashable, Sendable {
    public var location: Location
    public var access: Access
    public init(_ location: Location, _ access: Access) { self.location = location; self.access = access }
}

/// What the shell knows that helps prediction (all optional).
public struct PredictionHint: Hashable, Sendable {
    /// Size in tracks of the file whose tracks this operation writes (whole-small-file prediction).
    public var fileTrackCount: UInt64?
    /// Inode numbers this node will allocate next (create-heavy prediction).
    public var nextInodes: [UInt64]
    public init(fileTrackCount: UInt64? = nil, nextInodes: [UInt64] = []) {
        self.fileTrackCount = fileTrackCount; self.nextInodes = nextInodes
    }
}

/// A local operation (read, write, create, rename...) asking for a set of locations.
/// Duplicate locations are merged (strongest access wins). Granted all at once, acquired in `Location` order.
public struct OperationRequest: Hashable, Sendable {
    public var id: OperationID
    public var items: [AccessItem]
    public var hint: PredictionHint
    public init(id: OperationID, items: [AccessItem], hint: PredictionHint = PredictionHint()) {
        self.id = id; self.items = items; self.hint = hint
    }
}

/// The persisted 2-bit state of a location (the durable part of bitmaps 60/62/64).
public enum PersistedState: UInt8, Hashable, Sendable {
    /// Nothing to remember.
    case none = 0
    /// MOOS: the peer may hold newer data.
    case moos = 1
    /// Superset of OOS: this node may hold data the peer lacks (it held MOS, or answered and awaits the ack).
    case held = 2
    /// Both: MOOS and the superset (a token handed over while unsynced data remained, either direction).
    case contested = 3
}

public struct PersistEntry: Hashable, Sendable {
    public var location: Location
    public var state: PersistedState
    public init(_ location: Location, _ state: PersistedState) { self.location = location; self.state = state }
}

/// Durable state a node finds after a restart: the last persisted state of each location (`.none` omitted) and the
/// last persisted Lamport clock reservation.
public struct RecoveredState: Hashable, Sendable {
    public var entries: [PersistEntry]
    public var clockReservation: UInt64
    public var incarnation: UInt64
    /// A fresh store joining a populated peer (Docs/PROTOCOL.md "Joining"): every location without an entry reads as
    /// MOOS and uncompared until `Event.joinCompleted`. The shell supplies `true` from the store's creation until it
    /// has durably recorded the completion (a batch with `PersistBatch.joinCompleted`).
    public var joining: Bool
    /// The node was promoted (`Event.promoted`) and no peer has connected since (Docs/PROTOCOL.md section 13): `held`
    /// and `contested` entries restore as OOS under an explicit MOS (nobody else can hold the token), `moos` as none.
    /// Overrides `joining` and `adopting` (a promotion ends both). The shell supplies `true` from the durable batch
    /// flagged `PersistBatch.sole == true` until one flagged `false`.
    public var sole: Bool
    /// Only with `joining`: a demoted node rejoining with its mirror state wiped (no entries). Its own copies of
    /// locations it has not compared since are untrusted: the peer's data overwrite them whatever their versions, and
    /// it answers for them with empty data of version zero (section 13). Ends with the join (`joinCompleted`).
    public var adopting: Bool
    public init(entries: [PersistEntry], clockReservation: UInt64, incarnation: UInt64, joining: Bool = false,
                sole: Bool = false, adopting: Bool = false) {
        self.entries = entries; self.clockReservation = clockReservation; self.incarnation = incarnation
        self.joining = joining; self.sole = sole; self.adopting = adopting
    }
    public static let empty = RecoveredState(entries: [], clockReservation: 0, incarnation: 0)
}

public enum Event: Sendable {
    /// A local operation asks for its locations. Answered later by `.grant` or `.fail`.
    case operationRequested(OperationRequest)
    /// A granted operation finished applying its writes to the store (durable as the store promises).
    /// `unwritten`: write locations it did not change after all (an error midway); all others are now out of sync.
    case operationFinished(OperationID, unwritten: [Location])
    /// Complete once the peer durably holds every version written so far to these locations (fsync=mirror).
    case flushRequested(FlushID, [Location])
    /// A message from the peer, on the current connection.
    case received(Message)
    /// A connection to the peer is up (authenticated). The core sends `.hello` and then re-sends what is pending.
    case connectionUp(epoch: UInt64)
    /// The connection is gone; everything in flight on it is lost.
    case connectionDown
    /// Logical time has advanced to `now` (monotonic). Drives timeouts, background copy and releases.
    case tick(Tick)
    /// Every `.persist` with a token up to and including this one is durable.
    case persistDone(CompletionToken)
    /// A `.storeRead` completed with the location's current data and version.
    case storeReadDone(CompletionToken, Payload, Version)
    /// A `.storeWrite` completed; `stored` is the version the store now holds (the written one, or a newer one that
    /// made it skip the write). Durable in the sense the write's `sync` flag asked for.
    case storeWriteDone(CompletionToken, stored: Version)
    /// The node restarted: forget everything volatile and start from this durable state (disconnected).
    case restarted(RecoveredState)
    /// The shell's walk read every location of the tree (each read pulled what this joining store lacked): from now on
    /// unknown locations read as none. The core answers with a persist batch flagged `joinCompleted`; the shell
    /// records the completion durably together with (or after) that batch, and supplies `joining: false` from then on.
    /// Ignored when not joining.
    case joinCompleted
    /// Graceful stop (unmount): push out-of-sync data as usual and give every write token (MOS) back as soon as its
    /// location is in sync and unused, so that the peer can serve everything alone. The shell waits (bounded) for
    /// `status.mosCount == 0 && status.oosCount == 0`, then stops.
    case leaveRequested
    /// The operator declared the peer gone for good (`twinfs promote`). Only while disconnected; ignored (no actions)
    /// while connected or already sole. The node becomes **sole** (Docs/PROTOCOL.md section 13): MOOS and
    /// "uncompared" are cleared everywhere (the peer's unreplicated writes are given up: see
    /// `MirrorNode.promotionLosses`), a join ends, waiting operations are granted locally, pending flushes complete,
    /// and a persist batch flagged `sole = true` (and `joinCompleted` if the node was joining) records it. While sole
    /// every operation is served without messages: writes take MOS locally (persisted `held`, OOS once finished),
    /// flushes complete at once (durability is local only). Sole ends at the next `connectionUp`.
    case promoted
}

public enum OperationError: Hashable, Sendable {
    /// The peer did not answer within `peerTimeoutTicks` (DESIGN G4: EIO, never stale data).
    case peerTimeout
    /// The node restarted or was reset while the operation waited.
    case aborted
}

/// Version a granted operation must store with its data for one written location.
public struct Stamp: Hashable, Sendable {
    public var location: Location
    public var version: Version
    public init(_ location: Location, _ version: Version) { self.location = location; self.version = version }
}

public struct PersistBatch: Hashable, Sendable {
    /// Later entries for the same location supersede earlier ones; batches are applied in token order.
    public var entries: [PersistEntry]
    /// If set, persist this Lamport clock reservation (the restart floor for this node's counter).
    public var clockReservation: UInt64?
    /// Locations whose data must be durable against power loss before this batch is: entries that drop the superset
    /// bit (to `none` or `moos`) stop protecting a local copy that the store may not have synced yet.
    public var hardenFirst: [Location]
    /// The join is complete (`Event.joinCompleted`): the shell records that durably with this batch (or after it),
    /// and from then on restarts the core with `RecoveredState.joining == false`.
    public var joinCompleted: Bool
    /// Sole mode changed with this batch (section 13): `true` after `Event.promoted`, `false` once a peer connected;
    /// nil: unchanged. The shell records it durably with the batch and supplies `RecoveredState.sole` accordingly.
    public var sole: Bool?
    public init(entries: [PersistEntry], clockReservation: UInt64?, hardenFirst: [Location] = [],
                joinCompleted: Bool = false, sole: Bool? = nil) {
        self.entries = entries; self.clockReservation = clockReservation; self.hardenFirst = hardenFirst
        self.joinCompleted = joinCompleted; self.sole = sole
    }
}

/// What the core asks the shell to do. The shell executes the actions of one step in order. Asynchronous ones
/// (`persist`, `storeRead`, `storeWrite`) complete later through an event echoing their token.
public enum Action: Sendable {
    /// Send to the peer on the current connection (dropped by the shell if there is none).
    case send(Message)
    /// Read the location's data and version from the store; answer with `.storeReadDone`.
    case storeRead(CompletionToken, Location)
    /// Write received data. If `onlyIfNewer`, skip it when the store already holds a version >= `version`
    /// (hazard 4; atomically with the compare). If `sync`, durable against power loss before completing.
    case storeWrite(CompletionToken, Location, Payload, Version, onlyIfNewer: Bool, sync: Bool)
    /// Persist bitmap states (and possibly the clock reservation); answer with `.persistDone` when durable.
    case persist(CompletionToken, PersistBatch)
    /// Drop kernel page/attr/entry caches for the location (before the core acknowledges a mark: G2, hazard 8).
    case invalidateCaches(Location)
    /// The operation holds all its locations: it may run now. Writes must store these versions with the data.
    case grant(OperationID, stamps: [Stamp])
    /// The operation cannot be served (EIO); it holds nothing.
    case fail(OperationID, OperationError)
    case flushDone(FlushID)
    case flushFailed(FlushID, OperationError)
    /// The core wants a `.tick` no later than this time (a deadline it set). Ticks may come earlier or more often.
    case wakeAt(Tick)
}
