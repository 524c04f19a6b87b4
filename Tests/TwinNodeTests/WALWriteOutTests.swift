// fsync makes the metadata durable with one device flush where the filesystem allows it: on ext4 (a real one, on a
// loop device) a WAL whose blocks a full sync already covered is written out and the data file's fdatasync
// flushes both; a WAL that grew or was truncated since, a tmpfs, or ext4 with data=journal get a WAL flush of
// their own. Counted in the store's WAL write-outs and the syncer's WAL flushes; the file grows at every write, so each
// one commits (an overwrite may not: FastWrites).
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

final class WALWriteOutTests: XCTestCase {
    var dir = ""
    var mounted: [String] = []
    let user = Caller(uid: 1000, gid: 1000)

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("walwriteout-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        // Lazily: a shut-down volume's store keeps its descriptors until the process ends; the loop device
        // (autoclear) goes with the last of them.
        for mnt in mounted.reversed() { XCTAssertEqual(try run("/bin/umount", "-l", mnt), 0, mnt) }
        try? FileManager.default.removeItem(atPath: dir)
    }

    @discardableResult
    private func run(_ arguments: String...) throws -> Int32 {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: arguments[0])
        p.arguments = Array(arguments.dropFirst())
        p.standardOutput = FileHandle.nullDevice
        try p.run()
        p.waitUntilExit()
        return p.terminationStatus
    }

    /// A fresh filesystem of its own for the store: "ext4" (with mount `options`) on a loop device, or "tmpfs".
    private func filesystem(_ type: String, options: String = "") throws -> String {
        let mnt = dir + "/\(type)\(mounted.count)"
        try FileManager.default.createDirectory(atPath: mnt, withIntermediateDirectories: true)
        if type == "tmpfs" {
            XCTAssertEqual(try run("/bin/mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", mnt), 0)
        } else {
            let image = mnt + ".img"
            XCTAssertTrue(FileManager.default.createFile(atPath: image, contents: nil))
            XCTAssertEqual(truncate(image, 64 << 20), 0)
            XCTAssertEqual(try run("/sbin/mkfs.ext4", "-q", "-F", image), 0, "mkfs.ext4 (e2fsprogs)")
            XCTAssertEqual(try run("/bin/mount", "-o", "loop" + (options.isEmpty ? "" : "," + options), image, mnt), 0, "a loop mount")
        }
        mounted.append(mnt)
        return mnt
    }

    private func volume(on fs: String) throws -> Volume {
        try Store.create(at: fs + "/store", nodeName: "a", trackBytes: 65536)
        return Volume(store: try Store.open(at: fs + "/store"))
    }

    /// Appends 4 KiB: a write that changes the size commits (an overwrite may not: FastWrites).
    private func append(_ v: Volume, _ handle: UInt64, _ ino: UInt64) throws {
        let offset = try v.getattr(ino).size
        let bytes = [UInt8](repeating: 7, count: 4096)
        _ = try v.withWriteTarget(handle: handle, offset: offset, count: 4096, caller: user) { fd, position in
            bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4096, off_t(position)) }
        }
    }

    /// (WAL flushes, WAL write-outs) made by one fsync of the file.
    private func fsync(_ v: Volume, _ handle: UInt64, _ ino: UInt64) throws -> (flushes: UInt64, writeOuts: UInt64) {
        let flushes = v.walSyncer.flushes.load(ordering: .acquiring)
        let writeOuts = v.store.walWriteOuts
        try v.fsync(handle: handle, ino: ino, dataOnly: false)
        return (v.walSyncer.flushes.load(ordering: .acquiring) - flushes, v.store.walWriteOuts - writeOuts)
    }

    /// Copies the WAL into meta.db, so the next commit starts the WAL over at its beginning: it rewrites blocks.
    private func startWALOver(_ v: Volume) {
        XCTAssertTrue(v.store.checkpointInBackground())
    }

    func testOnExt4ARewrittenWALIsWrittenOutAndFlushedWithTheDataFile() throws {
        let v = try volume(on: try filesystem("ext4"))
        defer { try? v.shutDown() }
        XCTAssertTrue(v.store.walDurability.rewritesInPlace, "ext4 rewrites allocated blocks in place")
        let (r, handle) = try v.create(parent: InodeRecord.rootIno, name: Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        defer { v.release(handle) }
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (1, 0), "the WAL grew since the last flush: new blocks need one")
        startWALOver(v)
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (0, 1), "rewritten blocks: one flush for the WAL and the data file")
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (0, 1))
        for i in 0..<200 {  // the WAL grows past everything a flush covered
            let (_, h) = try v.create(parent: InodeRecord.rootIno, name: Array("g\(i)".utf8), mode: 0o644, flags: O_RDWR, caller: user)
            v.release(h)
        }
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (1, 0), "a grown WAL is flushed on its own")
        startWALOver(v)
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (0, 1))
        XCTAssertTrue(v.store.checkpointAndTruncate())
        try append(v, handle, r.ino)
        XCTAssertTrue(try fsync(v, handle, r.ino) == (1, 0), "after a truncation every block of the WAL is new")
        XCTAssertEqual(try v.getattr(r.ino).size, 6 * 4096)
    }

    func testOnTmpfsAndOnExt4WithDataJournalEveryFsyncFlushesTheWAL() throws {
        for fs in [try filesystem("tmpfs"), try filesystem("ext4", options: "data=journal")] {
            let v = try volume(on: fs)
            defer { try? v.shutDown() }
            XCTAssertFalse(v.store.walDurability.rewritesInPlace, fs)
            let (r, handle) = try v.create(parent: InodeRecord.rootIno, name: Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: user)
            defer { v.release(handle) }
            for _ in 0..<3 {
                try append(v, handle, r.ino)
                XCTAssertTrue(try fsync(v, handle, r.ino) == (1, 0), fs)
                startWALOver(v)
            }
        }
    }

    func testTheSuperblockOfAStoresDeviceIsFoundInMountinfo() {
        let mountinfo = """
            22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
            40 22 7:3 / /mnt/j rw,relatime shared:20 - ext4 /dev/loop3 rw,data=journal
            41 22 0:45 / /tmp/t rw,nosuid shared:21 - tmpfs tmpfs rw,size=65536k
            """
        let root = WALDurability.superblock(of: UInt64(254 << 8 | 1), in: MountinfoEntry.parse(mountinfo))
        XCTAssertEqual(root?.type, "ext4")
        XCTAssertEqual(root?.options, ["rw", "errors=remount-ro"])
        XCTAssertEqual(WALDurability.superblock(of: UInt64(7 << 8 | 3), in: MountinfoEntry.parse(mountinfo))?.options.contains("data=journal"), true)
        XCTAssertEqual(WALDurability.superblock(of: UInt64(0 << 8 | 45), in: MountinfoEntry.parse(mountinfo))?.type, "tmpfs")
        XCTAssertNil(WALDurability.superblock(of: UInt64(8 << 8 | 1), in: MountinfoEntry.parse(mountinfo)))
        // Minor numbers above 255 use the high bits of dev_t (loop devices past 255, NVMe partitions).
        let high = UInt64(259 << 8) | UInt64(300 & 0xff) | (UInt64(300 >> 8) << 20)
        XCTAssertEqual(WALDurability.superblock(of: high, in: MountinfoEntry.parse("50 22 259:300 / /n rw - ext4 /dev/x rw"))?.type, "ext4")
    }
}
