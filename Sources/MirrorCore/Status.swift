// MirrorCore — introspection for the simulator, tests and `twinfs status`.
// Owns: read-only views of the core's state and its counters.
// Must never: be needed for correctness; nothing here feeds back into decisions.

/// The write token of one location as this node sees it. MOS and MOOS are exclusive by construction.
public enum TokenState: UInt8, Hashable, Sendable {
    case none = 0
    /// Maybe-out-of-sync: the peer may hold newer data (it holds, or held, the token).
    case moos = 1
    /// Marked-on-secondary: this node holds the token and may write without asking.
    case mos = 2
}

public struct LocationState: Hashable, Sendable, CustomStringConvertible {
    public var token: TokenState
    /// This node holds data for the location that the peer has not acknowledged.
    public var outOfSync: Bool
    public init(token: TokenState, outOfSync: Bool) { self.token = token; self.outOfSync = outOfSync }
    public var description: String { "\(token)\(outOfSync ? "+oos" : "")" }
}

extension MirrorNode {
    /// This node's copy of `location` must fetch the peer's data before it is served (restored from the superset
    /// after a crash, or never compared while joining). For the simulator's checks.
    public func comparesBeforeServing(_ location: Location) -> Bool { isUncompared(location) }
}

public struct MirrorCounters: Hashable, Sendable {
    public var marksSent = 0
    public var locationsMarked = 0
    public var locationsPredicted = 0
    public var marksReceived = 0
    public var marksRefused = 0
    public var pullsSent = 0
    public var pullAnswersData = 0
    public var pullAnswersInSync = 0
    public var prefetchesSent = 0
    public var pushesSent = 0
    public var acksReceived = 0
    public var staleAcksIgnored = 0
    public var stalePushesIgnored = 0
    public var releasesSent = 0
    public var releasesReceived = 0
    /// Operations granted, and how many of them had to wait for at least one message from the peer.
    public var operationsGranted = 0
    public var operationsWithRoundTrip = 0
    /// Total network waits summed over operations (a mark and a pull for one operation count two).
    public var roundTrips = 0
    public var operationsFailed = 0
    public var handshakes = 0
    public init() {}
}

public struct MirrorStatus: Hashable, Sendable {
    public var oosCount: Int
    public var moosCount: Int
    public var mosCount: Int
    /// Upper bound of the age of the oldest out-of-sync location: ticks since OOS last went from empty to non-empty.
    public var oldestOOSAgeTicks: Tick
    public var connected: Bool
    public var activeOperations: Int
    public var inFlightPushes: Int
    public var pendingFlushes: Int
    public var counters: MirrorCounters
    /// The store is joining (`RecoveredState.joining`, until `Event.joinCompleted`): locations without explicit
    /// state read as MOOS, and `moosCount` counts only the explicit ones.
    public var joining = false
    /// `Event.leaveRequested` was stepped: in-sync MOS locations are released as soon as they are unused.
    public var leaving = false
    /// Promoted and no peer connected since (section 13): every operation is served locally.
    public var sole = false
    /// Rejoining after a demotion (`RecoveredState.adopting`): uncompared copies give way to the peer's.
    public var adopting = false
}
