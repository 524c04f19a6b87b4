// Volume: the filesystem's POSIX semantics over one store — names, links, permissions at creation, timestamps,
// open files, unlinked-but-open inodes. Every operation is a typed call returning FSError on failure.
// Owns: the in-memory tables the kernel's references need (lookup counts, open handles).
// Never: errno numbers or libfuse types (TwinFUSE's job), network waits while holding `lock`.
import Glibc
import CLinuxShims
import TwinStore
import Synchronization

public struct Caller: Sendable {
    public var uid: UInt32
    public var gid: UInt32
    public init(uid: UInt32, gid: UInt32) {
        self.uid = uid
        self.gid = gid
    }
}

/// A time to set in setattr: an explicit value, or "now" (UTIME_NOW).
public enum TimeChange: Sendable {
    case now
    case value(Timestamp)
}

public struct AttributeChanges: Sendable {
    public var mode: UInt32?
    public var uid: UInt32?
    public var gid: UInt32?
    public var size: UInt64?
    public var atime: TimeChange?
    public var mtime: TimeChange?
    public var ctime: Timestamp?
    public init() {}
}

public struct DirectoryListing: Sendable {
    public var name: [UInt8]
    public var record: InodeRecord
    /// Offset to resume after this entry.
    public var nextOffset: Int64
}

/// An open file: one data-file descriptor per open, so reads can be spliced straight from it.
final class OpenFile {
    let ino: UInt64
    let fd: Int32
    let append: Bool
    init(ino: UInt64, fd: Int32, append: Bool) {
        self.ino = ino
        self.fd = fd
        self.append = append
    }
}

public final class Volume: @unchecked Sendable {
    public static let maxNameBytes = 255
    public static let maxSymlinkBytes = 4095
    public static let maxXattrNameBytes = 255
    public static let maxXattrValueBytes = 65536
    static let linkMax: UInt32 = 65000
    static let relatimeWindowNs: Int64 = 24 * 3600 * 1_000_000_000

    public let store: Store
    public let trackBytes: UInt64
    let lock = Lock()
    private var lookups: [UInt64: UInt64] = [:]
    private var openCounts: [UInt64: Int] = [:]
    private var handles: [UInt64: OpenFile] = [:]
    private var nextHandle: UInt64 = 1
    /// Unpaired overwrites recorded in memory, not in a transaction each (FastWrites.swift).
    var fastWrites = FastWrites()

    /// fdatasync needs the WAL flushed only when what a later read depends on changed: the inode's existence or
    /// size (the data file's own blocks are its fdatasync's business; times and versions wait for fsync). Inode ->
    /// the commit that last changed either; entries a WAL flush covered are dropped as they are met.
    private var shapeCommits: [UInt64: UInt64] = [:]
    /// Until a WAL flush covers this commit, every fdatasync flushes the WAL (after mount: commits recovered from
    /// the WAL of a crashed daemon may not be on the disk yet; after `shapeCommits` overflowed).
    private var shapeUncertainUntil: UInt64 = 1
    static let maxShapeEntries = 65_536

    /// Inodes with no name left that the kernel or an open file still refers to (unlinked while open).
    private var unlinkedButReferenced: Set<UInt64> = []
    private var reapQueue: [UInt64] = []
    private let reaper = Reaper()
    let walSyncer = WALSyncer()
    private let checkpointer = WALCheckpointer()
    /// Drops the kernel's cached attributes of an inode (set by the FUSE session): for changes no reply carries.
    public var kernelAttributesChanged: (@Sendable (UInt64) -> Void)?
    /// The mirror this volume's operations go through (nil: a store without a peer).
    var mirror: MirrorShell?
    /// fsync returns only once the peer holds the data durably too (`-o fsync=mirror`, the default).
    public var fsyncMirror = true

    let backgroundGate = StoreGate()

    /// Closes the store once no background thread (the reaper) uses it any more; the FUSE session and the mirror
    /// must have stopped before. The volume is unusable afterwards.
    public func shutDown() throws {
        backgroundGate.close()
        // An empty mutation settles what fast writes left in memory.
        if lock.withLock({ !fastWrites.isEmpty }) { try mutate {} }
        try lock.withLock { try store.close() }
    }

    public init(store: Store) {
        self.store = store
        self.trackBytes = UInt64(store.identity.trackBytes)
        reaper.start(self)
        walSyncer.start(store)
        let checkpointer = self.checkpointer
        store.checkpointWanted = { checkpointer.poke() }
        checkpointer.idle = { [weak self] in self?.truncateWALIfQuiet() }
        checkpointer.start(store)
    }

    // MARK: helpers (call with `lock` held)

    private func record(_ ino: UInt64) throws -> InodeRecord {
        guard let r = try currentRecord(ino) else { throw FSError.notFound }
        return r
    }

    /// The inode's record as a stat must show it: with what fast writes keep in memory.
    private func currentRecord(_ ino: UInt64) throws -> InodeRecord? {
        try store.inode(ino).map { try fastWrites.current($0, in: store) }
    }

    private func directory(_ ino: UInt64) throws -> InodeRecord {
        let r = try record(ino)
        guard r.isDirectory else { throw FSError.notDirectory }
        return r
    }

    private func checkName(_ name: [UInt8]) throws {
        guard !name.isEmpty, !name.contains(0x2f), !name.contains(0) else { throw FSError.invalid }
        guard name.count <= Self.maxNameBytes else { throw FSError.nameTooLong }
    }

