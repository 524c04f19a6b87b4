// A seeded, reproducible random file-operation exerciser: writes, reads, truncates, fallocate (mode 0 and
// KEEP_SIZE), punched holes, SEEK_DATA, mmap reads and writes, fsync, reopen, against a few files on a
// real mount (unmounted and mounted again by a fresh daemon three times per run), checking every read
// against an in-memory model. Offsets lean towards track boundaries
// (64 KiB) where off-by-one errors live. The seed is printed at the start and in every failure; rerun with
// TWINFS_EXERCISER_SEED=<seed> (and TWINFS_EXERCISER_OPS=<n>) to reproduce.
// Never: retry an operation or tolerate a mismatch; the first difference ends the run with its history.
import CLinuxShims
import Foundation
import XCTest

final class RandomizedExerciserTests: MountingTestCase {
    func testRandomFileOperationsMatchAnInMemoryModel() throws {
        let env = ProcessInfo.processInfo.environment
        let seed = env["TWINFS_EXERCISER_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1...UInt64(UInt32.max))
        let count = env["TWINFS_EXERCISER_OPS"].flatMap { Int($0) } ?? 50_000
        print("exerciser: seed \(seed), \(count) operations (reproduce with TWINFS_EXERCISER_SEED=\(seed))")
        let store = try initStore()
        var m = try mount(store)
        var ex = try Exerciser(directory: m.mountpoint, seed: seed)
        let started = Date()
        defer { ex.closeAll() }
        for i in 0..<count {
            // Three times per run: a clean unmount and a fresh daemon, then everything must still be there.
            if i > 0 && i % (count / 4) == 0 {
                ex.closeAll()
                XCTAssertEqual(m.unmount()?.status, 0, "clean unmount at operation \(i)")
                m = try mount(store, at: "mnt-\(i)")
                try ex.reopenAll(in: m.mountpoint)
                if let failure = ex.verifyAll(label: "after remount at operation \(i)") {
                    XCTFail("exerciser seed \(seed): \(failure)\nlast operations:\n\(ex.history.joined(separator: "\n"))\n\(m.daemonLog())")
                    return
                }
            }
            if let failure = ex.step(i) {
                XCTFail("exerciser seed \(seed) failed at operation \(i) of \(count): \(failure)\nlast operations:\n\(ex.history.joined(separator: "\n"))\n\(m.daemonLog())")
                return
            }
        }
        if let failure = ex.verifyAll(label: "final") {
            XCTFail("exerciser seed \(seed) failed in the final check: \(failure)\n\(ex.history.joined(separator: "\n"))")
        }
        print("exerciser: seed \(seed), \(count) operations in \(String(format: "%.1f", Date().timeIntervalSince(started))) s; counts \(ex.counts.sorted { $0.key < $1.key })")
    }
}

/// The model and the driver. Each file has a descriptor and the bytes it must contain.
struct Exerciser {
    static let files = 4
    static let maxBytes = 512 * 1024
    static let track = 65_536

    var rng: SplitMix64
    var directory: String
    var fds: [Int32]
    var models: [[UInt8]]
    let pool: [UInt8]
    var history: [String] = []
    var counts: [String: Int] = [:]

    init(directory: String, seed: UInt64) throws {
        rng = SplitMix64(seed: seed)
        self.directory = directory
        pool = rng.bytes(1 << 20)
        fds = []
        models = []
        for i in 0..<Self.files {
            fds.append(try Sys.open("\(directory)/f\(i)", O_RDWR | O_CREAT | O_EXCL, 0o644))
            models.append([])
        }
    }

    mutating func reopenAll(in newDirectory: String) throws {
        directory = newDirectory
        fds = try (0..<Self.files).map { try Sys.open("\(directory)/f\($0)", O_RDWR) }
    }

    mutating func closeAll() {
        for fd in fds where fd >= 0 { close(fd) }
        fds = fds.map { _ in -1 }
    }

    private mutating func pick(_ n: Int) -> Int { n <= 0 ? 0 : Int(rng.next() % UInt64(n)) }

    /// An offset in 0..<limit, often within a few bytes of a track boundary.
    private mutating func offset(below limit: Int) -> Int {
        guard limit > 0 else { return 0 }
        if pick(3) == 0 {
            let boundary = pick(limit / Self.track + 1) * Self.track
            return min(max(0, boundary + pick(7) - 3), limit - 1)
        }
        return pick(limit)
    }

