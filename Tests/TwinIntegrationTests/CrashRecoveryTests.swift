// kill -9 of the daemon in the middle of a write workload (creates, writes, fsyncs, atomic-save renames,
// unlinks, from several threads), then: the dead mount removed by path, the store mounted again without
// repair, and every operation whose call had returned is there. Several rounds, each killing at a
// different point, and each check covers all earlier rounds too.
// Never: count an operation as done before its call returned, or demand anything of the one in flight.
import Foundation
import XCTest

/// What one writer thread has done (returned) and what it was doing when the daemon died.
final class CrashLedger {
    enum Op {
        case create(String)
        case write(String, offset: Int, length: Int, seed: UInt64)
        case rename(String, String)
        case unlink(String)
    }

    private let lock = NSLock()
    private var done: [Op] = []
    private var inFlight: Op?
    private(set) var failure: String?

    var doneCount: Int { lock.lock(); defer { lock.unlock() }; return done.count }

    /// Runs `body` for `op`; records `op` as done only once `body` returned without error.
    func perform(_ op: Op, _ body: () throws -> Void) throws {
        lock.lock(); inFlight = op; lock.unlock()
        try body()
        lock.lock(); done.append(op); inFlight = nil; lock.unlock()
    }

    func snapshot() -> (done: [Op], inFlight: Op?) {
        lock.lock(); defer { lock.unlock() }
        return (done, inFlight)
    }

    func fail(_ why: String) { lock.lock(); failure = failure ?? why; lock.unlock() }
}

/// Tells writer threads to stop when the daemon did not die as it should (a failure path only).
final class StopFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
    func set() { lock.lock(); value = true; lock.unlock() }
}

final class CrashRecoveryTests: MountingTestCase {
    static func chunk(seed: UInt64, length: Int) -> [UInt8] {
        var rng = SplitMix64(seed: seed)
        return rng.bytes(length)
    }

