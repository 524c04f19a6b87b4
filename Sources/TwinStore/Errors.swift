// Errors of the store and of filesystem operations, as types. Errno values appear in exactly one place:
// TwinFUSE/Errno.swift maps FSError to errno at the FUSE boundary. Never: errno numbers here.
import Glibc

/// Why a store cannot be created, opened or mounted. Each case prints as one clear line.
public enum StoreError: Error, CustomStringConvertible, Equatable {
    case missing(path: String)
    case notAStore(path: String)
    case corrupt(path: String, detail: String)
    case newerFormat(path: String, found: Int, supported: Int)
    case alreadyExists(path: String)
    case locked(path: String)
    case invalidArgument(String)
    case io(path: String, detail: String)

    public var description: String {
        switch self {
        case .missing(let p): return "no store at \(p) (create one with `twinfs init \(p)`)"
        case .notAStore(let p): return "\(p) is not a twinfs store (no twinfs.conf)"
        case .corrupt(let p, let d): return "store \(p) is corrupt: \(d)"
        case .newerFormat(let p, let found, let supported):
            return "store \(p) has format \(found), newer than this twinfs supports (\(supported)); upgrade twinfs"
        case .alreadyExists(let p): return "\(p) already exists and is not an empty directory"
        case .locked(let p): return "store \(p) is in use by another twinfs daemon (lock held)"
        case .invalidArgument(let s): return s
        case .io(let p, let d): return "\(p): \(d)"
        }
    }
}

/// A filesystem operation's failure, in POSIX terms but without numbers.
public enum FSError: Error, Equatable, CustomStringConvertible {
    case notFound
    case exists
    case notDirectory
    case isDirectory
    case notEmpty
    case nameTooLong
    case noSpace
    case io
    case invalid
    case notPermitted
    case accessDenied
    case notSupported
    case noAttribute
    case range
    case badHandle
    case tooManyLinks
    case fileTooBig
    case crossDevice
    /// The mirror could not serve the operation (peer unreachable past the timeout, daemon stopping): EIO,
    /// never stale data (DESIGN G4).
    case mirror(String)
    /// An error a syscall on the backing store reported, carried through unchanged.
    case system(Int32)

    public var description: String {
        // Spelled out: `"\(self)"` here called this property again, without end (the daemon died of a stack
        // overflow the first time it logged an FSError, e.g. ENOSPC applying the peer's data on a full disk).
        switch self {
        case .system(let code): return String(cString: strerror(code))
        case .mirror(let why): return "mirror: \(why)"
        case .notFound: return "notFound"
        case .exists: return "exists"
        case .notDirectory: return "notDirectory"
        case .isDirectory: return "isDirectory"
        case .notEmpty: return "notEmpty"
        case .nameTooLong: return "nameTooLong"
        case .noSpace: return "noSpace (no space left on device)"
        case .io: return "io"
        case .invalid: return "invalid"
        case .notPermitted: return "notPermitted"
        case .accessDenied: return "accessDenied"
        case .notSupported: return "notSupported"
        case .noAttribute: return "noAttribute"
        case .range: return "range"
        case .badHandle: return "badHandle"
        case .tooManyLinks: return "tooManyLinks"
        case .fileTooBig: return "fileTooBig"
        case .crossDevice: return "crossDevice"
        }
    }

    /// A backing-store syscall failed: carry its errno, but classify the ones callers act on.
    public static func fromErrno(_ code: Int32 = errno) -> FSError {
        switch code {
        case ENOSPC, EDQUOT: return .noSpace
        case EIO: return .io
        default: return .system(code)
        }
    }

    public static func fromSQLite(_ error: SQLiteError) -> FSError {
        error.isDiskFull ? .noSpace : .io
    }
}
