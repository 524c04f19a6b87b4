// MirrorCore — the per-node protocol state machine (Docs/PROTOCOL.md).
// Owns: bitmaps OOS/MOOS/MOS, local location locks, in-flight requests; turns Events into Actions.
// Must never: perform I/O, read a clock, spawn threads or draw random numbers; every input arrives as an Event.

/// One node's protocol core. Feed it events with `step`; execute the returned actions in order.
public final class MirrorNode {
    public let config: MirrorConfig
    var prediction: any PredictionPolicy

    /// - Parameter recovered: durable state found at start (use `.empty` for a fresh volume).
    public init(config: MirrorConfig, prediction: any PredictionPolicy = StandardPrediction(),
                recovered: RecoveredState = .empty) {
        self.config = config
        self.prediction = prediction
    }

    /// Processes one event and returns the actions to execute, in order.
    public func step(_ event: Event) -> [Action] {
        var out: [Action] = []
        step(event, into: &out)
        return out
    }

    /// Same as `step(_:)`, appending to a caller-owned buffer (no allocation per event).
    public func step(_ event: Event, into out: inout [Action]) {
    }

    /// The token and OOS bit of one location.
    public func state(of location: Location) -> LocationState { LocationState(token: .none, outOfSync: false) }

    /// Counts, ages and counters.
    public var status: MirrorStatus {
        MirrorStatus(oosCount: 0, moosCount: 0, mosCount: 0, oldestOOSAgeTicks: 0, connected: false,
                     activeOperations: 0, inFlightPushes: 0, pendingFlushes: 0, counters: MirrorCounters())
    }

    /// Full consistency check of the internal state (O(state)); returns descriptions of violations, empty if sound.
    public func checkInvariants() -> [String] { [] }
}