    /// Runs `body` under the volume lock in one store transaction; SQLite failures become FSErrors.
    /// `freesSpace`: the operation gives space back (unlink, rmdir, rename over, truncate, removexattr), so on a
    /// full disk it may use the store's reserve to get its own transaction written.
    /// `changesOnly`: the one inode whose record the body reads and changes (a write), so only its fast-write
    /// entry needs settling first; nil (every other operation): all of them.
    func mutate<T>(freesSpace: Bool = false, changesOnly: UInt64? = nil, plan: () throws -> Plan = { Plan() }, _ body: () throws -> T) throws -> T {
        lastMutationNs.store(MirrorShell.monotonicNs(), ordering: .relaxed)
        return try guarded(plan) { try lock.withLock {
            defer { store.database.releaseStatements() }
            // Every mutation first settles the fast writes' entries it may read or change (FastWrites.swift): its
            // body reads exact records, and what it changes reaches the WAL before an fsync may skip it.
            do {
                let result = try freesSpace
                    ? store.withReserveOnFullDisk { try store.database.transaction { try settlingFirst(changesOnly, body) } }
                    : store.database.transaction { try settlingFirst(changesOnly, body) }
                fastWrites.mutationCommitted()
                return result
            } catch let error as SQLiteError {
                fastWrites.mutationRolledBack()
                throw FSError.fromSQLite(error)
            } catch {
                fastWrites.mutationRolledBack()
                throw error
            }
        } }
    }

    private func settlingFirst<T>(_ only: UInt64?, _ body: () throws -> T) throws -> T {
        fastWrites.attemptBegins()
        if !fastWrites.isEmpty { try fastWrites.settle(in: store, only: only) }
        return try body()
    }

    func query<T>(plan: () throws -> Plan = { Plan() }, _ body: () throws -> T) throws -> T {
        try guarded(plan) { try lock.withLock {
            defer { store.database.releaseStatements() }
            do {
                return try body()
            } catch let error as SQLiteError {
                throw FSError.fromSQLite(error)
            }
        } }
    }

    /// An inode number chosen before the operation, so the mirror can mark the new record first.
    private func reserveInode() throws -> UInt64? {
        guard let mirror else { return nil }
        while true {
            let ino = try query { try store.allocateInodeNumber() }
            // A replaced node's store starts its numbering afresh while numbers its predecessor used may exist on
            // the peer (and, once pulled, here): a number with a record or a tombstone is skipped. While joining,
            // reading the record pulls the peer's, so the check sees what only the peer has yet.
            let inUse = { try self.store.storedVersion(.inode(ino)) != 0 }
            let taken = mirror.status.core.joining ? try query(plan: { .reading(ino) }, inUse) : try query(inUse)
            if !taken { return ino }
        }
    }

    private func creationPlan(parent: UInt64, ino: UInt64?) -> Plan {
        var p = Plan.writing(parent)
        if let ino {
            p.write(.inode(ino), full: true)
            p.hint.nextInodes = (1...UInt64(FilesystemPrediction.createWindowInodes)).map { ino &+ $0 }
        }
        return p
    }

    private func touchDirectory(_ dir: inout InodeRecord, now: Timestamp) throws {
        dir.mtime = now
        dir.ctime = now
        dir.version = try store.version(for: .inode(dir.ino))
        try store.updateInode(dir)
    }

    /// Call inside a mutation whose commit creates `ino` or changes its size.
    private func noteShapeChange(_ ino: UInt64) {
        let thisCommit = store.commitCount + 1
        if shapeCommits.count >= Self.maxShapeEntries {
            let durable = walSyncer.durableCommits.load(ordering: .acquiring)
            shapeCommits = shapeCommits.filter { $0.value > durable }
            if shapeCommits.count >= Self.maxShapeEntries {
                shapeCommits.removeAll()
                shapeUncertainUntil = thisCommit
            }
        }
        shapeCommits[ino] = thisCommit
    }

    /// Whether an fdatasync of `ino` must flush the WAL too (lock held).
    private func dataSyncNeedsMetadata(_ ino: UInt64) -> Bool {
        let durable = walSyncer.durableCommits.load(ordering: .acquiring)
        if shapeUncertainUntil > durable { return true }
        guard let commit = shapeCommits[ino] else { return false }
        if commit <= durable {
            shapeCommits[ino] = nil
            return false
        }
        return true
    }

    private func noteLookup(_ ino: UInt64) {
        lookups[ino, default: 0] += 1
    }

    private func isReferenced(_ ino: UInt64) -> Bool {
        ino == InodeRecord.rootIno || lookups[ino] != nil || openCounts[ino] != nil
    }

    /// The last reference to an unlinked inode went away (forget, release): queue it for the reaper thread,
    /// which deletes queued inodes in batches, so neither FORGET nor RELEASE pays for a transaction.
    private func dereferenced(_ ino: UInt64) {
        guard !isReferenced(ino), unlinkedButReferenced.remove(ino) != nil else { return }
        reapQueue.append(ino)
        reaper.poke()
    }

    /// Once no commit (of an operation, the mirror or the reaper) came for `walTruncateQuietMs`, the WAL goes
    /// into meta.db and starts over empty (Store.checkpointAndTruncate): it holds the lock for one checkpoint,
    /// only after a pause. Called by the checkpointer thread every 100 ms while it has nothing else to do.
    static let walTruncateQuietMs: UInt64 = 500
    private var idleCommits: (count: UInt64, sinceNs: UInt64) = (0, 0)
    private var commitsAtLastTruncation: UInt64 = 0

    func truncateWALIfQuiet() {
        let commits = store.commitCount
        let nowNs = MirrorShell.monotonicNs()
        if commits != idleCommits.count {
            idleCommits = (commits, nowNs)
            return
        }
        guard commits != commitsAtLastTruncation, nowNs &- idleCommits.sinceNs >= Self.walTruncateQuietMs * 1_000_000,
            backgroundGate.enter()
        else { return }
        defer { backgroundGate.leave() }
        lock.withLock {
            guard store.commitCount == commits else { return }
            store.database.releaseStatements()
            if store.checkpointAndTruncate() { commitsAtLastTruncation = commits }
        }
    }

    /// Inodes waiting for the reaper, and when the last operation changed the store (for the reaper's pacing).
    var reapBacklog: Int { lock.withLock { reapQueue.count } }
    let lastMutationNs = Atomic<UInt64>(0)

