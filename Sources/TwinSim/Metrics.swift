// TwinSim/Metrics.swift: the figures by which prediction and prefetch policies are compared.
// Owns: counters of operations, messages by kind, marks, pulls and operation latency, and their ratios.
// Must never: influence the run: metrics are write-only from the simulator's point of view.

import MirrorCore

public struct SimMetrics: Sendable {
    public var operations = 0
    public var operationsCompleted = 0
    public var operationsFailed = 0
    public var reads = 0
    /// Reads (reads, stats, readdirs) that failed, and the slowest completed read in mean round trips: the
    /// figures of finding 7 (reads starved by the peer's writes under contention).
    public var readsFailed = 0
    public var readRoundTripsMax = 0.0
    public var writes = 0
    public var fsyncs = 0
    public var writtenTracks = 0
    /// Locations written (tracks plus inode records), summed over write operations.
    public var writtenLocations = 0
    /// Operations that completed without the node sending a request it had to wait for (G1's "local latency").
    public var localOperations = 0
    public var markRequests = 0
    /// Locations named in mark requests (including predicted ones).
    public var markedLocations = 0
    public var pullRequests = 0
    public var messagesByKind: [String: Int] = [:]
    /// Sum over completed operations of (latency / mean round-trip time).
    public var roundTripsTotal = 0.0
    public var crashes = 0
    public var disconnects = 0
    public var events = 0
    public var cacheHits = 0
    /// From the cores' own counters: operations granted, those that waited on the peer, and total waits.
    public var coreOperationsGranted = 0
    public var coreOperationsWithRoundTrip = 0
    public var coreRoundTrips = 0
    public var predictedLocations = 0
    public var pushes = 0
    public var prefetches = 0
    /// Promotion runs: registers whose completed writes the promotion gave up (the demoted node's unreplicated writes,
    /// which the shell preserves as conflict copies), and the promotions and demotions done.
    public var conflicts = 0
    public var promotions = 0

    public init() {}

    public mutating func merge(_ o: SimMetrics) {
        operations += o.operations; operationsCompleted += o.operationsCompleted; operationsFailed += o.operationsFailed
        reads += o.reads; readsFailed += o.readsFailed; readRoundTripsMax = max(readRoundTripsMax, o.readRoundTripsMax)
        writes += o.writes; fsyncs += o.fsyncs; writtenTracks += o.writtenTracks; writtenLocations += o.writtenLocations; localOperations += o.localOperations
        markRequests += o.markRequests; markedLocations += o.markedLocations; pullRequests += o.pullRequests
        for (k, v) in o.messagesByKind { messagesByKind[k, default: 0] += v }
        roundTripsTotal += o.roundTripsTotal; crashes += o.crashes; disconnects += o.disconnects; events += o.events
        cacheHits += o.cacheHits; coreOperationsGranted += o.coreOperationsGranted
        coreOperationsWithRoundTrip += o.coreOperationsWithRoundTrip; coreRoundTrips += o.coreRoundTrips
        predictedLocations += o.predictedLocations; pushes += o.pushes; prefetches += o.prefetches
        conflicts += o.conflicts; promotions += o.promotions
    }

    public mutating func absorb(_ c: MirrorCounters) {
        coreOperationsGranted += c.operationsGranted
        coreOperationsWithRoundTrip += c.operationsWithRoundTrip
        coreRoundTrips += c.roundTrips
        predictedLocations += c.locationsPredicted
        pushes += c.pushesSent
        prefetches += c.prefetchesSent
    }

    /// Network waits per granted operation, as the cores count them.
    public var coreRoundTripsPerOperation: Double { ratio(Double(coreRoundTrips), coreOperationsGranted) }

    private func ratio(_ a: Double, _ b: Int) -> Double { b == 0 ? 0 : a / Double(b) }
    public var roundTripsPerOperation: Double { ratio(roundTripsTotal, operationsCompleted) }
    public var marksPerWrittenTrack: Double { ratio(Double(markRequests), writtenTracks) }
    public var marksPerWrittenLocation: Double { ratio(Double(markRequests), writtenLocations) }
    public var pullsPerRead: Double { ratio(Double(pullRequests), reads) }
    public var localFraction: Double { ratio(Double(localOperations), operationsCompleted) }

    public var summary: String {
        func f(_ x: Double) -> String {
            let scaled = (x * 1000).rounded() / 1000
            return "\(scaled)"
        }
        return "ops=\(operations) done=\(operationsCompleted) failed=\(operationsFailed) "
            + "rtt/op=\(f(roundTripsPerOperation)) marks/written-track=\(f(marksPerWrittenTrack)) marks/written-location=\(f(marksPerWrittenLocation)) "
            + "pulls/read=\(f(pullsPerRead)) local=\(f(localFraction)) core-waits/op=\(f(coreRoundTripsPerOperation)) "
            + "marks=\(markRequests) marked-locations=\(markedLocations) pulls=\(pullRequests) "
            + "reads-failed=\(readsFailed) max-read-rtt=\(f(readRoundTripsMax))"
    }
}
