// The WAL's size stays bounded whether or not a background checkpointer keeps up, a background checkpoint
// runs beside a writer without failing it, and what it copied survives reopening the store.
import Foundation
import XCTest

@testable import TwinStore

final class CheckpointTests: XCTestCase {
    var dir = ""

    override func setUpWithError() throws {
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("twinstore-ckpt-\(UUID().uuidString)").path
        try Store.create(at: dir, nodeName: "a", trackBytes: 65536)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// One small transaction: a new inode (a page or two of the WAL each).
    private func commitOne(_ store: Store, _ i: Int) throws {
        try store.database.transaction {
            let ino = try store.allocateInodeNumber()
            try store.insertInode(InodeRecord(ino: ino, mode: 0o100644, uid: 0, gid: 0, nlink: 1, time: Timestamp(nanoseconds: Int64(i)), version: try store.nextVersion()))
            try store.insertEntry(parent: InodeRecord.rootIno, name: Array("f\(i)".utf8), ino: ino)
        }
    }

    /// Commits `count` transactions (`afterEach` runs after each); how often the WAL started over, and its largest size.
    private func commitWatchingTheWAL(_ store: Store, _ count: Int, afterEach: (Int) throws -> Void = { _ in }) throws -> (restarts: Int, largestFrames: Int) {
        var restarts = 0
        var previous = 0
        var largest = 0
        for i in 0..<count {
            try commitOne(store, i)
            if store.walFrames < previous { restarts += 1 }
            previous = store.walFrames
            largest = max(largest, previous)
            try afterEach(i)
        }
        return (restarts, largest)
    }

    func testWithoutABackgroundCheckpointerTheCommittingThreadBoundsTheWAL() throws {
        let store = try Store.open(at: dir)
        var asked = 0
        store.checkpointWanted = { asked += 1 }  // nobody answers
        var largest = 0
        for i in 0..<30_000 {
            try commitOne(store, i)
            largest = max(largest, store.walFrames)
        }
        XCTAssertGreaterThan(asked, 0, "a large WAL asks for a background checkpoint")
        XCTAssertGreaterThanOrEqual(largest, Store.forcedCheckpointFrames, "the WAL grew to the forced limit")
        XCTAssertLessThan(largest, Store.forcedCheckpointFrames + 64, "and no further")
    }

    func testAWriterThatNeverPausesAsksForABackgroundPassOncePerStrideNotAfterEveryCommit() throws {
        let store = try Store.open(at: dir)
        var askedAtFrames: [Int] = []
        store.checkpointWanted = { [unowned store] in askedAtFrames.append(store.walFrames) }  // nobody answers
        let (restarts, _) = try commitWatchingTheWAL(store, 6_000)
        XCTAssertGreaterThan(restarts, 0, "the forced checkpoint started the WAL over at least once")
        XCTAssertGreaterThan(askedAtFrames.count, restarts, "every WAL cycle asked for background passes")
        for frames in askedAtFrames {
            XCTAssertGreaterThanOrEqual(frames, Store.backgroundCheckpointFrames, "only a large WAL asks")
        }
        // Each pass syncs the WAL and meta.db: asked after every commit, passes ran back to back.
        for (earlier, later) in zip(askedAtFrames, askedAtFrames.dropFirst()) where later > earlier {
            XCTAssertGreaterThanOrEqual(later - earlier, Store.backgroundCheckpointStrideFrames, "asked again only a stride later")
        }
    }

    func testWhenABackgroundPassLeavesAFewFramesTheWriterCopiesThemAndTheWALStartsOverEarly() throws {
        let store = try Store.open(at: dir)
        // A reader's snapshot stands for the commits that land while a pass runs: the pass copies only up to it.
        let reader = try SQLiteDatabase(path: "\(dir)/meta.db", create: false)
        var passWanted = false
        store.checkpointWanted = { passWanted = true }
        var passes = 0
        let (restarts, largest) = try commitWatchingTheWAL(store, 12_000) { i in
            guard passWanted else { return }
            passWanted = false
            try reader.execute("BEGIN")
            XCTAssertTrue(try reader.statement("SELECT count(*) FROM inodes").step())
            try self.commitOne(store, -i)  // committed after the reader's snapshot: the pass must leave it
            XCTAssertTrue(store.checkpointInBackground())
            passes += 1
            reader.releaseStatements()
            try reader.execute("COMMIT")
        }
        XCTAssertGreaterThan(passes, 0, "the writer asked for background passes")
        XCTAssertGreaterThan(restarts, 2, "the WAL started over again and again")
        XCTAssertLessThan(largest, Store.backgroundCheckpointFrames + Store.backgroundCheckpointStrideFrames,
                          "the writer finished each cycle after the first pass instead of growing to the forced limit")
    }

    /// The background thread's side of the test: answers every request with a checkpoint until told to stop.
    final class Checkpointer: @unchecked Sendable {
        let wanted = DispatchSemaphore(value: 0)
        let done = DispatchSemaphore(value: 0)
        private let lock = Lock()
        private var stopped = false
        private var passes = 0
        var checkpoints: Int { lock.withLock { passes } }

        func run(_ store: Store) {
            while true {
                wanted.wait()
                if lock.withLock({ stopped }) { break }
                if store.checkpointInBackground() { lock.withLock { passes += 1 } }
            }
            done.signal()
        }

        func stop() {
            lock.withLock { stopped = true }
            wanted.signal()
            done.wait()
        }
    }

    func testABackgroundCheckpointRunsBesideAWriterThatNeverPausesAndTheWALStaysBounded() throws {
        let store = try Store.open(at: dir)
        let checkpointer = Checkpointer()
        store.checkpointWanted = { checkpointer.wanted.signal() }
        Thread.detachNewThread { [store] in checkpointer.run(store) }
        var largest = 0
        for i in 0..<20_000 {
            try commitOne(store, i)
            largest = max(largest, store.walFrames)
        }
        checkpointer.stop()
        XCTAssertGreaterThan(checkpointer.checkpoints, 0, "the writer asked for background checkpoints")
        XCTAssertLessThan(largest, Store.forcedCheckpointFrames + 64, "a background pass never lets the WAL run past the forced limit")
        try store.close()
        XCTAssertFalse(store.checkpointInBackground(), "a closed store stops its checkpointer")
        let reopened = try Store.open(at: dir, readOnly: true)
        XCTAssertEqual(try reopened.counts().inodes, 20_001, "every commit is there after the checkpoints")
        XCTAssertNotNil(try reopened.lookup(parent: InodeRecord.rootIno, name: Array("f19999".utf8)))
    }

    func testTheCommitCountMovesWithEveryCommitAndOnlyThen() throws {
        let store = try Store.open(at: dir)
        let before = store.commitCount
        try commitOne(store, 1)
        XCTAssertEqual(store.commitCount, before + 1, "a transaction is one commit")
        _ = try store.inode(InodeRecord.rootIno)
        _ = try store.lookup(parent: InodeRecord.rootIno, name: Array("f1".utf8))
        store.database.releaseStatements()
        XCTAssertEqual(store.commitCount, before + 1, "reads commit nothing, so a WAL flush after them can be skipped")
        try store.setXattr(ino: InodeRecord.rootIno, name: Array("user.a".utf8), value: [1])
        XCTAssertEqual(store.commitCount, before + 2, "a statement outside a transaction commits on its own")
    }
}
