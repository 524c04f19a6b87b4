// Locations: a store location (an inode record, or one track of a file) as an image of bytes plus its version —
// what the mirror reads to answer a pull or push, and applies when the peer's copy arrives. Owns the image
// encoding (explicit little-endian, versioned by its first byte). Never: decide whether to send or apply (the
// protocol core does), or apply an image that is not newer than what the store holds.
import Glibc
import CLinuxShims

public enum StoreLocation: Hashable, Sendable, CustomStringConvertible {
    /// An inode's metadata: attributes, symlink target, xattrs, and a directory's entries.
    case inode(UInt64)
    /// Track `index` of a regular file's data.
    case track(UInt64, UInt64)

    public var ino: UInt64 {
        switch self {
        case .inode(let ino), .track(let ino, _): return ino
        }
    }

    public var description: String {
        switch self {
        case .inode(let ino): return "inode \(ino)"
        case .track(let ino, let index): return "track \(index) of inode \(ino)"
        }
    }
}

/// A location's contents and the version they carry. Version 0: never written (a hole, an inode never created).
public struct LocationImage: Equatable, Sendable {
    public var version: UInt64
    public var bytes: [UInt8]
    public init(version: UInt64, bytes: [UInt8]) {
        self.version = version
        self.bytes = bytes
    }
}

public enum LocationImageError: Error, Equatable {
    case truncated
    case unknownFormat(UInt8)
    case trailingBytes
    case tooLarge
    case wrongKind
}

/// The decoded form of an inode image.
public struct InodeImage: Equatable, Sendable {
    public static let format: UInt8 = 1
    /// nil: the inode does not exist (deleted, or never created) at this version.
    public var record: InodeRecord?
    public var xattrs: [(name: [UInt8], value: [UInt8])]
    public var entries: [(name: [UInt8], ino: UInt64)]

    public static func == (a: InodeImage, b: InodeImage) -> Bool {
        a.record == b.record && a.xattrs.elementsEqual(b.xattrs, by: { $0.name == $1.name && $0.value == $1.value })
            && a.entries.elementsEqual(b.entries, by: { $0.name == $1.name && $0.ino == $1.ino })
    }

    public init(record: InodeRecord?, xattrs: [(name: [UInt8], value: [UInt8])] = [], entries: [(name: [UInt8], ino: UInt64)] = []) {
        self.record = record
        self.xattrs = xattrs
        self.entries = entries
    }

    public func encoded() -> [UInt8] {
        var w = ByteWriter()
        w.u8(Self.format)
        guard let r = record else {
            w.u8(0)
            return w.bytes
        }
        w.u8(1)
        w.u32(r.mode)
        w.u32(r.uid)
        w.u32(r.gid)
        w.u32(r.nlink)
        w.u64(r.size)
        w.u64(UInt64(bitPattern: r.atime.nanoseconds))
        w.u64(UInt64(bitPattern: r.mtime.nanoseconds))
        w.u64(UInt64(bitPattern: r.ctime.nanoseconds))
        w.u64(r.rdev)
        w.blob32(r.target)
        w.u32(UInt32(xattrs.count))
        for x in xattrs {
            w.blob16(x.name)
            w.blob32(x.value)
        }
        w.u32(UInt32(entries.count))
        for e in entries {
            w.blob16(e.name)
            w.u64(e.ino)
        }
        return w.bytes
    }

    public static func decode(_ bytes: [UInt8], ino: UInt64, version: UInt64) throws -> InodeImage {
        var r = ByteReader(bytes)
        let format = try r.u8()
        guard format == Self.format else { throw LocationImageError.unknownFormat(format) }
        guard try r.u8() == 1 else {
            guard r.atEnd else { throw LocationImageError.trailingBytes }
            return InodeImage(record: nil)
        }
        var record = InodeRecord(
            ino: ino, mode: try r.u32(), uid: try r.u32(), gid: try r.u32(), nlink: try r.u32(), size: try r.u64(),
            time: Timestamp(nanoseconds: 0), version: version)
        record.atime = Timestamp(nanoseconds: Int64(bitPattern: try r.u64()))
        record.mtime = Timestamp(nanoseconds: Int64(bitPattern: try r.u64()))
        record.ctime = Timestamp(nanoseconds: Int64(bitPattern: try r.u64()))
        record.rdev = try r.u64()
        record.target = try r.blob32()
        var image = InodeImage(record: record)
        let xattrCount = try r.u32()
        for _ in 0..<xattrCount { image.xattrs.append((try r.blob16(), try r.blob32())) }
        let entryCount = try r.u32()
        for _ in 0..<entryCount { image.entries.append((try r.blob16(), try r.u64())) }
        guard r.atEnd else { throw LocationImageError.trailingBytes }
        return image
    }
}