    /// Deletes up to `limit` queued inodes (called by the reaper thread); returns how many it took. Their data
    /// files move to the trash outside the volume lock (a rename each: nothing can reach these inodes any more),
    /// then one short transaction deletes their records, so operations wait for neither.
    @discardableResult
    func reapQueued(limit: Int = Int.max) -> Int {
        let batch: [UInt64] = lock.withLock {
            defer { store.database.releaseStatements() }
            let taken = Array(reapQueue.prefix(limit))
            reapQueue.removeFirst(taken.count)
            return taken.filter { ino in !isReferenced(ino) && ((try? store.inode(ino))??.nlink ?? 1) == 0 }
        }
        guard !batch.isEmpty else { return 0 }
        var moved: [UInt64] = []
        var failed: [UInt64] = []
        for ino in batch {
            do {
                try store.moveDataToTrash(ino)
                moved.append(ino)
            } catch {
                failed.append(ino)
            }
        }
        lock.withLock {
            defer { store.database.releaseStatements() }
            do {
                try store.withReserveOnFullDisk {
                    try store.database.transaction {
                        for ino in moved {
                            guard let r = try store.inode(ino) else { continue }
                            guard r.nlink == 0 else {
                                // Linked again while its data file moved (never expected): put the data back.
                                try store.restoreDataFromTrash(ino)
                                continue
                            }
                            try store.deleteInode(ino, version: store.nextVersion(), dataFileMoved: true)
                        }
                    }
                }
            } catch {
                // Kept for the next pass (and, failing that, deleted as orphans at the next mount).
                failed += moved
            }
            reapQueue += failed
        }
        return batch.count
    }

    // MARK: lookup and attributes

    public func lookup(parent: UInt64, name: [UInt8]) throws -> InodeRecord {
        try query(plan: {
            var p = Plan.reading(parent)
            if let child = peekChild(parent, name) { p.read(.inode(child)) }
            return p
        }) {
            guard name.count <= Self.maxNameBytes else { throw FSError.nameTooLong }
            _ = try directory(parent)
            guard let ino = try store.lookup(parent: parent, name: name) else { throw FSError.notFound }
            let r = try record(ino)
            noteLookup(ino)
            return r
        }
    }

    public func forget(_ ino: UInt64, count: UInt64) {
        lock.withLock {
            guard let n = lookups[ino] else { return }
            if n <= count {
                lookups[ino] = nil
                dereferenced(ino)
            } else {
                lookups[ino] = n - count
            }
        }
    }

    public func getattr(_ ino: UInt64) throws -> InodeRecord {
        try query(plan: { .reading(ino) }) { try record(ino) }
    }

    /// The mount asks for FUSE_HANDLE_KILLPRIV_V2 (TwinFUSE's KernelChannel), so the kernel leaves privilege
    /// killing to us. As Linux does, a write or truncate (O_TRUNC included) by a caller without CAP_FSETID (here:
    /// not root) clears set-user-ID, and set-group-ID where group execute is set (without it the bit means
    /// mandatory locking, not privilege); file capabilities go on every write, truncate and chown, whoever does it.
    /// Returns true when the mode changed: the kernel still caches the old one (a write or an open reply carries
    /// no attributes), and a stale set-user-ID bit would be honoured by exec, so the caller must tell it
    /// (`kernelAttributesChanged`) once the operation is done.
    @discardableResult
    private func dropPrivilegeBits(_ r: inout InodeRecord, caller: Caller?) throws -> Bool {
        guard r.kind == .regular else { return false }
        try store.removeCapability(ino: r.ino)
        guard let caller, caller.uid != 0 else { return false }
        let before = r.mode
        r.mode &= ~UInt32(S_ISUID)
        if r.mode & UInt32(S_IXGRP) != 0 { r.mode &= ~UInt32(S_ISGID) }
        return r.mode != before
    }

    public func setattr(_ ino: UInt64, _ changes: AttributeChanges, handle: UInt64?, caller: Caller? = nil) throws -> InodeRecord {
        try mutate(freesSpace: changes.size != nil, plan: {
            var p = Plan.writing(ino)
            if let size = changes.size, let r = peekRecord(ino) { addResize(&p, ino: ino, from: r.size, to: size) }
            return p
        }) {
            var r = try record(ino)
            let now = Timestamp.now()
            if let mode = changes.mode { r.mode = (r.mode & UInt32(S_IFMT)) | (mode & 0o7777) }
            let ownerChanges = (changes.uid.map { $0 != r.uid } ?? false) || (changes.gid.map { $0 != r.gid } ?? false)
            if let uid = changes.uid { r.uid = uid }
            if let gid = changes.gid { r.gid = gid }
            if ownerChanges && r.kind == .regular {
                // chown of a file drops its capabilities, and its set-id bits unless the same call sets the mode.
                try store.removeCapability(ino: r.ino)
                if changes.mode == nil {
                    r.mode &= ~UInt32(S_ISUID)
                    if r.mode & UInt32(S_IXGRP) != 0 { r.mode &= ~UInt32(S_ISGID) }
                }
            }
            if let size = changes.size {
                guard r.kind == .regular else { throw r.isDirectory ? FSError.isDirectory : FSError.invalid }
                try resize(&r, to: size, handle: handle)
                r.mtime = now
                try dropPrivilegeBits(&r, caller: caller)
            }
            switch changes.atime {
            case .now: r.atime = now
            case .value(let t): r.atime = t
            case nil: break
            }
            switch changes.mtime {
            case .now: r.mtime = now
            case .value(let t): r.mtime = t
            case nil: break
            }
            r.ctime = changes.ctime ?? now
            r.version = try store.version(for: .inode(r.ino))
            try store.updateInode(r)
            return r
        }
    }

