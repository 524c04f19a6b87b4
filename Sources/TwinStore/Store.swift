// Store: the on-disk state of one node. Metadata (inode records, directory entries, xattrs, per-track versions,
// counters) live in SQLite in WAL mode (meta.db); file data live as tracks in one sparse file per inode
// (data/XX/<ino>). Owns: the store's format, its lock, allocation of inode numbers and versions.
// Never: POSIX policy (permissions, timestamps: TwinNode decides), threads (callers serialize access).
import Foundation
import Glibc
import CLinuxShims
import Synchronization

public struct StoreCounts: Equatable, Sendable {
    public var inodes: Int
    public var directories: Int
    public var tracks: Int
    public var dataBytes: UInt64
}

public final class Store {
    public static let schemaVersion: Int64 = 1
    static let inodeReserveBlock: UInt64 = 4096
    static let versionReserveBlock: UInt64 = 1 << 16

    public let root: String
    public let identity: StoreIdentity
    public let database: SQLiteDatabase
    private let lockFD: Int32
    let dataDirFD: Int32
    private let nursery: Nursery
    private var walFD: Int32 = -1
    let walDurability: WALDurability

    private var nextInodeSequence: UInt64 = 0
    private var reservedInodeSequence: UInt64 = 0
    private var lamport: UInt64 = 0
    /// Set while a mirror runs this store: every version must then come from a grant's stamps.
    public var mirrored = false
    /// Versions granted to the operations running now (their write locations are disjoint); see `version(for:)`.
    public var stamps: [StoreLocation: UInt64] = [:]
    public var stampsUsed: Set<StoreLocation> = []
    /// Writes that found no stamp under a mirror (a location missing from an operation's plan: a bug to report).
    public internal(set) var unstampedWrites = 0
    private var reservedLamport: UInt64 = 0

    /// WAL frames (4 KiB pages) after which a commit asks for a background checkpoint (`checkpointWanted`)...
    public static let backgroundCheckpointFrames = 2000
    /// ...and after which the committing thread checkpoints itself, because the background one has fallen
    /// behind: with statements released before each COMMIT this bounds the WAL (about 32 MiB).
    public static let forcedCheckpointFrames = 8000
    /// Once asked for, the next background checkpoint is asked for only after the WAL grew by this many frames
    /// more (or started over). Each pass syncs the WAL and meta.db: asked after every commit, passes ran back
    /// to back, each copying the one or two frames committed during the last, and their device flushes queued
    /// in front of every fsync (a third of a flush per 4 KiB write, half a flush per unlink).
    public static let backgroundCheckpointStrideFrames = 1000
    /// A background pass cannot start the WAL over while the writer keeps committing (SQLite restarts it only
    /// when a transaction begins with every frame copied). When a pass leaves at most this many frames behind,
    /// the committing thread copies them itself — a small checkpoint with the writer held — and the WAL starts
    /// over at the next commit, long before the forced limit with its large copy under the writer's lock.
    public static let finishCheckpointFrames = 256
    /// The WAL's frame count when a background checkpoint was last asked for (0: not in this WAL cycle).
    private var checkpointAskedAtFrames = 0
    /// Frames the last background pass found copied (0: none since the WAL last started over or was finished).
    private let backgroundCopiedFrames = Atomic<Int>(0)
    /// The WAL's frame count after the previous commit: a smaller count means the WAL started over.
    private var previousWALFrames = 0
    /// Called right after a commit (under the caller's lock) once the WAL holds `backgroundCheckpointFrames`;
    /// the callee arranges for `checkpointInBackground` to run on another thread. Set before the first commit.
    public var checkpointWanted: (() -> Void)?
    /// A second connection, used only by `checkpointInBackground`: a checkpoint copies pages and syncs two
    /// files, which must not stall the writer (SQLite lets a checkpoint run beside a writer on another connection).
    private var checkpointer: SQLiteDatabase?
    private let checkpointLock = Lock()
    private var closed = false
    /// Commits of the volume's connection since the store was opened (counted by the WAL hook, after the commit's
    /// frames are in the WAL). Readable from any thread: a WAL flush that would cover no new commit is skipped.
    private let commitCounter = Atomic<UInt64>(0)
    public var commitCount: UInt64 { commitCounter.load(ordering: .acquiring) }

    // MARK: create

