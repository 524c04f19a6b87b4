// Overwrites of an unpaired store's open file skip their transactions once one of them committed the inode as
// unsettled; a stat still shows their times, fsync needs the data file alone, every mutation settles them, and a
// store opened after the daemon died rebuilds what only memory held. Counted in store commits and WAL flushes.
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

final class FastWritesTests: VolumeTestCase {
    private let trackBytes = 65_536

    /// A 256 KiB file (four tracks) whose first overwrite has begun its fast-write entry.
    private func fileWithEntry(_ v: Volume) throws -> (ino: UInt64, handle: UInt64) {
        let (r, handle) = try v.create(parent: InodeRecord.rootIno, name: Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        try write(v, handle, at: 0, 4 * trackBytes)
        try write(v, handle, at: 0)
        XCTAssertEqual(try v.store.unsettledInodes(), [r.ino], "the first overwrite committed the inode as unsettled")
        return (r.ino, handle)
    }

    /// (WAL flushes, WAL write-outs) made by one fsync.
    private func metadataSyncs(_ v: Volume, _ handle: UInt64, _ ino: UInt64) throws -> UInt64 {
        let flushes = v.walSyncer.flushes.load(ordering: .acquiring)
        let writeOuts = v.store.walWriteOuts
        try v.fsync(handle: handle, ino: ino, dataOnly: false)
        return v.walSyncer.flushes.load(ordering: .acquiring) - flushes + v.store.walWriteOuts - writeOuts
    }

    func testOverwritesAfterTheFirstCommitNothingAndAStatShowsTheirTime() throws {
        let v = try XCTUnwrap(volume)
        let (ino, handle) = try fileWithEntry(v)
        defer { v.release(handle) }
        let commits = v.store.commitCount
        let shown = try v.getattr(ino).mtime
        usleep(20_000)  // past the data file's timestamp granularity
        for i in 0..<50 { try write(v, handle, at: (i % 4) * trackBytes) }
        XCTAssertEqual(v.store.commitCount, commits, "overwrites inside the file commit nothing")
        XCTAssertGreaterThan(try v.getattr(ino).mtime, shown, "a stat shows the overwrites' time")
        XCTAssertEqual(v.store.commitCount, commits, "and a stat commits nothing either")
        try write(v, handle, at: 4 * trackBytes)
        XCTAssertEqual(v.store.commitCount, commits + 1, "a write that grows the file commits")
        XCTAssertEqual(try v.getattr(ino).size, UInt64(4 * trackBytes + 4096))
    }

    func testFilesOverwrittenSideBySideEachKeepTheirEntry() throws {
        let v = try XCTUnwrap(volume)
        let (a, ha) = try fileWithEntry(v)
        defer { v.release(ha) }
        let (b, hb) = try v.create(parent: InodeRecord.rootIno, name: Array("g".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        defer { v.release(hb) }
        XCTAssertTrue(v.fastWrites.isEmpty, "a create settles every entry")
        try write(v, ha, at: 0)
        try write(v, hb, at: 0, 8192)
        try write(v, hb, at: 0)
        XCTAssertEqual(Set(v.fastWrites.entries.keys), [a, b.ino], "a write's mutation settles only its own file")
        let commits = v.store.commitCount
        for i in 0..<20 { try write(v, i % 2 == 0 ? ha : hb, at: 0) }
        XCTAssertEqual(v.store.commitCount, commits, "interleaved overwrites of two files commit nothing")
        try write(v, hb, at: 8192)
        XCTAssertEqual(Set(v.fastWrites.entries.keys), [a], "b grew: its entry ended, a's stayed")
        XCTAssertEqual(try v.store.unsettledInodes(), [a])
    }

    func testOnceTheEntrysCommitIsDurableFsyncNeedsTheDataFileAlone() throws {
        let v = try XCTUnwrap(volume)
        let (ino, handle) = try fileWithEntry(v)
        defer { v.release(handle) }
        XCTAssertEqual(try metadataSyncs(v, handle, ino), 1, "the entry's own commit must reach the disk first")
        for offset in [0, 8192, 3 * trackBytes] {
            try write(v, handle, at: offset)
            XCTAssertEqual(try metadataSyncs(v, handle, ino), 0, "an overwrite: the data file holds all there is")
        }
        var mode = AttributeChanges()
        mode.mode = 0o600
        _ = try v.setattr(ino, mode, handle: handle, caller: user)
        try write(v, handle, at: 0)
        XCTAssertEqual(try metadataSyncs(v, handle, ino), 1, "a chmod since: fsync makes it durable")
        try write(v, handle, at: 0)
        XCTAssertEqual(try metadataSyncs(v, handle, ino), 0)
    }

    func testAMutationSettlesTheTimesAndGivesTheWrittenTracksNewVersions() throws {
        let v = try XCTUnwrap(volume)
        let (ino, handle) = try fileWithEntry(v)
        defer { v.release(handle) }
        let versions = try (0..<4).map { try XCTUnwrap(v.store.trackVersion(ino: ino, index: UInt64($0))) }
        usleep(20_000)
        try write(v, handle, at: 100)
        try write(v, handle, at: 2 * trackBytes + 5, 2 * trackBytes - 5)  // tracks 2 and 3
        let shown = try v.getattr(ino)
        XCTAssertEqual(try v.store.trackVersion(ino: ino, index: 2), versions[2], "not settled yet")

        try v.setxattr(ino, name: Array("user.k".utf8), value: [1], create: false, replace: false)
        let settled = try XCTUnwrap(try v.store.inode(ino))
        XCTAssertEqual(settled.mtime, shown.mtime, "the record holds the time a stat showed")
        XCTAssertEqual(settled.allocatedBlocks, shown.allocatedBlocks)
        let now = try (0..<4).map { try XCTUnwrap(v.store.trackVersion(ino: ino, index: UInt64($0))) }
        XCTAssertGreaterThan(now[0], versions[0])
        XCTAssertEqual(now[1], versions[1], "an unwritten track keeps its version")
        XCTAssertGreaterThan(now[2], versions[2])
        XCTAssertGreaterThan(now[3], versions[3])
        XCTAssertEqual(try v.store.unsettledInodes(), [], "a settled inode is no longer unsettled")
        XCTAssertTrue(v.fastWrites.isEmpty)
    }

    func testAMutationThatFailsLeavesTheEntriesAsTheyWere() throws {
        let v = try XCTUnwrap(volume)
        let (ino, handle) = try fileWithEntry(v)
        defer { v.release(handle) }
        try write(v, handle, at: 2 * trackBytes)
        XCTAssertThrowsError(try v.mkdir(parent: InodeRecord.rootIno, name: Array("f".utf8), mode: 0o755, caller: user))
        XCTAssertEqual(try v.store.unsettledInodes(), [ino], "the settle rolled back with the mkdir")
        XCTAssertEqual(v.fastWrites.trackCount, 1, "track 2 is still held")
        let commits = v.store.commitCount
        try write(v, handle, at: 0)
        XCTAssertEqual(v.store.commitCount, commits, "the entry still takes overwrites")
        var touch = AttributeChanges()
        touch.mtime = .value(Timestamp(seconds: 978_307_200, nanos: 0))
        XCTAssertEqual(try v.setattr(ino, touch, handle: handle, caller: user).mtime.seconds, 978_307_200)
        XCTAssertEqual(try v.getattr(ino).mtime.seconds, 978_307_200, "a touch after the overwrites holds")
        XCTAssertGreaterThan(try XCTUnwrap(try v.store.trackVersion(ino: ino, index: 2)), 0)
    }

    func testAStoreOpenedAfterTheDaemonDiedRebuildsWhatOnlyMemoryHeld() throws {
        let v = try XCTUnwrap(volume)
        let (ino, handle) = try fileWithEntry(v)
        let versions = try (0..<4).map { try XCTUnwrap(v.store.trackVersion(ino: ino, index: UInt64($0))) }
        usleep(20_000)
        try write(v, handle, at: trackBytes, 10, byte: 9)
        let shown = try v.getattr(ino)
        // The daemon dies here: what is on disk now (SQLite's files, the data files with their times) is what
        // the next mount finds. A copy of it stands for that state (a store's lock lives as long as its process).
        let copy = Process()
        copy.executableURL = URL(fileURLWithPath: "/bin/cp")
        copy.arguments = ["-a", dir + "/store", dir + "/crashed"]
        try copy.run()
        copy.waitUntilExit()
        XCTAssertEqual(copy.terminationStatus, 0)
        v.release(handle)

        let reopened = try Store.open(at: dir + "/crashed")
        let record = try XCTUnwrap(try reopened.inode(ino))
        XCTAssertEqual(record.mtime, shown.mtime, "times as a stat showed them")
        XCTAssertEqual(record.ctime, shown.ctime)
        XCTAssertEqual(record.allocatedBlocks, shown.allocatedBlocks)
        XCTAssertEqual(record.size, UInt64(4 * trackBytes))
        for index in 0..<4 {
            XCTAssertGreaterThan(try XCTUnwrap(try reopened.trackVersion(ino: ino, index: UInt64(index))), versions[index], "every track holding data is newer")
        }
        XCTAssertEqual(try reopened.unsettledInodes(), [])
        let fd = try reopened.openData(ino, create: false)
        defer { close(fd) }
        var byte: UInt8 = 0
        XCTAssertEqual(pread(fd, &byte, 1, off_t(trackBytes + 9)), 1)
        XCTAssertEqual(byte, 9)
    }

    func testTheTracksHeldInMemoryAreBoundedAndTheWritePastTheBoundSettles() throws {
        let v = try XCTUnwrap(volume)
        v.fastWrites = FastWrites(maxTracks: 3)
        let (ino, handle) = try fileWithEntry(v)
        defer { v.release(handle) }
        let commits = v.store.commitCount
        for track in [0, 1, 0, 2] { try write(v, handle, at: track * trackBytes) }
        XCTAssertEqual(v.fastWrites.trackCount, 3, "a track written twice is held once")
        XCTAssertEqual(v.store.commitCount, commits)
        try write(v, handle, at: 3 * trackBytes)
        XCTAssertEqual(v.store.commitCount, commits + 1, "the fourth track: the write commits, settling the rest")
        XCTAssertEqual(v.fastWrites.trackCount, 0)
        XCTAssertEqual(try v.store.unsettledInodes(), [ino], "and begins a new entry")
    }

    func testASetIDFileNeverTakesTheFastPath() throws {
        let v = try XCTUnwrap(volume)
        let (r, handle) = try v.create(parent: InodeRecord.rootIno, name: Array("s".utf8), mode: 0o4755, flags: O_RDWR, caller: Caller(uid: 0, gid: 0))
        defer { v.release(handle) }
        _ = try v.withWriteTarget(handle: handle, offset: 0, count: 8192, caller: Caller(uid: 0, gid: 0)) { fd, position in
            pwrite(fd, [UInt8](repeating: 1, count: 8192), 8192, off_t(position))
        }
        _ = try v.withWriteTarget(handle: handle, offset: 0, count: 10, caller: Caller(uid: 0, gid: 0)) { fd, position in
            pwrite(fd, [UInt8](repeating: 2, count: 10), 10, off_t(position))
        }
        XCTAssertEqual(try v.store.unsettledInodes(), [], "root's overwrite keeps the set-user-ID bit: no entry")
        try write(v, handle, at: 0)
        XCTAssertEqual(try v.getattr(r.ino).mode & UInt32(S_ISUID), 0, "a user's write still drops the bit")
    }
}
