// TwinSim/CoreAdapter.swift: the thin seam between the simulator's vocabulary and MirrorCore's.
// Owns: the mapping between simulator location ids and MirrorCore locations, the core configuration a swarm seed
// picks, message classification for metrics, and the bitmap view used by the checks.
// Must never: make a protocol decision; everything here is translation and bookkeeping.

import MirrorCore

/// The three bitmaps of one node, as sets of simulator location ids.
public struct NodeView: Equatable, Sendable {
    public var oos: Set<Int> = []
    public var moos: Set<Int> = []
    public var mos: Set<Int> = []
    public init() {}
}

/// What the simulator needs to know about a message to count it.
public struct MessageInfo: Sendable {
    public var kind: String
    /// A request that marks locations on the peer (Fig. 5A step 110).
    public var isMarkRequest = false
    /// A request for the current data of locations (Fig. 4 step 86).
    public var isPullRequest = false
    /// Locations the message names (marks: including predicted ones).
    public var locationCount = 0
}

/// How the core is configured for one run; the swarm picks these, tests may override them.
public struct CoreSetup: Sendable {
    public var rules: ProtocolRules = .safe
    public var peerTimeoutUs: UInt64 = 2_000_000
    public var pushDelayUs: UInt64 = 0
    public var prefetchTracks = 4
    public var releaseColdAfterUs: UInt64? = 20_000
    /// nil: the standard policy with the swarm's window; 0: no prediction.
    public var predictionWindow: Int = 4
    public init() {}

    public static func derive(_ c: SwarmConfig, rules: ProtocolRules) -> CoreSetup {
        var r = SimRandom(seed: c.seed ^ 0x434F_5245_0000_0000)  // "CORE": its own stream
        var s = CoreSetup()
        s.rules = rules
        s.predictionWindow = c.predictionWindow
        s.peerTimeoutUs = r.pick([300_000, 2_000_000, 10_000_000])
        s.pushDelayUs = r.pick([0, 0, 1_000, 20_000])
        s.prefetchTracks = r.pick([0, 1, 4])
        s.releaseColdAfterUs = r.pick([nil, 2_000, 20_000, 200_000])
        return s
    }

    public var description: String {
        "peerTimeout=\(peerTimeoutUs)us pushDelay=\(pushDelayUs)us prefetch=\(prefetchTracks) "
            + "release=\(releaseColdAfterUs.map { "\($0)us" } ?? "off") window=\(predictionWindow)"
    }

    func mirrorConfig(node: Int) -> MirrorConfig {
        MirrorConfig(node: NodeID(UInt8(node + 1)), peer: NodeID(UInt8(2 - node)),
                     peerTimeoutTicks: peerTimeoutUs, pushDelayTicks: pushDelayUs, prefetchTracks: prefetchTracks,
                     release: ReleasePolicy(enabled: releaseColdAfterUs != nil, coldAfterTicks: releaseColdAfterUs ?? 0),
                     rules: rules)
    }

    func prediction() -> any PredictionPolicy {
        predictionWindow == 0
            ? NoPrediction()
            : StandardPrediction(initialWindowTracks: UInt64(predictionWindow), maxWindowTracks: UInt64(predictionWindow) * 8,
                                 smallFileTracks: UInt64(predictionWindow), nextInodeCount: predictionWindow)
    }
}

/// Location ids <-> MirrorCore locations for one layout.
public struct LocationMap: Sendable {
    public private(set) var locations: [Location]
    private var ids: [Location: Int]

    public init(_ layout: SimLayout) {
        locations = layout.kinds.map {
            switch $0 {
            case .inodeRecord(let ino): return Location.inode(ino)
            case .track(let ino, let idx): return Location.track(ino, idx)
            }
        }
        var ids: [Location: Int] = [:]
        for (i, l) in locations.enumerated() { ids[l] = i }
        self.ids = ids
    }

    public func id(_ location: Location) -> Int? { ids[location] }

    public mutating func register(_ location: Location, id: Int) {
        precondition(id == locations.count && ids[location] == nil, "locations are registered once, in id order")
        locations.append(location)
        ids[location] = id
    }
    public subscript(_ id: Int) -> Location { locations[id] }

    public func view(of core: MirrorNode) -> NodeView {
        var v = NodeView()
        for (i, l) in locations.enumerated() {
            let s = core.state(of: l)
            if s.outOfSync { v.oos.insert(i) }
            switch s.token {
            case .moos: v.moos.insert(i)
            case .mos: v.mos.insert(i)
            case .none: break
            }
        }
        return v
    }

    public func ids(_ set: Set<Location>) -> Set<Int> { Set(set.compactMap { ids[$0] }) }
}

public enum MessageDescriber {
    public static func info(_ m: Message) -> MessageInfo {
        switch m {
        case .hello: return MessageInfo(kind: "hello")
        case .mark(let mk): return MessageInfo(kind: "mark", isMarkRequest: true, locationCount: mk.items.count)
        case .markReply: return MessageInfo(kind: "markReply")
        case .pull(let p): return MessageInfo(kind: "pull", isPullRequest: true, locationCount: p.locations.count)
        case .pullAnswer(let a): return MessageInfo(kind: a.prefetched ? "prefetch" : "pullAnswer")
        case .ack: return MessageInfo(kind: "ack")
        case .push: return MessageInfo(kind: "push")
        case .release(let r): return MessageInfo(kind: "release", locationCount: r.locations.count)
        }
    }

    public static func payload(_ p: Payload) -> String {
        let n = p.bytes.count / 8
        guard n * 8 == p.bytes.count else { return "\(p.bytes.count)B" }
        var slots: [UInt64] = []
        for k in 0..<n {
            var v: UInt64 = 0
            for i in 0..<8 { v |= UInt64(p.bytes[8 * k + i]) << (8 * UInt64(i)) }
            slots.append(v)
        }
        return "\(slots)"
    }

    public static func describe(_ m: Message) -> String {
        switch m {
        case .hello(let h): return "hello(epoch \(h.epoch), inc \(h.incarnation), clock \(h.clock))"
        case .mark(let mk):
            return "mark#\(mk.id)(\(mk.items.map { "\($0.location)\($0.needData ? "+data" : "")\($0.predicted ? "?" : "")" }.joined(separator: " ")))"
        case .markReply(let r):
            let granted: [String] = r.granted.map { g in
                guard let d = g.data else { return "\(g.location)" }
                let v = g.version.map { "\($0)" } ?? "?"
                return "\(g.location) data \(payload(d)) \(v)"
            }
            return "markReply#\(r.id)(granted \(granted) refused \(r.refused))"
        case .pull(let p): return "pull(\(p.locations)\(p.forceData ? " forced" : ""))"
        case .pullAnswer(let a):
            switch a.content {
            case .inSync: return "pullAnswer(\(a.location) in-sync\(a.prefetched ? " prefetched" : ""))"
            case .data(let p, let v): return "pullAnswer(\(a.location) \(payload(p)) \(v)\(a.prefetched ? " prefetched" : ""))"
            }
        case .ack(let r): return "ack(\(r.location) \(r.version)\(r.durable ? " durable" : ""))"
        case .push(let p): return "push(\(p.location) \(payload(p.payload)) \(p.version)\(p.durable ? " durable" : ""))"
        case .release(let r): return "release(\(r.locations))"
        }
    }
}