    private func resize(_ r: inout InodeRecord, to size: UInt64, handle: UInt64?) throws {
        let fd: Int32
        var ownFD = false
        if let handle, let file = handles[handle], file.ino == r.ino {
            fd = file.fd
        } else {
            fd = try store.openData(r.ino, create: true)
            ownFD = true
        }
        defer { if ownFD { close(fd) } }
        guard ftruncate(fd, off_t(size)) == 0 else { throw FSError.fromErrno() }
        noteShapeChange(r.ino)
        let oldSize = r.size
        r.size = size
        r.allocatedBlocks = Store.allocatedBlocks(ofOpenFile: fd)
        if store.mirrored {
            // Every track between the old and the new end changed (dropped, or exposed as zeros): each gets a
            // new version, so the peer's copy of them follows even if it never sees this size.
            if size != oldSize {
                try store.stampTracks(ino: r.ino, tracks: (min(size, oldSize) / trackBytes)...((max(size, oldSize) - 1) / trackBytes))
            }
        } else if size < oldSize {
            let firstGone = (size + trackBytes - 1) / trackBytes
            try store.removeTracks(ino: r.ino, from: firstGone)
            if size % trackBytes != 0 {
                // The last track changed (its tail is now zeros): a new version of that location.
                try store.stampTracks(ino: r.ino, tracks: (size / trackBytes)...(size / trackBytes))
            }
        }
    }

    public func readlink(_ ino: UInt64) throws -> [UInt8] {
        try query(plan: { .reading(ino) }) {
            let r = try record(ino)
            guard r.kind == .symlink else { throw FSError.invalid }
            return r.target
        }
    }

    // MARK: creating names

    /// Creates a new inode named `name` in `parent`; the caller's ids own it (setgid directories pass on their gid).
    /// `nameChecked`: the caller has already looked the name up in this transaction and found it free.
    private func makeNode(parent: UInt64, name: [UInt8], mode: UInt32, caller: Caller, rdev: UInt64 = 0, target: [UInt8] = [], ino: UInt64? = nil, nameChecked: Bool = false) throws -> InodeRecord {
        try checkName(name)
        var dir = try directory(parent)
        if !nameChecked {
            guard try store.lookup(parent: parent, name: name) == nil else { throw FSError.exists }
        }
        let now = Timestamp.now()
        let isDir = mode & UInt32(S_IFMT) == UInt32(S_IFDIR)
        var gid = caller.gid
        var finalMode = mode
        if dir.mode & UInt32(S_ISGID) != 0 {
            gid = dir.gid
            if isDir { finalMode |= UInt32(S_ISGID) }
        }
        if isDir {
            guard dir.nlink < Self.linkMax else { throw FSError.tooManyLinks }
        }
        let ino = try ino ?? store.allocateInodeNumber()
        let r = InodeRecord(
            ino: ino, mode: finalMode, uid: caller.uid, gid: gid, nlink: isDir ? 2 : 1,
            size: UInt64(target.count), time: now, rdev: rdev, version: try store.version(for: .inode(ino)), target: target)
        try store.insertInode(r)
        noteShapeChange(r.ino)
        try store.insertEntry(parent: parent, name: name, ino: r.ino)
        if isDir { dir.nlink += 1 }
        try touchDirectory(&dir, now: now)
        noteLookup(r.ino)
        return r
    }

    public func mknod(parent: UInt64, name: [UInt8], mode: UInt32, rdev: UInt64, caller: Caller) throws -> InodeRecord {
        guard let kind = FileKind(mode: mode), kind != .directory, kind != .symlink else { throw FSError.invalid }
        let ino = try reserveInode()
        return try mutate(plan: { creationPlan(parent: parent, ino: ino) }) {
            try makeNode(parent: parent, name: name, mode: mode, caller: caller, rdev: rdev, ino: ino)
        }
    }

    public func mkdir(parent: UInt64, name: [UInt8], mode: UInt32, caller: Caller) throws -> InodeRecord {
        let ino = try reserveInode()
        return try mutate(plan: { creationPlan(parent: parent, ino: ino) }) {
            try makeNode(parent: parent, name: name, mode: UInt32(S_IFDIR) | (mode & 0o7777), caller: caller, ino: ino)
        }
    }

    public func symlink(target: [UInt8], parent: UInt64, name: [UInt8], caller: Caller) throws -> InodeRecord {
        guard !target.isEmpty else { throw FSError.notFound }
        guard target.count <= Self.maxSymlinkBytes else { throw FSError.nameTooLong }
        let ino = try reserveInode()
        return try mutate(plan: { creationPlan(parent: parent, ino: ino) }) {
            try makeNode(parent: parent, name: name, mode: UInt32(S_IFLNK) | 0o777, caller: caller, target: target, ino: ino)
        }
    }

    public func link(_ ino: UInt64, newParent: UInt64, newName: [UInt8]) throws -> InodeRecord {
        try mutate(plan: { .writing(ino, newParent) }) {
            try checkName(newName)
            var r = try record(ino)
            guard !r.isDirectory else { throw FSError.notPermitted }
            guard r.nlink > 0 else { throw FSError.notFound }  // as on Linux: an unlinked file cannot be linked back
            guard r.nlink < Self.linkMax else { throw FSError.tooManyLinks }
            var dir = try directory(newParent)
            guard try store.lookup(parent: newParent, name: newName) == nil else { throw FSError.exists }
            let now = Timestamp.now()
            try store.insertEntry(parent: newParent, name: newName, ino: ino)
            r.nlink += 1
            r.ctime = now
            r.version = try store.version(for: .inode(r.ino))
            try store.updateInode(r)
            try touchDirectory(&dir, now: now)
            noteLookup(ino)
            return r
        }
    }

    // MARK: removing names

