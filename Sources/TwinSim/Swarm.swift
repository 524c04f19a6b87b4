// TwinSim/Swarm.swift: everything about a run that the seed decides before the first event.
// Owns: the "swarm" configuration (fault rates, location-space shape, prediction window, workload mix) and its
// derivation from a seed, plus the one-line description logged at the start of a run.
// Must never: draw from the PRNG streams used by the run itself: the configuration has its own fork so that changing
// the run does not change which configuration a seed picks.

public enum WorkloadKind: String, CaseIterable, Sendable {
    /// Each node streams through the tracks of its own files in order (appends and sequential reads).
    case sequential
    /// Uniformly random reads and writes over all tracks of all files.
    case random
    /// Mostly creates, renames, stats and directory reads.
    case createHeavy = "create-heavy"
    /// Both nodes read and write the same one or two files all the time.
    case contending
    /// The swarm default: a seed-chosen blend of the above.
    case mixed
}

public struct SwarmConfig: CustomStringConvertible, Sendable {
    public var seed: UInt64
    public var workload: WorkloadKind
    // Location space: small on purpose, so that the two nodes contend.
    public var fileCount: Int
    public var tracksPerFile: Int
    public var slotsPerTrack: Int
    public var directoryCount: Int
    /// Inode numbers each node can allocate for creates (node A and node B allocate from disjoint pools).
    public var spareInodesPerNode: Int
    public var predictionWindow: Int
    // Clients.
    public var clientsPerNode: Int
    public var operationCount: Int
    public var thinkTimeMaxUs: SimTimeUs
    // Network.
    public var latencyMinUs: SimTimeUs
    public var latencyJitterUs: SimTimeUs
    /// Probability per scheduled fault tick that the connection drops (in-flight messages are lost).
    public var disconnectChance: Double
    /// Probability that a drop is a partition lasting `partitionUs` rather than an immediate reconnect attempt.
    public var partitionChance: Double
    public var partitionUs: SimTimeUs
    // Disks and crashes.
    public var diskLatencyMaxUs: SimTimeUs
    public var diskLatencyMinUs: SimTimeUs = 0
    /// Share of client operations that are fsyncs (fsync=mirror: durable on both nodes when they return).
    public var fsyncChance = 0.0
    /// Multiplier of each node's disk latency: sometimes one node has a much slower disk than the other.
    public var diskSlowdown: [UInt64] = [1, 1]
    public var crashChance: Double
    /// Fraction of crashes that are power losses (in-flight disk writes may vanish) rather than process kills.
    public var powerLossFraction: Double
    public var restartDelayUs: SimTimeUs
    public var faultTickUs: SimTimeUs

    public static func derive(seed: UInt64, workload forced: WorkloadKind? = nil, faults: Bool = true) -> SwarmConfig {
        var r = SimRandom(seed: seed ^ 0x5357_4152_4D00_0000)  // "SWARM": its own stream
        let workload = forced ?? r.pick([.mixed, .mixed, .random, .sequential, .createHeavy, .contending])
        let quiet = !faults || r.chance(0.15)  // some seeds run fault-free to exercise the fast paths at length
        var c = SwarmConfig(
            seed: seed,
            workload: workload,
            fileCount: r.int(1...3),
            tracksPerFile: r.int(1...6),
            slotsPerTrack: r.int(2...4),
            directoryCount: r.int(1...2),
            spareInodesPerNode: r.int(2...6),
            predictionWindow: r.pick([0, 1, 2, 4, 8]),
            clientsPerNode: r.int(1...3),
            operationCount: r.int(30...80),
            thinkTimeMaxUs: r.pick([0, 200, 2_000, 20_000]),
            latencyMinUs: r.pick([50, 500, 5_000]),
            latencyJitterUs: r.pick([0, 100, 2_000, 30_000]),
            disconnectChance: quiet ? 0 : r.pick([0.0, 0.02, 0.1, 0.3]),
            partitionChance: r.pick([0.0, 0.3, 0.7]),
            partitionUs: r.pick([1_000, 50_000, 500_000]),
            diskLatencyMaxUs: r.pick([0, 100, 3_000]),
            crashChance: quiet ? 0 : r.pick([0.0, 0.01, 0.05, 0.15]),
            powerLossFraction: r.pick([0.0, 0.5, 1.0]),
            restartDelayUs: r.pick([0, 10_000, 200_000]),
            faultTickUs: r.pick([5_000, 20_000]))
        c.diskSlowdown = r.pick([[1, 1], [1, 1], [1, 1], [30, 1], [1, 30]])
        // Drawn last, so that adding it left every earlier choice of every seed as it was.
        c.fsyncChance = r.pick([0.0, 0.0, 0.05, 0.15])
        return c
    }

    public var description: String {
        "seed=\(seed) workload=\(workload.rawValue) files=\(fileCount)x\(tracksPerFile)tracks slots=\(slotsPerTrack) "
            + "dirs=\(directoryCount) spareInodes=\(spareInodesPerNode) window=\(predictionWindow) "
            + "clients=\(clientsPerNode)/node ops=\(operationCount) think<=\(thinkTimeMaxUs)us "
            + "latency=\(latencyMinUs)+\(latencyJitterUs)us disconnect=\(disconnectChance) partition=\(partitionChance)/\(partitionUs)us "
            + "disk<=\(diskLatencyMaxUs)us slowdown=\(diskSlowdown) fsync=\(fsyncChance) crash=\(crashChance) powerLoss=\(powerLossFraction) restartDelay=\(restartDelayUs)us "
            + "faultTick=\(faultTickUs)us"
    }
}
