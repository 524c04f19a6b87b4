// The checksum table: a recorded checksum vouches for one version only; a corrupted track or a damaged record is
// told from a good one by it; local-only differences (atime, entry order) are not differences; the verify walk
// visits every location once; a corrupt copy is rewritten at its own version.
import Foundation
import Glibc
import XCTest

@testable import TwinStore

final class ChecksumTests: XCTestCase {
    var dir = ""
    var a: Store!
    var b: Store!

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinsum-\(UUID().uuidString)").path
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

    private func makeFile(in store: Store, name: String, contents: [UInt8]) throws -> UInt64 {
        let ino = try store.allocateInodeNumber()
        try store.insertInode(
            InodeRecord(
                ino: ino, mode: UInt32(S_IFREG) | 0o640, uid: 1000, gid: 100, nlink: 1, size: UInt64(contents.count),
                time: .now(), version: try store.nextVersion()))
        try store.insertEntry(parent: 1, name: Array(name.utf8), ino: ino)
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

    private func copy(_ location: StoreLocation, from source: Store, to target: Store) throws {
        let image = try source.readLocation(location)
        try target.database.transaction { _ = try target.applyLocation(location, image) }
    }

    /// Records what the store holds now, as the mirror does when it sends a location.
    private func recordCurrent(_ store: Store, _ location: StoreLocation) throws {
        let image = try store.readLocation(location)
        XCTAssertTrue(try store.recordChecksum(location, version: image.version, sum: Store.checksum(of: image.bytes, at: location)))
    }

    private func flipByte(of ino: UInt64, in store: Store, at offset: Int) throws {
        let path = store.root + "/data/" + Store.dataRelativePath(ino)
        let fd = open(path, O_RDWR)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var byte: UInt8 = 0
        XCTAssertEqual(pread(fd, &byte, 1, off_t(offset)), 1)
        byte ^= 0x5A
        XCTAssertEqual(pwrite(fd, &byte, 1, off_t(offset)), 1)
    }

    private func contents(_ count: Int, seed: Int) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: ($0 &* 131 &+ seed) % 251 + 1) }
    }

    func testTheTableExistsInEveryOpenedStoreAndPreparingItAgainChangesNothing() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(100, seed: 1))
        try recordCurrent(a, .track(ino, 0))
        try a.prepareChecksums()
        XCTAssertEqual(try a.checksumRowCount(), 1)
        XCTAssertNotNil(try a.recordedChecksum(.track(ino, 0)))
    }

    func testAnIntactLocationMatchesItsRecordAndACorruptedTrackDoesNot() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(4096 + 10, seed: 2))
        for l in [StoreLocation.inode(ino), .track(ino, 0), .track(ino, 1)] { try recordCurrent(a, l) }
        for l in [StoreLocation.inode(ino), .track(ino, 0), .track(ino, 1)] {
            let check = a.checkLocation(l)
            XCTAssertTrue(check.recordedForVersion, "\(l)")
            XCTAssertFalse(check.mismatchesRecorded, "\(l) is intact")
        }
        try flipByte(of: ino, in: a, at: 4096 + 3)
        let damaged = a.checkLocation(.track(ino, 1))
        XCTAssertTrue(damaged.mismatchesRecorded, "the flipped byte is in track 1")
        XCTAssertFalse(a.checkLocation(.track(ino, 0)).mismatchesRecorded, "track 0 is untouched")
    }

    func testARecordVouchesForItsVersionOnlyALaterWriteLeavesItStaleNotWrong() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(300, seed: 3))
        try recordCurrent(a, .track(ino, 0))
        // A local write: new bytes, new version, no new record.
        let fd = try a.openData(ino, create: false)
        var byte: UInt8 = 0xEE
        XCTAssertEqual(pwrite(fd, &byte, 1, 7), 1)
        close(fd)
        try a.setTrackVersions(ino: ino, tracks: 0...0, version: try a.nextVersion())
        let check = a.checkLocation(.track(ino, 0))
        XCTAssertFalse(check.recordedForVersion, "the record is of an older version")
        XCTAssertFalse(check.mismatchesRecorded, "a stale record accuses nobody")
    }

    func testASecondReadOfTheSameVersionWithOtherBytesKeepsTheFirstRecordAndSaysSo() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(200, seed: 4))
        let version = try a.storedVersion(.track(ino, 0))
        let good = Store.checksum(of: try a.readLocation(.track(ino, 0)).bytes, at: .track(ino, 0))
        XCTAssertTrue(try a.recordChecksum(.track(ino, 0), version: version, sum: good))
        XCTAssertTrue(try a.recordChecksum(.track(ino, 0), version: version, sum: good), "the same bytes again")
        var bad = good
        bad[0] ^= 1
        XCTAssertFalse(try a.recordChecksum(.track(ino, 0), version: version, sum: bad))
        XCTAssertEqual(try a.recordedChecksum(.track(ino, 0)), Store.RecordedChecksum(version: version, sum: good))
    }

    func testBothStoresSumTheSameVersionAlikeDespiteAccessTimesAndEntryOrder() throws {
        let f = try makeFile(in: a, name: "f", contents: contents(5000, seed: 5))
        let g = try makeFile(in: a, name: "g", contents: contents(10, seed: 6))
        for l in [StoreLocation.inode(1), .inode(f), .inode(g), .track(f, 0), .track(f, 1), .track(g, 0)] { try copy(l, from: a, to: b) }
        // Local-only differences: a relatime update on b, and b's root listing in another order (re-inserted).
        var r = try XCTUnwrap(try b.inode(f))
        r.atime = Timestamp(nanoseconds: r.atime.nanoseconds + 1_000_000_000)
        try b.updateInode(r)
        try b.removeEntry(parent: 1, name: Array("f".utf8))
        try b.insertEntry(parent: 1, name: Array("f".utf8), ino: f)
        XCTAssertNotEqual(try a.readLocation(.inode(1)).bytes, try b.readLocation(.inode(1)).bytes, "the raw images differ")
        for l in [StoreLocation.inode(1), .inode(f), .inode(g), .track(f, 0), .track(f, 1), .track(g, 0)] {
            let x = a.checkLocation(l), y = b.checkLocation(l)
            XCTAssertEqual(x.version, y.version, "\(l)")
            XCTAssertEqual(x.sum, y.sum, "\(l): same version, same content")
        }
        // A real difference at the same version is one.
        try flipByte(of: g, in: b, at: 2)
        XCTAssertNotEqual(a.checkLocation(.track(g, 0)).sum, b.checkLocation(.track(g, 0)).sum)
    }

    func testAnUnreadableLocationIsAnAnswerNotACrash() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(100, seed: 7))
        try recordCurrent(a, .track(ino, 0))
        // The data file replaced by a directory: opening it for the read fails.
        let path = a.root + "/data/" + Store.dataRelativePath(ino)
        XCTAssertEqual(unlink(path), 0)
        XCTAssertEqual(mkdir(path, 0o700), 0)
        let check = a.checkLocation(.track(ino, 0))
        XCTAssertNil(check.sum)
        XCTAssertNotNil(check.error)
        XCTAssertEqual(check.version, try a.storedVersion(.track(ino, 0)))
    }

    func testTheWalkVisitsEveryInodeThenEveryTrackOnceInBatches() throws {
        var expected: [StoreLocation] = [.inode(1)]
        var tracks: [StoreLocation] = []
        for i in 0..<7 {
            let ino = try makeFile(in: a, name: "f\(i)", contents: contents(4096 * (i % 3) + 50, seed: i))
            expected.append(.inode(ino))
            for t in 0...UInt64(i % 3) { tracks.append(.track(ino, t)) }
        }
        expected += tracks
        for limit in [1, 3, 5, 1000] {
            var seen: [StoreLocation] = []
            var cursor: StoreLocation?
            while true {
                let batch = try a.locations(after: cursor, limit: limit)
                XCTAssertLessThanOrEqual(batch.count, limit)
                guard let last = batch.last else { break }
                seen += batch
                cursor = last
            }
            XCTAssertEqual(seen, expected, "batches of \(limit)")
        }
        let counts = try a.counts()
        XCTAssertEqual(expected.count, counts.inodes + counts.tracks)
    }

    func testACorruptTrackIsRewrittenAtItsOwnVersionFromTheOtherCopy() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(4096 + 500, seed: 8))
        for l in [StoreLocation.inode(1), .inode(ino), .track(ino, 0), .track(ino, 1)] { try copy(l, from: a, to: b) }
        try flipByte(of: ino, in: b, at: 4096 + 17)
        let version = try b.storedVersion(.track(ino, 1))
        XCTAssertNotEqual(a.checkLocation(.track(ino, 1)).sum, b.checkLocation(.track(ino, 1)).sum)

        XCTAssertTrue(try b.rewriteLocation(.track(ino, 1), try a.readLocation(.track(ino, 1))))
        XCTAssertEqual(try b.storedVersion(.track(ino, 1)), version, "the version is kept")
        let repaired = b.checkLocation(.track(ino, 1))
        XCTAssertEqual(repaired.sum, a.checkLocation(.track(ino, 1)).sum)
        XCTAssertTrue(repaired.recordedForVersion)
        XCTAssertFalse(repaired.mismatchesRecorded)
        XCTAssertEqual(try b.readLocation(.track(ino, 1)), try a.readLocation(.track(ino, 1)))
    }

    func testARewriteOfALocationThatMovedOnIsRefused() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(100, seed: 9))
        for l in [StoreLocation.inode(1), .inode(ino), .track(ino, 0)] { try copy(l, from: a, to: b) }
        let old = try a.readLocation(.track(ino, 0))
        try b.setTrackVersions(ino: ino, tracks: 0...0, version: try b.nextVersion())
        let before = try b.readLocation(.track(ino, 0))
        XCTAssertFalse(try b.rewriteLocation(.track(ino, 0), old), "a newer version is never overwritten by a repair")
        XCTAssertEqual(try b.readLocation(.track(ino, 0)), before)
    }

    /// Measured, not asserted against a number (the machine is shared): what recording costs the mirror's executor.
    func testChecksumCost() throws {
        let tracks = [contents(65_536, seed: 11), contents(65_536, seed: 12)]
        var t0 = DispatchTime.now().uptimeNanoseconds
        var sums = Set<[UInt8]>()
        for i in 0..<500 { sums.insert(Store.checksum(of: tracks[i % 2], at: .track(1, 0))) }
        let hashSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        t0 = DispatchTime.now().uptimeNanoseconds
        let rows = 2_000
        try a.database.transaction {
            for i in 0..<rows { try a.recordChecksum(.track(UInt64(i), 0), version: UInt64(i) << 16 | 1, sum: Array(repeating: UInt8(i & 0xff), count: 16)) }
        }
        let rowSeconds = Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9
        print(String(format: "checksums: SHA-256 of 64 KiB tracks %.0f MB/s (%.1f µs a track); recording %.1f µs a row in one transaction",
                     500 * 65_536 / hashSeconds / 1e6, hashSeconds / 500 * 1e6, rowSeconds / Double(rows) * 1e6))
        XCTAssertEqual(sums.count, 2)
        XCTAssertEqual(try a.checksumRowCount(), rows)
    }

    func testADamagedInodeRecordIsRewrittenAtItsOwnVersion() throws {
        let ino = try makeFile(in: a, name: "f", contents: contents(10, seed: 10))
        for l in [StoreLocation.inode(1), .inode(ino), .track(ino, 0)] { try copy(l, from: a, to: b) }
        try recordCurrent(b, .inode(ino))
        // A metadata row damaged behind the store's back: the mode changes, the version does not.
        try b.database.execute("UPDATE inodes SET mode = mode | 7 WHERE ino = \(ino)")
        XCTAssertTrue(b.checkLocation(.inode(ino)).mismatchesRecorded)
        XCTAssertTrue(try b.rewriteLocation(.inode(ino), try a.readLocation(.inode(ino))))
        XCTAssertEqual(b.checkLocation(.inode(ino)).sum, a.checkLocation(.inode(ino)).sum)
        XCTAssertFalse(b.checkLocation(.inode(ino)).mismatchesRecorded)
        XCTAssertEqual(try b.inode(ino)?.mode, try a.inode(ino)?.mode)
    }
}
