// InodeRecord: one inode's metadata as the store keeps it. This record is the "inode location" of the
// mirror protocol: it carries its own version. Never: file data (those are tracks in the data file).
import Glibc

public struct Timestamp: Equatable, Comparable, Sendable {
    public var nanoseconds: Int64
    public init(nanoseconds: Int64) { self.nanoseconds = nanoseconds }
    public init(seconds: Int, nanos: Int) { self.nanoseconds = Int64(seconds) * 1_000_000_000 + Int64(nanos) }
    public var seconds: Int { Int(nanoseconds.dividedFloor(by: 1_000_000_000)) }
    public var nanos: Int { Int(nanoseconds - Int64(seconds) * 1_000_000_000) }
    public static func < (a: Timestamp, b: Timestamp) -> Bool { a.nanoseconds < b.nanoseconds }

    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(seconds: ts.tv_sec, nanos: ts.tv_nsec)
    }
}

extension Int64 {
    fileprivate func dividedFloor(by d: Int64) -> Int64 {
        let q = self / d
        return (self % d != 0 && (self < 0) != (d < 0)) ? q - 1 : q
    }
}

public enum FileKind: Sendable, Equatable {
    case regular, directory, symlink, fifo, socket, characterDevice, blockDevice

    public init?(mode: UInt32) {
        switch mode & UInt32(S_IFMT) {
        case UInt32(S_IFREG): self = .regular
        case UInt32(S_IFDIR): self = .directory
        case UInt32(S_IFLNK): self = .symlink
        case UInt32(S_IFIFO): self = .fifo
        case UInt32(S_IFSOCK): self = .socket
        case UInt32(S_IFCHR): self = .characterDevice
        case UInt32(S_IFBLK): self = .blockDevice
        default: return nil
        }
    }
}

public struct InodeRecord: Equatable, Sendable {
    public static let rootIno: UInt64 = 1

    public var ino: UInt64
    /// Full st_mode: type bits and permission bits.
    public var mode: UInt32
    public var uid: UInt32
    public var gid: UInt32
    public var nlink: UInt32
    public var size: UInt64
    public var atime: Timestamp
    public var mtime: Timestamp
    public var ctime: Timestamp
    public var rdev: UInt64
    /// Version of this inode location (Lamport counter << 16 | node index).
    public var version: UInt64
    /// A symlink's target; empty for everything else.
    public var target: [UInt8]
    /// 512-byte blocks the data file really occupies (holes cost nothing): a local fact, never mirrored.
    public var allocatedBlocks: UInt64 = 0

    public init(
        ino: UInt64, mode: UInt32, uid: UInt32, gid: UInt32, nlink: UInt32, size: UInt64 = 0,
        time: Timestamp, rdev: UInt64 = 0, version: UInt64 = 0, target: [UInt8] = []
    ) {
        self.ino = ino
        self.mode = mode
        self.uid = uid
        self.gid = gid
        self.nlink = nlink
        self.size = size
        self.atime = time
        self.mtime = time
        self.ctime = time
        self.rdev = rdev
        self.version = version
        self.target = target
    }

    /// A placeholder for a directory listing: an inode known by number whose record is not here yet (mode 0
    /// reads as DT_UNKNOWN).
    public init(unknownKind ino: UInt64) {
        self.init(ino: ino, mode: 0, uid: 0, gid: 0, nlink: 1, time: Timestamp(nanoseconds: 0))
    }

    public var kind: FileKind { FileKind(mode: mode) ?? .regular }
    public var isDirectory: Bool { kind == .directory }
    public var permissions: UInt32 { mode & 0o7777 }
}
