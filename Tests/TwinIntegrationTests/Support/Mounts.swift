// Real mounts for tests: a twinfs daemon in the foreground (`twinfs mount STORE MNT -f`), ready when it
// prints `twinfs: ready MNT` on stdout (no sleeps), unmounted by path with fusermount3 in a teardown block,
// and SIGKILLed by its own pid if it does not exit. Also the per-test scratch directory and the base
// class every mounting test derives from.
// Never: unmount a path this file did not mount, remove a directory that still has a mount under it,
// or signal a process it did not start.
import Foundation
import TwinStore
import XCTest

enum MountTable {
    /// Mountpoints currently in this mount namespace (octal escapes of /proc/self/mountinfo decoded).
    static func mountpoints() -> [String] { MountinfoEntry.current().map(\.mountpoint) }

    /// The filesystem type of the mount at `path`, if mounted.
    static func fsType(at path: String) -> String? { MountinfoEntry.current().first { $0.mountpoint == path }?.fsType }

    static func isMounted(_ path: String) -> Bool { mountpoints().contains(path) }

    static func anyMount(under dir: String) -> Bool {
        mountpoints().contains { $0 == dir || $0.hasPrefix(dir + "/") }
    }
}

struct MountError: Error, CustomStringConvertible {
    let description: String
}

/// One foreground twinfs daemon serving one mountpoint.
final class TwinMount {
    let store: String
    let mountpoint: String
    let logPath: String
    private let process = Process()
    private let exited = DispatchSemaphore(value: 0)
    private let stateLock = NSLock()
    private var exitStatus: (status: Int32, signaled: Bool)?
    private var stdoutRest = Data()
    private var drainThread: Thread?

    var pid: pid_t { process.processIdentifier }
    var readyTimeoutSeconds: Double = 60

    /// Starts the daemon and returns once it said it is ready; throws (after cleaning up) if it exits,
    /// says something else, or is not ready in time.
    init(store: String, mountpoint: String, options: [String] = ["allow_other"], extraArgs: [String] = [],
         environment: [String: String] = [:]) throws {
        self.store = store
        self.mountpoint = mountpoint
        self.logPath = mountpoint + ".daemon.log"
        _ = FileManager.default.createFile(atPath: logPath, contents: nil)
        let log = try FileHandle(forWritingTo: URL(fileURLWithPath: logPath))
        defer { try? log.close() }
        let stdoutPipe = Pipe()
        process.executableURL = URL(fileURLWithPath: Commands.twinfsBinary)
        var args = ["mount", store, mountpoint, "-f"]
        if !options.isEmpty { args += ["-o", options.joined(separator: ",")] }
        process.arguments = args + extraArgs
        process.environment = Commands.environment(home: "/tmp").merging(environment) { $1 }
        process.standardOutput = stdoutPipe
        process.standardError = log
        process.standardInput = FileHandle(forReadingAtPath: "/dev/null")
        process.terminationHandler = { [weak self] p in
            guard let self else { return }
            self.stateLock.lock()
            self.exitStatus = (p.terminationStatus, p.terminationReason == .uncaughtSignal)
            self.stateLock.unlock()
            self.exited.signal()
        }
        try process.run()
        try? stdoutPipe.fileHandleForWriting.close()

        let fd = stdoutPipe.fileHandleForReading.fileDescriptor
        let expected = "twinfs: ready \(mountpoint)"
        let line: String
        do {
            line = try Self.readLine(fd: fd, timeoutSeconds: readyTimeoutSeconds)
        } catch {
            let why = "\(error)"
            forceStop()
            throw MountError(description: "twinfs mount \(store) \(mountpoint) -f did not become ready: \(why)\n\(daemonLog())")
        }
        guard line == expected else {
            forceStop()
            throw MountError(description: "readiness line was \(line.debugDescription), expected \(expected.debugDescription)\n\(daemonLog())")
        }
        guard MountTable.isMounted(mountpoint) else {
            forceStop()
            throw MountError(description: "daemon said ready but \(mountpoint) is not in /proc/self/mountinfo\n\(daemonLog())")
        }
        // Keep draining stdout so that the daemon never blocks on a full pipe.
        let handle = stdoutPipe.fileHandleForReading
        let t = Thread { [weak self] in
            while true {
                let d = handle.availableData
                if d.isEmpty { break }
                self?.stateLock.lock(); self?.stdoutRest.append(d); self?.stateLock.unlock()
            }
        }
        t.start()
        drainThread = t
    }

