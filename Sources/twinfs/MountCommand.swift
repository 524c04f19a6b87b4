// `twinfs mount STORE MNT`: checks everything that can be wrong before the mount, then daemonizes (unless -f)
// and serves until unmounted. The parent returns only once the mount is live, or fails with the daemon's error.
import ArgumentParser
import Foundation
import Glibc
import TwinFUSE
import TwinNode
import TwinStore

/// -o options as the user gave them, checked; `kernel` are the ones passed on to libfuse.
struct ParsedMountOptions {
    var kernel: [String] = ["default_permissions"]
    var debug = false
    var nonempty = false
    var fsyncMode = "mirror"
    var peerTimeoutMs = 30_000

    /// Options mount(8) and fstab pass that mean nothing to a FUSE filesystem.
    static let ignored: Set<String> = ["defaults", "auto", "noauto", "user", "users", "nouser", "nofail", "_netdev", "rw", "owner", "group", "comment"]
    static let passedToKernel: Set<String> = [
        "allow_other", "allow_root", "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "noatime", "atime", "relatime",
        "sync", "async", "dirsync",
    ]

    init(_ raw: [String]) throws {
        for group in raw {
            for option in group.split(separator: ",").map(String.init) where !option.isEmpty {
                let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
                let key = parts[0]
                let value = parts.count > 1 ? parts[1] : nil
                switch key {
                case "debug": debug = true
                case "nonempty": nonempty = true
                case "fsync":
                    guard let value, ["mirror", "local"].contains(value) else {
                        throw UsageError(message: "-o fsync= takes mirror or local, got \"\(value ?? "")\"")
                    }
                    fsyncMode = value
                case "peer_timeout":
                    guard let value, let seconds = Double(value), seconds > 0, seconds <= 86_400 else {
                        throw UsageError(message: "-o peer_timeout= takes seconds (0 < t <= 86400), got \"\(value ?? "")\"")
                    }
                    peerTimeoutMs = Int(seconds * 1000)
                case _ where Self.ignored.contains(key) || key.hasPrefix("x-"): break
                case _ where Self.passedToKernel.contains(key) && value == nil: kernel.append(key)
                default:
                    throw UsageError(message: "unknown mount option \"\(option)\" (see `twinfs mount --help`)")
                }
            }
        }
    }
}

struct MountCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "mount", abstract: "Mount a store.",
        discussion: """
            Options (-o, comma-separated): allow_other, ro, nosuid, nodev, noexec, noatime, debug, nonempty,
            fsync=mirror|local, peer_timeout=SECONDS. Unmount with `fusermount3 -u MNT`; SIGTERM and SIGINT also
            unmount cleanly.
            """)

    @Argument(help: "The store directory.")
    var store: String

    @Argument(help: "The mountpoint (an empty directory).")
    var mountpoint: String

    @Flag(name: .customShort("f"), help: "Stay in the foreground; print `twinfs: ready MNT` on stdout once mounted.")
    var foreground = false

    @Option(name: .customShort("o"), help: "Mount options, comma-separated.")
    var options: [String] = []

    func run() throws {
        let parsed = try ParsedMountOptions(options)
        let mnt = absolute(mountpoint)
        let storePath = absolute(store)
        try checkMountpoint(mnt, allowNonempty: parsed.nonempty)
        // Validate before forking, so the common mistakes are reported by the parent directly, and before the
        // store is opened, so a refused mount changes nothing in it.
        _ = try Store.readIdentity(at: storePath)
        guard access("/dev/fuse", R_OK | W_OK) == 0 else {
            throw UsageError(message: "/dev/fuse is not available (is the fuse module loaded, and may this user open it?)")
        }
        if let where_ = mountpointOfStore(storePath) {
            throw UsageError(message: "store \(storePath) is already mounted at \(where_)")
        }
        if foreground {
            let code = try serve(storePath: storePath, mnt: mnt, parsed: parsed) {
                print("twinfs: ready \(mnt)")
                fflush(stdout)
            }
            Glibc.exit(code)
        }
        try daemonize(logPath: storePath + "/twinfs.log") { notifyReady in
            try serve(storePath: storePath, mnt: mnt, parsed: parsed, onReady: notifyReady)
        }
    }

    /// Opens the store, mounts, signals readiness, serves; returns the exit code.
    func serve(storePath: String, mnt: String, parsed: ParsedMountOptions, onReady: () -> Void) throws -> Int32 {
        // Not mounted anywhere (checked above), so a held lock is a daemon that is still closing the store after
        // its unmount: give it a moment rather than failing a remount that follows `fusermount3 -u`.
        let store = try Store.open(at: storePath, lockWaitMs: 10_000)
        let volume = Volume(store: store)
        var kernel = parsed.kernel
        kernel.append("fsname=\(storePath.replacingOccurrences(of: ",", with: "_"))")
        kernel.append("subtype=twinfs")
        var options = MountOptions()
        var mirror: MirrorRuntime?
        if store.identity.pairing != nil {
            let runtime = try MirrorRuntime(
                store: store, volume: volume, storePath: storePath, peerTimeoutMs: parsed.peerTimeoutMs,
                fsyncMirror: parsed.fsyncMode == "mirror")
            runtime.startShell()
            options.mirrored = true
            mirror = runtime
        }
        let session: FuseSession
        do {
            session = try FuseSession(volume: volume, mountpoint: mnt, kernelOptions: kernel, options: options, debug: parsed.debug)
        } catch let error as FuseError {
            throw UsageError(message: error.description)
        }
        try mirror?.connect(session: session)
        onReady()
        // libfuse reports the signal that ended the loop; SIGTERM/SIGINT/SIGHUP are a clean stop.
        let loopResult = session.run()
        mirror?.stop()
        let rc = [SIGTERM, SIGINT, SIGHUP].contains(loopResult) ? 0 : loopResult
        do {
            try volume.shutDown()
        } catch {
            writeStderr("twinfs: error: closing store: \(error)\n")
            return 1
        }
        return rc == 0 ? 0 : 1
    }
}