    /// Drops one link of `ino`; the inode itself goes once nothing refers to it.
    private func dropLink(_ r: inout InodeRecord, now: Timestamp) throws {
        if r.isDirectory {
            r.nlink = 0
        } else {
            r.nlink -= 1
        }
        r.ctime = now
        r.version = try store.version(for: .inode(r.ino))
        try store.updateInode(r)
        guard r.nlink == 0 else { return }
        if isReferenced(r.ino) {
            // Still open or known to the kernel: it lives on without a name until the last reference goes.
            unlinkedButReferenced.insert(r.ino)
        } else {
            try store.deleteInode(r.ino)
            reaper.poke()
        }
    }

    public func unlink(parent: UInt64, name: [UInt8]) throws {
        try mutate(freesSpace: true, plan: { removalPlan(parent, name) }) {
            var dir = try directory(parent)
            guard let ino = try store.lookup(parent: parent, name: name) else { throw FSError.notFound }
            var r = try record(ino)
            guard !r.isDirectory else { throw FSError.isDirectory }
            let now = Timestamp.now()
            try store.removeEntry(parent: parent, name: name)
            try touchDirectory(&dir, now: now)
            try dropLink(&r, now: now)
        }
    }

    public func rmdir(parent: UInt64, name: [UInt8]) throws {
        try mutate(freesSpace: true, plan: { removalPlan(parent, name) }) {
            var dir = try directory(parent)
            guard let ino = try store.lookup(parent: parent, name: name) else { throw FSError.notFound }
            var r = try record(ino)
            guard r.isDirectory else { throw FSError.notDirectory }
            guard try !store.hasEntries(parent: ino) else { throw FSError.notEmpty }
            let now = Timestamp.now()
            try store.removeEntry(parent: parent, name: name)
            dir.nlink -= 1
            try touchDirectory(&dir, now: now)
            try dropLink(&r, now: now)
        }
    }

    private func removalPlan(_ parent: UInt64, _ name: [UInt8]) -> Plan {
        var p = Plan.writing(parent)
        if let child = peekChild(parent, name) { p.write(.inode(child)) }
        return p
    }