    /// A length from 1 byte to a bit over one track, mostly small.
    private mutating func length() -> Int {
        switch pick(4) {
        case 0: return 1 + pick(16)
        case 1: return 1 + pick(4096)
        case 2: return 1 + pick(Self.track + 100)
        default: return Self.track - 2 + pick(5)
        }
    }

    private mutating func log(_ s: String) {
        history.append(s)
        if history.count > 30 { history.removeFirst(history.count - 30) }
    }

    /// Compares bytes read with the model; a description of the first difference, or nil.
    private func compare(_ got: [UInt8], _ want: ArraySlice<UInt8>, at base: Int) -> String? {
        if got.count != want.count { return "read \(got.count) bytes at \(base), model has \(want.count)" }
        if got.isEmpty { return nil }
        let same = got.withUnsafeBytes { g in want.withUnsafeBytes { w in memcmp(g.baseAddress!, w.baseAddress!, got.count) == 0 } }
        if same { return nil }
        let first = zip(got, want).enumerated().first { $0.element.0 != $0.element.1 }!.offset
        let lo = max(0, first - 4), hi = min(got.count, first + 12)
        return "byte \(base + first) differs: got \(Array(got[lo..<hi])) want \(Array(want[(want.startIndex + lo)..<(want.startIndex + hi)])) (bytes \(base + lo)..<\(base + hi))"
    }

    private mutating func count(_ op: String) { counts[op, default: 0] += 1 }

