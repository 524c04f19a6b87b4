// Volume+Mirror: how each filesystem operation meets the mirror. An operation names the locations it will read
// and write (its plan), the core grants them (pulling or marking first), the plan is checked again (a name may
// have moved while waiting), and the operation runs with the versions the grant stamped.
// Owns: the plan/acquire/re-validate/finish cycle and the store-side actions of the executor.
// Must never: hold the volume lock while waiting on the core (the executor takes that lock to apply the peer's data).
import Glibc
import MirrorCore
import Synchronization
import TwinStore

/// The locations one operation uses.
struct Plan {
    var items: [AccessItem] = []
    var hint = PredictionHint()

    mutating func read(_ l: Location) { items.append(AccessItem(l, .read)) }
    mutating func write(_ l: Location, full: Bool = false) { items.append(AccessItem(l, full ? .writeFull : .writePartial)) }

    static func reading(_ inos: UInt64...) -> Plan {
        var p = Plan()
        for i in inos { p.read(.inode(i)) }
        return p
    }
    static func writing(_ inos: UInt64...) -> Plan {
        var p = Plan()
        for i in inos { p.write(.inode(i)) }
        return p
    }

    /// One item per location, the strongest access, in the core's order.
    var normalized: [AccessItem] {
        var best: [Location: Access] = [:]
        for item in items { best[item.location] = max(best[item.location] ?? .read, item.access) }
        return best.map { AccessItem($0.key, $0.value) }.sorted { $0.location < $1.location }
    }
}

extension StoreLocation {
    init(_ l: Location) { self = l.isInodeRecord ? .inode(l.ino) : .track(l.ino, l.slot - 1) }
}

extension Volume {
    static let maxPlanAttempts = 32

    func attach(_ mirror: MirrorShell) {
        lock.withLock {
            precondition(fastWrites.isEmpty, "a volume takes its mirror before any write")
            self.mirror = mirror
            store.mirrored = true
        }
    }

    /// Runs `body` holding the plan's locations (directly when there is no mirror).
    func guarded<T>(_ plan: () throws -> Plan, _ body: () throws -> T) throws -> T {
        guard let mirror else { return try body() }
        var attempts = 0
        while true {
            let first = try plan()
            if first.items.isEmpty { return try body() }
            let items = first.normalized
            let (id, stamps) = try mirror.acquire(items, hint: first.hint)
            let writes = items.filter { $0.access.isWrite }.map(\.location)
            let again: [AccessItem]
            do {
                again = try plan().normalized
            } catch {
                mirror.finish(id, unwritten: writes)
                throw error
            }
            var held: [Location: Access] = [:]
            for item in items { held[item.location] = item.access }
            guard again.allSatisfy({ item in held[item.location].map { $0 >= item.access } ?? false }) else {
                // What the operation needs changed while it waited (a name now points elsewhere): start over.
                mirror.finish(id, unwritten: writes)
                attempts += 1
                guard attempts < Self.maxPlanAttempts else { throw FSError.mirror("locations kept changing") }
                continue
            }
            lock.withLock {
                for s in stamps { store.stamps[StoreLocation(s.location)] = MirrorShell.storeVersion(s.version) }
            }
            let result = Result { try body() }
            let unwritten: [Location] = lock.withLock {
                var out: [Location] = []
                for l in writes {
                    let sl = StoreLocation(l)
                    store.stamps[sl] = nil
                    if store.stampsUsed.remove(sl) == nil { out.append(l) }
                }
                return out
            }
            mirror.finish(id, unwritten: unwritten)
            return try result.get()
        }
    }

    /// Runs `reply` holding the locations of a read: its data must not change until the reply has been sent.
    public func withReadSource<T>(handle: UInt64, offset: UInt64, size: Int, _ reply: ((fd: Int32, count: Int)) throws -> T) throws -> T {
        try guarded({
            guard let ino = try? query({ try file(handle).ino }) else { return Plan() }
            var p = Plan.reading(ino)
            let fileSize = peekRecord(ino)?.size ?? 0
            if offset < fileSize, let range = trackRange(offset: offset, count: min(UInt64(size), fileSize - offset)) {
                for t in range { p.read(.track(ino, t)) }
            }
            return p
        }) { try reply(try readSource(handle: handle, offset: offset, size: size)) }
    }

    /// Runs `write` (which copies the data into the descriptor at the offset it is given and returns the byte
    /// count) holding the tracks it changes and the inode record, then records the write.
    public func withWriteTarget(handle: UInt64, offset: UInt64, count: Int, caller: Caller?, _ write: (Int32, UInt64) throws -> Int) throws -> Int {
        try guarded({
            guard let f = try? query({ try file(handle) }) else { return Plan() }
            let size = peekRecord(f.ino)?.size ?? 0
            let start = f.append ? size : offset
            var p = Plan.writing(f.ino)
            addWrite(&p, ino: f.ino, offset: start, count: UInt64(count))
            p.hint.fileTrackCount = (max(size, start + UInt64(count)) + trackBytes - 1) / trackBytes
            return p
        }) {
            let target = try writeTarget(handle: handle, offset: offset)
            let written = try write(target.fd, target.offset)
            Self.dataWriteFailpoint()
            try didWrite(handle: handle, offset: target.offset, count: written, caller: caller)
            return written
        }
    }

