// kill -9 of the daemon in the middle of a write workload (creates, writes, overwrites, fsyncs, atomic-save
// renames, unlinks, from several threads), then: the dead mount removed by path, the store mounted again without
// repair, and every operation whose call had returned is there. Several rounds, each killing at a
// different point, and each check covers all earlier rounds too.
// Never: count an operation as done before its call returned, or demand anything of the one in flight.
import CLinuxShims
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

    /// One writer: in its own directory, builds files as tmp.N (create, several writes, sometimes fsync, then
    /// sometimes overwrites of earlier chunks in place: the fast path of FastWrites), renames each to final.N,
    /// and unlinks some older finals. Stops at the first error (the daemon died).
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
                var written: [(offset: Int, length: Int)] = []
                for _ in 0..<(1 + Int(rng.next() % 6)) {
                    let length = 1 + Int(rng.next() % 150_000)
                    let seed = rng.next()
                    let bytes = chunk(seed: seed, length: length)
                    try ledger.perform(.write(tmp, offset: offset, length: length, seed: seed)) {
                        try Sys.pwrite(fd, bytes, at: Int64(offset))
                    }
                    written.append((offset, length))
                    offset += length + Int(rng.next() % 3) * 65_536  // sometimes leave a hole
                    if rng.next() % 5 == 0 { try Sys.fsync(fd) }
                }
                for _ in 0..<(rng.next() % 2 == 0 ? Int(rng.next() % 8) : 0) {
                    let (at, length) = written[Int(rng.next() % UInt64(written.count))]
                    let seed = rng.next()
                    try ledger.perform(.write(tmp, offset: at, length: length, seed: seed)) {
                        try Sys.pwrite(fd, chunk(seed: seed, length: length), at: Int64(at))
                    }
                    if rng.next() % 4 == 0 { try Sys.fsync(fd) }
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
            case .write(let p, let o, let l, let s):
                // An overwrite covers exactly one earlier chunk: the newer bytes replace it.
                files[p, default: []].removeAll { $0.offset == o }
                files[p, default: []].append((o, l, s))
            case .rename(let a, let b): files[b] = files.removeValue(forKey: a); gone.insert(a); gone.remove(b)
            case .unlink(let p): files.removeValue(forKey: p); gone.insert(p)
            }
        }
        // The operation in flight may or may not have happened: its names are not checked.
        var uncertain: Set<String> = []
        switch inFlight {
        case .create(let p)?, .unlink(let p)?: uncertain.insert(p)
        case .rename(let a, let b)?: uncertain.formUnion([a, b])
        case .write(let p, let o, _, _)?:
            // The chunk in flight is not in `files`; an earlier chunk it overwrites may hold old, new or mixed bytes.
            files[p]?.removeAll { $0.offset == o }
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

    /// Stores to a shared mapping count as written once msync(MS_SYNC) returned; truncate, punch hole and
    /// xattr changes once their calls returned.
    func testKill9AfterMsyncTruncatePunchAndXattrKeepsThem() throws {
        let store = try initStore()
        var m = try mount(store)
        let path = m.mountpoint + "/mapped"
        var rng = SplitMix64(seed: 21)
        var model = rng.bytes(300_000)
        try Sys.writeFile(path, model)
        let fd = try Sys.open(path, O_RDWR)
        guard let p = mmap(nil, model.count, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0), p != MAP_FAILED else {
            throw Errno(code: errno, call: "mmap")
        }
        let stores = rng.bytes(70_000)
        stores.withUnsafeBytes { _ = memcpy(p + 100_000, $0.baseAddress!, stores.count) }
        model.replaceSubrange(100_000..<170_000, with: stores)
        XCTAssertEqual(msync(p, model.count, MS_SYNC), 0)
        munmap(p, model.count)
        try Sys.fallocate(fd, mode: twin_FALLOC_FL_PUNCH_HOLE | twin_FALLOC_FL_KEEP_SIZE, offset: 0, length: 65_536)
        for i in 0..<65_536 { model[i] = 0 }
        try Sys.ftruncate(fd, 250_000)
        model.removeLast(50_000)
        try Sys.setxattr(path, "user.kept", Array("yes".utf8))
        close(fd)

        m.killHard()
        m = try mount(store, at: "after")
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/mapped"), model, "msync'd stores, punch and truncate survive kill -9")
        XCTAssertEqual(try Sys.getxattr(m.mountpoint + "/mapped", "user.kept"), Array("yes".utf8))
    }

    /// Overwrites of an open file commit nothing each (FastWrites keeps them in memory): after a kill -9 every
    /// returned overwrite is there, the times come back exactly as a stat showed them before the kill, and a
    /// touch made after the overwrites is not undone by the recovery.
    func testKill9AfterOverwritesKeepsTheirDataAndTheTimesAStatShowed() throws {
        let store = try initStore()
        var m = try mount(store)
        let path = m.mountpoint + "/db"
        let touched = m.mountpoint + "/touched"
        var rng = SplitMix64(seed: 31)
        var model = rng.bytes(1 << 20)
        try Sys.writeFile(path, model)
        try Sys.writeFile(touched, model)
        let fd = try Sys.open(path, O_RDWR)
        let other = try Sys.open(touched, O_RDWR)
        for i in 0..<300 {
            let offset = Int(rng.next() % UInt64(model.count - 4096))
            let bytes = rng.bytes(4096)
            try Sys.pwrite(fd, bytes, at: Int64(offset))
            model.replaceSubrange(offset..<offset + 4096, with: bytes)
            try Sys.pwrite(other, bytes, at: Int64(offset))
            if i % 100 == 99 { try Sys.fsync(fd) }
        }
        let old = timespec(tv_sec: 978_307_200, tv_nsec: 0)  // 2001-01-01
        try Sys.utimens(touched, atime: old, mtime: old)
        usleep(20_000)  // past the data file's timestamp granularity: the next write moves its mtime
        try Sys.pwrite(fd, [9], at: 7)
        model[7] = 9
        let before = try Sys.stat(path)

        m.killHard()
        close(fd)
        close(other)
        m = try mount(store, at: "after")
        XCTAssertEqual(try Sys.readAll(m.mountpoint + "/db"), model, "every returned overwrite survives kill -9")
        let after = try Sys.stat(m.mountpoint + "/db")
        XCTAssertEqual([after.st_mtim.tv_sec, after.st_mtim.tv_nsec], [before.st_mtim.tv_sec, before.st_mtim.tv_nsec], "mtime as a stat showed it")
        XCTAssertEqual([after.st_ctim.tv_sec, after.st_ctim.tv_nsec], [before.st_ctim.tv_sec, before.st_ctim.tv_nsec], "ctime as a stat showed it")
        XCTAssertEqual(after.st_size, before.st_size)
        XCTAssertEqual(try Sys.stat(m.mountpoint + "/touched").st_mtim.tv_sec, old.tv_sec, "the touch after the overwrites holds")
    }

    /// A file unlinked while open is an orphan; when the daemon dies holding it, the next mount must not keep
    /// it (or its data) forever.
    func testKill9WithAnOpenUnlinkedFileLeavesNoOrphanBehind() throws {
        let store = try initStore()
        var m = try mount(store)
        try Sys.writeFile(m.mountpoint + "/kept", [1, 2, 3])
        XCTAssertEqual(m.unmount()?.status, 0)
        let baseline = Self.inodeCount(store)
        XCTAssertNotNil(baseline, "twinfs status --json has an inode count")
        let duBefore = Self.diskUsage(store)

        m = try mount(store, at: "m2")
        let fd = try Sys.open(m.mountpoint + "/orphan", O_RDWR | O_CREAT)
        try Sys.pwrite(fd, [UInt8](repeating: 7, count: 8 << 20), at: 0)
        try Sys.fsync(fd)
        try Sys.unlink(m.mountpoint + "/orphan")
        m.killHard()
        close(fd)

        m = try mount(store, at: "m3")
        XCTAssertEqual(try Sys.listDir(m.mountpoint), ["kept"])
        XCTAssertEqual(m.unmount()?.status, 0)
        XCTAssertEqual(Self.inodeCount(store), baseline, "the orphan's inode is gone after the next mount")
        XCTAssertLessThan(Self.diskUsage(store) - duBefore, 4 << 20, "the orphan's 8 MiB of data are freed")
    }

    /// git survives being killed at any point (every update is a write then a rename); with every returned
    /// write kept, killing the daemon under a commit loop must leave a repository that passes `git fsck`,
    /// with every commit that git reported done.
    func testKill9DuringGitCommitsLeavesARepositoryThatFscks() throws {
        let store = try initStore()
        var m = try mount(store)
        shell("""
        cd "$M" && git init -q -b main repo && cd repo
        seq 1 2000 > base && git add base && git commit -q -m c0
        """, in: m)
        let committed = scratch + "/committed", repo = m.mountpoint + "/repo", home = scratch
        let loopDone = DispatchSemaphore(value: 0)
        let bg = Thread {
            defer { loopDone.signal() }
            Commands.sh("""
            cd \(quote(repo))
            for i in $(seq 1 100000); do
              seq $i $((i + 300)) > "f$((i % 40))" || exit 0
              git add -A 2>/dev/null || exit 0
              git commit -q -m "c$i" 2>/dev/null || exit 0
              echo "$i" >> \(quote(committed))
            done
            """, home: home, timeoutSeconds: 300)
        }
        bg.start()
        let deadline = Date().addingTimeInterval(120)
        func commitsDone() -> Int { ((try? String(contentsOfFile: committed, encoding: .utf8)) ?? "").split(separator: "\n").count }
        while commitsDone() < 15 && Date() < deadline { usleep(10_000) }
        kill(m.pid, SIGKILL)
        XCTAssertEqual(loopDone.wait(timeout: .now() + 60), .success, "the commit loop ends once the mount is dead")
        m.killHard()
        let reported = ((try? String(contentsOfFile: committed, encoding: .utf8)) ?? "").split(separator: "\n").map(String.init)
        XCTAssertGreaterThanOrEqual(reported.count, 15, "git made commits before the kill")

        m = try mount(store, at: "after")
        let r = shell("""
        cd "$M/repo"
        rm -f .git/index.lock .git/HEAD.lock .git/refs/heads/main.lock
        git fsck --full --strict 2>&1
        git log --format=%s
        """, in: m)
        let subjects = Set(r.stdout.split(separator: "\n").map(String.init))
        let missing = reported.filter { !subjects.contains("c\($0)") }
        XCTAssertEqual(missing, [], "commits git reported done before the kill are in the history")
    }

    static func inodeCount(_ store: String) -> Int? {
        let r = Commands.twinfs(["status", store, "--json"])
        guard r.ok, let obj = try? JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else { return nil }
        return obj.first { $0.key.lowercased().contains("inode") }.flatMap { Int("\($0.value)") }
    }

    static func diskUsage(_ path: String) -> Int {
        let r = Commands.run(["/usr/bin/du", "-s", "-B1", path])
        return Int(r.stdout.split(separator: "\t").first ?? "") ?? Int.max
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
