// Errno: the one place where typed errors become errno values for the kernel.
// Never: error decisions (those are made where the error is raised).
import Glibc
import TwinStore

extension FSError {
    var errno: Int32 {
        switch self {
        case .notFound: return ENOENT
        case .exists: return EEXIST
        case .notDirectory: return ENOTDIR
        case .isDirectory: return EISDIR
        case .notEmpty: return ENOTEMPTY
        case .nameTooLong: return ENAMETOOLONG
        case .noSpace: return ENOSPC
        case .io: return EIO
        case .invalid: return EINVAL
        case .notPermitted: return EPERM
        case .accessDenied: return EACCES
        case .notSupported: return EOPNOTSUPP
        case .noAttribute: return ENODATA
        case .range: return ERANGE
        case .badHandle: return EBADF
        case .tooManyLinks: return EMLINK
        case .fileTooBig: return EFBIG
        case .crossDevice: return EXDEV
        case .mirror: return EIO
        case .system(let code): return code
        }
    }
}

/// Any error reaching the FUSE boundary: FSErrors map 1:1; anything else is a bug or a store failure and is EIO.
func errnoValue(of error: Error) -> Int32 {
    switch error {
    case let e as FSError: return e.errno
    case let e as SQLiteError: return FSError.fromSQLite(e).errno
    default: return EIO
    }
}