    /// Creates a new store at `path` (which must not exist, or be an empty directory).
    @discardableResult
    public static func create(at path: String, nodeName: String, trackBytes: Int, nodeIndex: UInt16? = nil, pairing: Pairing? = nil, volumeID: String? = nil) throws -> StoreIdentity {
        try StoreIdentity.validateTrackBytes(trackBytes)
        try StoreIdentity.validateNodeName(nodeName)
        let fm = FileManager.default
        var isDir: ObjCBool = false
        if fm.fileExists(atPath: path, isDirectory: &isDir) {
            guard isDir.boolValue, (try? fm.contentsOfDirectory(atPath: path))?.isEmpty == true else {
                throw StoreError.alreadyExists(path: path)
            }
        } else {
            do { try fm.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
                throw StoreError.io(path: path, detail: "cannot create directory: \(error.localizedDescription)")
            }
        }
        let index = nodeIndex ?? UInt16.random(in: 1...0xFFFE)
        var identity = StoreIdentity(volumeID: volumeID ?? UUID().uuidString.lowercased(), nodeName: nodeName, nodeIndex: index, trackBytes: trackBytes)
        identity.pairing = pairing
        do {
            let data = "\(path)/data"
            try fm.createDirectory(atPath: data, withIntermediateDirectories: false)
            for bucket in 0..<256 {
                try fm.createDirectory(atPath: "\(data)/\(hex2(bucket))", withIntermediateDirectories: false)
            }
            try fm.createDirectory(atPath: "\(data)/\(trashDirectory)", withIntermediateDirectories: false)
            let db = try SQLiteDatabase(path: "\(path)/meta.db", create: true)
            try configure(db)
            try db.transaction {
                try db.execute(schemaSQL)
                try db.execute(mirrorSchemaSQL)
                let now = Timestamp.now()
                let rootRecord = InodeRecord(
                    ino: InodeRecord.rootIno, mode: UInt32(S_IFDIR) | 0o755, uid: getuid(), gid: getgid(), nlink: 2, time: now,
                    version: 0)  // never written: older than every version either node stamps
                try insert(rootRecord, into: db)
                try db.statement("INSERT INTO counters(name, value) VALUES ('inode_seq', 1), ('lamport', 2)").run()
                try db.execute("PRAGMA user_version = \(schemaVersion)")
            }
            // The identity file is written last and atomically: a store without it is not a store yet.
            let conf = "\(path)/\(StoreIdentity.fileName)"
            try identity.serialized().write(toFile: conf + ".tmp", atomically: false, encoding: .utf8)
            try syncPath(conf + ".tmp")
            guard rename(conf + ".tmp", conf) == 0 else { throw FSError.fromErrno() }
            try syncPath(path)
        } catch let error as StoreError {
            throw error
        } catch {
            throw StoreError.io(path: path, detail: "cannot initialise store: \(error)")
        }
        return identity
    }

    static let schemaSQL = """
        CREATE TABLE inodes(
            ino INTEGER PRIMARY KEY, mode INTEGER NOT NULL, uid INTEGER NOT NULL, gid INTEGER NOT NULL,
            nlink INTEGER NOT NULL, size INTEGER NOT NULL, atime INTEGER NOT NULL, mtime INTEGER NOT NULL,
            ctime INTEGER NOT NULL, rdev INTEGER NOT NULL, version INTEGER NOT NULL, target BLOB NOT NULL,
            blocks INTEGER NOT NULL DEFAULT 0);
        CREATE TABLE dirents(
            id INTEGER PRIMARY KEY, parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER NOT NULL,
            UNIQUE(parent, name));
        CREATE INDEX dirents_by_parent ON dirents(parent);
        CREATE INDEX dirents_by_ino ON dirents(ino);
        CREATE TABLE xattrs(ino INTEGER NOT NULL, name BLOB NOT NULL, value BLOB NOT NULL, PRIMARY KEY(ino, name)) WITHOUT ROWID;
        CREATE TABLE tracks(ino INTEGER NOT NULL, idx INTEGER NOT NULL, version INTEGER NOT NULL, PRIMARY KEY(ino, idx)) WITHOUT ROWID;
        CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
        CREATE TABLE tombstones(ino INTEGER PRIMARY KEY, version INTEGER NOT NULL);
        """

    static func configure(_ db: SQLiteDatabase) throws {
        // WAL + synchronous=NORMAL: a commit survives a crash of the daemon (it reached the kernel);
        // fsync() additionally syncs the WAL (syncMetadata) so it survives a crash of the machine.
        try db.execute("PRAGMA journal_mode=WAL")
        try db.execute("PRAGMA synchronous=NORMAL")
        try db.execute("PRAGMA foreign_keys=OFF")
        try db.execute("PRAGMA cache_size=-8000")  // 8 MiB: bounds daemon memory whatever the store's size.
        try db.execute("PRAGMA wal_autocheckpoint=4000")
    }

    // MARK: open

    private init(root: String, identity: StoreIdentity, database: SQLiteDatabase, lockFD: Int32, dataDirFD: Int32) {
        self.root = root
        self.identity = identity
        self.database = database
        self.lockFD = lockFD
        self.dataDirFD = dataDirFD
        self.nursery = Nursery(dataDirFD: dataDirFD)
        self.walDurability = WALDurability(storeRoot: root)
    }

    deinit {
        nursery.close()
        if walFD >= 0 { Glibc.close(walFD) }
        Glibc.close(dataDirFD)
        Glibc.close(lockFD)  // releases the flock
    }

