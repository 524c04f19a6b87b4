// SQLite: a thin typed wrapper over the SQLite C API for the store's metadata.
// Owns: one connection, prepared statements, transactions. Never: retries, schema, or knowledge of inodes.
import CSQLite

public struct SQLiteError: Error, CustomStringConvertible {
    public let code: Int32
    public let message: String
    public var description: String { "sqlite error \(code): \(message)" }
    /// SQLITE_FULL / SQLITE_IOERR are the disk's fault, not ours: callers map them to ENOSPC / EIO.
    public var isDiskFull: Bool { code & 0xff == SQLITE_FULL }
    public var isCorrupt: Bool { code & 0xff == SQLITE_CORRUPT || code & 0xff == SQLITE_NOTADB }
}

// SQLITE_TRANSIENT is a macro SQLite defines as a cast of -1; Swift cannot import it.
private let sqliteTransient = unsafeBitCast(OpaquePointer(bitPattern: -1), to: sqlite3_destructor_type.self)

public final class SQLiteDatabase {
    let handle: OpaquePointer
    private var cache: [String: SQLiteStatement] = [:]
    /// Statements stepped since the last `releaseStatements()`: a statement left mid-result keeps a read
    /// snapshot open, which would stop WAL checkpoints from ever completing.
    private var inUse: [SQLiteStatement] = []

    public init(path: String, create: Bool) throws {
        var db: OpaquePointer?
        let flags = SQLITE_OPEN_READWRITE | (create ? SQLITE_OPEN_CREATE : 0) | SQLITE_OPEN_NOMUTEX
        let rc = sqlite3_open_v2(path, &db, flags, nil)
        guard rc == SQLITE_OK, let db else {
            let message = db.map { String(cString: sqlite3_errmsg($0)) } ?? "cannot open"
            if let db { sqlite3_close_v2(db) }
            throw SQLiteError(code: rc, message: message)
        }
        handle = db
        sqlite3_extended_result_codes(db, 1)
    }

    deinit {
        cache.removeAll()
        sqlite3_close_v2(handle)
    }

    func error(_ rc: Int32) -> SQLiteError {
        SQLiteError(code: rc, message: String(cString: sqlite3_errmsg(handle)))
    }

    public func execute(_ sql: String) throws {
        var message: UnsafeMutablePointer<CChar>?
        let rc = sqlite3_exec(handle, sql, nil, nil, &message)
        if rc != SQLITE_OK {
            let text = message.map { String(cString: $0) } ?? "?"
            sqlite3_free(message)
            throw SQLiteError(code: rc, message: text)
        }
    }

    /// Statements are cached by their SQL text: the store runs a fixed set of queries.
    public func statement(_ sql: String) throws -> SQLiteStatement {
        if let cached = cache[sql] {
            cached.reset()
            inUse.append(cached)
            return cached
        }
        var raw: OpaquePointer?
        let rc = sqlite3_prepare_v3(handle, sql, -1, UInt32(SQLITE_PREPARE_PERSISTENT), &raw, nil)
        guard rc == SQLITE_OK, let raw else { throw error(rc) }
        let statement = SQLiteStatement(database: self, handle: raw)
        cache[sql] = statement
        inUse.append(statement)
        return statement
    }

    /// Ends every statement's result set; call when an operation is done with the database.
    public func releaseStatements() {
        for statement in inUse { sqlite3_reset(statement.handle) }
        inUse.removeAll(keepingCapacity: true)
    }

    public var changes: Int { Int(sqlite3_changes(handle)) }

    /// Frames in the WAL after the last commit of this connection (0 before any).
    public private(set) var walFrames: Int = 0
    /// Called after each commit with the WAL's frame count (replaces SQLite's automatic checkpoint).
    private var walObserver: ((Int) -> Void)?

    /// Replaces SQLite's automatic checkpoint (run by the committing thread, with its syncs) with `observer`,
    /// called after every commit with the number of frames in the WAL; the observer decides who checkpoints.
    public func observeWAL(_ observer: @escaping (Int) -> Void) {
        walObserver = observer
        sqlite3_wal_hook(handle, { context, _, _, frames in
            let db = Unmanaged<SQLiteDatabase>.fromOpaque(context!).takeUnretainedValue()
            db.walFrames = Int(frames)
            db.walObserver?(Int(frames))
            return SQLITE_OK
        }, Unmanaged.passUnretained(self).toOpaque())
    }