    /// TWINFS_TEST_EXIT_AFTER_DATA_WRITES=N (tests only): the daemon exits at once, as if killed, right after the
    /// data of its N-th write reached the data file and before the write's metadata commit — the window a kill -9
    /// hits only now and then.
    static let exitAfterDataWrites: Int? = getenv("TWINFS_TEST_EXIT_AFTER_DATA_WRITES").flatMap { Int(String(cString: $0)) }
    static let dataWrites = Atomic<Int>(0)

    static func dataWriteFailpoint() {
        guard let limit = exitAfterDataWrites else { return }
        if dataWrites.add(1, ordering: .relaxed).newValue >= limit { _exit(137) }
    }

    // MARK: peeks used by plans (unsynchronised with the mirror; the plan is checked again once granted)

    func peekChild(_ parent: UInt64, _ name: [UInt8]) -> UInt64? {
        (try? query { try store.lookup(parent: parent, name: name) }) ?? nil
    }

    func peekRecord(_ ino: UInt64) -> InodeRecord? {
        (try? query { try store.inode(ino) }) ?? nil
    }

    func trackRange(offset: UInt64, count: UInt64) -> ClosedRange<UInt64>? {
        guard count > 0 else { return nil }
        return (offset / trackBytes)...((offset + count - 1) / trackBytes)
    }

    /// Tracks written by `count` bytes at `offset`: whole tracks need no old data (Fig. 5B step 120).
    func addWrite(_ plan: inout Plan, ino: UInt64, offset: UInt64, count: UInt64) {
        guard let range = trackRange(offset: offset, count: count) else { return }
        for t in range {
            let start = t * trackBytes
            plan.write(.track(ino, t), full: offset <= start && offset + count >= start + trackBytes)
        }
    }

    /// A size change: the inode record, the track the new end falls in, and every track dropped or exposed.
    func addResize(_ plan: inout Plan, ino: UInt64, from old: UInt64, to new: UInt64) {
        let lo = min(old, new)
        let hi = max(old, new)
        guard lo != hi else { return }
        let first = lo / trackBytes
        let last = (hi - 1) / trackBytes
        for t in first...last { plan.write(.track(ino, t), full: t * trackBytes >= lo) }
    }

    // MARK: executor side (called by MirrorShell's thread)

    func mirrorRead(_ location: Location) throws -> LocationImage {
        try query { try store.readLocation(StoreLocation(location)) }
    }

    func mirrorApply(_ location: Location, _ image: LocationImage, force: Bool, replacingEqual: Bool = false) throws -> UInt64 {
        try lock.withLock {
            defer { store.database.releaseStatements() }
            // The peer's track data never use the space reserve: it is there so that metadata (bitmap persists,
            // records, deletions) can still be written on a full disk to free space again. Spent on data, it left a
            // full node unable to persist a mark, so not even `rm` through the mount could give space back. A track
            // that does not fit waits in the shell's retry queue instead.
            // The same for the free space left: the peer's data stop short of the last `reserveBytes`, which stay
            // for this node's own metadata once the reserve file itself has been given back.
            let apply = { [store] in try store.database.transaction { try store.applyLocation(StoreLocation(location), image, force: force, replacingEqual: replacingEqual) } }
            if location.isInodeRecord { return try store.withReserveOnFullDisk(apply) }
            if let st = try? store.backingStatistics(), UInt64(st.f_bavail) * UInt64(st.f_frsize) < UInt64(Store.reserveBytes) {
                throw FSError.noSpace
            }
            return try apply()
        }
    }

    func mirrorPersist(_ rows: [Store.MirrorStateRow], clockReservation: UInt64?, joinCompleted: Bool, sole: Bool?) throws {
        try lock.withLock {
            defer { store.database.releaseStatements() }
            try store.withReserveOnFullDisk {
                try store.database.transaction {
                    try store.writeMirrorState(rows, clockReservation: clockReservation, joinCompleted: joinCompleted, sole: sole)
                }
            }
        }
    }

    func syncMetadata() throws {
        try walSyncer.wait(walSyncer.begin())
    }

    /// Runs `body` on the store directly, with the volume lock held and no mirror involved: for the daemon's own
    /// bookkeeping (promotion counters, conflict preservation), never for a filesystem operation.
    public func withStore<T>(_ body: (Store) throws -> T) throws -> T {
        try lock.withLock {
            defer { store.database.releaseStatements() }
            return try body(store)
        }
    }

    /// fsync=mirror: waits until the peer durably holds the file's record and every track it has.
    func flushToPeer(_ ino: UInt64) throws {
        guard let mirror, fsyncMirror else { return }
        let size = peekRecord(ino)?.size ?? 0
        var locations: [Location] = [.inode(ino)]
        if size > 0 { for t in 0...((size - 1) / trackBytes) { locations.append(.track(ino, t)) } }
        try mirror.flush(locations)
    }
}
