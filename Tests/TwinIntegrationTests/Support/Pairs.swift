// Real pairs for tests: two stores initialised as one pair (shared secret, loopback ports chosen free), two
// foreground daemons, optionally a delaying twinfs-proxy in each direction, and `twinfs status --json` as the
// way to observe the mirror (counters, bitmaps, connection). Readiness is polled from status, never slept on.
// Never: stop a process it did not start, or unmount anything but its own two mountpoints (MountingTestCase).
import Foundation
import XCTest

/// A free TCP port on 127.0.0.1 (bound and released; the daemons bind it moments later).
func freeLoopbackPort() -> Int {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
    defer { close(fd) }
    var addr = sockaddr_in()
    addr.sin_family = sa_family_t(AF_INET)
    addr.sin_addr.s_addr = inet_addr("127.0.0.1")
    addr.sin_port = 0
    var len = socklen_t(MemoryLayout<sockaddr_in>.size)
    _ = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, len) } }
    _ = withUnsafeMutablePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &len) } }
    return Int(UInt16(bigEndian: addr.sin_port))
}

/// One running twinfs-proxy.
final class ProxyProcess {
    let process = Process()
    let port: Int
    init(listenPort: Int, targetPort: Int, delayMs: Int) throws {
        port = listenPort
        process.executableURL = URL(fileURLWithPath: ProxyTests.proxyBinary)
        process.arguments = ["--listen", "127.0.0.1:\(listenPort)", "--target", "127.0.0.1:\(targetPort)", "--delay-ms", "\(delayMs)"]
        let out = Pipe()
        process.standardOutput = out
        process.standardError = FileHandle(forWritingAtPath: "/dev/null")
        try process.run()
        let line = String(decoding: out.fileHandleForReading.availableData, as: UTF8.self)
        guard line.hasPrefix("twinfs-proxy: ready") else { throw MountError(description: "proxy did not start: \(line)") }
    }
    /// SIGUSR1: every connection through the proxy is closed and new ones are refused (a partition).
    func cut() { kill(process.processIdentifier, SIGUSR1) }
    /// SIGUSR2: the link carries connections again.
    func heal() { kill(process.processIdentifier, SIGUSR2) }

    func stop() {
        if process.isRunning {
            process.terminate()
            process.waitUntilExit()
        }
    }
}

/// A shell command started in the background (a reader or writer that may block on the peer).
final class BackgroundCommand {
    let process = Process()
    let started = Date()
    private let out = Pipe(), err = Pipe()
    init(_ script: String) throws {
        process.executableURL = URL(fileURLWithPath: "/bin/sh")
        process.arguments = ["-c", script]
        process.standardOutput = out
        process.standardError = err
        try process.run()
    }
    /// Waits for the end: exit status, stdout, stderr and how long it ran.
    func finish() -> (status: Int32, stdout: String, stderr: String, seconds: Double) {
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self),
                Date().timeIntervalSince(started))
    }
}

struct Pair {
    var storeA: String
    var storeB: String
    var a: TwinMount
    var b: TwinMount
}

class PairTestCase: MountingTestCase {
    private var proxies: [ProxyProcess] = []
    private(set) var portA = 0
    private(set) var portB = 0

    override func tearDownWithError() throws {
        try super.tearDownWithError()
        for p in proxies { p.stop() }
        proxies.removeAll()
    }

    /// Inits both stores of a pair; with `delayMs`, each node dials its peer through a delaying proxy.
    /// `storeA`: where node A's store goes (default: `a` in the scratch directory), e.g. on a small filesystem.
    func initPair(delayMs: Int? = nil, secret: String = "pair-secret", storeA: String? = nil) throws -> (String, String) {
        let secretPath = path(secret)
        if !FileManager.default.fileExists(atPath: secretPath) {
            FileManager.default.createFile(atPath: secretPath, contents: Data((0..<32).map { _ in UInt8.random(in: 0...255) }))
        }
        portA = freeLoopbackPort()
        portB = freeLoopbackPort()
        var peerOfA = portB
        var peerOfB = portA
        if let delayMs {
            peerOfA = freeLoopbackPort()
            peerOfB = freeLoopbackPort()
            proxies.append(try ProxyProcess(listenPort: peerOfA, targetPort: portB, delayMs: delayMs))
            proxies.append(try ProxyProcess(listenPort: peerOfB, targetPort: portA, delayMs: delayMs))
        }
        let a = storeA ?? path("a"), b = path("b")
        XCTAssertSucceeds(Commands.twinfs([
            "init", a, "--node", "alpha", "--node-id", "1", "--listen", "127.0.0.1:\(portA)", "--peer", "127.0.0.1:\(peerOfA)",
            "--secret-file", secretPath,
        ]))
        XCTAssertSucceeds(Commands.twinfs([
            "init", b, "--node", "beta", "--node-id", "2", "--listen", "127.0.0.1:\(portB)", "--peer", "127.0.0.1:\(peerOfB)",
            "--secret-file", secretPath,
        ]))
        return (a, b)
    }

