// ChecksumRecorder: records the checksum of every image the mirror's executor has in hand anyway (one it read to
// send to the peer, one it stored from the peer), batched into one store transaction per executor round.
// Owns: that buffer, and telling a read that disagrees with the checksum recorded for the same version (a
// corrupt copy about to travel). Never: read or sum anything the executor did not already read, block the
// executor on anything but the volume lock, or fail a store action (checksums are advisory: a failed recording
// is dropped and counted).
import Foundation
import MirrorCore
import TwinStore

final class ChecksumRecorder: @unchecked Sendable {
    private struct Row {
        var location: StoreLocation
        var version: UInt64
        var sum: [UInt8]
        /// Read to be sent (a same-version row recorded before is kept and compared); false: stored from the peer.
        var sent: Bool
        /// The image is of a deleted inode: the rows of its tracks are forgotten (nothing can vouch for them again).
        var deletesInode: Bool
    }

    /// The image of an inode that does not exist (InodeImage(record: nil)).
    private static let deletedInodeImage = InodeImage(record: nil).encoded()

    /// Executor-only.
    private var rows: [Row] = []
    /// Beyond this many rows in one round the rest is not recorded (a round never grows without bound).
    static let maxRowsPerRound = 4096

    private let lock = NSLock()
    private var corruptReads = 0
    private var failedRecordings = 0

    /// Executor: `image` was read from the store to be sent.
    func sent(_ location: Location, _ image: LocationImage) {
        add(location, image, sent: true)
    }

    /// Executor: `image` was stored from the peer (it is the store's copy now).
    func stored(_ location: Location, _ image: LocationImage) {
        add(location, image, sent: false)
    }

    private func add(_ location: Location, _ image: LocationImage, sent: Bool) {
        guard image.version != 0, rows.count < Self.maxRowsPerRound else { return }
        let l = StoreLocation(location)
        rows.append(Row(location: l, version: image.version, sum: Store.checksum(of: image.bytes, at: l), sent: sent,
                        deletesInode: location.isInodeRecord && image.bytes == Self.deletedInodeImage))
    }

    /// Executor, at the end of a round: one transaction for the round's rows. A read whose sum disagrees with
    /// the one recorded for its version is logged with its path and counted.
    func flush(_ volume: Volume, log: ((String) -> Void)?) {
        guard !rows.isEmpty else { return }
        let batch = rows
        rows.removeAll(keepingCapacity: true)
        var corrupt: [(StoreLocation, String)] = []
        do {
            try volume.withVolumeLock { store in
                try store.database.transaction {
                    for r in batch {
                        if r.deletesInode { try store.forgetChecksums(ino: r.location.ino) }
                        if r.sent {
                            if try !store.recordChecksum(r.location, version: r.version, sum: r.sum) {
                                corrupt.append((r.location, (try? store.path(of: r.location.ino)).flatMap { $0 } ?? "(inode \(r.location.ino), no path)"))
                            }
                        } else {
                            try store.replaceChecksum(r.location, version: r.version, sum: r.sum)
                        }
                    }
                }
            }
        } catch {
            lock.withLock { failedRecordings += batch.count }
            return
        }
        guard !corrupt.isEmpty else { return }
        lock.withLock { corruptReads += corrupt.count }
        for (l, path) in corrupt {
            log?("corrupt read: \(l) of \(path) does not match the checksum recorded for its version (run `twinfs verify --repair`)")
        }
    }

    /// Reads whose bytes disagreed with the checksum recorded for their version, and rows that could not be recorded.
    var counts: (corruptReads: Int, failedRecordings: Int) { lock.withLock { (corruptReads, failedRecordings) } }

    /// A corrupt read found elsewhere (by a verify): counted with the executor's.
    func countCorruptRead() { lock.withLock { corruptReads += 1 } }
}

extension Volume {
    /// Runs `body` on the store with the volume lock held (the executor's and the verifier's own bookkeeping).
    func withVolumeLock<T>(_ body: (Store) throws -> T) throws -> T {
        try lock.withLock {
            defer { store.database.releaseStatements() }
            return try body(store)
        }
    }
}