    /// Reads one line from `fd` with poll(2) and a deadline; throws on EOF or timeout.
    private static func readLine(fd: Int32, timeoutSeconds: Double) throws -> String {
        var buf = [UInt8]()
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while true {
            let remainingMs = Int32(max(0, deadline.timeIntervalSinceNow * 1000))
            if remainingMs == 0 { throw MountError(description: "no line on stdout within \(timeoutSeconds) s (got \(String(decoding: buf, as: UTF8.self).debugDescription))") }
            var pfd = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
            let r = poll(&pfd, 1, remainingMs)
            if r < 0 { if errno == EINTR { continue }; throw MountError(description: "poll: \(String(cString: strerror(errno)))") }
            if r == 0 { continue }
            var byte: UInt8 = 0
            let n = read(fd, &byte, 1)
            if n < 0 { if errno == EINTR { continue }; throw MountError(description: "read: \(String(cString: strerror(errno)))") }
            if n == 0 { throw MountError(description: "stdout closed (daemon exited) before a full line; got \(String(decoding: buf, as: UTF8.self).debugDescription)") }
            if byte == UInt8(ascii: "\n") { return String(decoding: buf, as: UTF8.self) }
            buf.append(byte)
        }
    }

    var isRunning: Bool {
        stateLock.lock(); defer { stateLock.unlock() }
        return exitStatus == nil
    }

    /// Everything the daemon wrote to stderr so far (for failure messages).
    func daemonLog() -> String {
        let text = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        let tail = text.count > 6000 ? "...\n" + String(text.suffix(6000)) : text
        return "--- twinfs daemon stderr (\(logPath)) ---\n\(tail)--- end ---"
    }

    /// Waits for the daemon to exit; nil if it is still running after `timeoutSeconds`.
    func waitForExit(timeoutSeconds: Double) -> (status: Int32, signaled: Bool)? {
        if exited.wait(timeout: .now() + timeoutSeconds) == .timedOut { return nil }
        exited.signal()  // let later waiters through too
        stateLock.lock(); defer { stateLock.unlock() }
        return exitStatus
    }

    func signal(_ sig: Int32) {
        if isRunning { kill(pid, sig) }
    }

    /// `fusermount3 -u MNT`, then waits for the daemon to exit. Returns its exit status (nil if it hung).
    @discardableResult
    func unmount(timeoutSeconds: Double = 30) -> (status: Int32, signaled: Bool)? {
        let r = Commands.run(["/usr/bin/fusermount3", "-u", mountpoint], timeoutSeconds: 60)
        if !r.ok && MountTable.isMounted(mountpoint) {
            // Busy (an fd still open in the test?) - lazy unmount so the daemon can finish.
            Commands.run(["/usr/bin/fusermount3", "-u", "-z", mountpoint], timeoutSeconds: 60)
        }
        return waitForExit(timeoutSeconds: timeoutSeconds)
    }

    /// SIGKILL of this daemon, then removes the dead mount by path.
    func killHard() {
        if isRunning { kill(pid, SIGKILL) }
        _ = waitForExit(timeoutSeconds: 30)
        removeDeadMount()
    }

    /// Unmounts a mount whose daemon is gone (the kernel keeps it, answering ENOTCONN).
    func removeDeadMount() {
        if MountTable.isMounted(mountpoint) {
            let r = Commands.run(["/usr/bin/fusermount3", "-u", mountpoint], timeoutSeconds: 60)
            if !r.ok { Commands.run(["/usr/bin/fusermount3", "-u", "-z", mountpoint], timeoutSeconds: 60) }
        }
    }

    /// Teardown: a polite unmount, then SIGKILL if the daemon does not go, then a lazy unmount by path.
    func forceStop() {
        if isRunning || MountTable.isMounted(mountpoint) {
            if MountTable.isMounted(mountpoint) {
                if unmount(timeoutSeconds: 20) == nil { killHard() }
            } else {
                signal(SIGTERM)
                if waitForExit(timeoutSeconds: 20) == nil { killHard() }
            }
        }
        removeDeadMount()
    }
}

/// Base class of all tests that mount: a fresh scratch directory per test (mode 0755 so other uids can
/// reach the mountpoints), helpers to init stores and mount them, and teardown that unmounts everything
/// it mounted before removing anything.
class MountingTestCase: XCTestCase {
    private(set) var scratch = ""
    private var mounts: [TwinMount] = []