extension Store {
    private func trackRange(_ index: UInt64) -> (offset: UInt64, length: Int) {
        (index * UInt64(identity.trackBytes), identity.trackBytes)
    }

    /// The version the store holds for `location` (0: never written; a deleted inode keeps its tombstone's).
    public func storedVersion(_ location: StoreLocation) throws -> UInt64 {
        switch location {
        case .inode(let ino):
            if let r = try inode(ino) { return r.version }
            let s = try database.statement("SELECT version FROM tombstones WHERE ino = ?").bind(.u64(ino))
            return try s.step() ? UInt64(bitPattern: s.int(0)) : 0
        case .track(let ino, let index):
            return try trackVersion(ino: ino, index: index) ?? 0
        }
    }

    /// Reads a location's image. Trailing zeros of a track are left out: they read back as zeros (a hole).
    public func readLocation(_ location: StoreLocation) throws -> LocationImage {
        let version = try storedVersion(location)
        switch location {
        case .inode(let ino):
            guard let record = try inode(ino) else { return LocationImage(version: version, bytes: InodeImage(record: nil).encoded()) }
            var image = InodeImage(record: record)
            for name in try xattrNames(ino: ino) {
                image.xattrs.append((name, try xattr(ino: ino, name: name) ?? []))
            }
            if record.isDirectory {
                var after: Int64 = 0
                while true {
                    let batch = try entries(parent: ino, after: after, limit: 4096)
                    guard let last = batch.last else { break }
                    image.entries += batch.map { ($0.name, $0.ino) }
                    after = last.cookie
                }
            }
            return LocationImage(version: version, bytes: image.encoded())
        case .track(let ino, let index):
            let fd = try openData(ino, create: false)
            guard fd >= 0 else { return LocationImage(version: version, bytes: []) }
            defer { Glibc.close(fd) }
            let (offset, length) = trackRange(index)
            var buffer = [UInt8](repeating: 0, count: length)
            let n = buffer.withUnsafeMutableBytes { pread(fd, $0.baseAddress, length, off_t(offset)) }
            guard n >= 0 else { throw FSError.fromErrno() }
            var end = n
            while end > 0 && buffer[end - 1] == 0 { end -= 1 }
            buffer.removeSubrange(end...)
            return LocationImage(version: version, bytes: buffer)
        }
    }