    public enum CheckpointMode {
        /// Copies what it can without waiting for anyone; runs beside the writer.
        case passive
        /// Copies everything and truncates the WAL; waits for (and blocks) other connections.
        case truncate
    }

    /// Copies WAL frames into the database file. Returns the WAL's frame count and how many of them are now in
    /// the database file (equal: the next write starts the WAL over). SQLITE_BUSY (another checkpoint running)
    /// is not an error: nothing was copied.
    @discardableResult
    public func checkpoint(_ mode: CheckpointMode) throws -> (frames: Int, copied: Int) {
        var frames: Int32 = 0
        var copied: Int32 = 0
        let rc = sqlite3_wal_checkpoint_v2(
            handle, nil, mode == .passive ? SQLITE_CHECKPOINT_PASSIVE : SQLITE_CHECKPOINT_TRUNCATE, &frames, &copied)
        if rc == SQLITE_BUSY { return (Int(frames), 0) }
        guard rc == SQLITE_OK else { throw error(rc) }
        return (Int(frames), Int(copied))
    }

    public func transaction<T>(_ body: () throws -> T) throws -> T {
        try statement("BEGIN IMMEDIATE").run()
        do {
            let value = try body()
            // Statements left on a row would keep a read snapshot through COMMIT, and the automatic
            // checkpoint that follows it would silently fail: the WAL would then grow without bound.
            releaseStatements()
            try statement("COMMIT").run()
            return value
        } catch {
            try? execute("ROLLBACK")
            throw error
        }
    }
}

public final class SQLiteStatement {
    unowned let database: SQLiteDatabase
    let handle: OpaquePointer

    init(database: SQLiteDatabase, handle: OpaquePointer) {
        self.database = database
        self.handle = handle
    }

    deinit { sqlite3_finalize(handle) }

    func reset() {
        sqlite3_reset(handle)
        sqlite3_clear_bindings(handle)
    }

    @discardableResult
    public func bind(_ values: SQLiteValue...) throws -> SQLiteStatement {
        for (offset, value) in values.enumerated() {
            let index = Int32(offset + 1)
            let rc: Int32
            switch value {
            case .int(let v): rc = sqlite3_bind_int64(handle, index, v)
            case .null: rc = sqlite3_bind_null(handle, index)
            case .text(let s): rc = sqlite3_bind_text(handle, index, s, -1, sqliteTransient)
            case .blob(let bytes):
                rc = bytes.withUnsafeBytes { raw in
                    // An empty blob must still be a blob, not NULL: pass a valid pointer.
                    sqlite3_bind_blob(handle, index, raw.baseAddress ?? UnsafeRawPointer(bitPattern: 1), Int32(bytes.count), sqliteTransient)
                }
            }
            guard rc == SQLITE_OK else { throw database.error(rc) }
        }
        return self
    }

    /// Steps once; true while a row is available.
    public func step() throws -> Bool {
        let rc = sqlite3_step(handle)
        switch rc {
        case SQLITE_ROW: return true
        case SQLITE_DONE: return false
        default: throw database.error(rc)
        }
    }

    public func run() throws {
        while try step() {}
        sqlite3_reset(handle)
    }

    public func int(_ column: Int32) -> Int64 { sqlite3_column_int64(handle, column) }
    public func isNull(_ column: Int32) -> Bool { sqlite3_column_type(handle, column) == SQLITE_NULL }
    public func text(_ column: Int32) -> String {
        guard let p = sqlite3_column_text(handle, column) else { return "" }
        return String(cString: p)
    }
    public func blob(_ column: Int32) -> [UInt8] {
        let count = Int(sqlite3_column_bytes(handle, column))
        guard count > 0, let p = sqlite3_column_blob(handle, column) else { return [] }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }
}

public enum SQLiteValue {
    case int(Int64)
    case text(String)
    case blob([UInt8])
    case null
}

extension SQLiteValue {
    public static func u64(_ v: UInt64) -> SQLiteValue { .int(Int64(bitPattern: v)) }
    public static func u32(_ v: UInt32) -> SQLiteValue { .int(Int64(v)) }
}
