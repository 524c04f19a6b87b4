// TwinSim/Network.swift: the simulated connection between the two nodes.
// Owns: connection state and epochs, per-direction FIFO delivery times, partitions, and the rule that a drop loses
// every message still in flight.
// Must never: reorder messages within one connection epoch or deliver a message from an older epoch: TCP does
// neither, and the core is entitled to rely on that.

public struct SimNetwork: Sendable {
    public enum State: Equatable, Sendable {
        case connected(epoch: UInt64)
        /// Down; may reconnect at or after `retryAtUs`.
        case down(retryAtUs: SimTimeUs)
        /// Down and unable to reconnect until `untilUs` (a partition).
        case partitioned(untilUs: SimTimeUs)
    }

    public private(set) var state: State = .down(retryAtUs: 0)
    public private(set) var epoch: UInt64 = 0
    /// Latest scheduled delivery time per direction (index = sender), so later sends never overtake earlier ones.
    private var lastDeliveryUs: [SimTimeUs] = [0, 0]
    public let latencyMinUs: SimTimeUs
    public let latencyJitterUs: SimTimeUs
    public private(set) var messagesSent = 0
    public private(set) var messagesLost = 0

    public init(latencyMinUs: SimTimeUs, latencyJitterUs: SimTimeUs) {
        self.latencyMinUs = latencyMinUs
        self.latencyJitterUs = latencyJitterUs
    }

    public var isConnected: Bool { if case .connected = state { return true } else { return false } }
    public var currentEpoch: UInt64? { if case .connected(let e) = state { return e } else { return nil } }

    /// Opens a new connection epoch. The caller tells both nodes.
    public mutating func connect(nowUs: SimTimeUs) -> UInt64 {
        precondition(!isConnected, "connect while connected")
        epoch += 1
        state = .connected(epoch: epoch)
        lastDeliveryUs = [nowUs, nowUs]
        return epoch
    }

    /// Drops the connection; messages of the old epoch still in flight are lost when they would be delivered.
    public mutating func disconnect(nowUs: SimTimeUs, partitionUntilUs: SimTimeUs?) {
        if let until = partitionUntilUs { state = .partitioned(untilUs: until) } else { state = .down(retryAtUs: nowUs) }
    }

    public mutating func healPartition(nowUs: SimTimeUs) {
        if case .partitioned = state { state = .down(retryAtUs: nowUs) }
    }

    public func canReconnect(nowUs: SimTimeUs) -> Bool {
        switch state {
        case .connected: return false
        case .down(let t): return nowUs >= t
        case .partitioned(let t): return nowUs >= t
        }
    }

    /// Returns the delivery time of a message sent now by `from`, or nil if there is no connection to carry it.
    public mutating func send(from: Int, nowUs: SimTimeUs, random: inout SimRandom) -> SimTimeUs? {
        guard isConnected else { messagesLost += 1; return nil }
        messagesSent += 1
        // Mostly near the minimum, with an occasional long tail: uniform^3 skews toward small jitter.
        let u = random.unit()
        let jitter = SimTimeUs(Double(latencyJitterUs) * u * u * u)
        let at = max(nowUs + latencyMinUs + jitter, lastDeliveryUs[from])
        lastDeliveryUs[from] = at
        return at
    }

    /// Whether a message sent in `epoch` may be delivered now.
    public mutating func deliverable(epoch sentEpoch: UInt64) -> Bool {
        if currentEpoch == sentEpoch { return true }
        messagesLost += 1
        return false
    }

    public var meanRoundTripUs: Double { 2 * (Double(latencyMinUs) + Double(latencyJitterUs) / 4) }
}
