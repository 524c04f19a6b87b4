// ControlSocket: the daemon's local control endpoint, a Unix socket in the store (STORE/control.sock, mode 0600,
// so only the store's owner reaches it). A client connects and writes one request line (`status`, `promote`,
// `resolve keep-this` / `resolve keep-peer`); the daemon writes one JSON document and closes.
// Owns: the socket's life and framing. Must never: interpret a request (the daemon's handler does), or let a slow
// client stall the daemon (requests and answers have timeouts, one client at a time, by one thread).
import Foundation
import Glibc

public final class ControlServer: @unchecked Sendable {
    public static let fileName = "control.sock"
    public static let maxAnswerBytes = 1 << 20
    private let path: String
    private var fd: Int32 = -1
    private let answer: @Sendable (String) -> [UInt8]
    public static let maxRequestBytes = 256

    /// Binds `STORE/control.sock` (replacing a stale one left by a killed daemon: the store's lock, held by the
    /// caller, proves no other daemon uses it).
    public init(storePath: String, answer: @escaping @Sendable (_ request: String) -> [UInt8]) throws {
        path = storePath + "/" + Self.fileName
        self.answer = answer
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlError.system("socket", errno) }
        var address = try Self.address(path)
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0, chmod(path, 0o600) == 0, listen(fd, 8) == 0 else {
            let e = errno
            close(fd)
            throw ControlError.system("bind \(path)", e)
        }
    }

    public func start() {
        spawnDetachedThread { self.serve() }
    }

    public func stop() {
        unlink(path)
        shutdown(fd, Int32(SHUT_RDWR))
    }

    private func serve() {
        while true {
            let client = accept(fd, nil, nil)
            if client < 0 {
                if errno == EINTR || errno == ECONNABORTED { continue }
                return
            }
            var timeout = timeval(tv_sec: 2, tv_usec: 0)
            setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var bytes = answer(Self.readRequest(client))
            if bytes.count > Self.maxAnswerBytes { bytes = Array("{\"error\":\"status too large\"}".utf8) }
            var sent = 0
            while sent < bytes.count {
                let n = bytes.withUnsafeBytes { send(client, $0.baseAddress! + sent, $0.count - sent, Int32(MSG_NOSIGNAL)) }
                if n <= 0 { break }
                sent += n
            }
            close(client)
        }
    }

    /// One line, at most `maxRequestBytes`; an empty request means status.
    static func readRequest(_ fd: Int32) -> String {
        var request: [UInt8] = []
        var byte: UInt8 = 0
        while request.count < maxRequestBytes, recv(fd, &byte, 1, 0) == 1, byte != 0x0A { request.append(byte) }
        return String(decoding: request, as: UTF8.self).trimmingCharacters(in: .whitespaces)
    }

    static func address(_ path: String) throws -> sockaddr_un {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw ControlError.pathTooLong(path) }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            for (i, b) in bytes.enumerated() { raw[i] = b }
        }
        return address
    }

    /// Sends `request` to the daemon serving `storePath` and returns its answer; nil when no daemon answers (the
    /// store is not mounted).
    public static func query(storePath: String, request: String = "status", timeoutMs: Int = 3_000) -> [UInt8]? {
        let path = storePath + "/" + fileName
        guard var address = try? Self.address(path) else { return nil }
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var timeout = timeval(tv_sec: timeoutMs / 1000, tv_usec: Int((timeoutMs % 1000) * 1000))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let rc = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard rc == 0 else { return nil }
        let line = Array((request + "\n").utf8)
        guard line.withUnsafeBytes({ send(fd, $0.baseAddress!, $0.count, Int32(MSG_NOSIGNAL)) }) == line.count else { return nil }
        var out: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16 << 10)
        while out.count <= maxAnswerBytes {
            let n = recv(fd, &chunk, chunk.count, 0)
            if n <= 0 { break }
            out += chunk[0..<n]
        }
        return out.isEmpty ? nil : out
    }
}

public enum ControlError: Error, CustomStringConvertible {
    case system(String, Int32)
    case pathTooLong(String)
    public var description: String {
        switch self {
        case .system(let what, let code): return "\(what): \(String(cString: strerror(code)))"
        case .pathTooLong(let p): return "control socket path too long: \(p)"
        }
    }
}

/// The status keys that show a partition and stalled store work (Docs/OPERATIONS.md "Partitions", "Disk full"),
/// merged by the daemon into its `peer` and `mirror` objects. Stable names, like every status key.
public enum PartitionStatusKeys {
    /// `peer.disconnectedForMs` (only while disconnected), `peer.bytesSent`/`bytesReceived` (the link's real bytes
    /// since start), `peer.lastError` (why the link is down: the last failed dial, else the last disconnect).
    public static func peer(_ s: MirrorShellStatus, connected: Bool, bytesSent: UInt64, bytesReceived: UInt64,
                            lastDialError: String?, lastDisconnect: String?) -> [String: Any] {
        var out: [String: Any] = ["bytesSent": Int(bytesSent), "bytesReceived": Int(bytesReceived)]
        if !connected {
            out["disconnectedForMs"] = Int(s.uptimeMs - min(s.disconnectedSinceMs ?? s.uptimeMs, s.uptimeMs))
            if let error = lastDialError ?? lastDisconnect { out["lastError"] = error }
        }
        return out
    }

    /// `mirror.blocked.{operations,oldestMs,flushes,oldestFlushMs}` (what waits on the core: during a partition,
    /// on the peer), `mirror.stalledStoreActions` and `mirror.storeRetries` (store writes waiting for disk space).
    public static func mirror(_ s: MirrorShellStatus) -> [String: Any] {
        [
            "blocked": [
                "operations": s.blockedOperations, "oldestMs": Int(s.oldestBlockedOperationMs),
                "flushes": s.blockedFlushes, "oldestFlushMs": Int(s.oldestBlockedFlushMs),
            ] as [String: Any],
            "stalledStoreActions": s.stalledStoreActions, "storeRetries": s.storeRetries,
        ]
    }
}
