// MirrorState: the mirror's durable per-location state (the persisted part of bitmaps 60/62/64), its clock
// reservation and incarnation, and the versions a granted operation must stamp on what it writes.
// Owns: the `mirror_state` table and the mirror counters. Never: decide a state (MirrorCore does that); the
// store only keeps what it is told, durably once `syncMetadata` returns.
import CLinuxShims
import Glibc

extension Store {
    /// One persisted location state, in the core's terms (`slot` 0 = inode record, `i + 1` = track i).
    public struct MirrorStateRow: Equatable, Sendable {
        public var ino: UInt64
        public var slot: UInt64
        public var state: UInt8
        public init(ino: UInt64, slot: UInt64, state: UInt8) { self.ino = ino; self.slot = slot; self.state = state }
    }

    static let mirrorSchemaSQL = """
        CREATE TABLE IF NOT EXISTS mirror_state(ino INTEGER NOT NULL, slot INTEGER NOT NULL, state INTEGER NOT NULL,
            PRIMARY KEY(ino, slot)) WITHOUT ROWID;
        INSERT OR IGNORE INTO counters(name, value) VALUES ('mirror_clock', 0), ('mirror_incarnation', 0);
        """

    /// Creates the mirror's tables in stores made before they existed (idempotent).
    public func prepareMirrorState() throws {
        try database.execute(Self.mirrorSchemaSQL)
        // A paired store starts out joining (it may be empty while its peer is not); the first mount records it.
        let joining = identity.pairing != nil ? 1 : 0
        try database.execute("INSERT OR IGNORE INTO counters(name, value) VALUES ('mirror_joining', \(joining))")
        try database.execute(
            "INSERT OR IGNORE INTO counters(name, value) VALUES " + Self.promotionCounters.map { "('\($0)', 0)" }.joined(separator: ", "))
    }

    // MARK: promotion (Docs/OPERATIONS.md "Losing a node")

    /// What this store knows about operator promotions of the pair.
    public struct PromotionRecord: Equatable, Sendable {
        /// How many times an operator promoted this node.
        public var promotion: UInt64
        /// The peer's promotion count when the two last agreed (a connection went ahead, or this node demoted).
        public var peerPromotionSeen: UInt64
        /// Promoted and not yet reconnected to a peer that gave way: every location is served locally.
        public var sole: Bool
        /// Demoted and rejoining: the local copy of what the peer has not sent yet is not trusted.
        public var adopting: Bool
        /// The peer's claim (promotion, seen) at the last split-brain refusal, for `twinfs resolve`; nil if none.
        public var splitBrainPeer: SplitBrainClaim?
        public init(promotion: UInt64, peerPromotionSeen: UInt64, sole: Bool, adopting: Bool, splitBrainPeer: SplitBrainClaim?) {
            self.promotion = promotion; self.peerPromotionSeen = peerPromotionSeen; self.sole = sole
            self.adopting = adopting; self.splitBrainPeer = splitBrainPeer
        }
    }

    public struct SplitBrainClaim: Equatable, Sendable {
        public var promotion: UInt64
        public var peerPromotionSeen: UInt64
        public init(promotion: UInt64, peerPromotionSeen: UInt64) { self.promotion = promotion; self.peerPromotionSeen = peerPromotionSeen }
    }

    static let promotionCounters = [
        "mirror_promotion", "mirror_peer_promotion_seen", "mirror_sole", "mirror_adopting", "mirror_split_brain",
        "mirror_split_promotion", "mirror_split_seen",
    ]

    public func promotionRecord() throws -> PromotionRecord {
        defer { database.releaseStatements() }
        let split = try counter("mirror_split_brain") != 0
        return PromotionRecord(
            promotion: try counter("mirror_promotion"), peerPromotionSeen: try counter("mirror_peer_promotion_seen"),
            sole: try counter("mirror_sole") != 0, adopting: try counter("mirror_adopting") != 0,
            splitBrainPeer: split
                ? SplitBrainClaim(promotion: try counter("mirror_split_promotion"), peerPromotionSeen: try counter("mirror_split_seen"))
                : nil)
    }

    /// The operator promoted this node: one more promotion, and sole until a peer gives way. Durable on return.
    public func recordPromotion() throws -> PromotionRecord {
        try database.transaction {
            try setCounter("mirror_promotion", try counter("mirror_promotion") + 1)
            try setCounter("mirror_sole", 1)
            try setCounter("mirror_split_brain", 0)
        }
        try syncMetadata()
        return try promotionRecord()
    }

    /// This node gives way to a promoted peer: forgets every persisted location state (its copy is no longer
    /// trusted), rejoins (adopting the peer's copy), and records the peer's promotion as seen. Durable on return.
    /// The caller has preserved what this node had not replicated before calling.
    public func recordDemotion(peerPromotion: UInt64) throws {
        try database.transaction {
            try database.statement("DELETE FROM mirror_state").run()
            try database.statement("UPDATE counters SET value = 1 WHERE name = 'mirror_joining'").run()
            try setCounter("mirror_adopting", 1)
            try setCounter("mirror_sole", 0)
            try setCounter("mirror_split_brain", 0)
            try setCounter("mirror_peer_promotion_seen", peerPromotion)
        }
        try syncMetadata()
    }

    /// A connection went ahead: the peer's promotion count is the one this node agrees with now.
    public func recordPeerPromotionSeen(_ peerPromotion: UInt64) throws {
        try database.transaction {
            try setCounter("mirror_peer_promotion_seen", peerPromotion)
            try setCounter("mirror_split_brain", 0)
        }
    }

