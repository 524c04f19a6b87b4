// Checksums: what a location's bytes summed to when this node last had them in hand (sent them to the peer, or
// stored the peer's), keyed by the version they carried, and what `twinfs verify` needs of a location now.
// Owns: the `checksums` table, the checksum of an image (SHA-256, first `checksumBytes` bytes, over a canonical
// form), the walk over every location, and rewriting a location at its own version (repair).
// Never: record the checksum of bytes nobody vouched for (a local write leaves the row stale, never wrong: the row
// is valid only for its version), or decide which copy is right (the verifier does).
import Crypto
import Glibc

extension Store {
    /// Bytes of a location checksum kept and sent (a truncated SHA-256: collisions need 2^64 tries).
    public static let checksumBytes = 16

    static let checksumSchemaSQL = """
        CREATE TABLE IF NOT EXISTS checksums(ino INTEGER NOT NULL, slot INTEGER NOT NULL, version INTEGER NOT NULL,
            sum BLOB NOT NULL, PRIMARY KEY(ino, slot)) WITHOUT ROWID;
        """

    /// Creates the checksum table in stores made before it existed (idempotent).
    public func prepareChecksums() throws {
        try database.execute(Self.checksumSchemaSQL)
    }

    /// The core's slot of a location: 0 is the inode record, `i + 1` track i.
    public static func slot(of location: StoreLocation) -> UInt64 {
        switch location {
        case .inode: return 0
        case .track(_, let index): return index + 1
        }
    }

    public static func location(ino: UInt64, slot: UInt64) -> StoreLocation {
        slot == 0 ? .inode(ino) : .track(ino, slot - 1)
    }

    /// The checksum of `bytes` as an image of `location`. An inode image is summed in a canonical form: without
    /// its access time (relatime updates it locally, without a new version) and with its entries in name order
    /// (each node keeps a directory's entries in its own insertion order). An image that does not decode is
    /// summed as it is: it is a difference all the same.
    public static func checksum(of bytes: [UInt8], at location: StoreLocation) -> [UInt8] {
        var canonical = bytes
        if case .inode(let ino) = location, var image = try? InodeImage.decode(bytes, ino: ino, version: 0) {
            image.record?.atime = Timestamp(nanoseconds: 0)
            image.entries.sort { $0.name.lexicographicallyPrecedes($1.name) }
            image.xattrs.sort { $0.name.lexicographicallyPrecedes($1.name) }
            canonical = image.encoded()
        }
        return Array(SHA256.hash(data: canonical).prefix(checksumBytes))
    }

    /// A recorded checksum of a location.
    public struct RecordedChecksum: Equatable, Sendable {
        public var version: UInt64
        public var sum: [UInt8]
        public init(version: UInt64, sum: [UInt8]) { self.version = version; self.sum = sum }
    }

    /// Records what `location` summed to at `version`, in the caller's transaction (if any). A row already
    /// recorded for the same version is kept: returns false if its sum differs (one of the two reads was of
    /// corrupt bytes, and the first one is the one that travelled or arrived), true otherwise.
    @discardableResult
    public func recordChecksum(_ location: StoreLocation, version: UInt64, sum: [UInt8]) throws -> Bool {
        if let old = try recordedChecksum(location), old.version == version { return old.sum == sum }
        try database.statement("INSERT OR REPLACE INTO checksums(ino, slot, version, sum) VALUES (?,?,?,?)")
            .bind(.u64(location.ino), .u64(Self.slot(of: location)), .u64(version), .blob(sum)).run()
        return true
    }

    /// Replaces the recorded checksum whatever was recorded (after a repair wrote known-good bytes).
    public func replaceChecksum(_ location: StoreLocation, version: UInt64, sum: [UInt8]) throws {
        try database.statement("INSERT OR REPLACE INTO checksums(ino, slot, version, sum) VALUES (?,?,?,?)")
            .bind(.u64(location.ino), .u64(Self.slot(of: location)), .u64(version), .blob(sum)).run()
    }

    public func recordedChecksum(_ location: StoreLocation) throws -> RecordedChecksum? {
        let s = try database.statement("SELECT version, sum FROM checksums WHERE ino = ? AND slot = ?")
            .bind(.u64(location.ino), .u64(Self.slot(of: location)))
        return try s.step() ? RecordedChecksum(version: UInt64(bitPattern: s.int(0)), sum: s.blob(1)) : nil
    }

    /// Forgets the rows of an inode (its records are gone for good).
    public func forgetChecksums(ino: UInt64) throws {
        try database.statement("DELETE FROM checksums WHERE ino = ?").bind(.u64(ino)).run()
    }

    public func checksumRowCount() throws -> Int {
        let s = try database.statement("SELECT count(*) FROM checksums")
        _ = try s.step()
        return Int(s.int(0))
    }

    // MARK: verify