    public struct RenameFlags: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }
        public static let noReplace = RenameFlags(rawValue: twin_RENAME_NOREPLACE)
        public static let exchange = RenameFlags(rawValue: twin_RENAME_EXCHANGE)
    }

    /// True when `ino` is `ancestor` or lies below it.
    private func isWithin(_ ino: UInt64, ancestor: UInt64) throws -> Bool {
        var current = ino
        var hopsLeft = 1 << 16  // a directory chain deeper than this is a corrupt store, not a real tree
        while hopsLeft > 0 {
            if current == ancestor { return true }
            if current == InodeRecord.rootIno { return false }
            guard let up = try store.parent(ofDirectory: current) else { return false }
            current = up
            hopsLeft -= 1
        }
        throw FSError.io
    }

    public func rename(parent: UInt64, name: [UInt8], newParent: UInt64, newName: [UInt8], flags: RenameFlags) throws {
        guard flags.subtracting([.noReplace, .exchange]).isEmpty, !flags.contains([.noReplace, .exchange]) else {
            throw FSError.invalid
        }
        try mutate(freesSpace: true, plan: {
            var p = Plan.writing(parent, newParent)
            if let moved = peekChild(parent, name) { p.write(.inode(moved)) }
            if let replaced = peekChild(newParent, newName) { p.write(.inode(replaced)) }
            return p
        }) {
            try checkName(newName)
            var from = try directory(parent)
            guard let ino = try store.lookup(parent: parent, name: name) else { throw FSError.notFound }
            var moved = try record(ino)
            _ = try directory(newParent)
            let existing = try store.lookup(parent: newParent, name: newName)
            let now = Timestamp.now()
            if flags.contains(.exchange) {
                guard let other = existing else { throw FSError.notFound }
                if other == ino { return }
                let swapped = try record(other)
                if moved.isDirectory, try isWithin(newParent, ancestor: ino) { throw FSError.invalid }
                if swapped.isDirectory, try isWithin(parent, ancestor: other) { throw FSError.invalid }
                try store.retargetEntry(parent: parent, name: name, ino: other)
                try store.retargetEntry(parent: newParent, name: newName, ino: ino)
                if parent != newParent && moved.isDirectory != swapped.isDirectory {
                    var to = try directory(newParent)
                    let delta: Int32 = moved.isDirectory ? 1 : -1
                    to.nlink = UInt32(Int32(to.nlink) + delta)
                    from.nlink = UInt32(Int32(from.nlink) - delta)
                    try touchDirectory(&to, now: now)
                } else if parent != newParent {
                    var to = try directory(newParent)
                    try touchDirectory(&to, now: now)
                }
                try touchDirectory(&from, now: now)
                for var r in [moved, swapped] {
                    r.ctime = now
                    r.version = try store.version(for: .inode(r.ino))
                    try store.updateInode(r)
                }
                return
            }
            if let target = existing {
                if target == ino { return }  // two names of one inode: POSIX says do nothing
                if flags.contains(.noReplace) { throw FSError.exists }
                var victim = try record(target)
                if moved.isDirectory {
                    guard victim.isDirectory else { throw FSError.notDirectory }
                    guard try !store.hasEntries(parent: target) else { throw FSError.notEmpty }
                } else if victim.isDirectory {
                    throw FSError.isDirectory
                }
                if moved.isDirectory, try isWithin(newParent, ancestor: ino) { throw FSError.invalid }
                try store.removeEntry(parent: newParent, name: newName)
                if victim.isDirectory {
                    // The replaced directory's ".." no longer counts against the new parent.
                    var to = try directory(newParent)
                    to.nlink -= 1
                    try store.updateInode(to)
                }
                try dropLink(&victim, now: now)
            } else if moved.isDirectory, try isWithin(newParent, ancestor: ino) {
                throw FSError.invalid
            }
            try store.removeEntry(parent: parent, name: name)
            try store.insertEntry(parent: newParent, name: newName, ino: ino)
            if parent != newParent {
                var to = try directory(newParent)
                if moved.isDirectory {
                    guard to.nlink < Self.linkMax else { throw FSError.tooManyLinks }
                    to.nlink += 1
                    from.nlink -= 1
                }
                try touchDirectory(&to, now: now)
            }
            try touchDirectory(&from, now: now)
            moved.ctime = now
            moved.version = try store.version(for: .inode(moved.ino))
            try store.updateInode(moved)
        }
    }

    // MARK: open files

    private func register(_ ino: UInt64, fd: Int32, append: Bool) -> UInt64 {
        let handle = nextHandle
        nextHandle += 1
        handles[handle] = OpenFile(ino: ino, fd: fd, append: append)
        openCounts[ino, default: 0] += 1
        return handle
    }

    public func open(_ ino: UInt64, flags: Int32, caller: Caller? = nil) throws -> UInt64 {
        // The open reply carries no attributes: the kernel must hear of the truncation's new mode and times.
        defer { if flags & O_TRUNC != 0 { kernelAttributesChanged?(ino) } }
        return try mutate(plan: { truncationPlan(ino, flags: flags) }) {
            var r = try record(ino)
            guard r.kind == .regular else { throw r.isDirectory ? FSError.isDirectory : FSError.invalid }
            let fd = try store.openData(ino, create: true)
            do {
                try truncateAtOpen(&r, flags: flags, caller: caller)
            } catch {
                close(fd)
                throw error
            }
            return register(ino, fd: fd, append: flags & O_APPEND != 0)
        }
    }

    /// O_TRUNC of an existing file, as Linux truncates at open: even an empty file gets new times and loses its
    /// set-id bits (caller without CAP_FSETID) and capabilities.
    private func truncateAtOpen(_ r: inout InodeRecord, flags: Int32, caller: Caller?) throws {
        guard flags & O_TRUNC != 0 else { return }
        if r.size != 0 { try resize(&r, to: 0, handle: nil) }
        try dropPrivilegeBits(&r, caller: caller)
        let now = Timestamp.now()
        r.mtime = now
        r.ctime = now
        r.version = try store.version(for: .inode(r.ino))
        try store.updateInode(r)
    }

    private func truncationPlan(_ ino: UInt64, flags: Int32) -> Plan {
        guard flags & O_TRUNC != 0 else { return .reading(ino) }
        var p = Plan.writing(ino)
        if let r = peekRecord(ino) { addResize(&p, ino: ino, from: r.size, to: 0) }
        return p
    }

    public func create(parent: UInt64, name: [UInt8], mode: UInt32, flags: Int32, caller: Caller) throws -> (InodeRecord, UInt64) {
        let ino = try reserveInode()
        return try mutate(plan: {
            guard let existing = peekChild(parent, name) else { return creationPlan(parent: parent, ino: ino) }
            var p = truncationPlan(existing, flags: flags)
            p.read(.inode(parent))
            return p
        }) {
            if let existing = try store.lookup(parent: parent, name: name) {
                // The kernel normally resolves this with lookup first; honour O_EXCL if it races.
                if flags & O_EXCL != 0 { throw FSError.exists }
                var r = try record(existing)
                guard r.kind == .regular else { throw r.isDirectory ? FSError.isDirectory : FSError.invalid }
                try truncateAtOpen(&r, flags: flags, caller: caller)
                let fd = try store.openData(existing, create: true)
                noteLookup(existing)
                return (r, register(existing, fd: fd, append: flags & O_APPEND != 0))
            }
            let r = try makeNode(parent: parent, name: name, mode: UInt32(S_IFREG) | (mode & 0o7777), caller: caller, ino: ino, nameChecked: true)
            let fd = try store.createData(r.ino)
            return (r, register(r.ino, fd: fd, append: flags & O_APPEND != 0))
        }
    }

    public func release(_ handle: UInt64) {
        lock.withLock {
            defer { store.database.releaseStatements() }
            guard let file = handles.removeValue(forKey: handle) else { return }
            close(file.fd)
            let n = openCounts[file.ino, default: 1] - 1
            openCounts[file.ino] = n > 0 ? n : nil
            if n <= 0 { dereferenced(file.ino) }
        }
    }

    func file(_ handle: UInt64) throws -> OpenFile {
        guard let f = handles[handle] else { throw FSError.badHandle }
        return f
    }

    /// Where a read of `size` bytes at `offset` comes from: the data file's descriptor and the byte count
    /// that lies inside the file (reads stop at end of file). Updates atime the way relatime does.
    public func readSource(handle: UInt64, offset: UInt64, size: Int) throws -> (fd: Int32, count: Int) {
        try query {
            let f = try file(handle)
            var r = try record(f.ino)
            let count = offset >= r.size ? 0 : Int(min(UInt64(size), r.size - offset))
            let now = Timestamp.now()
            if r.atime <= r.mtime || r.atime <= r.ctime || now.nanoseconds - r.atime.nanoseconds > Self.relatimeWindowNs {
                r.atime = now
                // Best effort: a read must never fail because its access time could not be recorded (full disk).
                if (try? store.updateInode(r)) != nil { fastWrites.noteCommit(r.ino, store.commitCount) }
            }
            return (f.fd, count)
        }
    }

    /// The descriptor and file offset a write must use (O_APPEND writes go to the end of the file).
    public func writeTarget(handle: UInt64, offset: UInt64) throws -> (fd: Int32, offset: UInt64) {
        try query {
            let f = try file(handle)
            guard f.append else { return (f.fd, offset) }
            return (f.fd, try record(f.ino).size)
        }
    }

    /// Records a completed write of `count` bytes at `offset`: size, times, versions of the inode and its tracks.
    public func didWrite(handle: UInt64, offset: UInt64, count: Int, caller: Caller? = nil) throws {
        guard count > 0 else { return }
        let (ino, recorded): (UInt64?, Bool) = lock.withLock {
            guard let f = handles[handle] else { return (nil, false) }
            guard mirror == nil else { return (f.ino, false) }
            return (f.ino, fastWrites.record(ino: f.ino, offset: offset, count: UInt64(count), trackBytes: trackBytes))
        }
        if recorded { return }
        var modeChanged: UInt64?
        defer { if let ino = modeChanged { kernelAttributesChanged?(ino) } }
        try mutate(changesOnly: ino) {
            let f = try file(handle)
            guard f.ino == ino else { throw FSError.badHandle }
            var r = try record(f.ino)
            let end = offset + UInt64(count)
            let sizeBefore = r.size
            if end > r.size {
                r.size = end
                noteShapeChange(r.ino)
            }
            if try dropPrivilegeBits(&r, caller: caller) { modeChanged = r.ino }
            let now = Timestamp.now()
            r.mtime = now
            r.ctime = now
            r.version = try store.version(for: .inode(r.ino))
            r.allocatedBlocks = Store.allocatedBlocks(ofOpenFile: f.fd)
            try store.stampTracks(ino: f.ino, tracks: (offset / trackBytes)...((end - 1) / trackBytes))
            try store.updateInode(r)
            if mirror == nil, fastWrites.mayBegin(after: r, sizeBefore: sizeBefore, end: end) {
                // The next overwrites of this file may skip their transactions (this one's commit is the entry's).
                try store.markUnsettled(r.ino)
                fastWrites.begin(r, commit: store.commitCount + 1)
            }
        }
    }

    /// Makes the file's data (its data file) and metadata (the WAL) durable, outside the volume lock: every commit
    /// the caller depends on is already in the WAL. Where the store's filesystem allows (WALDurability) one device
    /// flush covers both; otherwise the two flushes run at once. fdatasync suffices for the data file even for
    /// fsync(2): the file's attributes live in SQLite, not in the data file's inode.
    public func fsync(handle: UInt64?, ino: UInt64, dataOnly: Bool) throws {
        let alone: Int32? = lock.withLock {
            guard let handle, let f = handles[handle], f.ino == ino,
                fastWrites.fsyncAlone(ino, durableCommits: walSyncer.durableCommits.load(ordering: .acquiring))
            else { return nil }
            return f.fd
        }
        if let fd = alone {
            // Everything the store holds for this inode is durable but what the fast writes keep in memory, and
            // recovery takes that from the data file: its fsync (its mtime included) is the whole job.
            if (dataOnly ? twin_fdatasync(fd) : Glibc.fsync(fd)) != 0 { throw FSError.fromErrno() }
            return
        }
        let (fd, needsMetadata): (Int32?, Bool) = try query {
            (try handle.map { try file($0).fd }, !dataOnly || mirror != nil || dataSyncNeedsMetadata(ino))
        }
        guard needsMetadata else {
            // fdatasync of a file whose size and existence are durable already: its data file is all there is.
            if let fd, twin_fdatasync(fd) != 0 { throw FSError.fromErrno() }
            return
        }
        // Counted before the check: these commits' frames lie in blocks the check finds covered.
        let commits = store.commitCount
        if let fd, store.walWriteOutSuffices {
            // One device flush for both files: the WAL's pages reach the device (written, not flushed) before
            // the data file's fdatasync flushes it. Both start writing at once so their I/O overlaps.
            store.startWALWriteOut()
            _ = twin_start_write_out(fd)
            try store.writeOutWAL()
            if twin_fdatasync(fd) != 0 { throw FSError.fromErrno() }
            walSyncer.noteDurable(commits)
            try flushToPeer(ino)
            return
        }
        let ticket = walSyncer.begin()
        var dataError: FSError?
        if let fd, twin_fdatasync(fd) != 0 { dataError = FSError.fromErrno() }
        try walSyncer.wait(ticket)
        if let dataError { throw dataError }
        try flushToPeer(ino)
    }

    public func fsyncDirectory() throws {
        try walSyncer.wait(walSyncer.begin())
    }

    public struct FallocateMode: OptionSet, Sendable {
        public let rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }
        public static let keepSize = FallocateMode(rawValue: twin_FALLOC_FL_KEEP_SIZE)
        public static let punchHole = FallocateMode(rawValue: twin_FALLOC_FL_PUNCH_HOLE)
    }

    public func fallocate(handle: UInt64, mode: FallocateMode, offset: UInt64, length: UInt64) throws {
        guard mode.subtracting([.keepSize, .punchHole]).isEmpty else { throw FSError.notSupported }
        if mode.contains(.punchHole) && !mode.contains(.keepSize) { throw FSError.notSupported }
        guard length > 0 else { throw FSError.invalid }
        try mutate(plan: {
            guard let ino = try? query({ try file(handle).ino }) else { return Plan() }
            var p = Plan.writing(ino)
            addWrite(&p, ino: ino, offset: offset, count: length)
            if let r = peekRecord(ino), offset + length > r.size, !mode.contains(.keepSize) {
                addResize(&p, ino: ino, from: r.size, to: offset + length)
            }
            return p
        }) {
            let f = try file(handle)
            var r = try record(f.ino)
            guard twin_fallocate(f.fd, mode.rawValue, off_t(offset), off_t(length)) == 0 else { throw FSError.fromErrno() }
            r.allocatedBlocks = Store.allocatedBlocks(ofOpenFile: f.fd)
            let now = Timestamp.now()
            let end = offset + length
            if mode.contains(.punchHole) {
                let last = min(end, r.size)
                if offset < last {
                    try store.stampTracks(ino: f.ino, tracks: (offset / trackBytes)...((last - 1) / trackBytes))
                }
                r.mtime = now
            } else if !mode.contains(.keepSize), end > r.size {
                r.size = end
                r.mtime = now
                noteShapeChange(r.ino)
            }
            r.ctime = now
            r.version = try store.version(for: .inode(r.ino))
            try store.updateInode(r)
        }
    }

    public enum SeekWhence: Sendable { case data, hole }

    public func seek(handle: UInt64, offset: UInt64, whence: SeekWhence) throws -> UInt64 {
        try query(plan: { (try? query({ try file(handle).ino })).map { Plan.reading($0) } ?? Plan() }) {
            let f = try file(handle)
            let size = try record(f.ino).size
            guard offset < size else { throw FSError.system(ENXIO) }
            // Mirrored, the local data file may still lack tracks the peer wrote (they are pulled on read): its
            // holes prove nothing, so the whole file is data (always a correct answer; holes are only a hint).
            if mirror != nil { return whence == .data ? offset : size }
            let result = lseek(f.fd, off_t(offset), whence == .data ? twin_SEEK_DATA : twin_SEEK_HOLE)
            if result < 0 {
                // No data at or after `offset` (holes up to the end): SEEK_DATA fails, SEEK_HOLE is right here.
                if errno == ENXIO && whence == .hole { return offset }
                throw FSError.fromErrno()
            }
            return min(UInt64(result), size)
        }
    }

    // MARK: directories

    public func opendir(_ ino: UInt64) throws {
        _ = try query(plan: { .reading(ino) }) { try directory(ino) }
    }

    /// Entries after `offset` (0 = start; 1 and 2 are "." and ".."), at most `limit` of them.
    /// With `plus`, each returned entry other than "." and ".." counts as a lookup.
    public func readdir(_ ino: UInt64, offset: Int64, limit: Int, plus: Bool) throws -> [DirectoryListing] {
        try query(plan: { .reading(ino) }) {
            let dir = try directory(ino)
            var out: [DirectoryListing] = []
            if offset < 1 { out.append(DirectoryListing(name: Array(".".utf8), record: dir, nextOffset: 1)) }
            if offset < 2 {
                let parentIno = ino == InodeRecord.rootIno ? ino : (try store.parent(ofDirectory: ino) ?? ino)
                let parentRecord = try currentRecord(parentIno) ?? dir
                out.append(DirectoryListing(name: Array("..".utf8), record: parentRecord, nextOffset: 2))
            }
            let entries = try store.entries(parent: ino, after: max(offset - 2, 0), limit: max(limit - out.count, 1))
            for e in entries {
                guard let r = try currentRecord(e.ino) else {
                    // Mirrored: the peer's new inode is named here before its record arrives (the record is
                    // pulled on lookup). Its kind is not known yet, which readdir may say (DT_UNKNOWN).
                    if mirror != nil && !plus { out.append(DirectoryListing(name: e.name, record: InodeRecord(unknownKind: e.ino), nextOffset: e.cookie + 2)) }
                    continue
                }
                out.append(DirectoryListing(name: e.name, record: r, nextOffset: e.cookie + 2))
            }
            return out
        }
    }

    /// readdirplus hands the kernel a reference for each entry it accepted.
    public func noteLookups(_ inos: [UInt64]) {
        lock.withLock { for ino in inos { noteLookup(ino) } }
    }

    // MARK: xattrs

    private func checkXattrName(_ name: [UInt8]) throws {
        guard !name.isEmpty else { throw FSError.invalid }
        guard name.count <= Self.maxXattrNameBytes else { throw FSError.range }
        // POSIX ACLs would be stored but never enforced: refuse them rather than pretend.
        if name.starts(with: Array("system.".utf8)) { throw FSError.notSupported }
    }

    public func setxattr(_ ino: UInt64, name: [UInt8], value: [UInt8], create: Bool, replace: Bool) throws {
        try checkXattrName(name)
        guard value.count <= Self.maxXattrValueBytes else { throw FSError.system(E2BIG) }
        try mutate(plan: { .writing(ino) }) {
            var r = try record(ino)
            let exists = try store.xattr(ino: ino, name: name) != nil
            if create && exists { throw FSError.exists }
            if replace && !exists { throw FSError.noAttribute }
            try store.setXattr(ino: ino, name: name, value: value)
            r.ctime = Timestamp.now()
            r.version = try store.version(for: .inode(r.ino))
            try store.updateInode(r)
        }
    }

    public func getxattr(_ ino: UInt64, name: [UInt8]) throws -> [UInt8] {
        // The kernel asks for security.capability before every write: while no file has one, answer without a
        // query. Not with a peer, which may have set one this node has not pulled yet.
        if mirror == nil, name == Store.capabilityXattr, !lock.withLock({ store.mayHaveCapabilityXattrs }) {
            throw FSError.noAttribute
        }
        return try query(plan: { .reading(ino) }) {
            _ = try record(ino)
            guard let value = try store.xattr(ino: ino, name: name) else { throw FSError.noAttribute }
            return value
        }
    }

    public func listxattr(_ ino: UInt64) throws -> [[UInt8]] {
        try query(plan: { .reading(ino) }) {
            _ = try record(ino)
            return try store.xattrNames(ino: ino)
        }
    }

    public func removexattr(_ ino: UInt64, name: [UInt8]) throws {
        try mutate(freesSpace: true, plan: { .writing(ino) }) {
            var r = try record(ino)
            guard try store.removeXattr(ino: ino, name: name) else { throw FSError.noAttribute }
            r.ctime = Timestamp.now()
            r.version = try store.version(for: .inode(r.ino))
            try store.updateInode(r)
        }
    }

    // MARK: filesystem

    public struct Statistics: Sendable {
        public var blockBytes: UInt64
        public var blocks: UInt64
        public var blocksFree: UInt64
        public var blocksAvailable: UInt64
        public var files: UInt64
        public var filesFree: UInt64
    }

    public func statfs() throws -> Statistics {
        try query {
            let st = try store.backingStatistics()
            return Statistics(
                blockBytes: UInt64(st.f_frsize), blocks: UInt64(st.f_blocks), blocksFree: UInt64(st.f_bfree),
                blocksAvailable: UInt64(st.f_bavail), files: UInt64(st.f_files), filesFree: UInt64(st.f_ffree))
        }
    }
}