    /// Reads and validates a store's identity without locking or opening it.
    public static func readIdentity(at path: String) throws -> StoreIdentity {
        var st = stat()
        guard stat(path, &st) == 0 else { throw StoreError.missing(path: path) }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw StoreError.notAStore(path: path) }
        let conf = "\(path)/\(StoreIdentity.fileName)"
        guard let data = FileManager.default.contents(atPath: conf) else { throw StoreError.notAStore(path: path) }
        guard let text = String(data: data, encoding: .utf8) else {
            throw StoreError.corrupt(path: path, detail: "\(StoreIdentity.fileName) is not text")
        }
        return try StoreIdentity.parse(text, path: path)
    }

    /// Opens a store for exclusive use by this process. `readOnly` opens without the lock, for `status`.
    /// `lockWaitMs`: how long to wait for a daemon that is shutting down to let go of the store's lock.
    public static func open(at path: String, readOnly: Bool = false, lockWaitMs: Int = 0) throws -> Store {
        let identity = try readIdentity(at: path)
        let lockFD = Glibc.open("\(path)/lock", O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard lockFD >= 0 else { throw StoreError.io(path: path, detail: "cannot open lock file: \(String(cString: strerror(errno)))") }
        if !readOnly {
            var waitedMs = 0
            while flock(lockFD, LOCK_EX | LOCK_NB) != 0 {
                guard waitedMs < lockWaitMs else {
                    Glibc.close(lockFD)
                    throw StoreError.locked(path: path)
                }
                usleep(50_000)
                waitedMs += 50
            }
        }
        let dataDirFD = Glibc.open("\(path)/data", O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dataDirFD >= 0 else {
            Glibc.close(lockFD)
            throw StoreError.corrupt(path: path, detail: "data directory missing")
        }
        let store: Store
        do {
            guard FileManager.default.fileExists(atPath: "\(path)/meta.db") else {
                throw StoreError.corrupt(path: path, detail: "meta.db missing")
            }
            let db = try SQLiteDatabase(path: "\(path)/meta.db", create: false)
            store = Store(root: path, identity: identity, database: db, lockFD: lockFD, dataDirFD: dataDirFD)
            try configure(db)
            let check = try db.statement("PRAGMA quick_check")
            guard try check.step(), check.text(0) == "ok" else {
                throw StoreError.corrupt(path: path, detail: "meta.db fails its integrity check")
            }
            let version = try db.statement("PRAGMA user_version")
            _ = try version.step()
            let found = version.int(0)
            if found > schemaVersion {
                throw StoreError.newerFormat(path: path, found: Int(found), supported: Int(schemaVersion))
            }
            guard found == schemaVersion, try store.inode(InodeRecord.rootIno)?.isDirectory == true else {
                throw StoreError.corrupt(path: path, detail: "meta.db has no root directory")
            }
        } catch let error as StoreError {
            Glibc.close(dataDirFD)
            Glibc.close(lockFD)
            throw error
        } catch let error as SQLiteError {
            throw StoreError.corrupt(path: path, detail: "meta.db: \(error.message)")
        }
        if !readOnly {
            do {
                try store.loadCounters()
                try store.prepareMirrorState()
                try store.prepareChecksums()
                try store.prepareUnsettled()
                try store.removeOrphans()
                store.emptyTrash()
                Nursery.clearLeftovers(dataDirFD: dataDirFD)
                try store.openWAL()
                try store.startCheckpointing()
                // One scan of the xattrs at mount (they are few next to inodes and tracks).
                store.mayHaveCapabilityXattrs = try store.database.statement("SELECT 1 FROM xattrs WHERE name = ? LIMIT 1")
                    .bind(.blob(Store.capabilityXattr)).step()
                store.replenishReserve()
                store.database.releaseStatements()
            } catch {
                throw StoreError.corrupt(path: path, detail: "cannot recover: \(error)")
            }
        }
        return store
    }

    private func openWAL() throws {
        // A trivial write makes sure the -wal file exists; its fd is kept so fsync() can make every
        // committed frame durable without a second transaction. On a full disk the reserve makes room for it.
        do {
            try withReserveOnFullDisk {
                try database.statement("UPDATE counters SET value = value WHERE name = 'lamport'").run()
            }
        } catch let error as SQLiteError where error.isDiskFull {
            // A full disk and no reserve left: mount anyway (reads work; writes fail with ENOSPC until space
            // returns), and find the WAL when there is something to sync.
            return
        }
        walFD = Glibc.open("\(root)/meta.db-wal", O_RDWR | O_CLOEXEC)
        if walFD < 0 { throw FSError.fromErrno() }
    }

    private func startCheckpointing() throws {
        let background = try SQLiteDatabase(path: "\(root)/meta.db", create: false)
        // NORMAL (not OFF): a checkpoint syncs the WAL before copying and meta.db after, so restarting the WAL
        // never loses a committed frame.
        try background.execute("PRAGMA synchronous=NORMAL")
        checkpointer = background
        database.observeWAL { [unowned self] frames in
            commitCounter.add(1, ordering: .releasing)
            if frames < previousWALFrames {  // the WAL started over: what passes copied was of the last cycle
                checkpointAskedAtFrames = 0
                backgroundCopiedFrames.store(0, ordering: .relaxed)
            }
            previousWALFrames = frames
            let copied = backgroundCopiedFrames.load(ordering: .acquiring)
            let nearlyCopied = copied > 0 && frames >= copied && frames - copied <= Self.finishCheckpointFrames
            if frames >= Self.forcedCheckpointFrames || nearlyCopied {
                // Forced: the background checkpointer fell behind (it cannot finish while the writer keeps adding
                // frames). Either way: wait for a running pass, then copy the rest with the writer held, so the
                // WAL starts over at the next commit. A failure is retried at the next commit (forced) or after
                // the next background pass, as SQLite's own would be.
                backgroundCopiedFrames.store(0, ordering: .relaxed)
                checkpointLock.withLock { _ = try? database.checkpoint(.passive) }
            } else if frames >= Self.backgroundCheckpointFrames {
                if checkpointAskedAtFrames == 0 || frames >= checkpointAskedAtFrames + Self.backgroundCheckpointStrideFrames {
                    checkpointAskedAtFrames = frames
                    checkpointWanted?()
                }
            }
        }
    }

    /// Copies the committed WAL into meta.db on the store's second connection, without the caller's lock and
    /// beside the writer. Safe from any thread. Returns false once the store is closed (the caller stops).
    @discardableResult
    public func checkpointInBackground() -> Bool {
        checkpointLock.withLock {
            guard !closed else { return false }
            // A failure here is not lost work: the frames stay in the WAL, and the forced checkpoint bounds it.
            if let result = try? checkpointer?.checkpoint(.passive), result.copied > 0 {
                backgroundCopiedFrames.store(result.copied, ordering: .releasing)
            }
            return true
        }
    }

    /// Copies the whole WAL into meta.db and truncates it to nothing, on the store's own connection: call with the
    /// volume lock held, when the store has gone quiet. Frames written afterwards append to an empty file, so
    /// none rewrites a WAL page the kernel may have evicted (which costs a read of the block first), and the
    /// background checkpointer never has old frames to read back from the disk. Returns false when something
    /// (the background checkpointer, a reader) was in the way: nothing happened, and nothing is lost.
    @discardableResult
    public func checkpointAndTruncate() -> Bool {
        checkpointLock.withLock {
            guard !closed else { return false }
            walDurability.truncating()
            guard let result = try? database.checkpoint(.truncate) else { return false }
            return result.frames == result.copied
        }
    }

    /// Frames in the WAL after this connection's last commit (for tests and status).
    public var walFrames: Int { database.walFrames }

    // MARK: counters

    func counter(_ name: String) throws -> UInt64 {
        let s = try database.statement("SELECT value FROM counters WHERE name = ?").bind(.text(name))
        guard try s.step() else { throw StoreError.corrupt(path: root, detail: "counter \(name) missing") }
        return UInt64(bitPattern: s.int(0))
    }

    func setCounter(_ name: String, _ value: UInt64) throws {
        try database.statement("UPDATE counters SET value = ? WHERE name = ?").bind(.u64(value), .text(name)).run()
    }

    private func loadCounters() throws {
        // Counters are reserved in blocks; after a crash we continue from the reserved mark, so no number
        // handed out before the crash is ever handed out again.
        nextInodeSequence = try counter("inode_seq")
        reservedInodeSequence = nextInodeSequence
        lamport = try counter("lamport")
        reservedLamport = lamport
    }

    /// A fresh inode number: node index in the high 16 bits keeps numbers unique across a pair.
    public func allocateInodeNumber() throws -> UInt64 {
        if nextInodeSequence >= reservedInodeSequence {
            reservedInodeSequence = nextInodeSequence + Self.inodeReserveBlock
            try setCounter("inode_seq", reservedInodeSequence)
        }
        nextInodeSequence += 1
        precondition(nextInodeSequence < 1 << 48, "inode sequence exhausted")
        return UInt64(identity.nodeIndex) << 48 | nextInodeSequence
    }

    /// Lamport rule: a version received from the peer moves this store's clock past it, so the next local write
    /// is newer than everything this store has seen.
    public func noteSeenVersion(_ version: UInt64) {
        lamport = max(lamport, version >> 16)
    }

    /// A fresh version, greater than every version this store has issued or seen.
    public func nextVersion() throws -> UInt64 {
        if lamport >= reservedLamport {
            reservedLamport = lamport + Self.versionReserveBlock
            try setCounter("lamport", reservedLamport)
        }
        lamport += 1
        return lamport << 16 | UInt64(identity.nodeIndex)
    }

    // MARK: inodes

    static func insert(_ r: InodeRecord, into db: SQLiteDatabase) throws {
        try db.statement(
            "INSERT INTO inodes(ino, mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, version, target, blocks) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
        ).bind(
            .u64(r.ino), .u32(r.mode), .u32(r.uid), .u32(r.gid), .u32(r.nlink), .u64(r.size), .int(r.atime.nanoseconds),
            .int(r.mtime.nanoseconds), .int(r.ctime.nanoseconds), .u64(r.rdev), .u64(r.version), .blob(r.target),
            .u64(r.allocatedBlocks)
        ).run()
    }

    public func insertInode(_ record: InodeRecord) throws {
        try Self.insert(record, into: database)
    }

    public func inode(_ ino: UInt64) throws -> InodeRecord? {
        let s = try database.statement(
            "SELECT mode, uid, gid, nlink, size, atime, mtime, ctime, rdev, version, target, blocks FROM inodes WHERE ino = ?"
        ).bind(.u64(ino))
        guard try s.step() else { return nil }
        var r = InodeRecord(
            ino: ino, mode: UInt32(truncatingIfNeeded: s.int(0)), uid: UInt32(truncatingIfNeeded: s.int(1)),
            gid: UInt32(truncatingIfNeeded: s.int(2)), nlink: UInt32(truncatingIfNeeded: s.int(3)),
            size: UInt64(bitPattern: s.int(4)), time: Timestamp(nanoseconds: s.int(5)), rdev: UInt64(bitPattern: s.int(8)),
            version: UInt64(bitPattern: s.int(9)), target: s.blob(10))
        r.mtime = Timestamp(nanoseconds: s.int(6))
        r.ctime = Timestamp(nanoseconds: s.int(7))
        r.allocatedBlocks = UInt64(bitPattern: s.int(11))
        return r
    }

    public func updateInode(_ r: InodeRecord) throws {
        try database.statement(
            "UPDATE inodes SET mode=?, uid=?, gid=?, nlink=?, size=?, atime=?, mtime=?, ctime=?, rdev=?, version=?, target=?, blocks=? WHERE ino=?"
        ).bind(
            .u32(r.mode), .u32(r.uid), .u32(r.gid), .u32(r.nlink), .u64(r.size), .int(r.atime.nanoseconds),
            .int(r.mtime.nanoseconds), .int(r.ctime.nanoseconds), .u64(r.rdev), .u64(r.version), .blob(r.target),
            .u64(r.allocatedBlocks), .u64(r.ino)
        ).run()
    }

    /// Deletes an inode with everything it owns: record, xattrs, track versions, data file. A tombstone keeps the
    /// deletion's version, so an older copy of the inode arriving later cannot bring it back (DESIGN hazard 4).
    /// `dataFileMoved`: the caller already moved the data file to the trash (`moveDataToTrash`).
    public func deleteInode(_ ino: UInt64, version: UInt64? = nil, dataFileMoved: Bool = false) throws {
        let tombstone = try version ?? self.version(for: .inode(ino))
        try database.statement("INSERT OR REPLACE INTO tombstones(ino, version) VALUES (?, ?)").bind(.u64(ino), .u64(tombstone)).run()
        try database.statement("DELETE FROM inodes WHERE ino = ?").bind(.u64(ino)).run()
        try database.statement("DELETE FROM xattrs WHERE ino = ?").bind(.u64(ino)).run()
        try database.statement("DELETE FROM tracks WHERE ino = ?").bind(.u64(ino)).run()
        try markSettled(ino)
        if !dataFileMoved { try moveDataToTrash(ino) }
    }

    /// Freeing a file's blocks can take milliseconds (ext4 with discard): a deleted inode's data file only moves
    /// to the trash, and `emptyTrash` frees it later, outside every lock. Inode numbers are never reused, so a
    /// file left in the trash by a crash is never mistaken for live data. Touches no SQLite: callable without
    /// the volume lock for an inode nothing can reach any more (no name, no reference), whose record, if a crash
    /// comes before it is deleted, is an orphan the next mount deletes.
    public func moveDataToTrash(_ ino: UInt64) throws {
        if renameat(dataDirFD, Self.dataRelativePath(ino), dataDirFD, "\(Self.trashDirectory)/\(String(ino, radix: 16))") != 0,
            errno != ENOENT
        {
            throw FSError.fromErrno()
        }
    }

    /// Undoes `moveDataToTrash` (before the trash was emptied).
    public func restoreDataFromTrash(_ ino: UInt64) throws {
        if renameat(dataDirFD, "\(Self.trashDirectory)/\(String(ino, radix: 16))", dataDirFD, Self.dataRelativePath(ino)) != 0,
            errno != ENOENT
        {
            throw FSError.fromErrno()
        }
    }

    static let trashDirectory = "trash"

    // MARK: space reserve

    /// A file of preallocated space kept in the store. SQLite needs room in its WAL even to delete a row, so on a
    /// full disk nothing could be removed to make room again; giving this back first lets deletions (and mounting)
    /// go through. It is made again once the disk has room.
    static let reserveFile = "reserve"
    public static let reserveBytes = 8 << 20

    /// Makes the reserve if it is missing and the disk has room for it and as much again.
    public func replenishReserve() {
        let path = "\(root)/\(Self.reserveFile)"
        if access(path, F_OK) == 0 { return }
        guard let st = try? backingStatistics(), UInt64(st.f_bavail) * UInt64(st.f_frsize) > UInt64(2 * Self.reserveBytes) else { return }
        let fd = Glibc.open(path + ".tmp", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { return }
        let ok = twin_fallocate(fd, 0, 0, off_t(Self.reserveBytes)) == 0
        Glibc.close(fd)
        if ok { rename(path + ".tmp", path) } else { unlink(path + ".tmp") }
    }

    /// Gives the reserve back to the disk; true if there was one.
    @discardableResult
    public func releaseReserve() -> Bool {
        Glibc.unlink("\(root)/\(Self.reserveFile)") == 0
    }

    /// Runs `body`; if it fails because the disk is full, releases the reserve and runs it once more.
    public func withReserveOnFullDisk<T>(_ body: () throws -> T) throws -> T {
        do {
            return try body()
        } catch let error as SQLiteError where error.isDiskFull {
            guard releaseReserve() else { throw error }
            return try body()
        } catch FSError.noSpace {
            guard releaseReserve() else { throw FSError.noSpace }
            return try body()
        }
    }

    /// Deletes the data files of deleted inodes. Touches only the data directory, never SQLite: safe to run on
    /// any thread, without the caller's lock. Returns how many files it removed.
    @discardableResult
    public func emptyTrash() -> Int {
        guard let names = entryNames(of: Self.trashDirectory, in: dataDirFD) else {
            // A store from before the trash existed: make it, nothing to empty.
            mkdirat(dataDirFD, Self.trashDirectory, 0o700)
            return 0
        }
        return names.filter { unlinkat(dataDirFD, "\(Self.trashDirectory)/\($0)", 0) == 0 }.count
    }

    /// Inodes left with no links by a crash (unlinked while open) are deleted at mount.
    private func removeOrphans() throws {
        let s = try database.statement("SELECT ino FROM inodes WHERE nlink = 0")
        var orphans: [UInt64] = []
        while try s.step() { orphans.append(UInt64(bitPattern: s.int(0))) }
        guard !orphans.isEmpty else { return }
        do {
            try withReserveOnFullDisk {
                try database.transaction {
                    for ino in orphans { try deleteInode(ino) }
                }
            }
        } catch let error as SQLiteError where error.isDiskFull {
            // No room even to delete: they stay orphans (invisible, nlink 0) until a mount with space.
            return
        }
    }

    // MARK: directory entries

    public struct DirectoryEntry: Equatable, Sendable {
        /// Stable position of the entry in its directory: readdir resumes after it.
        public var cookie: Int64
        public var name: [UInt8]
        public var ino: UInt64
    }

    public func lookup(parent: UInt64, name: [UInt8]) throws -> UInt64? {
        let s = try database.statement("SELECT ino FROM dirents WHERE parent = ? AND name = ?").bind(.u64(parent), .blob(name))
        return try s.step() ? UInt64(bitPattern: s.int(0)) : nil
    }

    public func insertEntry(parent: UInt64, name: [UInt8], ino: UInt64) throws {
        try database.statement("INSERT INTO dirents(parent, name, ino) VALUES (?,?,?)").bind(.u64(parent), .blob(name), .u64(ino)).run()
    }

    public func removeEntry(parent: UInt64, name: [UInt8]) throws {
        try database.statement("DELETE FROM dirents WHERE parent = ? AND name = ?").bind(.u64(parent), .blob(name)).run()
    }

    /// Points an existing entry at another inode (rename over, exchange); keeps its cookie.
    public func retargetEntry(parent: UInt64, name: [UInt8], ino: UInt64) throws {
        try database.statement("UPDATE dirents SET ino = ? WHERE parent = ? AND name = ?").bind(.u64(ino), .u64(parent), .blob(name)).run()
    }

    public func entries(parent: UInt64, after cookie: Int64, limit: Int) throws -> [DirectoryEntry] {
        let s = try database.statement("SELECT id, name, ino FROM dirents WHERE parent = ? AND id > ? ORDER BY id LIMIT ?")
            .bind(.u64(parent), .int(cookie), .int(Int64(limit)))
        var out: [DirectoryEntry] = []
        while try s.step() {
            out.append(DirectoryEntry(cookie: s.int(0), name: s.blob(1), ino: UInt64(bitPattern: s.int(2))))
        }
        return out
    }

    public func hasEntries(parent: UInt64) throws -> Bool {
        try database.statement("SELECT 1 FROM dirents WHERE parent = ? LIMIT 1").bind(.u64(parent)).step()
    }

    /// The directory holding a directory (directories have exactly one entry naming them).
    public func parent(ofDirectory ino: UInt64) throws -> UInt64? {
        let s = try database.statement("SELECT parent FROM dirents WHERE ino = ? LIMIT 1").bind(.u64(ino))
        return try s.step() ? UInt64(bitPattern: s.int(0)) : nil
    }

    /// The oldest entry naming `ino` (a file with hard links has several: this is its first path), or nil.
    public func firstEntry(naming ino: UInt64) throws -> (parent: UInt64, name: [UInt8])? {
        let s = try database.statement("SELECT parent, name FROM dirents WHERE ino = ? ORDER BY id LIMIT 1").bind(.u64(ino))
        return try s.step() ? (UInt64(bitPattern: s.int(0)), s.blob(1)) : nil
    }

    /// A path of `ino` from the root (its first name at each level), nil if it has none (unlinked, or a name
    /// on the way is missing). Bounded by `maxPathDepth`.
    public func path(of ino: UInt64) throws -> String? {
        if ino == InodeRecord.rootIno { return "/" }
        var names: [String] = []
        var current = ino
        while current != InodeRecord.rootIno {
            guard names.count < Self.maxPathDepth, let entry = try firstEntry(naming: current) else { return nil }
            names.append(String(decoding: entry.name, as: UTF8.self))
            current = entry.parent
        }
        return "/" + names.reversed().joined(separator: "/")
    }

    public static let maxPathDepth = 4096

    // MARK: xattrs

    public func xattr(ino: UInt64, name: [UInt8]) throws -> [UInt8]? {
        let s = try database.statement("SELECT value FROM xattrs WHERE ino = ? AND name = ?").bind(.u64(ino), .blob(name))
        return try s.step() ? s.blob(0) : nil
    }

    /// The attribute the kernel asks for before every write to a file (must the write drop file capabilities?).
    public static let capabilityXattr = Array("security.capability".utf8)
    /// False while no inode has `capabilityXattr`, so that question needs no query. Becomes true at the first
    /// `setXattr` of it and stays true (a rolled-back or removed one only costs the query again).
    public private(set) var mayHaveCapabilityXattrs = true

    public func setXattr(ino: UInt64, name: [UInt8], value: [UInt8]) throws {
        if name == Self.capabilityXattr { mayHaveCapabilityXattrs = true }
        try database.statement("INSERT OR REPLACE INTO xattrs(ino, name, value) VALUES (?,?,?)").bind(.u64(ino), .blob(name), .blob(value)).run()
    }

    /// Drops the file capabilities of `ino`, as Linux does on every write, truncate and chown of a file (the
    /// kernel leaves this to the filesystem under FUSE_HANDLE_KILLPRIV_V2). No query while no inode has any.
    @discardableResult
    public func removeCapability(ino: UInt64) throws -> Bool {
        guard mayHaveCapabilityXattrs else { return false }
        return try removeXattr(ino: ino, name: Self.capabilityXattr)
    }

    public func removeXattr(ino: UInt64, name: [UInt8]) throws -> Bool {
        try database.statement("DELETE FROM xattrs WHERE ino = ? AND name = ?").bind(.u64(ino), .blob(name)).run()
        return database.changes > 0
    }

    public func xattrNames(ino: UInt64) throws -> [[UInt8]] {
        let s = try database.statement("SELECT name FROM xattrs WHERE ino = ? ORDER BY name").bind(.u64(ino))
        var names: [[UInt8]] = []
        while try s.step() { names.append(s.blob(0)) }
        return names
    }

    // MARK: tracks

    /// Records that tracks `range` of `ino` now hold data of `version`.
    public func setTrackVersions(ino: UInt64, tracks range: ClosedRange<UInt64>, version: UInt64) throws {
        let s = try database.statement("INSERT OR REPLACE INTO tracks(ino, idx, version) VALUES (?,?,?)")
        for index in range {
            try s.bind(.u64(ino), .u64(index), .u64(version)).run()
        }
    }

    /// Forgets tracks at or beyond `index` (after a truncate).
    public func removeTracks(ino: UInt64, from index: UInt64) throws {
        try database.statement("DELETE FROM tracks WHERE ino = ? AND idx >= ?").bind(.u64(ino), .u64(index)).run()
    }

    public func trackVersion(ino: UInt64, index: UInt64) throws -> UInt64? {
        let s = try database.statement("SELECT version FROM tracks WHERE ino = ? AND idx = ?").bind(.u64(ino), .u64(index))
        return try s.step() ? UInt64(bitPattern: s.int(0)) : nil
    }

    public func counts() throws -> StoreCounts {
        func scalar(_ sql: String) throws -> Int64 {
            let s = try database.statement(sql)
            _ = try s.step()
            return s.int(0)
        }
        return StoreCounts(
            inodes: Int(try scalar("SELECT count(*) FROM inodes")),
            directories: Int(try scalar("SELECT count(*) FROM inodes WHERE (mode & \(S_IFMT)) = \(S_IFDIR)")),
            tracks: Int(try scalar("SELECT count(*) FROM tracks")),
            dataBytes: UInt64(try scalar("SELECT coalesce(sum(size), 0) FROM inodes WHERE (mode & \(S_IFMT)) = \(S_IFREG)")))
    }

    // MARK: data files

    static func dataRelativePath(_ ino: UInt64) -> String {
        "\(hex2(Int(ino & 0xff)))/\(String(ino, radix: 16))"
    }

    /// Creates the data file of a new inode (born in the nursery, see Nursery.swift) and opens it read-write.
    public func createData(_ ino: UInt64) throws -> Int32 {
        if let fd = nursery.createData(named: String(ino, radix: 16), at: Self.dataRelativePath(ino)) { return fd }
        return try openData(ino, create: true)
    }

    /// Opens the sparse data file of `ino` read-write (creating it empty if asked).
    public func openData(_ ino: UInt64, create: Bool) throws -> Int32 {
        let fd = openat(dataDirFD, Self.dataRelativePath(ino), O_RDWR | O_CLOEXEC | (create ? O_CREAT : 0), 0o600)
        if fd < 0 {
            if errno == ENOENT && !create { return -1 }
            throw FSError.fromErrno()
        }
        return fd
    }

    /// 512-byte blocks an open data file occupies. Recorded in the inode after every change to the data file,
    /// so attributes never need the data file (a cold stat would otherwise read two inodes from disk).
    public static func allocatedBlocks(ofOpenFile fd: Int32) -> UInt64 {
        var st = stat()
        return fstat(fd, &st) == 0 ? UInt64(st.st_blocks) : 0
    }

    /// Makes every committed metadata change durable (the WAL's frames reach the disk). Safe from any thread:
    /// it touches only the WAL's descriptor, never the connection.
    public func syncMetadata() throws {
        if walFD < 0 {
            // Opened on a full disk: no WAL then. No WAL now means nothing was committed since the last checkpoint.
            walFD = Glibc.open("\(root)/meta.db-wal", O_RDWR | O_CLOEXEC)
            if walFD < 0 { return }
        }
        let generation = walDurability.fullSyncBegins()
        var st = stat()
        let bytes = fstat(walFD, &st) == 0 ? Int64(st.st_size) : 0
        if twin_fdatasync(walFD) != 0 { throw FSError.fromErrno() }
        walDurability.fullSyncEnded(generation: generation, bytes: bytes)
    }

    /// Whether `startWALWriteOut` + `writeOutWAL` + the device flush of a data file's fdatasync, in that order, make
    /// every committed metadata change durable now, in place of `syncMetadata` (see WALDurability). Any thread.
    public var walWriteOutSuffices: Bool { walDurability.coversRewrite(of: walFD) }

    /// Starts writing the WAL's dirty pages to the device without waiting (so they travel with the data file's).
    public func startWALWriteOut() {
        if walFD >= 0 { _ = twin_start_write_out(walFD) }
    }

    /// Writes the WAL's dirty pages to the device and waits until it has them; no device flush.
    public func writeOutWAL() throws {
        guard walFD >= 0 else { return }
        if twin_write_out(walFD) != 0 { throw FSError.fromErrno() }
        walDurability.writeOuts.add(1, ordering: .relaxed)
    }

    /// WAL write-outs made in place of WAL flushes (for tests and status).
    public var walWriteOuts: UInt64 { walDurability.writeOuts.load(ordering: .relaxed) }

    /// A clean shutdown: metadata checkpointed into meta.db and everything in the store on disk.
    public func close() throws {
        nursery.close()
        checkpointLock.withLock {
            closed = true
            checkpointer = nil
        }
        database.releaseStatements()
        walDurability.truncating()
        do {
            try database.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        } catch let error as SQLiteError {
            throw StoreError.io(path: root, detail: "checkpoint failed: \(error.message)")
        }
        guard twin_syncfs(dataDirFD) == 0 else {
            throw StoreError.io(path: root, detail: "syncfs failed: \(String(cString: strerror(errno)))")
        }
    }

    /// Space of the filesystem under the store, for statfs.
    public func backingStatistics() throws -> statvfs {
        var st = statvfs()
        guard fstatvfs(dataDirFD, &st) == 0 else { throw FSError.fromErrno() }
        return st
    }
}

/// The names in directory `path` under `dirFD`, without "." and ".."; nil when it cannot be opened.
func entryNames(of path: String, in dirFD: Int32) -> [String]? {
    let fd = openat(dirFD, path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard fd >= 0 else { return nil }
    guard let dir = fdopendir(fd) else {
        Glibc.close(fd)
        return nil
    }
    defer { closedir(dir) }
    var names: [String] = []
    while let entry = readdir(dir) {
        let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
        if name != "." && name != ".." { names.append(name) }
    }
    return names
}

func hex2(_ v: Int) -> String {
    let digits = Array("0123456789abcdef")
    return String([digits[(v >> 4) & 0xf], digits[v & 0xf]])
}

func syncPath(_ path: String) throws {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { throw FSError.fromErrno() }
    defer { close(fd) }
    guard fsync(fd) == 0 else { throw FSError.fromErrno() }
}