    /// A connected pair: both daemons mounted and each reporting its peer connected.
    func startPair(delayMs: Int? = nil, options: [String] = ["allow_other"], storeA: String? = nil) throws -> Pair {
        let (sa, sb) = try initPair(delayMs: delayMs, storeA: storeA)
        let a = try mount(sa, at: "mnt-a", options: options)
        let b = try mount(sb, at: "mnt-b", options: options)
        try waitConnected(a)
        try waitConnected(b)
        return Pair(storeA: sa, storeB: sb, a: a, b: b)
    }

    /// `twinfs status STORE --json` of a mounted store, parsed.
    func status(_ m: TwinMount) throws -> [String: Any] {
        let r = Commands.twinfs(["status", m.store, "--json"])
        guard r.ok, let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any] else {
            throw MountError(description: "twinfs status failed: \(r)")
        }
        return object
    }

    func mirror(_ m: TwinMount) throws -> [String: Any] { try status(m)["mirror"] as? [String: Any] ?? [:] }

    func counter(_ m: TwinMount, _ name: String) throws -> Int {
        (try mirror(m)["counters"] as? [String: Any])?[name] as? Int ?? -1
    }

    func waitUntil(_ what: String, timeoutSeconds: Double = 30, _ condition: () throws -> Bool) throws {
        let deadline = Date().addingTimeInterval(timeoutSeconds)
        while Date() < deadline {
            if try condition() { return }
            usleep(20_000)
        }
        throw MountError(description: "timed out after \(timeoutSeconds) s waiting for: \(what)")
    }

    func waitConnected(_ m: TwinMount) throws {
        try waitUntil("\(m.store) connected to its peer") {
            ((try status(m)["peer"] as? [String: Any])?["connected"] as? Bool) == true
        }
    }

    /// Partitions the pair (both directions: each node dials its peer through its own proxy; needs `delayMs`) and
    /// waits until both daemons see the link down.
    func cutLink(_ p: Pair) throws {
        precondition(!proxies.isEmpty, "cutLink needs a pair started with delayMs (a proxy in each direction)")
        for proxy in proxies { proxy.cut() }
        for m in [p.a, p.b] {
            try waitUntil("\(m.store) sees the link down") {
                ((try status(m)["peer"] as? [String: Any])?["connected"] as? Bool) == false
            }
        }
    }

    /// Lets connections through the proxies again without waiting for the nodes to connect (a pair that refuses
    /// itself, e.g. a split brain, never does).
    func healProxies() {
        for proxy in proxies { proxy.heal() }
    }

    /// Heals the partition and waits until both nodes are connected again.
    func healLink(_ p: Pair) throws {
        for proxy in proxies { proxy.heal() }
        try waitConnected(p.a)
        try waitConnected(p.b)
    }

    /// Keeps this node's write tokens for `files` while the link is cut: a node gives back tokens it has not used
    /// for a second or two (only while connected), so a test that wants a node to hold files during a partition
    /// keeps rewriting one byte per track of them until the cut is complete. `body` runs once every track was
    /// written at least once; the keeper stops after it and must not have failed.
    func holdingTokens(_ files: [String], trackBytes: Int, _ body: () throws -> Void) throws {
        let script = path("keeper.py"), stop = path("keeper.stop"), ready = path("keeper.ready")
        try #"""
            import os, sys, time
            stop, ready, track = sys.argv[1], sys.argv[2], int(sys.argv[3])
            first = True
            while not os.path.exists(stop):
                for f in sys.argv[4:]:
                    fd = os.open(f, os.O_WRONLY)
                    for offset in range(0, os.fstat(fd).st_size, track):
                        os.pwrite(fd, b"k", offset)
                    os.close(fd)
                if first:
                    open(ready, "w").close()
                    first = False
                time.sleep(0.05)
            """#.write(toFile: script, atomically: true, encoding: .utf8)
        let keeper = try BackgroundCommand(([ "python3", script, stop, ready, "\(trackBytes)"] + files).map(quote).joined(separator: " "))
        var result: Result<Void, Error> = .success(())
        do {
            try waitUntil("the keeper wrote every track once") {
                if !keeper.process.isRunning { throw MountError(description: "the token keeper ended early") }
                return FileManager.default.fileExists(atPath: ready)
            }
            try body()
        } catch {
            result = .failure(error)
        }
        _ = FileManager.default.createFile(atPath: stop, contents: nil)
        let r = keeper.finish()
        XCTAssertEqual(r.status, 0, "the token keeper failed: \(r.stderr)")
        try result.get()
    }

    func peer(_ m: TwinMount) throws -> [String: Any] { try status(m)["peer"] as? [String: Any] ?? [:] }

    /// Bytes this node's link has written to the peer since the daemon started (frames, handshakes, heartbeats).
    func linkBytesSent(_ m: TwinMount) throws -> Int { try peer(m)["bytesSent"] as? Int ?? -1 }

    /// Both nodes have nothing left to copy (OOS empty on both): the background copy has drained.
    func waitDrained(_ p: Pair, timeoutSeconds: Double = 60) throws {
        try waitUntil("both nodes' out-of-sync bitmaps empty", timeoutSeconds: timeoutSeconds) {
            let a = try mirror(p.a)["oos"] as? Int
            let b = try mirror(p.b)["oos"] as? Int
            return a == 0 && b == 0
        }
    }
}