    /// Applies an image from the peer if its version is newer than the stored one; returns the version the store
    /// holds afterwards. Call inside a transaction: an inode image changes several tables at once.
    /// `replacingEqual`: also if the versions are equal — for a copy whose bytes may not be its version's (a local
    /// write that died between its data write and its commit left new bytes under the old version).
    @discardableResult
    public func applyLocation(_ location: StoreLocation, _ image: LocationImage, force: Bool = false,
                              replacingEqual: Bool = false) throws -> UInt64 {
        let stored = try storedVersion(location)
        guard image.version > stored || (force && image.version != stored) || (replacingEqual && image.version == stored && stored != 0)
        else { return stored }
        if case .track(let ino, _) = location, try inode(ino) == nil, try storedVersion(.inode(ino)) != 0 {
            // The inode was deleted here (its tombstone is newer than anything of it still travelling): its
            // tracks must not bring back a data file.
            return image.version
        }
        noteSeenVersion(image.version)
        switch location {
        case .inode(let ino):
            let decoded = try InodeImage.decode(image.bytes, ino: ino, version: image.version)
            guard var record = decoded.record else {
                if try inode(ino) != nil {
                    try database.statement("DELETE FROM dirents WHERE parent = ?").bind(.u64(ino)).run()
                }
                try deleteInode(ino, version: image.version)
                return image.version
            }
            record.version = image.version
            if try inode(ino) == nil {
                try database.statement("DELETE FROM tombstones WHERE ino = ?").bind(.u64(ino)).run()
                try insertInode(record)
            } else {
                try updateInode(record)
            }
            try database.statement("DELETE FROM xattrs WHERE ino = ?").bind(.u64(ino)).run()
            for x in decoded.xattrs { try setXattr(ino: ino, name: x.name, value: x.value) }
            if record.isDirectory { try replaceEntries(of: ino, with: decoded.entries) }
            if record.kind == .regular {
                let fd = try openData(ino, create: true)
                defer { Glibc.close(fd) }
                guard ftruncate(fd, off_t(record.size)) == 0 else { throw FSError.fromErrno() }
                try setAllocatedBlocks(ino, Store.allocatedBlocks(ofOpenFile: fd))
            }
        case .track(let ino, let index):
            let (offset, length) = trackRange(index)
            guard image.bytes.count <= length else { throw LocationImageError.tooLarge }
            let fd = try openData(ino, create: true)
            defer { Glibc.close(fd) }
            var written = 0
            while written < image.bytes.count {
                // A short write (the disk filled midway) is retried for the rest, so a failure reports its own errno
                // (ENOSPC), not whatever an earlier call left in errno.
                let n = image.bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress! + written, image.bytes.count - written, off_t(offset) + off_t(written)) }
                guard n > 0 else { throw n == 0 ? FSError.noSpace : FSError.fromErrno() }
                written += n
            }
            // The rest of the track is zeros in the image: make it a hole here too (never beyond the file's end).
            let rest = UInt64(length - image.bytes.count)
            if rest > 0 {
                let rc = twin_fallocate(
                    fd, twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, off_t(offset + UInt64(image.bytes.count)), off_t(rest))
                guard rc == 0 else { throw FSError.fromErrno() }
            }
            try setTrackVersions(ino: ino, tracks: index...index, version: image.version)
            try setAllocatedBlocks(ino, Store.allocatedBlocks(ofOpenFile: fd))
        }
        return image.version
    }

    private func setAllocatedBlocks(_ ino: UInt64, _ blocks: UInt64) throws {
        try database.statement("UPDATE inodes SET blocks = ? WHERE ino = ?").bind(.u64(blocks), .u64(ino)).run()
    }

    /// Makes a directory's entries equal to `entries`, keeping the position (cookie) of every unchanged name.
    private func replaceEntries(of parent: UInt64, with entries: [(name: [UInt8], ino: UInt64)]) throws {
        var current: [[UInt8]: UInt64] = [:]
        var after: Int64 = 0
        while true {
            let batch = try self.entries(parent: parent, after: after, limit: 4096)
            guard let last = batch.last else { break }
            for e in batch { current[e.name] = e.ino }
            after = last.cookie
        }
        for e in entries {
            switch current.removeValue(forKey: e.name) {
            case nil: try insertEntry(parent: parent, name: e.name, ino: e.ino)
            case let ino? where ino != e.ino: try retargetEntry(parent: parent, name: e.name, ino: e.ino)
            default: break
            }
        }
        for name in current.keys { try removeEntry(parent: parent, name: name) }
    }
}

struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func blob16(_ b: [UInt8]) {
        precondition(b.count <= UInt16.max)
        u16(UInt16(b.count))
        bytes += b
    }
    mutating func blob32(_ b: [UInt8]) {
        u32(UInt32(b.count))
        bytes += b
    }
}

struct ByteReader {
    let bytes: [UInt8]
    var position = 0
    init(_ bytes: [UInt8]) { self.bytes = bytes }
    var atEnd: Bool { position == bytes.count }

    mutating func take(_ n: Int) throws -> ArraySlice<UInt8> {
        guard n >= 0, bytes.count - position >= n else { throw LocationImageError.truncated }
        defer { position += n }
        return bytes[position..<position + n]
    }
    mutating func u8() throws -> UInt8 { try take(1).first! }
    mutating func u16() throws -> UInt16 { try take(2).reversed().reduce(0) { $0 << 8 | UInt16($1) } }
    mutating func u32() throws -> UInt32 { try take(4).reversed().reduce(0) { $0 << 8 | UInt32($1) } }
    mutating func u64() throws -> UInt64 { try take(8).reversed().reduce(0) { $0 << 8 | UInt64($1) } }
    mutating func blob16() throws -> [UInt8] { Array(try take(Int(try u16()))) }
    mutating func blob32() throws -> [UInt8] { Array(try take(Int(try u32()))) }
}