    /// One writer: in its own directory, builds files as tmp.N (create, several writes, sometimes fsync),
    /// renames each to final.N, and unlinks some older finals. Stops at the first error (the daemon died).
    static func writer(root: String, id: Int, round: Int, ledger: CrashLedger, stop: @escaping () -> Bool) {
        var rng = SplitMix64(seed: UInt64(round * 1000 + id))
        let dir = "\(root)/r\(round)w\(id)"
        do {
            try Sys.mkdir(dir)
            var n = 0
            while !stop() {
                let tmp = "\(dir)/tmp.\(n)", final = "\(dir)/final.\(n)"
                var fd: Int32 = -1
                try ledger.perform(.create(tmp)) { fd = try Sys.open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0o644) }
                defer { if fd >= 0 { close(fd) } }
                var offset = 0
                for _ in 0..<(1 + Int(rng.next() % 6)) {
                    let length = 1 + Int(rng.next() % 150_000)
                    let seed = rng.next()
                    let bytes = chunk(seed: seed, length: length)
                    try ledger.perform(.write(tmp, offset: offset, length: length, seed: seed)) {
                        try Sys.pwrite(fd, bytes, at: Int64(offset))
                    }
                    offset += length + Int(rng.next() % 3) * 65_536  // sometimes leave a hole
                    if rng.next() % 5 == 0 { try Sys.fsync(fd) }
                }
                close(fd); fd = -1
                try ledger.perform(.rename(tmp, final)) { try Sys.rename(tmp, final) }
                if n >= 3, rng.next() % 3 == 0 {
                    let victim = "\(dir)/final.\(n - 3)"
                    try ledger.perform(.unlink(victim)) { try Sys.unlink(victim) }
                }
                n += 1
            }
        } catch {
            // Expected once the daemon is killed (ENOTCONN); the ledger says what returned before.
        }
    }

    /// The state every returned operation implies, checked against the mount. A description of each
    /// violation (empty if none).
    static func check(ledger: CrashLedger, mountRoot: String, fromRoot: String) -> [String] {
        let (done, inFlight) = ledger.snapshot()
        func here(_ p: String) -> String { mountRoot + p.dropFirst(fromRoot.count) }
        var files: [String: [(offset: Int, length: Int, seed: UInt64)]] = [:]
        var gone: Set<String> = []
        for op in done {
            switch op {
            case .create(let p): files[p] = []; gone.remove(p)
            case .write(let p, let o, let l, let s): files[p, default: []].append((o, l, s))
            case .rename(let a, let b): files[b] = files.removeValue(forKey: a); gone.insert(a); gone.remove(b)
            case .unlink(let p): files.removeValue(forKey: p); gone.insert(p)
            }
        }
        // The operation in flight may or may not have happened: its names are not checked.
        var uncertain: Set<String> = []
        switch inFlight {
        case .create(let p)?, .unlink(let p)?: uncertain.insert(p)
        case .rename(let a, let b)?: uncertain.formUnion([a, b])
        case .write(let p, _, _, _)?: _ = p  // the chunk in flight is not in `files`; earlier chunks must be there
        case nil: break
        }
        var problems: [String] = []
        if case .rename(let a, let b)? = inFlight, let chunks = files[a] {
            // Whichever name it has now, it must have all its returned chunks.
            let at = FileManager.default.fileExists(atPath: here(b)) ? b : a
            problems += verify(here(at), chunks: chunks)
            files.removeValue(forKey: a)
        }
        for (p, chunks) in files where !uncertain.contains(p) {
            problems += verify(here(p), chunks: chunks)
        }
        for p in gone where !uncertain.contains(p) && files[p] == nil {
            if FileManager.default.fileExists(atPath: here(p)) { problems.append("\(p) was unlinked or renamed away (returned) but exists") }
        }
        return problems
    }

    static func verify(_ path: String, chunks: [(offset: Int, length: Int, seed: UInt64)]) -> [String] {
        do {
            let fd = try Sys.open(path, O_RDONLY)
            defer { close(fd) }
            var out: [String] = []
            for c in chunks {
                let got = try Sys.pread(fd, count: c.length, at: Int64(c.offset))
                if got != chunk(seed: c.seed, length: c.length) {
                    let bad = zip(got, chunk(seed: c.seed, length: c.length)).enumerated().first { $0.element.0 != $0.element.1 }?.offset
                    out.append("\(path): returned write of \(c.length) bytes at \(c.offset) is not there (read \(got.count) bytes, first difference at +\(bad.map(String.init) ?? "end"))")
                }
            }
            return out
        } catch {
            return ["\(path): \(error) (created and written, calls returned)"]
        }
    }

    func testKill9DuringWritesLosesNoReturnedWrite() throws {
        let store = try initStore()
        var ledgers: [(ledger: CrashLedger, root: String)] = []
        let rounds = 3, writers = 3
        for round in 0..<rounds {
            let m = try mount(store, at: "mnt\(round)")
            // Everything earlier rounds saw returned must have survived their kill -9.
            for (ledger, root) in ledgers {
                let problems = Self.check(ledger: ledger, mountRoot: m.mountpoint, fromRoot: root)
                XCTAssertEqual(problems, [], "after a kill -9 and remount (round \(round)):\n\(problems.prefix(20).joined(separator: "\n"))\n\(m.daemonLog())")
            }
            let stopping = StopFlag()
            let roundLedgers = (0..<writers).map { _ in CrashLedger() }
            let finished = DispatchGroup()
            for w in 0..<writers {
                finished.enter()
                let t = Thread {
                    Self.writer(root: m.mountpoint, id: w, round: round, ledger: roundLedgers[w]) { stopping.isSet }
                    finished.leave()
                }
                t.start()
            }
            // Kill once the workload is well under way: a different number of operations each round.
            let target = 150 + round * 120
            let deadline = Date().addingTimeInterval(120)
            while roundLedgers.map(\.doneCount).reduce(0, +) < target && Date() < deadline && m.isRunning {
                usleep(2_000)
            }
            XCTAssertGreaterThanOrEqual(roundLedgers.map(\.doneCount).reduce(0, +), target,
                                        "workload made progress before the kill\n\(m.daemonLog())")
            kill(m.pid, SIGKILL)
            let exit = m.waitForExit(timeoutSeconds: 30)
            XCTAssertEqual(exit?.signaled, true, "daemon died of SIGKILL")
            let writersDone = finished.wait(timeout: .now() + 60)
            stopping.set()
            XCTAssertEqual(writersDone, .success, "writers stopped after the daemon died (calls on a dead mount must fail, not hang)")
            if writersDone != .success { _ = finished.wait(timeout: .now() + 60) }
            m.removeDeadMount()
            XCTAssertFalse(MountTable.isMounted(m.mountpoint), "the dead mount was removed")
            for l in roundLedgers { ledgers.append((l, m.mountpoint)) }
        }
        let m = try mount(store, at: "mnt-final")
        for (ledger, root) in ledgers {
            let problems = Self.check(ledger: ledger, mountRoot: m.mountpoint, fromRoot: root)
            XCTAssertEqual(problems, [], "after the last kill -9 and remount:\n\(problems.prefix(20).joined(separator: "\n"))")
        }
        XCTAssertEqual(m.unmount()?.status, 0)
        XCTAssertSucceeds(Commands.twinfs(["status", store]), "status of a store that survived kill -9")
    }
}