    /// Both nodes were promoted since they last agreed: remembers the peer's claim so `twinfs resolve` can settle.
    public func recordSplitBrain(peer: SplitBrainClaim) throws {
        try database.transaction {
            try setCounter("mirror_split_brain", 1)
            try setCounter("mirror_split_promotion", peer.promotion)
            try setCounter("mirror_split_seen", peer.peerPromotionSeen)
        }
        try syncMetadata()
    }

    /// `twinfs resolve --keep`: `keepThisNode` counts the peer's promotion as seen (the peer gives way at the
    /// next connection); otherwise this node's own promotion is taken back to what the peer saw (this node gives
    /// way). Needs a recorded split brain.
    public func resolveSplitBrain(keepThisNode: Bool) throws {
        guard let peer = try promotionRecord().splitBrainPeer else {
            throw StoreError.invalidArgument("no split brain is recorded in this store (the nodes have not refused each other)")
        }
        try database.transaction {
            if keepThisNode {
                try setCounter("mirror_peer_promotion_seen", peer.promotion)
            } else {
                try setCounter("mirror_promotion", peer.peerPromotionSeen)
                try setCounter("mirror_sole", 0)
            }
            try setCounter("mirror_split_brain", 0)
        }
        try syncMetadata()
    }

    /// Everything the mirror persisted, for a restart.
    public func loadMirrorState() throws -> (rows: [MirrorStateRow], clockReservation: UInt64, incarnation: UInt64, joining: Bool) {
        var rows: [MirrorStateRow] = []
        let s = try database.statement("SELECT ino, slot, state FROM mirror_state")
        while try s.step() {
            rows.append(
                MirrorStateRow(ino: UInt64(bitPattern: s.int(0)), slot: UInt64(bitPattern: s.int(1)), state: UInt8(truncatingIfNeeded: s.int(2))))
        }
        let c = try database.statement(
            "SELECT name, value FROM counters WHERE name IN ('mirror_clock', 'mirror_incarnation', 'mirror_joining')")
        var clock: UInt64 = 0
        var incarnation: UInt64 = 0
        var joining = false
        while try c.step() {
            switch c.text(0) {
            case "mirror_clock": clock = UInt64(bitPattern: c.int(1))
            case "mirror_incarnation": incarnation = UInt64(bitPattern: c.int(1))
            default: joining = c.int(1) != 0
            }
        }
        return (rows, clock, incarnation, joining)
    }

    /// Records a new incarnation (one per mount) and returns it.
    public func nextMirrorIncarnation() throws -> UInt64 {
        try database.transaction {
            try database.statement("UPDATE counters SET value = value + 1 WHERE name = 'mirror_incarnation'").run()
            let s = try database.statement("SELECT value FROM counters WHERE name = 'mirror_incarnation'")
            guard try s.step() else { throw StoreError.corrupt(path: root, detail: "counter mirror_incarnation missing") }
            return UInt64(bitPattern: s.int(0))
        }
    }

    /// Writes a batch of states (state 0 deletes the row) and possibly a clock reservation, in the caller's
    /// transaction. Durable after the next `syncMetadata`.
    public func writeMirrorState(_ rows: [MirrorStateRow], clockReservation: UInt64?, joinCompleted: Bool = false, sole: Bool? = nil) throws {
        let upsert = try database.statement("INSERT OR REPLACE INTO mirror_state(ino, slot, state) VALUES (?,?,?)")
        let delete = try database.statement("DELETE FROM mirror_state WHERE ino = ? AND slot = ?")
        for r in rows {
            if r.state == 0 {
                try delete.bind(.u64(r.ino), .u64(r.slot)).run()
            } else {
                try upsert.bind(.u64(r.ino), .u64(r.slot), .int(Int64(r.state))).run()
            }
        }
        if let clockReservation {
            try database.statement("UPDATE counters SET value = ? WHERE name = 'mirror_clock'").bind(.u64(clockReservation)).run()
        }
        if joinCompleted {
            try database.statement(
                "UPDATE counters SET value = 0 WHERE name IN ('mirror_joining', 'mirror_adopting')").run()
        }
        if let sole {
            try setCounter("mirror_sole", sole ? 1 : 0)
        }
    }

    /// Counts of persisted states by value (for `twinfs status` on a store that is not mounted).
    public func mirrorStateCounts() throws -> [UInt8: Int] {
        var out: [UInt8: Int] = [:]
        let s = try database.statement("SELECT state, COUNT(*) FROM mirror_state GROUP BY state")
        while try s.step() { out[UInt8(truncatingIfNeeded: s.int(0))] = Int(s.int(1)) }
        return out
    }

    /// Makes the data file of `ino` durable (its track contents), if it exists.
    public func syncData(_ ino: UInt64) throws {
        let fd = try openData(ino, create: false)
        guard fd >= 0 else { return }
        defer { Glibc.close(fd) }
        guard twin_fdatasync(fd) == 0 else { throw FSError.fromErrno() }
    }

    // MARK: stamps

    /// The version to store for a location the running operation writes: the one the mirror granted for it, or
    /// (without a mirror) a fresh local one. Call with the volume lock held.
    public func version(for location: StoreLocation) throws -> UInt64 {
        if let v = stamps[location] {
            stampsUsed.insert(location)
            return v
        }
        if mirrored { unstampedWrites += 1 }
        return try nextVersion()
    }

    /// Sets the versions of tracks `range` of `ino`, each from its own stamp.
    public func stampTracks(ino: UInt64, tracks range: ClosedRange<UInt64>) throws {
        if stamps.isEmpty {
            try setTrackVersions(ino: ino, tracks: range, version: try version(for: .track(ino, range.lowerBound)))
            return
        }
        for index in range {
            try setTrackVersions(ino: ino, tracks: index...index, version: try version(for: .track(ino, index)))
        }
    }
}
