// Thin throwing wrappers over the syscalls the POSIX tests make against a mountpoint, so that a test can
// say `XCTAssertErrno(ENAMETOOLONG) { try Sys.open(...) }`. renameat2 is looked up with dlsym because
// Glibc's module hides it behind _GNU_SOURCE. Never: retry or paper over an error; every errno surfaces.
import CLinuxShims
import Foundation
import XCTest

struct Errno: Error, Equatable, CustomStringConvertible {
    let code: Int32
    let call: String
    static func == (a: Errno, b: Errno) -> Bool { a.code == b.code }
    var description: String { "\(call): \(Errno.name(code)) (\(String(cString: strerror(code))))" }

    static func name(_ code: Int32) -> String {
        let names: [Int32: String] = [
            EPERM: "EPERM", ENOENT: "ENOENT", EIO: "EIO", EBADF: "EBADF", EACCES: "EACCES", EEXIST: "EEXIST",
            EXDEV: "EXDEV", ENOTDIR: "ENOTDIR", EISDIR: "EISDIR", EINVAL: "EINVAL", EFBIG: "EFBIG", ENOSPC: "ENOSPC",
            ENAMETOOLONG: "ENAMETOOLONG", ENOTEMPTY: "ENOTEMPTY", ENODATA: "ENODATA", ENXIO: "ENXIO",
            EOPNOTSUPP: "EOPNOTSUPP", ENOSYS: "ENOSYS", ENOTCONN: "ENOTCONN", ERANGE: "ERANGE", EMLINK: "EMLINK",
        ]
        return names[code] ?? "errno \(code)"
    }
}

enum Sys {
    @discardableResult
    static func check<T: BinaryInteger>(_ call: String, _ r: T) throws -> T {
        if r < 0 { throw Errno(code: errno, call: call) }
        return r
    }

    static func open(_ path: String, _ flags: Int32, _ mode: mode_t = 0o644) throws -> Int32 {
        try check("open(\(path))", Glibc.open(path, flags, mode))
    }

    static func close(_ fd: Int32) throws { try check("close", Glibc.close(fd)) }