    /// One location as verify sees it on this node now.
    public struct LocationCheck: Equatable, Sendable {
        public var version: UInt64
        /// The checksum of the current bytes; nil if they could not be read (a failed read is a difference).
        public var sum: [UInt8]?
        /// The current bytes disagree with the checksum recorded for the current version.
        public var mismatchesRecorded: Bool
        /// A checksum is recorded for the current version (and the current bytes agree with it unless `mismatchesRecorded`).
        public var recordedForVersion: Bool
        /// Why the location could not be read.
        public var error: String?
        public init(version: UInt64, sum: [UInt8]?, mismatchesRecorded: Bool, recordedForVersion: Bool, error: String? = nil) {
            self.version = version; self.sum = sum; self.mismatchesRecorded = mismatchesRecorded
            self.recordedForVersion = recordedForVersion; self.error = error
        }
    }

    /// Reads and sums a location now, against the checksum recorded for its version. Never throws: a store that
    /// cannot read it answers with the reason (the version is 0 if even that was unreadable).
    public func checkLocation(_ location: StoreLocation) -> LocationCheck {
        defer { database.releaseStatements() }
        let version: UInt64
        do {
            version = try storedVersion(location)
        } catch {
            return LocationCheck(version: 0, sum: nil, mismatchesRecorded: false, recordedForVersion: false, error: "\(error)")
        }
        let recorded = (try? recordedChecksum(location)).flatMap { $0 }.flatMap { $0.version == version ? $0.sum : nil }
        do {
            let image = try readLocation(location)
            let sum = Self.checksum(of: image.bytes, at: location)
            return LocationCheck(
                version: image.version, sum: sum, mismatchesRecorded: recorded.map { $0 != sum } ?? false,
                recordedForVersion: recorded != nil)
        } catch {
            return LocationCheck(version: version, sum: nil, mismatchesRecorded: recorded != nil, recordedForVersion: recorded != nil,
                                 error: "\(error)")
        }
    }

    /// Up to `limit` locations after `cursor` (nil: from the start), inode records first (by number), then tracks
    /// (by inode and index): a walk that a concurrent create or delete never makes skip or repeat much, and that
    /// costs one index range per batch.
    public func locations(after cursor: StoreLocation?, limit: Int) throws -> [StoreLocation] {
        defer { database.releaseStatements() }
        var out: [StoreLocation] = []
        var trackCursor: (ino: UInt64, index: UInt64)?
        switch cursor {
        case nil, .inode:
            let after: Int64 = cursor.map { Int64(bitPattern: $0.ino) } ?? -1
            let s = try database.statement("SELECT ino FROM inodes WHERE ino > ? ORDER BY ino LIMIT ?").bind(.int(after), .int(Int64(limit)))
            while try s.step() { out.append(.inode(UInt64(bitPattern: s.int(0)))) }
            if out.count == limit { return out }
        case .track(let ino, let index):
            trackCursor = (ino, index)
        }
        let s: SQLiteStatement
        if let c = trackCursor {
            s = try database.statement("SELECT ino, idx FROM tracks WHERE (ino, idx) > (?, ?) ORDER BY ino, idx LIMIT ?")
                .bind(.u64(c.ino), .u64(c.index), .int(Int64(limit - out.count)))
        } else {
            s = try database.statement("SELECT ino, idx FROM tracks ORDER BY ino, idx LIMIT ?").bind(.int(Int64(limit - out.count)))
        }
        while try s.step() { out.append(.track(UInt64(bitPattern: s.int(0)), UInt64(bitPattern: s.int(1)))) }
        return out
    }

    /// Rewrites `location` with `image` at the version it already has (a repair: this copy's bytes are corrupt, the
    /// image is the peer's copy of the same version) and records the image's checksum. Call with the volume lock
    /// held; false if the stored version is not the image's any more (a write came first: nothing to repair).
    public func rewriteLocation(_ location: StoreLocation, _ image: LocationImage) throws -> Bool {
        defer { database.releaseStatements() }
        return try database.transaction {
            guard try storedVersion(location) == image.version, image.version != 0 else { return false }
            // applyLocation writes only what is newer: the stored version is cleared inside this transaction so
            // that the same version applies, and the write puts it back.
            switch location {
            case .inode(let ino):
                if try inode(ino) != nil {
                    try database.statement("UPDATE inodes SET version = 0 WHERE ino = ?").bind(.u64(ino)).run()
                } else {
                    try database.statement("UPDATE tombstones SET version = 0 WHERE ino = ?").bind(.u64(ino)).run()
                }
            case .track(let ino, let index):
                try setTrackVersions(ino: ino, tracks: index...index, version: 0)
            }
            let stored = try applyLocation(location, image)
            guard try storedVersion(location) == image.version, stored == image.version else {
                throw StoreError.corrupt(path: root, detail: "rewriting \(location) at version \(image.version) did not take")
            }
            try replaceChecksum(location, version: image.version, sum: Self.checksum(of: image.bytes, at: location))
            return true
        }
    }
}