    /// Seconds any test allows one daemon to take to become ready.
    static let fuseDevice = "/dev/fuse"

    override func setUpWithError() throws {
        try super.setUpWithError()
        guard FileManager.default.fileExists(atPath: Self.fuseDevice) else {
            throw XCTSkip("/dev/fuse does not exist on this machine: twinfs cannot mount, so the real-mount tests cannot run")
        }
        XCTAssertEqual(getuid(), 0, "the integration tests run as root (they chown and switch uids)")
        var template = Array("/tmp/twinfs-itest-XXXXXX".utf8CString)
        guard let dir = mkdtemp(&template) else { throw MountError(description: "mkdtemp failed") }
        scratch = String(cString: dir)
        chmod(scratch, 0o755)
        precondition(FileManager.default.fileExists(atPath: Commands.twinfsBinary),
                     "twinfs binary not found at \(Commands.twinfsBinary); build it with `swift build` (or set TWINFS_BINARY)")
    }

    override func tearDownWithError() throws {
        for m in mounts.reversed() { m.forceStop() }
        mounts.removeAll()
        if !scratch.isEmpty {
            if MountTable.anyMount(under: scratch) {
                XCTFail("a mount is still active under \(scratch); leaving the directory in place")
            } else {
                Commands.run(["/bin/rm", "-rf", "--one-file-system", scratch])
            }
        }
        try super.tearDownWithError()
    }

    /// A path inside this test's scratch directory (not created).
    func path(_ name: String) -> String { scratch + "/" + name }

    /// A new empty directory in the scratch directory.
    @discardableResult
    func makeDir(_ name: String, mode: mode_t = 0o755) -> String {
        let p = path(name)
        XCTAssertEqual(mkdir(p, mode), 0, "mkdir \(p): \(String(cString: strerror(errno)))")
        chmod(p, mode)
        return p
    }

    /// `twinfs init` of a new store; fails the test if init fails.
    @discardableResult
    func initStore(_ name: String = "store", node: String? = nil, trackSize: String? = nil,
                   file: StaticString = #filePath, line: UInt = #line) throws -> String {
        let store = path(name)
        var args = ["init", store]
        if let node { args += ["--node", node] }
        if let trackSize { args += ["--track-size", trackSize] }
        let r = Commands.twinfs(args)
        guard r.ok else {
            XCTFail("twinfs init failed\n\(r)", file: file, line: line)
            throw MountError(description: "twinfs init failed")
        }
        return store
    }

    /// Mounts `store` on a new empty directory `mountName` with a foreground daemon; unmounted at teardown.
    func mount(_ store: String, at mountName: String = "mnt", options: [String] = ["allow_other"],
               environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) throws -> TwinMount {
        let mnt = path(mountName)
        if !FileManager.default.fileExists(atPath: mnt) { makeDir(mountName) }
        do {
            let m = try TwinMount(store: store, mountpoint: mnt, options: options, environment: environment)
            mounts.append(m)
            return m
        } catch {
            XCTFail("\(error)", file: file, line: line)
            throw error
        }
    }

    /// A fresh store mounted at `mnt` (the usual start of a test).
    func freshMount(node: String? = nil, options: [String] = ["allow_other"],
                    file: StaticString = #filePath, line: UInt = #line) throws -> TwinMount {
        let store = try initStore(node: node, file: file, line: line)
        return try mount(store, options: options, file: file, line: line)
    }

    /// Runs a shell script with `M` set to the mountpoint and `S` to the scratch directory; asserts success.
    @discardableResult
    func shell(_ script: String, in m: TwinMount? = nil, as user: (uid: uid_t, gid: gid_t)? = nil,
               file: StaticString = #filePath, line: UInt = #line) -> CommandResult {
        let prelude = "M=\(quote(m?.mountpoint ?? "")); S=\(quote(scratch))\n"
        let r = Commands.sh(prelude + script, as: user, home: scratch)
        XCTAssertTrue(r.ok, "\(r)\n\(m?.daemonLog() ?? "")", file: file, line: line)
        return r
    }
}

/// Single-quotes a string for bash.
func quote(_ s: String) -> String { "'" + s.replacingOccurrences(of: "'", with: "'\\''") + "'" }
