// fdatasync flushes the metadata (the SQLite WAL) only when a later read depends on it — the file's existence or
// size changed since the last flush — and fsync always does: counted in WAL flushes the store actually made.
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

final class DataSyncTests: VolumeTestCase {
    /// WAL flushes made by one `fsync` of the file.
    private func walFlushes(_ v: Volume, _ handle: UInt64, _ ino: UInt64, dataOnly: Bool) throws -> UInt64 {
        let before = v.walSyncer.flushes.load(ordering: .acquiring)
        try v.fsync(handle: handle, ino: ino, dataOnly: dataOnly)
        return v.walSyncer.flushes.load(ordering: .acquiring) - before
    }

    func testFdatasyncFlushesMetadataOnlyWhenTheFilesSizeOrExistenceChanged() throws {
        let v = try XCTUnwrap(volume)
        let (r, handle) = try v.create(parent: InodeRecord.rootIno, name: Array("f".utf8), mode: 0o644, flags: O_RDWR, caller: user)
        defer { v.release(handle) }
        try write(v, handle, at: 0, 8192)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 1, "a new file: its record must be durable")
        try write(v, handle, at: 0)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 0, "an overwrite: the data file is all there is")
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 0)
        try write(v, handle, at: 8192)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 1, "an append changed the size")
        try write(v, handle, at: 4096)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: false), 1, "fsync makes the new times durable too")
        var shrink = AttributeChanges()
        shrink.size = 100
        _ = try v.setattr(r.ino, shrink, handle: handle, caller: user)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 1, "a truncate changed the size")
        try v.fallocate(handle: handle, mode: [], offset: 0, length: 1 << 20)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 1, "fallocate grew the file")
        try write(v, handle, at: 0)
        XCTAssertEqual(try walFlushes(v, handle, r.ino, dataOnly: true), 0)
        XCTAssertEqual(try v.getattr(r.ino).size, 1 << 20)
    }

    func testAfterMountTheFirstFdatasyncFlushesWhatTheWALRecovered() throws {
        // A file a previous daemon wrote (its commits in the WAL, maybe never flushed: it may have crashed).
        let path = dir + "/earlier"
        try Store.create(at: path, nodeName: "a", trackBytes: 65536)
        var ino: UInt64 = 0
        do {
            let store = try Store.open(at: path)
            ino = try store.allocateInodeNumber()
            try store.database.transaction {
                try store.insertInode(InodeRecord(ino: ino, mode: UInt32(S_IFREG) | 0o644, uid: 0, gid: 0, nlink: 1, time: .now(), version: 1))
                try store.insertEntry(parent: InodeRecord.rootIno, name: Array("g".utf8), ino: ino)
            }
        }
        let v = Volume(store: try Store.open(at: path))
        defer { try? v.shutDown() }
        let handle = try v.open(ino, flags: O_RDWR)
        defer { v.release(handle) }
        XCTAssertEqual(try walFlushes(v, handle, ino, dataOnly: true), 1, "nothing changed here, but the WAL is trusted only once flushed")
        XCTAssertEqual(try walFlushes(v, handle, ino, dataOnly: true), 0, "then an unchanged file needs no flush")
    }
}
