// Unsettled inodes: regular files whose overwrites TwinNode records in memory, not in a transaction each (its
// fast write path, TwinNode/FastWrites.swift). A row here says "this inode's record may lag its data file: the
// times, the size of its allocation and the versions of the tracks written since"; everything else in the record
// is exact. Owns: the `unsettled` table and the recovery of such inodes when a daemon died before settling them.
// Never: decide when an inode may take the fast path (the volume's business), touch a settled inode.
import Glibc
import CLinuxShims

extension Store {
    static let unsettledSchemaSQL = "CREATE TABLE IF NOT EXISTS unsettled(ino INTEGER PRIMARY KEY)"

    /// At open: the table (stores made before it existed get it here) and the recovery of what a killed daemon
    /// left unsettled. Runs before any operation, so nothing sees a lagging record.
    func prepareUnsettled() throws {
        try database.execute(Self.unsettledSchemaSQL)
        let pending = try unsettledInodes()
        guard !pending.isEmpty else { return }
        try database.transaction {
            for ino in pending { try recoverUnsettled(ino) }
        }
    }

    public func unsettledInodes() throws -> [UInt64] {
        let s = try database.statement("SELECT ino FROM unsettled ORDER BY ino")
        var out: [UInt64] = []
        while try s.step() { out.append(UInt64(bitPattern: s.int(0))) }
        return out
    }

    /// Call inside the transaction that leaves `ino`'s record exact (the fast path's first write).
    public func markUnsettled(_ ino: UInt64) throws {
        try database.statement("INSERT OR IGNORE INTO unsettled(ino) VALUES (?)").bind(.u64(ino)).run()
    }

    /// Call inside the transaction that writes `ino`'s settled record.
    public func markSettled(_ ino: UInt64) throws {
        try database.statement("DELETE FROM unsettled WHERE ino = ?").bind(.u64(ino)).run()
    }

    /// The record with what the fast path's writes changed in the data file since the record was last exact: the
    /// kernel set the data file's mtime at each write (with the resolution a local file gets), so times come
    /// out the same in a stat before a crash, in the settled record and in a recovery after it (after a power
    /// loss: as the last fsync, which made the data file's inode durable, left them).
    public func withDataFileChanges(_ record: InodeRecord) throws -> InodeRecord {
        var st = stat()
        guard fstatat(dataDirFD, Self.dataRelativePath(record.ino), &st, 0) == 0 else {
            if errno == ENOENT { return record }  // never written: the record is exact
            throw FSError.fromErrno()
        }
        var r = record
        let written = Timestamp(seconds: st.st_mtim.tv_sec, nanos: st.st_mtim.tv_nsec)
        r.mtime = max(r.mtime, written)
        r.ctime = max(r.ctime, written)
        r.allocatedBlocks = UInt64(st.st_blocks)
        return r
    }

    /// Makes `ino`'s record exact again (call inside a transaction): times and allocation from the data file, a
    /// new version for each range of `writtenTracks` and, if anything changed, for the record; the row goes.
    public func settle(_ ino: UInt64, writtenTracks: [ClosedRange<UInt64>]) throws {
        try markSettled(ino)
        guard let stored = try inode(ino) else { return }
        var r = try withDataFileChanges(stored)
        for range in writtenTracks { try stampTracks(ino: ino, tracks: range) }
        guard r != stored || !writtenTracks.isEmpty else { return }
        r.version = try version(for: .inode(ino))
        try updateInode(r)
    }

    /// Which tracks the lost entry held is not known: every track holding data gets a new version, so nothing
    /// written can look older than it is.
    func recoverUnsettled(_ ino: UInt64) throws {
        guard let record = try inode(ino) else { return try markSettled(ino) }
        var holdingData: [ClosedRange<UInt64>] = []
        let fd = try openData(ino, create: false)
        if fd >= 0 {
            defer { Glibc.close(fd) }
            let trackBytes = UInt64(identity.trackBytes)
            var offset: UInt64 = 0
            while offset < record.size {
                let start = lseek(fd, off_t(offset), twin_SEEK_DATA)
                guard start >= 0, UInt64(start) < record.size else { break }  // ENXIO: no data past offset
                let end = UInt64(max(lseek(fd, start, twin_SEEK_HOLE), start + 1))
                holdingData.append((UInt64(start) / trackBytes)...((min(end, record.size) - 1) / trackBytes))
                offset = end
            }
        }
        try settle(ino, writtenTracks: holdingData)
    }
}
