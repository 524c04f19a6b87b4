// MirrorCore — configuration, rule switches for mutation testing, and the policy objects.
// Owns: every tunable limit of the core (units last in names) and the prediction/release policies.
// Must never: make a rule unsafe by default; every ProtocolRules switch is safe when true.

/// Safety rules of the protocol. All `true` by default. The simulator's tests switch off one at a time to prove
/// its checker notices; nothing else should ever change them.
public struct ProtocolRules: Hashable, Sendable {
    /// Hazard 2: clear MOS when answering a pull (the answerer must mark again before writing).
    public var giveUpTokenOnPull = true
    /// Hazard 2: clear OOS on an ack only if no write happened since the acknowledged version was read.
    public var ignoreStaleAcks = true
    /// Hazard 7: a mark is acknowledged only after MOOS (or contested) is durable.
    public var persistMOOSBeforeAck = true
    /// Hazard 7: the OOS superset is durable before a write under a new token is granted.
    public var persistSupersetBeforeWrite = true
    /// Hazard 8 / G2: kernel caches are invalidated before a mark is acknowledged.
    public var invalidateBeforeAck = true
    /// Hazard 4: received data are applied only if newer than the stored version.
    public var ignoreStalePushes = true
    /// Hazard 3: after a restart OOS := the persisted superset, so "in sync" is answered only with knowledge.
    public var answerInSyncOnlyIfKnown = true
    /// Hazard 1: break ties between concurrent marks (lower node id wins); off = both grant.
    public var tieBreakConcurrentMarks = true

    public init() {}
    public static let safe = ProtocolRules()
}

/// When this node gives up write tokens (MOS) it no longer uses (hazard 9).
public struct ReleasePolicy: Hashable, Sendable {
    public var enabled: Bool
    /// A MOS location untouched by local operations for this long, and in sync, is released.
    public var coldAfterTicks: Tick
    /// Upper bound of locations released per tick (spreads the work).
    public var maxReleasesPerTick: Int
    public init(enabled: Bool = true, coldAfterTicks: Tick = 2_000, maxReleasesPerTick: Int = 256) {
        self.enabled = enabled; self.coldAfterTicks = coldAfterTicks; self.maxReleasesPerTick = maxReleasesPerTick
    }
}

public struct MirrorConfig: Hashable, Sendable {
    public var node: NodeID
    public var peer: NodeID
    /// An operation waiting on the peer fails with `.peerTimeout` after this long (G4).
    public var peerTimeoutTicks: Tick
    /// Background pushes in flight at once (bounds memory and link queue).
    public var maxInFlightPushes: Int
    /// A location becomes eligible for background push this long after it became out of sync (coalesces rewrites).
    public var pushDelayTicks: Tick
    /// OOS tracks of the same inode following a pulled track, sent along with the answer (Fig. 4 after step 92).
    public var prefetchTracks: Int
    /// Upper bound of items in one mark (requested plus predicted).
    public var maxMarkItems: Int
    /// The Lamport clock is reserved (persisted) this far ahead, so a restart never reuses a version.
    public var clockReservationStep: UInt64
    public var release: ReleasePolicy
    public var rules: ProtocolRules

    public init(node: NodeID, peer: NodeID, peerTimeoutTicks: Tick = 30_000, maxInFlightPushes: Int = 64,
                pushDelayTicks: Tick = 0, prefetchTracks: Int = 4, maxMarkItems: Int = 256,
                clockReservationStep: UInt64 = 1 << 16, release: ReleasePolicy = ReleasePolicy(),
                rules: ProtocolRules = .safe) {
        precondition(node != peer, "a node and its peer need different ids")
        self.node = node; self.peer = peer; self.peerTimeoutTicks = peerTimeoutTicks
        self.maxInFlightPushes = maxInFlightPushes; self.pushDelayTicks = pushDelayTicks
        self.prefetchTracks = prefetchTracks; self.maxMarkItems = maxMarkItems
        self.clockReservationStep = clockReservationStep; self.release = release; self.rules = rules
    }
}