    static func pwrite(_ fd: Int32, _ bytes: [UInt8], at offset: Int64) throws {
        let n = try bytes.withUnsafeBytes { try check("pwrite", Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(offset))) }
        guard n == bytes.count else { throw Errno(code: EIO, call: "pwrite short (\(n) of \(bytes.count))") }
    }

    static func write(_ fd: Int32, _ bytes: [UInt8]) throws {
        let n = try bytes.withUnsafeBytes { try check("write", Glibc.write(fd, $0.baseAddress, $0.count)) }
        guard n == bytes.count else { throw Errno(code: EIO, call: "write short (\(n) of \(bytes.count))") }
    }

    /// Reads up to `count` bytes at `offset`, looping over short reads until EOF.
    static func pread(_ fd: Int32, count: Int, at offset: Int64) throws -> [UInt8] {
        var buf = [UInt8](repeating: 0, count: count)
        var got = 0
        while got < count {
            let n = try buf.withUnsafeMutableBytes {
                try check("pread", Glibc.pread(fd, $0.baseAddress! + got, count - got, off_t(offset) + off_t(got)))
            }
            if n == 0 { break }
            got += n
        }
        return Array(buf[0..<got])
    }

    static func readAll(_ path: String) throws -> [UInt8] {
        let fd = try open(path, O_RDONLY)
        defer { Glibc.close(fd) }
        var out = [UInt8](), offset: Int64 = 0
        while true {
            let chunk = try pread(fd, count: 1 << 20, at: offset)
            out += chunk
            offset += Int64(chunk.count)
            if chunk.count < 1 << 20 { return out }
        }
    }

    static func writeFile(_ path: String, _ bytes: [UInt8], mode: mode_t = 0o644) throws {
        let fd = try open(path, O_WRONLY | O_CREAT | O_TRUNC, mode)
        defer { Glibc.close(fd) }
        try pwrite(fd, bytes, at: 0)
    }

    static func stat(_ path: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        try check("stat(\(path))", statPath(path, &st))
        return st
    }

    static func lstat(_ path: String) throws -> Glibc.stat {
        var st = Glibc.stat()
        try check("lstat(\(path))", lstatPath(path, &st))
        return st
    }

    static func fstat(_ fd: Int32) throws -> Glibc.stat {
        var st = Glibc.stat()
        try check("fstat", fstatFD(fd, &st))
        return st
    }

    static func mkdir(_ path: String, _ mode: mode_t = 0o755) throws { try check("mkdir(\(path))", Glibc.mkdir(path, mode)) }
    static func rmdir(_ path: String) throws { try check("rmdir(\(path))", Glibc.rmdir(path)) }
    static func unlink(_ path: String) throws { try check("unlink(\(path))", Glibc.unlink(path)) }
    static func link(_ from: String, _ to: String) throws { try check("link", Glibc.link(from, to)) }
    static func symlink(_ target: String, _ at: String) throws { try check("symlink", Glibc.symlink(target, at)) }
    static func rename(_ from: String, _ to: String) throws { try check("rename", Glibc.rename(from, to)) }
    static func chmod(_ path: String, _ mode: mode_t) throws { try check("chmod", Glibc.chmod(path, mode)) }
    static func chown(_ path: String, _ uid: uid_t, _ gid: gid_t) throws { try check("chown", Glibc.chown(path, uid, gid)) }
    static func ftruncate(_ fd: Int32, _ size: Int64) throws { try check("ftruncate", Glibc.ftruncate(fd, off_t(size))) }
    static func truncate(_ path: String, _ size: Int64) throws { try check("truncate", Glibc.truncate(path, off_t(size))) }
    static func fsync(_ fd: Int32) throws { try check("fsync", Glibc.fsync(fd)) }

    static func lseek(_ fd: Int32, _ offset: Int64, _ whence: Int32) throws -> Int64 {
        Int64(try check("lseek(whence \(whence))", Glibc.lseek(fd, off_t(offset), whence)))
    }

    static func fallocate(_ fd: Int32, mode: Int32, offset: Int64, length: Int64) throws {
        try check("fallocate(mode \(mode))", twin_fallocate(fd, mode, off_t(offset), off_t(length)))
    }

    static func readlink(_ path: String) throws -> String {
        var buf = [CChar](repeating: 0, count: 8192)
        let n = try check("readlink", Glibc.readlink(path, &buf, buf.count))
        return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }

    static func utimens(_ path: String, atime: timespec, mtime: timespec) throws {
        var times = [atime, mtime]
        try check("utimensat", utimensat(AT_FDCWD, path, &times, 0))
    }

    private typealias Renameat2 = @convention(c) (Int32, UnsafePointer<CChar>, Int32, UnsafePointer<CChar>, UInt32) -> Int32
    private static let renameat2Fn: Renameat2 = {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "renameat2") else {
            fatalError("renameat2 not found in libc")
        }
        return unsafeBitCast(sym, to: Renameat2.self)
    }()

    static func renameat2(_ from: String, _ to: String, flags: UInt32) throws {
        try check("renameat2(flags \(flags))", renameat2Fn(AT_FDCWD, from, AT_FDCWD, to, flags))
    }

    private typealias SetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeRawPointer?, Int, Int32) -> Int32
    private typealias GetXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>, UnsafeMutableRawPointer?, Int) -> Int
    private typealias ListXattr = @convention(c) (UnsafePointer<CChar>, UnsafeMutablePointer<CChar>?, Int) -> Int
    private typealias RemoveXattr = @convention(c) (UnsafePointer<CChar>, UnsafePointer<CChar>) -> Int32
    private static func libc<T>(_ name: String, as: T.Type) -> T {
        guard let sym = dlsym(UnsafeMutableRawPointer(bitPattern: 0), name) else { fatalError("\(name) not found in libc") }
        return unsafeBitCast(sym, to: T.self)
    }
    private static let setxattrFn = libc("setxattr", as: SetXattr.self)
    private static let getxattrFn = libc("getxattr", as: GetXattr.self)
    private static let listxattrFn = libc("listxattr", as: ListXattr.self)
    private static let removexattrFn = libc("removexattr", as: RemoveXattr.self)

    static func setxattr(_ path: String, _ name: String, _ value: [UInt8], flags: Int32 = 0) throws {
        _ = try value.withUnsafeBytes { try check("setxattr(\(name))", setxattrFn(path, name, $0.baseAddress, $0.count, flags)) }
    }

    static func getxattr(_ path: String, _ name: String) throws -> [UInt8] {
        let size = try check("getxattr(\(name))", getxattrFn(path, name, nil, 0))
        var buf = [UInt8](repeating: 0, count: size)
        let n = try buf.withUnsafeMutableBytes { try check("getxattr(\(name))", getxattrFn(path, name, $0.baseAddress, $0.count)) }
        return Array(buf[0..<n])
    }

    static func listxattr(_ path: String) throws -> [String] {
        let size = try check("listxattr", listxattrFn(path, nil, 0))
        if size == 0 { return [] }
        var buf = [CChar](repeating: 0, count: size)
        let n = try check("listxattr", listxattrFn(path, &buf, buf.count))
        return buf[0..<n].split(separator: 0).map { String(decoding: $0.map { UInt8(bitPattern: $0) }, as: UTF8.self) }.sorted()
    }

    static func removexattr(_ path: String, _ name: String) throws {
        try check("removexattr(\(name))", removexattrFn(path, name))
    }

    /// Names in a directory, without . and ..
    static func listDir(_ path: String) throws -> [String] {
        guard let d = opendir(path) else { throw Errno(code: errno, call: "opendir(\(path))") }
        defer { closedir(d) }
        var names: [String] = []
        while let e = readdir(d) {
            let name = withUnsafePointer(to: e.pointee.d_name) {
                $0.withMemoryRebound(to: CChar.self, capacity: 256) { String(cString: $0) }
            }
            if name != "." && name != ".." { names.append(name) }
        }
        return names.sorted()
    }
}

private func statPath(_ p: String, _ st: inout Glibc.stat) -> Int32 { stat(p, &st) }
private func lstatPath(_ p: String, _ st: inout Glibc.stat) -> Int32 { lstat(p, &st) }
private func fstatFD(_ fd: Int32, _ st: inout Glibc.stat) -> Int32 { fstat(fd, &st) }

/// Asserts that `body` fails with exactly errno `code`.
func XCTAssertErrno(_ code: Int32, _ message: String = "", file: StaticString = #filePath, line: UInt = #line,
                    _ body: () throws -> Void) {
    do {
        try body()
        XCTFail("expected \(Errno.name(code)), but the call succeeded. \(message)", file: file, line: line)
    } catch let e as Errno {
        XCTAssertEqual(e.code, code, "expected \(Errno.name(code)), got \(e). \(message)", file: file, line: line)
    } catch {
        XCTFail("expected \(Errno.name(code)), got \(error). \(message)", file: file, line: line)
    }
}

extension timespec {
    var seconds: Double { Double(tv_sec) + Double(tv_nsec) / 1e9 }
}

/// Deterministic bytes for content checks: a SplitMix64 stream.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            var v = next()
            for _ in 0..<8 where i < n { out[i] = UInt8(truncatingIfNeeded: v); v >>= 8; i += 1 }
        }
        return out
    }
}
