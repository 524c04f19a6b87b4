// Conflicts (issue 5, G6): a demoted node's own changes are preserved out of its store before the demotion, then
// recreated under /.twinfs/conflicts/ in the winner's tree through the Volume, listed by `list`, and an import
// interrupted midway finishes on the next run without duplicating or losing anything.
import Foundation
import Glibc
import XCTest

@testable import TwinNode
@testable import TwinStore

final class ConflictsTests: XCTestCase {
    var dir = ""
    var volumes: [Volume] = []
    let user = Caller(uid: 1000, gid: 1000)
    /// 2026-11-27 06:12:00.345 UTC.
    let now: Int64 = 1_795_759_920_345

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinnode-conflicts-\(UUID().uuidString)").path
    }

    override func tearDownWithError() throws {
        for v in volumes { try? v.shutDown() }
        volumes = []
        try? FileManager.default.removeItem(atPath: dir)
    }

    var pending: String { dir + "/loser/conflicts-pending" }

    /// An unpaired store and its volume, as `twinfs mount` opens them.
    func makeVolume(_ name: String, node: String) throws -> Volume {
        try Store.create(at: "\(dir)/\(name)", nodeName: node, trackBytes: 65536)
        let volume = Volume(store: try Store.open(at: "\(dir)/\(name)"))
        volumes.append(volume)
        return volume
    }

    // MARK: building a tree through the volume

    @discardableResult
    func write(_ v: Volume, _ parent: UInt64, _ name: String, _ bytes: [UInt8], at offset: UInt64 = 0, mode: UInt32 = 0o644) throws -> UInt64 {
        let (r, handle) = try v.create(parent: parent, name: Array(name.utf8), mode: mode, flags: O_WRONLY, caller: user)
        defer { v.release(handle) }
        if !bytes.isEmpty {
            _ = try v.withWriteTarget(handle: handle, offset: offset, count: bytes.count, caller: user) { fd, position in
                bytes.withUnsafeBytes { pwrite(fd, $0.baseAddress, bytes.count, off_t(position)) }
            }
        }
        return r.ino
    }

    func mkdir(_ v: Volume, _ parent: UInt64, _ name: String, mode: UInt32 = 0o755) throws -> UInt64 {
        try v.mkdir(parent: parent, name: Array(name.utf8), mode: mode, caller: user).ino
    }

    /// The inode at `path` in the volume's tree, or nil.
    func resolve(_ v: Volume, _ path: String) throws -> InodeRecord? {
        var record = try v.getattr(InodeRecord.rootIno)
        for name in path.split(separator: "/") {
            do {
                record = try v.lookup(parent: record.ino, name: Array(name.utf8))
            } catch FSError.notFound {
                return nil
            }
        }
        return record
    }

    func contents(_ v: Volume, _ path: String) throws -> [UInt8] {
        let r = try XCTUnwrap(try resolve(v, path), "\(path) exists")
        XCTAssertEqual(r.kind, .regular, path)
        return try Conflicts.readTreeFile(v, r.ino, limit: 64 << 20, path: path)
    }

    /// Every path below `path`, with a trailing "/" for directories.
    func walk(_ v: Volume, _ path: String) throws -> [String] {
        guard let r = try resolve(v, path), r.isDirectory else { return [] }
        var out: [String] = []
        var offset: Int64 = 0
        while true {
            let page = try v.readdir(r.ino, offset: offset, limit: 100, plus: false)
            guard let last = page.last else { break }
            for e in page {
                let name = String(decoding: e.name, as: UTF8.self)
                if name == "." || name == ".." { continue }
                if e.record.isDirectory {
                    out.append("\(path)/\(name)/")
                    out += try walk(v, "\(path)/\(name)")
                } else {
                    out.append("\(path)/\(name)")
                }
            }
            offset = last.nextOffset
        }
        return out.sorted()
    }

    func pattern(_ count: Int, seed: UInt8) -> [UInt8] {
        (0..<count).map { UInt8(truncatingIfNeeded: $0 &* 31 &+ Int(seed)) | 1 }
    }

    // MARK: the losing node's changes

    struct Changed {
        var hello: UInt64, link: UInt64, docs: UInt64, deep: UInt64, linked: UInt64, gone: UInt64, setuid: UInt64, hidden: UInt64
        var all: [UInt64] { [hello, link, docs, deep, linked, gone, setuid, hidden] }
    }

    let deepBytes = 2 * (1 << 20) + 12345
    let holeStart = 1 << 20

    /// A file, a symlink, a directory, a file three directories down (larger than a copy chunk, with a hole of a
    /// whole chunk), a hard-linked file, a deleted file, a set-user-ID file and a file under /.twinfs.
    func makeChanges(_ v: Volume) throws -> Changed {
        let root = InodeRecord.rootIno
        let hello = try write(v, root, "hello.txt", Array("hello from nodeB\n".utf8))
        try v.setxattr(hello, name: Array("user.note".utf8), value: Array("kept".utf8), create: true, replace: false)
        try v.setxattr(hello, name: Array("trusted.grant".utf8), value: Array("not kept".utf8), create: true, replace: false)
        let link = try v.symlink(target: Array("hello.txt".utf8), parent: root, name: Array("link".utf8), caller: user).ino
        let docs = try mkdir(v, root, "docs", mode: 0o750)
        try write(v, docs, "a.md", Array("a".utf8))
        try write(v, docs, "b.md", Array("b".utf8))
        let a = try mkdir(v, root, "a", mode: 0o700)
        let b = try mkdir(v, a, "b")
        let c = try mkdir(v, b, "c")
        let head = pattern(holeStart, seed: 7)
        let tail = pattern(deepBytes - 2 * holeStart, seed: 9)
        let deep = try write(v, c, "deep.bin", head)
        let (_, handle) = try v.create(parent: c, name: Array("deep.bin".utf8), mode: 0o644, flags: O_WRONLY, caller: user)
        _ = try v.withWriteTarget(handle: handle, offset: UInt64(2 * holeStart), count: tail.count, caller: user) { fd, position in
            tail.withUnsafeBytes { pwrite(fd, $0.baseAddress, tail.count, off_t(position)) }
        }
        v.release(handle)
        let linked = try write(v, root, "first-name", Array("linked twice".utf8))
        _ = try v.link(linked, newParent: a, newName: Array("second-name".utf8))
        let gone = try write(v, root, "gone.txt", Array("deleted on nodeB".utf8))
        try v.unlink(parent: root, name: Array("gone.txt".utf8))
        let setuid = try write(v, root, "tool", Array("#!/bin/sh\n".utf8), mode: 0o4755)
        let twinfs = try mkdir(v, root, ".twinfs")
        let hidden = try write(v, twinfs, "hidden", Array("never preserved".utf8))
        return Changed(hello: hello, link: link, docs: docs, deep: deep, linked: linked, gone: gone, setuid: setuid, hidden: hidden)
    }

    func expectedDeep() -> [UInt8] {
        pattern(holeStart, seed: 7) + [UInt8](repeating: 0, count: holeStart) + pattern(deepBytes - 2 * holeStart, seed: 9)
    }

    let batch = "/.twinfs/conflicts/20261127T061200Z-nodeB"

    func preserveAll() throws -> (records: [ConflictRecord], changed: Changed) {
        let loser = try makeVolume("loser", node: "nodeB")
        let changed = try makeChanges(loser)
        let inodes = changed.all + [changed.linked, changed.hello]  // repeats are preserved once
        let records = try Conflicts.preserve(store: loser.store, inodes: inodes, nodeName: "nodeB", nowUnixMs: now, pendingDirectory: pending)
        return (records, changed)
    }

    // MARK: tests

    func testPreserveRecordsEachChangedInodeOnceWithItsPathKindAndSize() throws {
        let (records, changed) = try preserveAll()
        let byPath = Dictionary(uniqueKeysWithValues: records.map { ($0.path, $0) })
        XCTAssertEqual(records.count, 7, "8 inodes, one under /.twinfs skipped, repeats once: \(records.map(\.path))")
        XCTAssertEqual(byPath["/hello.txt"]?.kind, "file")
        XCTAssertEqual(byPath["/hello.txt"]?.bytes, UInt64("hello from nodeB\n".utf8.count))
        XCTAssertEqual(byPath["/hello.txt"]?.conflictPath, batch + "/hello.txt")
        XCTAssertEqual(byPath["/link"]?.kind, "symlink")
        XCTAssertEqual(byPath["/link"]?.bytes, 9)
        XCTAssertEqual(byPath["/docs"]?.kind, "directory")
        XCTAssertEqual(byPath["/docs"]?.conflictPath, batch + "/docs/.twinfs-listing.txt")
        XCTAssertEqual(byPath["/a/b/c/deep.bin"]?.bytes, UInt64(deepBytes))
        XCTAssertEqual(byPath["/first-name"]?.kind, "file", "a hard-linked file is preserved under its first name")
        XCTAssertNil(byPath["/a/second-name"])
        let gone = try XCTUnwrap(byPath["/.twinfs/lost/inode-\(changed.gone)"])
        XCTAssertEqual(gone.kind, "deleted")
        XCTAssertEqual(gone.conflictPath, "")
        XCTAssertFalse(records.contains { $0.path.hasPrefix("/.twinfs/hidden") })
        XCTAssertTrue(records.allSatisfy { $0.node == "nodeB" && $0.timeUnixMs == now })

        // One batch, complete, in the pending directory: its manifest, a marker per entry, data for files and
        // directories (the deep file keeps its hole).
        let batches = try FileManager.default.contentsOfDirectory(atPath: pending)
        XCTAssertEqual(batches, ["20261127T061200Z-nodeB"])
        let files = try FileManager.default.contentsOfDirectory(atPath: pending + "/" + batches[0])
        XCTAssertEqual(files.filter { $0.hasSuffix(".todo") }.count, 7)
        XCTAssertEqual(files.filter { $0.hasSuffix(".data") }.count, 5, "hello, docs, deep, first-name, tool")
    }

    func testImportRecreatesTheCopiesWithTheirBytesAtTheirConflictPaths() throws {
        let (records, _) = try preserveAll()
        let winner = try makeVolume("winner", node: "nodeA")
        let imported = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(imported, records)
        XCTAssertFalse(FileManager.default.fileExists(atPath: pending + "/20261127T061200Z-nodeB"), "imported entries leave the pending directory")

        XCTAssertEqual(try contents(winner, batch + "/hello.txt"), Array("hello from nodeB\n".utf8))
        XCTAssertEqual(try contents(winner, batch + "/a/b/c/deep.bin"), expectedDeep())
        XCTAssertEqual(try contents(winner, batch + "/first-name"), Array("linked twice".utf8))
        let link = try XCTUnwrap(try resolve(winner, batch + "/link"))
        XCTAssertEqual(try winner.readlink(link.ino), Array("hello.txt".utf8))
        let listing = String(decoding: try contents(winner, batch + "/docs/.twinfs-listing.txt"), as: UTF8.self)
        XCTAssertEqual(listing.split(separator: "\n").filter { !$0.hasPrefix("#") }, ["a.md", "b.md"])

        // User attributes come along, privileged ones do not.
        let hello = try XCTUnwrap(try resolve(winner, batch + "/hello.txt"))
        XCTAssertEqual(try winner.listxattr(hello.ino), [Array("user.note".utf8)])
        XCTAssertEqual(try winner.getxattr(hello.ino, name: Array("user.note".utf8)), Array("kept".utf8))

        // Owners and permissions follow the originals, without set-id bits; private directories stay private.
        let tool = try XCTUnwrap(try resolve(winner, batch + "/tool"))
        XCTAssertEqual(tool.permissions, 0o755, "set-user-ID dropped")
        XCTAssertEqual(tool.uid, 1000)
        XCTAssertEqual(try XCTUnwrap(try resolve(winner, batch + "/a")).permissions, 0o700)
        XCTAssertEqual(try XCTUnwrap(try resolve(winner, batch + "/docs")).permissions, 0o750)
        XCTAssertEqual(try XCTUnwrap(try resolve(winner, batch + "/a")).uid, 1000)

        XCTAssertEqual(try walk(winner, batch), [
            batch + "/.manifest.json", batch + "/a/", batch + "/a/b/", batch + "/a/b/c/", batch + "/a/b/c/deep.bin",
            batch + "/docs/", batch + "/docs/.twinfs-listing.txt", batch + "/first-name", batch + "/hello.txt", batch + "/link",
            batch + "/tool",
        ])
    }

    func testListReturnsTheImportedRecordsNewestBatchFirstWithinTheLimit() throws {
        let (records, _) = try preserveAll()
        let winner = try makeVolume("winner", node: "nodeA")
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), [], "no conflicts yet")
        _ = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), records)
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 3), Array(records.prefix(3)))

        // A later demotion of the same node: its batch lists first.
        let loser = try XCTUnwrap(volumes.first)
        let later = try write(loser, InodeRecord.rootIno, "later.txt", Array("later".utf8))
        let second = try Conflicts.preserve(store: loser.store, inodes: [later], nodeName: "nodeB", nowUnixMs: now + 60_000, pendingDirectory: pending)
        XCTAssertEqual(second.map(\.conflictPath), ["/.twinfs/conflicts/20261127T061300Z-nodeB/later.txt"])
        _ = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), second + records)
    }

    func testAnImportInterruptedMidwayFinishesOnTheNextRunWithoutDuplicatesOrLosses() throws {
        let (records, _) = try preserveAll()
        let winner = try makeVolume("winner", node: "nodeA")
        // Something in the way of one copy (a directory where /tool goes) stops the first import there.
        let twinfs = try mkdir(winner, InodeRecord.rootIno, ".twinfs")
        let conflicts = try mkdir(winner, twinfs, "conflicts")
        let mine = try mkdir(winner, conflicts, "20261127T061200Z-nodeB")
        _ = try mkdir(winner, mine, "tool")
        XCTAssertThrowsError(try Conflicts.importPending(volume: winner, pendingDirectory: pending)) {
            XCTAssertEqual($0 as? ConflictError, .inTheWay(path: self.batch + "/tool"))
        }
        let batchDir = pending + "/20261127T061200Z-nodeB"
        let left = try FileManager.default.contentsOfDirectory(atPath: batchDir).filter { $0.hasSuffix(".todo") }
        XCTAssertTrue(left.count > 0 && left.count < records.count, "some entries imported, some still pending: \(left)")
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), records, "the manifest lists the whole batch at once")

        try winner.rmdir(parent: mine, name: Array("tool".utf8))
        let rest = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(rest.count, left.count, "the second run imports exactly what was left")
        XCTAssertEqual(try contents(winner, batch + "/tool"), Array("#!/bin/sh\n".utf8))
        XCTAssertFalse(FileManager.default.fileExists(atPath: batchDir))
        XCTAssertEqual(try walk(winner, batch).count, 11, "every copy once")
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), records)
    }

    func testACrashAfterCopyingButBeforeForgettingTheEntryCopiesItAgainInPlace() throws {
        let (records, _) = try preserveAll()
        let winner = try makeVolume("winner", node: "nodeA")
        // The pending batch as it was before the import: restored after a full import, it is what a crash right
        // after the copies were made (and before any pending entry was removed) leaves behind.
        let batchDir = pending + "/20261127T061200Z-nodeB"
        let saved = dir + "/saved-batch"
        try FileManager.default.copyItem(atPath: batchDir, toPath: saved)
        _ = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        let after = try walk(winner, batch)
        try FileManager.default.copyItem(atPath: saved, toPath: batchDir)
        // ...and one entry whose data file went but whose marker did not (a crash between the two removals).
        let deepIndex = try XCTUnwrap(records.firstIndex { $0.path == "/a/b/c/deep.bin" })
        XCTAssertEqual(unlink("\(batchDir)/\(deepIndex).data"), 0)

        let again = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(again.count, records.count)
        XCTAssertEqual(try walk(winner, batch), after, "no second copy of anything")
        XCTAssertEqual(try contents(winner, batch + "/a/b/c/deep.bin"), expectedDeep())
        XCTAssertEqual(try contents(winner, batch + "/hello.txt"), Array("hello from nodeB\n".utf8))
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), records)
        XCTAssertFalse(FileManager.default.fileExists(atPath: batchDir))
    }

    func testAHalfWrittenPreserveIsDiscardedAndASecondBatchInTheSameSecondGetsItsOwnName() throws {
        let loser = try makeVolume("loser", node: "nodeB")
        let file = try write(loser, InodeRecord.rootIno, "f", Array("one".utf8))
        try FileManager.default.createDirectory(atPath: pending + "/.tmp-20261127T061200Z-nodeB", withIntermediateDirectories: true)
        let first = try Conflicts.preserve(store: loser.store, inodes: [file], nodeName: "nodeB", nowUnixMs: now, pendingDirectory: pending)
        let second = try Conflicts.preserve(store: loser.store, inodes: [file], nodeName: "nodeB", nowUnixMs: now + 1, pendingDirectory: pending)
        XCTAssertEqual(try FileManager.default.contentsOfDirectory(atPath: pending).sorted(), ["20261127T061200Z-nodeB", "20261127T061200Z-nodeB-2"])
        XCTAssertEqual(first.map(\.conflictPath), [batch + "/f"])
        XCTAssertEqual(second.map(\.conflictPath), [batch + "-2/f"])
        let winner = try makeVolume("winner", node: "nodeA")
        XCTAssertEqual(try Conflicts.importPending(volume: winner, pendingDirectory: pending), first + second)
        XCTAssertEqual(try contents(winner, batch + "-2/f"), Array("one".utf8))
    }

    func testPreserveRefusesTooManyInodesAndBadNodeNamesBeforeWritingAnything() throws {
        let loser = try makeVolume("loser", node: "nodeB")
        let many = (0...UInt64(Conflicts.maxInodesPerCall)).map { $0 + 100 }
        XCTAssertThrowsError(try Conflicts.preserve(store: loser.store, inodes: many, nodeName: "nodeB", nowUnixMs: now, pendingDirectory: pending)) {
            XCTAssertEqual($0 as? ConflictError, .tooManyInodes(count: Conflicts.maxInodesPerCall + 1, limit: Conflicts.maxInodesPerCall))
        }
        XCTAssertThrowsError(try Conflicts.preserve(store: loser.store, inodes: [1], nodeName: "../x", nowUnixMs: now, pendingDirectory: pending)) {
            XCTAssertEqual($0 as? ConflictError, .invalidNodeName("../x"))
        }
        XCTAssertFalse(FileManager.default.fileExists(atPath: pending))
        XCTAssertEqual(try Conflicts.importPending(volume: loser, pendingDirectory: pending), [], "nothing pending")
    }

    func testTheRootALostInodeAndNamesThatCollideWithTheLayoutAreEachKeptApart() throws {
        let loser = try makeVolume("loser", node: "nodeB")
        let root = InodeRecord.rootIno
        let manifestLike = try write(loser, root, ".manifest.json", Array("a user's own manifest".utf8))
        let dir = try mkdir(loser, root, "d")
        let listingLike = try write(loser, dir, ".twinfs-listing.txt", Array("a user's own listing".utf8))
        // A file whose record is here but no name leads to it (as when its entry was not pulled yet).
        let lost = try loser.store.allocateInodeNumber()
        try loser.store.database.transaction {
            try loser.store.insertInode(InodeRecord(ino: lost, mode: UInt32(S_IFREG) | 0o600, uid: 1000, gid: 1000, nlink: 1, time: Timestamp.now(), version: try loser.store.nextVersion()))
        }
        let records = try Conflicts.preserve(
            store: loser.store, inodes: [root, manifestLike, dir, listingLike, lost], nodeName: "nodeB", nowUnixMs: now, pendingDirectory: pending)
        XCTAssertEqual(records.map(\.path), ["/", "/.manifest.json", "/d", "/d/.twinfs-listing.txt", "/.twinfs/lost/inode-\(lost)"])
        XCTAssertEqual(records.map(\.conflictPath), [
            batch + "/.twinfs-listing.txt", batch + "/.manifest.json.inode-\(manifestLike)", batch + "/d/.twinfs-listing.txt",
            batch + "/d/.twinfs-listing.txt.inode-\(listingLike)", batch + "/.twinfs/lost/inode-\(lost)",
        ])

        let winner = try makeVolume("winner", node: "nodeA")
        _ = try Conflicts.importPending(volume: winner, pendingDirectory: pending)
        XCTAssertEqual(try contents(winner, batch + "/.manifest.json.inode-\(manifestLike)"), Array("a user's own manifest".utf8))
        XCTAssertEqual(try contents(winner, batch + "/d/.twinfs-listing.txt.inode-\(listingLike)"), Array("a user's own listing".utf8))
        let rootListing = String(decoding: try contents(winner, batch + "/.twinfs-listing.txt"), as: UTF8.self)
        XCTAssertEqual(rootListing.split(separator: "\n").filter { !$0.hasPrefix("#") }, [".manifest.json", "d"])
        XCTAssertEqual(try contents(winner, batch + "/.twinfs/lost/inode-\(lost)"), [])
        XCTAssertEqual(try XCTUnwrap(try resolve(winner, batch + "/.twinfs/lost")).permissions, 0o700, "unknown directories are root's alone")
        XCTAssertEqual(try Conflicts.list(volume: winner, limit: 100), records, "the manifest is the batch's, not the user's file")
    }

    func testNamesAndTimesPrintPlainly() {
        XCTAssertEqual(Conflicts.timestamp(now), "20261127T061200Z")
        XCTAssertEqual(Conflicts.escape(Array("a b%c\n".utf8)), "a b%25c%0A")
        XCTAssertEqual(Conflicts.escape(Array("été".utf8)), "été")
        XCTAssertEqual(Conflicts.escape([0x66, 0xff]), "f%FF")
    }
}
