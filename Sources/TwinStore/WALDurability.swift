// WALDurability: whether an fsync may make the SQLite WAL durable with the data file's device flush instead of a
// flush of its own. A device flush makes durable every write the device completed before it was issued. Once a
// full sync (fdatasync) covered the WAL's blocks — allocated, written, no truncation since — SQLite rewriting
// them changes no filesystem metadata on ext4 outside data=journal (blocks are rewritten in place: no
// copy-on-write, no shared extents). Then writing the WAL's dirty pages out and waiting for them (no flush) before
// the data file's fdatasync makes both durable with one device flush instead of two.
// Owns: the filesystem verdict (taken once, at open) and the extent of the WAL the last full sync covered.
// Never: flush anything itself, or trust a filesystem it does not know (tmpfs, btrfs, XFS, ...: full syncs).
import CLinuxShims
import Foundation
import Glibc
import Synchronization

final class WALDurability: Sendable {
    /// The store's filesystem rewrites allocated blocks in place, without metadata (decided at open).
    let rewritesInPlace: Bool
    private struct Covered {
        /// Bumped by every truncation of the WAL: a full sync that began before one covers nothing now.
        var generation: UInt64 = 0
        /// Bytes of the WAL file the last full sync covered (0: none since open or the last truncation).
        var bytes: Int64 = 0
    }
    private let covered = Mutex(Covered())
    /// WAL write-outs that an fsync made instead of a WAL flush (for tests and status).
    let writeOuts = Atomic<UInt64>(0)

    init(storeRoot: String) {
        rewritesInPlace = Self.rewritesInPlace(path: storeRoot)
    }

    /// Call before a full sync of the WAL; pass the result to `fullSyncEnded`.
    func fullSyncBegins() -> UInt64 {
        covered.withLock { $0.generation }
    }

    /// A full sync that began at `generation` covered the WAL's first `bytes` bytes.
    func fullSyncEnded(generation: UInt64, bytes: Int64) {
        covered.withLock {
            guard $0.generation == generation else { return }  // truncated meanwhile: its blocks are new
            $0.bytes = bytes
        }
    }

    /// Call before the WAL is truncated: the blocks it grows into afterwards are new, their allocation not durable.
    func truncating() {
        covered.withLock {
            $0.generation &+= 1
            $0.bytes = 0
        }
    }

    /// Whether a write-out of the WAL (`fd`) plus a device flush makes every committed frame durable now.
    func coversRewrite(of fd: Int32) -> Bool {
        guard rewritesInPlace, fd >= 0 else { return false }
        var st = stat()
        guard fstat(fd, &st) == 0 else { return false }
        let size = Int64(st.st_size)
        // bytes > 0: a full sync in this process came first, whatever a crashed predecessor left in the WAL.
        return covered.withLock { $0.bytes > 0 && size <= $0.bytes }
    }

    // MARK: the filesystem verdict

    static let ext4SuperMagic = 0xEF53  // ext2, ext3 and ext4, all driven by ext4 today

    static func rewritesInPlace(path: String) -> Bool {
        var st = stat()
        guard twin_filesystem_type(path) == ext4SuperMagic, stat(path, &st) == 0 else { return false }
        guard let mount = superblock(of: UInt64(st.st_dev), in: MountinfoEntry.current()) else { return false }
        // data=journal puts file data through the journal: a written-out page is not where a flush finds it.
        return ["ext2", "ext3", "ext4"].contains(mount.type) && !mount.options.contains("data=journal")
    }

    /// The filesystem type and superblock options of the mount of device `dev` (a dev_t).
    static func superblock(of dev: UInt64, in mounts: [MountinfoEntry]) -> (type: String, options: [String])? {
        let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))
        let minor = (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))
        guard let mount = mounts.first(where: { $0.device == "\(major):\(minor)" }) else { return nil }
        return (mount.fsType, mount.superOptions)
    }
}