    /// One random operation; a failure description or nil.
    mutating func step(_ index: Int) -> String? {
        let f = pick(Self.files)
        let fd = fds[f]
        let size = models[f].count
        let roll = pick(100)
        do {
            switch roll {
            case 0..<24:  // write
                let off = offset(below: min(Self.maxBytes, size + Self.track)), len = min(length(), Self.maxBytes - off)
                guard len > 0 else { return nil }
                let src = pick(pool.count - len)
                log("#\(index) f\(f) pwrite \(len) at \(off) (size \(size))")
                count("write")
                try Sys.pwrite(fd, Array(pool[src..<(src + len)]), at: Int64(off))
                if off + len > size { models[f] += [UInt8](repeating: 0, count: off + len - size) }
                models[f].withUnsafeMutableBytes { m in pool.withUnsafeBytes { p in
                    _ = memcpy(m.baseAddress! + off, p.baseAddress! + src, len) } }
            case 24..<50:  // read
                let off = offset(below: size + 1000), len = length() * (pick(4) == 0 ? 3 : 1)
                log("#\(index) f\(f) pread \(len) at \(off) (size \(size))")
                count("read")
                let got = try Sys.pread(fd, count: len, at: Int64(off))
                let want = off >= size ? [][...] : models[f][off..<min(size, off + len)]
                if let d = compare(got, want, at: off) { return "f\(f): \(d)" }
            case 50..<57:  // truncate
                let newSize = pick(3) == 0 ? pick(Self.track * 2) : pick(Self.maxBytes + 1)
                log("#\(index) f\(f) ftruncate \(newSize) (size \(size))")
                count("truncate")
                try Sys.ftruncate(fd, Int64(newSize))
                if newSize < size { models[f].removeLast(size - newSize) } else { models[f] += [UInt8](repeating: 0, count: newSize - size) }
            case 57..<62:  // fallocate mode 0, or KEEP_SIZE
                let off = offset(below: min(Self.maxBytes, size + Self.track)), len = min(length(), Self.maxBytes - off)
                guard len > 0 else { return nil }
                let keep = pick(3) == 0
                log("#\(index) f\(f) fallocate \(keep ? "KEEP_SIZE" : "0") \(len) at \(off) (size \(size))")
                count(keep ? "fallocate-keep" : "fallocate")
                try Sys.fallocate(fd, mode: keep ? twin_FALLOC_FL_KEEP_SIZE : 0, offset: Int64(off), length: Int64(len))
                if !keep && off + len > size { models[f] += [UInt8](repeating: 0, count: off + len - size) }
            case 62..<69:  // punch hole
                let off = offset(below: size + 1000), len = pick(4) == 0 ? Self.track * (1 + pick(3)) : length()
                log("#\(index) f\(f) punch \(len) at \(off) (size \(size))")
                count("punch")
                try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: Int64(off), length: Int64(len))
                if off < size {
                    let end = min(size, off + len)
                    models[f].withUnsafeMutableBytes { _ = memset($0.baseAddress! + off, 0, end - off) }
                }
            case 69..<75:  // mmap read
                guard size > 0 else { return nil }
                let off = pick(size), len = min(length(), size - off)
                log("#\(index) f\(f) mmap-read \(len) at \(off) (size \(size))")
                count("mmap-read")
                guard let p = mmap(nil, size, PROT_READ, MAP_SHARED, fd, 0), p != MAP_FAILED else { throw Errno(code: errno, call: "mmap") }
                defer { munmap(p, size) }
                let got = Array(UnsafeRawBufferPointer(start: p + off, count: len))
                if let d = compare(got, models[f][off..<(off + len)], at: off) { return "f\(f) (through mmap): \(d)" }
            case 75..<81:  // mmap write
                guard size > 0 else { return nil }
                let off = pick(size), len = min(length(), size - off), src = pick(pool.count - len)
                let sync = pick(2) == 0
                log("#\(index) f\(f) mmap-write \(len) at \(off) (size \(size))\(sync ? " msync" : "")")
                count("mmap-write")
                guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else { throw Errno(code: errno, call: "mmap") }
                pool.withUnsafeBytes { _ = memcpy(p + off, $0.baseAddress! + src, len) }
                if sync, msync(p, size, MS_SYNC) != 0 { let e = errno; munmap(p, size); throw Errno(code: e, call: "msync") }
                munmap(p, size)
                models[f].withUnsafeMutableBytes { m in pool.withUnsafeBytes { pb in
                    _ = memcpy(m.baseAddress! + off, pb.baseAddress! + src, len) } }
            case 81..<85:  // SEEK_DATA: everything it skips must be zeros
                let off = pick(size + 100)
                log("#\(index) f\(f) SEEK_DATA from \(off) (size \(size))")
                count("seek-data")
                let r = lseek(fd, off_t(off), twin_SEEK_DATA)
                if r < 0 {
                    guard errno == ENXIO else { throw Errno(code: errno, call: "lseek(SEEK_DATA)") }
                    if off < size, models[f][off...].contains(where: { $0 != 0 }) { return "f\(f): SEEK_DATA from \(off) said ENXIO but non-zero data follows" }
                } else {
                    let d = Int(r)
                    if d < off || d >= size { return "f\(f): SEEK_DATA from \(off) returned \(d), size \(size)" }
                    if models[f][off..<d].contains(where: { $0 != 0 }) { return "f\(f): SEEK_DATA from \(off) skipped non-zero data before \(d)" }
                }
            case 85..<90:  // size
                log("#\(index) f\(f) fstat (size \(size))")
                count("fstat")
                let st = try Sys.fstat(fd)
                if Int(st.st_size) != size { return "f\(f): fstat size \(st.st_size), model \(size)" }
            case 90..<93:  // fsync or fdatasync
                log("#\(index) f\(f) fsync")
                count("fsync")
                if pick(2) == 0 { try Sys.fsync(fd) } else { try Sys.check("fdatasync", twin_fdatasync(fd)) }
            case 93..<98:  // close and reopen
                log("#\(index) f\(f) reopen")
                count("reopen")
                try Sys.close(fd)
                fds[f] = -1
                fds[f] = try Sys.open("\(directory)/f\(f)", O_RDWR)
            default:  // whole-file check through a fresh descriptor
                log("#\(index) f\(f) full check (size \(size))")
                count("full-check")
                if let d = verify(f) { return d }
            }
        } catch {
            return "f\(f): \(error)"
        }
        return nil
    }

    private func verify(_ f: Int) -> String? {
        do {
            let got = try Sys.readAll("\(directory)/f\(f)")
            if let d = compare(got, models[f][...], at: 0) { return "f\(f) (whole file): \(d)" }
            return nil
        } catch {
            return "f\(f): \(error)"
        }
    }

    func verifyAll(label: String) -> String? {
        for f in 0..<Self.files { if let d = verify(f) { return "\(label): \(d)" } }
        return nil
    }
}
