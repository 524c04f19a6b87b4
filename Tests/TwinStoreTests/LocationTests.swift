// Location images: what one store reads is what the other applies; older images never win (DESIGN hazard 4).
import Foundation
import Glibc
import XCTest

@testable import TwinStore

final class LocationTests: XCTestCase {
    var dir = ""
    var a: Store!
    var b: Store!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinloc-\(UUID().uuidString)").path
        try Store.create(at: dir + "/a", nodeName: "a", trackBytes: 4096, nodeIndex: 1)
        try Store.create(at: dir + "/b", nodeName: "b", trackBytes: 4096, nodeIndex: 2)
        a = try Store.open(at: dir + "/a")
        b = try Store.open(at: dir + "/b")
    }

    override func tearDownWithError() throws {
        a = nil
        b = nil
        try? FileManager.default.removeItem(atPath: dir)
    }

    private func copy(_ location: StoreLocation, from source: Store, to target: Store) throws {
        let image = try source.readLocation(location)
        try target.database.transaction { _ = try target.applyLocation(location, image) }
    }

    private func makeFile(in store: Store, parent: UInt64, name: String, contents: [UInt8]) throws -> UInt64 {
        let ino = try store.allocateInodeNumber()
        try store.insertInode(
            InodeRecord(
                ino: ino, mode: UInt32(S_IFREG) | 0o640, uid: 1000, gid: 100, nlink: 1, size: UInt64(contents.count),
                time: .now(), version: try store.nextVersion()))
        try store.insertEntry(parent: parent, name: Array(name.utf8), ino: ino)
        let fd = try store.openData(ino, create: true)
        XCTAssertEqual(contents.withUnsafeBytes { pwrite(fd, $0.baseAddress, contents.count, 0) }, contents.count)
        Glibc.close(fd)
        let tracks = UInt64(max(contents.count - 1, 0) / 4096)
        try store.setTrackVersions(ino: ino, tracks: 0...tracks, version: try store.nextVersion())
        var root = try XCTUnwrap(try store.inode(1))
        root.version = try store.nextVersion()
        try store.updateInode(root)
        return ino
    }

    func testAFileCopiedLocationByLocationReadsTheSameOnTheOtherStore() throws {
        var contents = [UInt8](repeating: 0, count: 4096 * 2 + 100)
        for i in 0..<contents.count where i % 7 == 0 { contents[i] = UInt8(i % 251) }
        let ino = try makeFile(in: a, parent: 1, name: "f", contents: contents)
        try a.setXattr(ino: ino, name: Array("user.k".utf8), value: Array("v".utf8))
        var r = try XCTUnwrap(try a.inode(ino))
        r.version = try a.nextVersion()
        try a.updateInode(r)

        for location in [StoreLocation.inode(1), .inode(ino), .track(ino, 0), .track(ino, 1), .track(ino, 2)] {
            try copy(location, from: a, to: b)
            XCTAssertEqual(try b.readLocation(location), try a.readLocation(location), "\(location)")
        }
        XCTAssertEqual(try b.lookup(parent: 1, name: Array("f".utf8)), ino)
        XCTAssertEqual(try b.xattr(ino: ino, name: Array("user.k".utf8)), Array("v".utf8))
        let fd = try b.openData(ino, create: false)
        defer { Glibc.close(fd) }
        var back = [UInt8](repeating: 0xff, count: contents.count + 10)
        let n = back.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        XCTAssertEqual(n, contents.count, "the data file is as long as the file")
        XCTAssertEqual(Array(back[0..<n]), contents)
    }

    func testAnOlderImageNeverOverwritesANewerOne() throws {
        let ino = try makeFile(in: a, parent: 1, name: "f", contents: Array("first".utf8))
        let old = try a.readLocation(.track(ino, 0))
        let fd = try a.openData(ino, create: false)
        XCTAssertEqual(pwrite(fd, "second", 6, 0), 6)
        Glibc.close(fd)
        try a.setTrackVersions(ino: ino, tracks: 0...0, version: try a.nextVersion())
        try copy(.inode(ino), from: a, to: b)
        try copy(.track(ino, 0), from: a, to: b)
        let newer = try b.readLocation(.track(ino, 0))
        XCTAssertEqual(newer.bytes, Array("second".utf8))

        let kept = try b.database.transaction { try b.applyLocation(.track(ino, 0), old) }
        XCTAssertEqual(kept, newer.version, "the store reports the version it kept")
        XCTAssertEqual(try b.readLocation(.track(ino, 0)), newer)
    }

    func testADeletedInodeIsNotBroughtBackByAnOlderCopy() throws {
        let ino = try makeFile(in: a, parent: 1, name: "f", contents: Array("x".utf8))
        let alive = try a.readLocation(.inode(ino))
        try copy(.inode(ino), from: a, to: b)
        try a.database.transaction {
            try a.removeEntry(parent: 1, name: Array("f".utf8))
            try a.deleteInode(ino)
        }
        let gone = try a.readLocation(.inode(ino))
        XCTAssertGreaterThan(gone.version, alive.version, "a deletion is a newer version")
        try copy(.inode(ino), from: a, to: b)
        XCTAssertNil(try b.inode(ino))
        try b.database.transaction { _ = try b.applyLocation(.inode(ino), alive) }
        XCTAssertNil(try b.inode(ino), "the tombstone outranks the older live copy")
    }

    func testATrackThatBecameShorterLeavesNoStaleBytesBehind() throws {
        let ino = try makeFile(in: a, parent: 1, name: "f", contents: [UInt8](repeating: 0x41, count: 4096))
        try copy(.inode(ino), from: a, to: b)
        try copy(.track(ino, 0), from: a, to: b)
        let fd = try a.openData(ino, create: false)
        let zeros = [UInt8](repeating: 0, count: 4000)
        XCTAssertEqual(zeros.withUnsafeBytes { pwrite(fd, $0.baseAddress, 4000, 96) }, 4000)
        Glibc.close(fd)
        try a.setTrackVersions(ino: ino, tracks: 0...0, version: try a.nextVersion())
        let image = try a.readLocation(.track(ino, 0))
        XCTAssertEqual(image.bytes.count, 96, "trailing zeros are not sent")
        try copy(.track(ino, 0), from: a, to: b)
        let bfd = try b.openData(ino, create: false)
        defer { Glibc.close(bfd) }
        var back = [UInt8](repeating: 0xff, count: 4096)
        XCTAssertEqual(back.withUnsafeMutableBytes { pread(bfd, $0.baseAddress, 4096, 0) }, 4096)
        XCTAssertEqual(Array(back[0..<96]), [UInt8](repeating: 0x41, count: 96))
        XCTAssertEqual(Array(back[96...]), [UInt8](repeating: 0, count: 4000))
    }

    func testReceivingAVersionAdvancesTheLocalClockPastIt() throws {
        let ino = try makeFile(in: a, parent: 1, name: "f", contents: Array("x".utf8))
        for _ in 0..<1000 { _ = try a.nextVersion() }
        var r = try XCTUnwrap(try a.inode(ino))
        r.version = try a.nextVersion()
        try a.updateInode(r)
        try copy(.inode(ino), from: a, to: b)
        XCTAssertGreaterThan(try b.nextVersion(), r.version)
    }

    func testMalformedInodeImagesAreRejectedWithATypedError() {
        let valid = InodeImage(
            record: InodeRecord(ino: 5, mode: UInt32(S_IFDIR) | 0o755, uid: 0, gid: 0, nlink: 2, time: .now(), version: 9),
            xattrs: [(Array("user.a".utf8), [1, 2, 3])], entries: [(Array("x".utf8), 77)]
        ).encoded()
        XCTAssertEqual(try InodeImage.decode(valid, ino: 5, version: 9).entries.first?.ino, 77)
        for cut in 0..<valid.count {
            XCTAssertThrowsError(try InodeImage.decode(Array(valid[0..<cut]), ino: 5, version: 9), "cut at \(cut)")
        }
        XCTAssertThrowsError(try InodeImage.decode(valid + [0], ino: 5, version: 9)) {
            XCTAssertEqual($0 as? LocationImageError, .trailingBytes)
        }
        XCTAssertThrowsError(try InodeImage.decode([9] + valid.dropFirst(), ino: 5, version: 9)) {
            XCTAssertEqual($0 as? LocationImageError, .unknownFormat(9))
        }
    }
}