/// Every twinfs mount in this namespace: (mountpoint, store). Our fsname is the store's absolute path.
func twinfsMounts() -> [(mountpoint: String, store: String)] {
    MountinfoEntry.current().filter { $0.fsType == "fuse.twinfs" }.map { ($0.mountpoint, $0.source) }
}

/// The mountpoint where `store` is mounted, or nil.
func mountpointOfStore(_ store: String) -> String? {
    twinfsMounts().first { $0.store == store }?.mountpoint
}

/// The store mounted at `path`, or nil if `path` is not a twinfs mountpoint.
func storeOfMountpoint(_ path: String) -> String? {
    twinfsMounts().first { $0.mountpoint == path }?.store
}

func absolute(_ path: String) -> String {
    if path.hasPrefix("/") { return path }
    return FileManager.default.currentDirectoryPath + "/" + path
}

func checkMountpoint(_ path: String, allowNonempty: Bool) throws {
    var st = stat()
    guard stat(path, &st) == 0 else { throw UsageError(message: "mountpoint \(path) does not exist") }
    guard st.st_mode & S_IFMT == S_IFDIR else { throw UsageError(message: "mountpoint \(path) is not a directory") }
    if !allowNonempty, let entries = try? FileManager.default.contentsOfDirectory(atPath: path), !entries.isEmpty {
        throw UsageError(message: "mountpoint \(path) is not empty (use -o nonempty to mount over it anyway)")
    }
}

/// Forks before any thread, store or session exists. The child runs `body` in a new session with its output
/// in the daemon log; the parent waits on a pipe for "ready" (exit 0) or an error line (printed, exit 1).
func daemonize(logPath: String, _ body: (_ notifyReady: () -> Void) throws -> Int32) throws -> Never {
    var fds: [Int32] = [0, 0]
    guard pipe(&fds) == 0 else { throw UsageError(message: "cannot create a pipe: \(String(cString: strerror(errno)))") }
    let pid = fork()
    guard pid >= 0 else { throw UsageError(message: "cannot fork: \(String(cString: strerror(errno)))") }
    if pid > 0 {
        close(fds[1])
        var message: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 512)
        while true {
            let n = read(fds[0], &chunk, chunk.count)
            if n <= 0 { break }
            message += chunk[0..<n]
        }
        let text = String(decoding: message, as: UTF8.self)
        if text.hasPrefix("ready") { exit(0) }
        if text.isEmpty {
            var status: Int32 = 0
            waitpid(pid, &status, 0)
            fail("the daemon exited during start-up (status \(status))")
        }
        writeStderr(text.hasSuffix("\n") ? text : text + "\n")
        exit(1)
    }
    close(fds[0])
    setsid()
    let pipeFD = fds[1]
    var reported = false
    let report: (String) -> Void = { line in
        guard !reported else { return }
        reported = true
        var bytes = Array(line.utf8)
        _ = bytes.withUnsafeMutableBytes { write(pipeFD, $0.baseAddress, $0.count) }
        close(pipeFD)
    }
    do {
        let code = try body {
            // Detach from the terminal only once everything that could fail at start-up has been reported.
            // Whoever ran `twinfs mount` may wait for EOF on our stdout/stderr: keep none of its descriptors.
            let null = open("/dev/null", O_RDWR)
            dup2(null, 0)
            dup2(null, 1)
            close(null)
            let log = open(logPath, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
            if log >= 0 {
                dup2(log, 2)
                close(log)
            }
            chdir("/")
            report("ready\n")
        }
        exit(code)
    } catch let error as StoreError {
        report("twinfs: error: \(error.description)\n")
    } catch let error as UsageError {
        report("twinfs: error: \(error.message)\n")
    } catch {
        report("twinfs: error: \(error)\n")
    }
    exit(1)
}