/// Chooses extra locations to mark with the ones an operation needs (the patent's "N tracks ahead", made adaptive).
/// The core drops suggestions it cannot mark (already held, MOOS set, busy) and caps the total at `maxMarkItems`.
public protocol PredictionPolicy: Sendable {
    /// `needed`: write locations of one operation that lack MOS, sorted. Append suggestions to `into`.
    mutating func predict(needed: [Location], hint: PredictionHint, into: inout [Location])
}

/// Never predicts (one mark per written location: the baseline for the simulator's figures).
public struct NoPrediction: PredictionPolicy {
    public init() {}
    public mutating func predict(needed: [Location], hint: PredictionHint, into: inout [Location]) {}
}

/// Sequential-window growth, whole small files, next inode numbers.
public struct StandardPrediction: PredictionPolicy {
    /// First window (tracks ahead) for a new stream (at least the length of the write that starts it), doubled each
    /// time the writer uses a window up, up to the maximum.
    public var initialWindowTracks: UInt64
    public var maxWindowTracks: UInt64
    /// Files of at most this many tracks are marked whole (with their inode record) on the first write.
    public var smallFileTracks: UInt64
    /// How many of the hint's next inode numbers to mark when an inode record is marked.
    public var nextInodeCount: Int
    /// Streams remembered (by inode); the oldest is forgotten beyond this.
    public var maxStreams: Int

    struct Stream { var ino: UInt64; var nextTrack: UInt64; var window: UInt64 }
    var streams: [Stream] = []

    public init(initialWindowTracks: UInt64 = 4, maxWindowTracks: UInt64 = 256, smallFileTracks: UInt64 = 16,
                nextInodeCount: Int = 8, maxStreams: Int = 32) {
        self.initialWindowTracks = initialWindowTracks; self.maxWindowTracks = maxWindowTracks
        self.smallFileTracks = smallFileTracks; self.nextInodeCount = nextInodeCount; self.maxStreams = maxStreams
    }

    public mutating func predict(needed: [Location], hint: PredictionHint, into: inout [Location]) {
        var markedRecord = false
        var i = 0
        while i < needed.count {
            let loc = needed[i]
            i += 1
            guard let t = loc.trackIndex else { markedRecord = true; continue }
            if let n = hint.fileTrackCount, n <= smallFileTracks {
                // Small file: the rest of it and its record will be written soon (editors, cp, tar).
                into.append(.inode(loc.ino))
                for k in 0..<n where k != t { into.append(.track(loc.ino, k)) }
                continue
            }
            // The run of consecutive tracks this operation needs from `t` is one step of a stream, however many
            // tracks it spans: a single large write must not double the window once per track (a random writer of
            // 1 MiB blocks would mark the maximum window on every write).
            var last = t
            while i < needed.count, needed[i].ino == loc.ino, let u = needed[i].trackIndex, u == last &+ 1 {
                last = u
                i += 1
            }
            let runTracks = last &- t &+ 1
            var window = max(initialWindowTracks, runTracks)
            if let k = streams.firstIndex(where: { $0.ino == loc.ino }) {
                let s = streams.remove(at: k)
                if t == s.nextTrack {
                    // The writer used the whole window up: the next one doubles.
                    window = min(max(s.window, runTracks) &* 2, max(maxWindowTracks, runTracks))
                } else if t >= s.nextTrack &- s.window && t < s.nextTrack {
                    // Inside the window: part of it went back (released cold, refused, pulled by the peer). The
                    // stream goes on with the same window; doubling here would mark more of what is given back.
                    window = max(s.window, runTracks)
                }
            }
            let end = last &+ 1 &+ window
            for k in (last &+ 1)..<end { into.append(.track(loc.ino, k)) }
            streams.append(Stream(ino: loc.ino, nextTrack: end, window: window))
            if streams.count > maxStreams { streams.removeFirst() }
        }
        if markedRecord {
            // Creates: the next inodes this node will allocate get their records marked ahead.
            for ino in hint.nextInodes.prefix(nextInodeCount) { into.append(.inode(ino)) }
        }
    }
}
