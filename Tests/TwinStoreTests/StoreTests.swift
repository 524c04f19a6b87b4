// Unit tests of the store: identity checks, locking, counters that survive a crash, entries, xattrs, tracks.
import Foundation
import Glibc
import XCTest

@testable import TwinStore

final class StoreTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinstore-\(UUID().uuidString)").path
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    var storePath: String { dir + "/store" }

    func testCreatedStoreOpensWithItsIdentityAndAnEmptyRoot() throws {
        let created = try Store.create(at: storePath, nodeName: "alpha", trackBytes: 65536)
        let store = try Store.open(at: storePath)
        XCTAssertEqual(store.identity, created)
        XCTAssertEqual(store.identity.nodeName, "alpha")
        let root = try XCTUnwrap(try store.inode(InodeRecord.rootIno))
        XCTAssertTrue(root.isDirectory)
        XCTAssertEqual(root.nlink, 2)
        XCTAssertEqual(try store.counts().inodes, 1)
    }

    func testCreateRefusesANonEmptyDirectoryAndBadTrackSizes() throws {
        try FileManager.default.createDirectory(atPath: storePath, withIntermediateDirectories: true)
        FileManager.default.createFile(atPath: storePath + "/precious", contents: Data("keep".utf8))
        XCTAssertThrowsError(try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)) {
            XCTAssertEqual($0 as? StoreError, .alreadyExists(path: self.storePath))
        }
        XCTAssertEqual(FileManager.default.contents(atPath: storePath + "/precious"), Data("keep".utf8))
        for bad in [0, 3000, 2048, 3 << 12, 2 << 20] {
            XCTAssertThrowsError(try Store.create(at: dir + "/s\(bad)", nodeName: "a", trackBytes: bad), "track size \(bad)")
        }
        XCTAssertThrowsError(try Store.create(at: dir + "/badname", nodeName: "no spaces", trackBytes: 65536))
    }

    func testOpenNamesWhatIsWrongWithAStore() throws {
        XCTAssertEqual(error { try Store.open(at: self.dir + "/nothing") }, .missing(path: dir + "/nothing"))
        try FileManager.default.createDirectory(atPath: dir + "/plain", withIntermediateDirectories: true)
        XCTAssertEqual(error { try Store.open(at: self.dir + "/plain") }, .notAStore(path: dir + "/plain"))

        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        let conf = storePath + "/twinfs.conf"
        let original = try String(contentsOfFile: conf, encoding: .utf8)
        try original.replacingOccurrences(of: "format = 1", with: "format = 9").write(toFile: conf, atomically: true, encoding: .utf8)
        XCTAssertEqual(error { try Store.open(at: self.storePath) }, .newerFormat(path: storePath, found: 9, supported: 1))
        try original.replacingOccurrences(of: "track-bytes = 65536", with: "track-bytes = banana").write(
            toFile: conf, atomically: true, encoding: .utf8)
        guard case .corrupt = error({ try Store.open(at: self.storePath) }) else { return XCTFail("expected corrupt") }
        try original.write(toFile: conf, atomically: true, encoding: .utf8)

        try Data(repeating: 0x41, count: 8192).write(to: URL(fileURLWithPath: storePath + "/meta.db"))
        guard case .corrupt = error({ try Store.open(at: self.storePath) }) else { return XCTFail("expected corrupt meta.db") }
    }

    func testASecondOpenOfAStoreInUseIsRefused() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        let first = try Store.open(at: storePath)
        XCTAssertEqual(error { try Store.open(at: self.storePath) }, .locked(path: storePath))
        XCTAssertNoThrow(try Store.open(at: storePath, readOnly: true))
        _ = first
    }

    func testInodeNumbersAndVersionsAreNeverReusedAfterACrash() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536, nodeIndex: 7)
        var inos: Set<UInt64> = []
        var lastVersion: UInt64 = 0
        for _ in 0..<3 {
            // Each round drops the store without close(): what a kill -9 leaves behind.
            let store = try Store.open(at: storePath)
            for _ in 0..<10 {
                let ino = try store.allocateInodeNumber()
                XCTAssertEqual(ino >> 48, 7, "node index in the high bits")
                XCTAssertTrue(inos.insert(ino).inserted, "inode number \(ino) handed out twice")
                let v = try store.nextVersion()
                XCTAssertGreaterThan(v, lastVersion)
                XCTAssertEqual(v & 0xffff, 7)
                lastVersion = v
            }
        }
    }

    func testDirectoryEntriesKeepTheirPositionWhileOthersComeAndGo() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        let store = try Store.open(at: storePath)
        for name in ["a", "b", "c", "d"] {
            try store.insertEntry(parent: 1, name: Array(name.utf8), ino: 100 + UInt64(name.utf8.first!))
        }
        let firstTwo = try store.entries(parent: 1, after: 0, limit: 2)
        XCTAssertEqual(firstTwo.map { String(decoding: $0.name, as: UTF8.self) }, ["a", "b"])
        try store.removeEntry(parent: 1, name: Array("a".utf8))
        try store.insertEntry(parent: 1, name: Array("e".utf8), ino: 200)
        let rest = try store.entries(parent: 1, after: firstTwo[1].cookie, limit: 10)
        XCTAssertEqual(rest.map { String(decoding: $0.name, as: UTF8.self) }, ["c", "d", "e"])
        XCTAssertEqual(try store.lookup(parent: 1, name: Array("e".utf8)), 200)
        XCTAssertNil(try store.lookup(parent: 1, name: Array("a".utf8)))
    }

    func testOrphanedInodesAreRemovedAtOpen() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        var orphan: UInt64 = 0
        do {
            let store = try Store.open(at: storePath)
            orphan = try store.allocateInodeNumber()
            try store.insertInode(
                InodeRecord(ino: orphan, mode: UInt32(S_IFREG) | 0o644, uid: 0, gid: 0, nlink: 0, time: .now(), version: 1))
            let fd = try store.openData(orphan, create: true)
            XCTAssertEqual(pwrite(fd, "data", 4, 0), 4)
            Glibc.close(fd)
            try store.setXattr(ino: orphan, name: Array("user.x".utf8), value: [1])
        }
        let store = try Store.open(at: storePath)
        XCTAssertNil(try store.inode(orphan))
        XCTAssertEqual(try store.openData(orphan, create: false), -1, "the data file went with the inode")
        XCTAssertNil(try store.xattr(ino: orphan, name: Array("user.x".utf8)))
    }

    func testNewDataFilesAreBornInANurseryAndNamedInTheirDataDirectory() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        let nurseries = { (try FileManager.default.contentsOfDirectory(atPath: self.storePath + "/data")).filter { $0.hasPrefix(Nursery.prefix) } }
        do {
            let store = try Store.open(at: storePath)
            var inos: [UInt64] = []
            for _ in 0..<(Nursery.filesPerNursery + 3) {
                let ino = try store.allocateInodeNumber()
                let fd = try store.createData(ino)
                XCTAssertEqual(pwrite(fd, "data", 4, 0), 4)
                Glibc.close(fd)
                inos.append(ino)
            }
            for ino in [inos[0], inos[Nursery.filesPerNursery], inos.last!] {
                let fd = try store.openData(ino, create: false)
                XCTAssertGreaterThanOrEqual(fd, 0, "inode \(ino) has its data file in its data directory")
                var byte: UInt8 = 0
                XCTAssertEqual(pread(fd, &byte, 1, 0), 1)
                Glibc.close(fd)
            }
            let current = try nurseries()
            XCTAssertEqual(current.count, 1, "a used-up nursery goes: \(current)")
            XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: storePath + "/data/" + current[0]), [], "nothing stays in the nursery")
            try store.close()
        }
        XCTAssertEqual(try nurseries(), [], "closing the store removes its nursery")
        // A crash between a file's birth and its naming leaves it in the nursery: the next open removes both.
        try FileManager.default.createDirectory(atPath: storePath + "/data/\(Nursery.prefix)1-1", withIntermediateDirectories: false)
        FileManager.default.createFile(atPath: storePath + "/data/\(Nursery.prefix)1-1/abc", contents: Data())
        _ = try Store.open(at: storePath)
        XCTAssertEqual(try nurseries(), [])
    }

    func testTrackVersionsFollowWritesAndTruncates() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 4096)
        let store = try Store.open(at: storePath)
        try store.setTrackVersions(ino: 9, tracks: 0...3, version: 5)
        try store.setTrackVersions(ino: 9, tracks: 2...2, version: 6)
        XCTAssertEqual(try store.trackVersion(ino: 9, index: 1), 5)
        XCTAssertEqual(try store.trackVersion(ino: 9, index: 2), 6)
        try store.removeTracks(ino: 9, from: 2)
        XCTAssertNil(try store.trackVersion(ino: 9, index: 2))
        XCTAssertEqual(try store.counts().tracks, 2)
    }

    func testXattrsAreStoredPerInode() throws {
        try Store.create(at: storePath, nodeName: "a", trackBytes: 65536)
        let store = try Store.open(at: storePath)
        try store.setXattr(ino: 5, name: Array("user.b".utf8), value: [])
        try store.setXattr(ino: 5, name: Array("user.a".utf8), value: [1, 2])
        XCTAssertEqual(try store.xattr(ino: 5, name: Array("user.b".utf8)), [], "an empty value is a value, not absence")
        XCTAssertEqual(try store.xattrNames(ino: 5).map { String(decoding: $0, as: UTF8.self) }, ["user.a", "user.b"])
        XCTAssertTrue(try store.removeXattr(ino: 5, name: Array("user.a".utf8)))
        XCTAssertFalse(try store.removeXattr(ino: 5, name: Array("user.a".utf8)))
        XCTAssertNil(try store.xattr(ino: 6, name: Array("user.b".utf8)))
    }

    func testByteSizesParseWithUnits() {
        XCTAssertEqual(parseByteSize("64K"), 65536)
        XCTAssertEqual(parseByteSize("1M"), 1 << 20)
        XCTAssertEqual(parseByteSize("4096"), 4096)
        XCTAssertEqual(parseByteSize("64KiB"), 65536)
        XCTAssertNil(parseByteSize("lots"))
    }

    private func error(_ body: () throws -> Any) -> StoreError? {
        do {
            _ = try body()
            return nil
        } catch {
            return error as? StoreError
        }
    }
}
